//! Write [tabula](https://github.com/) HTTP handlers in a few lines of Rust.
//!
//! ```
//! use tabula_sdk::{handler, Request, Response};
//!
//! #[handler]
//! fn hello(req: Request) -> Response {
//!     let name = req.query_param("name").unwrap_or_else(|| "world".into());
//!     Response::text(format!("Hello, {name}!\n"))
//! }
//!
//! // Handlers are plain functions, so they are tested natively with `cargo test`:
//! let res = hello(Request::get("/hello?name=Ada"));
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.body_text(), "Hello, Ada!\n");
//! ```
//!
//! Compiled for `wasm32-wasip2`, `#[handler]` also exports the function as the component's
//! `wasi:http/incoming-handler`, so the result is a standard `wasi:http/proxy` component.
//! Each request runs in a fresh instance: `static`s and globals start over every time, and
//! nothing survives a request except what the host's state APIs keep.

mod request;
mod response;

pub use request::{Method, Request};
pub use response::{IntoResponse, Response};
pub use tabula_sdk_macro::handler;

/// What `#[handler]` expands to. Not a public API.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __private;
