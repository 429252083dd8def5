//! tabula: a WebAssembly host that runs every HTTP request in a fresh component instance.
//!
//! The modules in the order a request meets them:
//!
//! - [`listener`] serves connections, HTTP/1.1 and HTTP/2, with every timeout and limit, on
//!   each listener: the apps' ([`front`], in `request/`), the operator's and the admin API's.
//! - [`front`] hands each request to the [`Router`], which picks an [`App`] by path prefix.
//! - `request` runs one request: its body within the app's limits, an instance slot, a fresh
//!   instance whose `Store` holds a `request::state::RequestState`, the session cookie on
//!   the way out; `request::log` names the request on every log line about it.
//! - [`App`] (`app.rs`) is a component, checked and pre-instantiated once when it loads.
//! - [`Runtime`] (`runtime.rs`) is what is built once: the wasmtime `Engine` and the `Linker`.
//! - `capabilities/` is everything a guest may import, one module each (`wasi`, `vfs`,
//!   `http`, `kv`, `session`, `variables`), composed in `capabilities/mod.rs` and nowhere else.
//! - [`storage`] is where state lives: one `Storage` trait, Redis and in-memory backends, and
//!   the per-app `Namespace`.
//!
//! Around the request path: [`config`] (the host's, each manifest's and each app's settings),
//! [`project`] (handler projects built into components), [`deploy`] (versions in the store,
//! the admin API, each replica following the registry), [`serve`] (the process model: store,
//! workers, operator and admin listeners), `metrics` and `budget` (what a request may make
//! the host hold), [`log_batch`] (log lines written in batches).
//!
//! Dependencies run one way, from the process model down to storage:
//!
//! ```text
//! serve -> deploy -> request -> app -> runtime -> request::state -> project, config
//!       -> capabilities -> storage -> metrics, budget, listener, log_batch, request::log
//! ```
//!
//! `layers.rs` holds the exact order, and its test fails if a module uses one above it.

#![warn(missing_docs)]

mod app;
mod budget;
mod capabilities;
pub mod config;
pub mod deploy;
mod file_lock;
#[cfg(test)]
mod layers;
pub mod listener;
pub mod log_batch;
mod metrics;
pub mod project;
mod request;
mod runtime;
pub mod serve;
pub mod storage;

pub use app::App;
pub use request::front;
pub use request::router::{Router, Routes};
pub use runtime::Runtime;

/// The parts of the request path that `bench/instantiate.rs` times one by one. Not an API:
/// hidden from the docs, and free to change with the bench.
#[doc(hidden)]
pub mod bench {
    use std::time::Instant;

    use bytes::Bytes;
    use http_body_util::BodyExt;

    use crate::App;
    use crate::request::instance::FreshInstance;

    /// A request's whole path in `app`, as the server runs it; the response body read.
    pub async fn handle<B>(app: &App, req: hyper::Request<B>) -> anyhow::Result<Bytes>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let response = crate::request::handle(app, req, &[])
            .await
            .map_err(|f| anyhow::anyhow!("request failed: {f:?}"))?;
        Ok(response.into_body().collect().await?.to_bytes())
    }

    /// A fresh instance of `app`, with no session and `deadline`.
    pub async fn instantiate(app: &App, deadline: Instant) -> anyhow::Result<Instance> {
        let session = app.capabilities().session(None);
        FreshInstance::new(app, session, deadline)
            .await
            .map(Instance)
            .map_err(|f| anyhow::anyhow!("instantiation failed: {f:?}"))
    }

    /// An instance; dropping it drops the store and everything in it.
    pub struct Instance(FreshInstance);

    impl Instance {
        /// Calls the guest's handler with `req`; the response body read.
        pub async fn call<B>(&mut self, req: hyper::Request<B>) -> anyhow::Result<Bytes>
        where
            B: hyper::body::Body<Data = Bytes> + Send + 'static,
            B::Error: Into<wasmtime_wasi_http::Error>,
        {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (called, body) = tokio::join!(self.0.call(req, tx), async {
                let response = rx.await??;
                anyhow::Ok(response.into_body().collect().await?.to_bytes())
            });
            called.map_err(|f| anyhow::anyhow!("handle failed: {f:?}"))?;
            body
        }
    }
}
