//! A WASI 0.3 component with the shape spin-sdk 7 builds: it imports `wasi:http/types@0.3.0`
//! and exports `wasi:http/handler@0.3.0` with an `async` `handle`, which needs the component
//! model's async support. Tabula serves WASI 0.2; loading this must be refused with a message
//! that names WASI 0.3 and says what to build instead.
//!
//! Its `handle` answers an error: the component exists to be refused, not to run.

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package wasi:http@0.3.0;
            interface types {
                resource request;
                resource response;
                variant error-code { internal-error(option<string>) }
            }
            interface handler {
                use types.{request, response, error-code};
                handle: async func(request: request) -> result<response, error-code>;
            }
            world service { export handler; }
        ",
        generate_all,
    });
}

use bindings::exports::wasi::http::handler::Guest;
use bindings::wasi::http::types::{ErrorCode, Request, Response};

struct WasiP3;

impl Guest for WasiP3 {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        Err(ErrorCode::InternalError(Some("a WASI 0.3 fixture".into())))
    }
}

bindings::export!(WasiP3 with_types_in bindings);
