//! A component that imports `wasi:keyvalue` in a version tabula does not serve (`0.1.0`;
//! tabula serves `0.2.0-draft` and `0.2.0-draft2`): the host must refuse it when loading,
//! naming the import and the versions it serves, instead of failing in the linker.

#[path = "../../common/respond.rs"]
mod respond;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package wasi:keyvalue@0.1.0;
            interface store { exists: func(key: string) -> bool; }
            world old { import store; }
        ",
    });
}

struct OldKeyvalue;

impl wasi::exports::http::incoming_handler::Guest for OldKeyvalue {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let status = if bindings::wasi::keyvalue::store::exists("k") {
            200
        } else {
            404
        };
        respond::respond(out, status, "");
    }
}

wasi::http::proxy::export!(OldKeyvalue);
