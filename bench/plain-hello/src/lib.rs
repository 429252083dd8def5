//! The hello of `bench/compare.sh` without tabula's SDK: the `wasi` crate alone, as a
//! component from another toolchain would be. It reads nothing of the request and writes the
//! greeting in one call, so what is measured is the host's cost per request.

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("a new response has a body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("a new body has a stream");
        stream
            .blocking_write_and_flush(b"Hello, world!\n")
            .expect("writing the greeting");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finishing the body");
    }
}

wasi::http::proxy::export!(Hello);
