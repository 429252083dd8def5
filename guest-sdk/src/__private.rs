//! The glue between `wasi:http` and a `#[handler]` function: reads the incoming request into a
//! [`Request`], calls the handler, and writes its [`Response`] back.

use std::io::{Read, Write};

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};

use crate::{IntoResponse, Method, Request, Response};

pub use wasi;
pub use wasi::exports::http::incoming_handler::Guest;

/// Runs `handler` for one `wasi:http` request.
pub fn run<R: IntoResponse>(
    incoming: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(Request) -> R,
) {
    let response = match read_request(incoming) {
        Ok(request) => handler(request).into_response(),
        Err(e) => Response::bad_request(format!("could not read the request: {e}\n")),
    };
    write_response(out, response);
}

fn read_request(incoming: IncomingRequest) -> Result<Request, String> {
    let method = match incoming.method() {
        WasiMethod::Get => Method::Get,
        WasiMethod::Head => Method::Head,
        WasiMethod::Post => Method::Post,
        WasiMethod::Put => Method::Put,
        WasiMethod::Delete => Method::Delete,
        WasiMethod::Patch => Method::Patch,
        WasiMethod::Options => Method::Options,
        WasiMethod::Connect => Method::Connect,
        WasiMethod::Trace => Method::Trace,
        WasiMethod::Other(m) => Method::Other(m),
    };
    let uri = incoming.path_with_query().unwrap_or_else(|| "/".into());
    let mut request = Request::new(method, &uri);
    for (name, value) in incoming.headers().entries() {
        request = request.with_header(&name, value);
    }
    if !request.declares_body() {
        return Ok(request);
    }
    let body = incoming
        .consume()
        .map_err(|()| "the body was already taken".to_string())?;
    let mut bytes = Vec::new();
    {
        let mut stream = body
            .stream()
            .map_err(|()| "the body stream was already taken".to_string())?;
        stream.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    }
    IncomingBody::finish(body);
    Ok(request.with_body(bytes))
}

fn write_response(out: ResponseOutparam, response: Response) {
    let entries: Vec<(String, Vec<u8>)> = response
        .headers()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
        .collect();
    let headers = match Fields::from_list(&entries) {
        Ok(headers) => headers,
        Err(e) => {
            eprintln!("handler returned headers the host refuses: {e:?}");
            Fields::new()
        }
    };
    let outgoing = OutgoingResponse::new(headers);
    // A new response is already 200: one host call fewer for most responses.
    if response.status() != 200 && outgoing.set_status_code(response.status()).is_err() {
        eprintln!(
            "handler returned invalid status {}; sending 500",
            response.status()
        );
        let _ = outgoing.set_status_code(500);
    }
    let body = outgoing.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(outgoing));
    if let Err(e) = write_body(&body, response.body()) {
        eprintln!("writing the response body failed: {e}");
        return;
    }
    if let Err(e) = OutgoingBody::finish(body, None) {
        eprintln!("finishing the response body failed: {e:?}");
    }
}

/// The most `blocking-write-and-flush` takes in one call.
const ONE_CALL: usize = 4096;

/// Writes `bytes` to the response body: a small body (most of them) in one host call; a larger
/// one in as few writes as the host's buffer allows, then one flush.
fn write_body(body: &OutgoingBody, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut stream = body
        .write()
        .map_err(|()| std::io::Error::other("the body stream was already taken"))?;
    if bytes.len() <= ONE_CALL {
        return stream
            .blocking_write_and_flush(bytes)
            .map_err(std::io::Error::other);
    }
    stream.write_all(bytes)?;
    Write::flush(&mut stream)
}
