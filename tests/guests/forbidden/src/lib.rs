//! A component that imports an interface tabula does not provide (`acme:secret/vault`): the
//! host must refuse it when loading, naming the import, instead of failing on a request.

use std::io::Write;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package acme:secret;
            interface vault { open: func() -> string; }
            world forbidden { import vault; }
        ",
    });
}

struct Forbidden;

impl wasi::exports::http::incoming_handler::Guest for Forbidden {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let secret = bindings::acme::secret::vault::open();
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("body");
        ResponseOutparam::set(out, Ok(response));
        let mut stream = body.write().expect("stream");
        stream.write_all(secret.as_bytes()).expect("write");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish");
    }
}

wasi::http::proxy::export!(Forbidden);
