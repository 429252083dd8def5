//! Shared by the test guests written without tabula's SDK: answer a `wasi:http` request with
//! a status and a text body.

use std::io::Write;

use wasi::http::types::{Fields, OutgoingBody, OutgoingResponse, ResponseOutparam};

pub fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("stream");
    stream.write_all(text.as_bytes()).expect("write");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish");
}
