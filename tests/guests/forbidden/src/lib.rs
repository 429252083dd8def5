//! A component that imports an interface tabula does not provide (`acme:secret/vault`): the
//! host must refuse it when loading, naming the import, instead of failing on a request.

#[path = "../../common/respond.rs"]
mod respond;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

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
        respond::respond(out, 200, &bindings::acme::secret::vault::open());
    }
}

wasi::http::proxy::export!(Forbidden);
