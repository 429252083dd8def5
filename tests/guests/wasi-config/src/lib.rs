//! A component that reads its variables through `wasi:config/store` in the version Spin's
//! SDKs import (`0.2.0-draft-2024-09-27`), with `wit-bindgen` and the `wasi` crate, no
//! tabula SDK.
//!
//! `GET /wasiconfig` answers `get-all`, a line per variable, and prints the same lines to
//! stderr: the host must keep secrets out of its log even then. `GET /wasiconfig/NAME`
//! answers `get(NAME)` (`-` for none).

#[path = "../../common/respond.rs"]
mod respond;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package wasi:config@0.2.0-draft-2024-09-27;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world config { import store; }
        ",
    });
}

use bindings::wasi::config::store;

struct WasiConfig;

impl wasi::exports::http::incoming_handler::Guest for WasiConfig {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let text = match path
            .trim_start_matches("/wasiconfig")
            .trim_start_matches('/')
        {
            "" => {
                let all = store::get_all().expect("get-all");
                let text: String = all.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                eprint!("{text}");
                text
            }
            name => format!("{}\n", store::get(name).expect("get").unwrap_or("-".into())),
        };
        respond::respond(out, 200, &text);
    }
}

wasi::http::proxy::export!(WasiConfig);
