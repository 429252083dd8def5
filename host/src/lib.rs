//! tabula: a WebAssembly host that runs every HTTP request in a fresh component instance.
//!
//! How the pieces fit, in the order a request meets them:
//!
//! - [`server`] accepts connections (HTTP/1.1 and HTTP/2) and hands each request to the
//!   [`router`], which picks an [`app::App`] by path prefix.
//! - [`runtime`] owns what is built once: the wasmtime `Engine` (pooling allocator, epoch
//!   deadlines) and the `Linker` that defines what a guest may import.
//! - [`instance`] runs one request: a new `Store` with a fresh [`instance::RequestCtx`], a new
//!   instance of the app's pre-instantiated component, the guest's `handle` call, and the drop
//!   of all of it once the response is done. Nothing outlives the request.
//! - [`kv`] serves `tabula:host/kv` and `wasi:keyvalue` to guests, each app in its own
//!   namespace of the [`storage`] backend (Redis, or in-memory for development).
//! - [`session`] serves `tabula:host/session`: cookie-identified sessions in the store.
//! - [`vfs`] serves `wasi:filesystem` from memory: a fresh `/tmp` per request and the app's
//!   read-only assets at `/app`.
//! - [`guest_log`] carries guest stdout/stderr into the host's `tracing` log.
//! - [`supervisor`] runs `--processes` worker processes that share the listener.
//! - [`project`] and [`manifest`] turn handler projects on disk into components (`tabula up`).
//!
//! - [`limits`] holds the host's limits and resolves each app's, and [`budget`] charges what
//!   the host holds for one request against it; [`metrics`] counts what happens, for the
//!   operator listener that [`server`] also runs.
//!
//! The binary (`src/main.rs`) is a thin CLI over these modules.

pub mod app;
mod bindings;
pub mod budget;
pub mod guest_log;
pub mod instance;
pub mod kv;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod project;
pub mod router;
pub mod runtime;
pub mod server;
pub mod session;
pub mod storage;
pub mod supervisor;
pub mod vfs;
