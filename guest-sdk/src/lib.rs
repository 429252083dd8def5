//! Write HTTP handlers for tabula (a WebAssembly host that runs every request in a fresh
//! instance) in a few lines of Rust.
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
//! A handler may also return `Result<impl IntoResponse, tabula_sdk::Error>`: `?` works on
//! any error, which becomes a logged `500`, except that an unavailable store ([`kv::Error`])
//! becomes a `503` and [`Error::new`] picks its own status.
//!
//! Compiled for `wasm32-wasip2`, `#[handler]` also exports the function as the component's
//! `wasi:http/incoming-handler`, so the result is a standard `wasi:http/proxy` component.
//! Each request runs in a fresh instance: `static`s and globals start over every time, and
//! nothing survives a request except what the host's state APIs keep.

pub mod config;
mod error;
pub mod kv;
mod request;
mod response;
pub mod session;

pub use error::Error;
pub use request::{Method, Request};
pub use response::{IntoResponse, Response};
pub use tabula_sdk_macro::handler;

/// Bindings to the host's own interfaces (`tabula:host`). Not a public API: use [`kv`] and
/// [`session`].
#[cfg(target_arch = "wasm32")]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "tabula:host/guest",
        // wit-bindgen generates a `wasi:` interface only when told to (it expects the `wasi`
        // crate to provide them; that crate has no `wasi:config`).
        with: { "wasi:config/store@0.2.0-draft": generate },
    });
}

/// What `#[handler]` expands to. Not a public API.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __private;
