//! A component that reads a variable as wasmCloud 1.x components do: through
//! `wasi:config/runtime@0.2.0-draft`, the interface's name before it became `store`, with
//! `wit-bindgen` and the `wasi` crate, no tabula SDK.
//!
//! `GET /wasmcloudconfig/NAME` answers `get(NAME)` (`-` for none).

#[path = "../../common/respond.rs"]
mod respond;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package wasi:config@0.2.0-draft;
            interface runtime {
                variant config-error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, config-error>;
                get-all: func() -> result<list<tuple<string, string>>, config-error>;
            }
            world config { import runtime; }
        ",
    });
}

use bindings::wasi::config::runtime;

struct WasmCloudConfig;

impl wasi::exports::http::incoming_handler::Guest for WasmCloudConfig {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let name = path.trim_start_matches("/wasmcloudconfig/");
        let value = runtime::get(name).expect("get").unwrap_or("-".into());
        respond::respond(out, 200, &format!("{value}\n"));
    }
}

wasi::http::proxy::export!(WasmCloudConfig);
