//! [`FreshInstance`]: a brand-new instance of an app's component in a brand-new `Store`.
//!
//! This is where statelessness is enforced. The `Store` (and with it the instance's memory,
//! globals and tables, and every resource of every capability) is created for the request
//! and dropped when the guest has finished, so nothing a guest does can reach the next
//! request.

use std::time::Instant;

use anyhow::anyhow;
use bytes::Bytes;
use wasmtime::component::{Resource, TypedFunc};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::{HostOutgoingBody, HyperOutgoingBody, StreamContext};
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use super::failure::Failure;
use crate::app::App;
use crate::capabilities::{Capabilities, Session};
use crate::request::state::RequestState;

/// Where the guest's response head goes once the guest has set it.
pub(crate) type ResponseSender =
    tokio::sync::oneshot::Sender<Result<hyper::Response<HyperOutgoingBody>, ErrorCode>>;

/// A brand-new instance of an app's component in a brand-new `Store`, which owns everything
/// the request makes. Dropping it drops all of that: the instance, its memory, its files.
pub struct FreshInstance {
    store: Store<RequestState>,
    handle: HandleFunc,
}

/// The signature of `wasi:http/incoming-handler.handle`.
type HandleFunc = TypedFunc<
    (
        Resource<HostIncomingRequest>,
        Resource<HostResponseOutparam>,
    ),
    (),
>;

impl FreshInstance {
    /// The fixed cost of every request: a new `Store` with the app's limits and the request's
    /// deadline, and an instantiation of the app's pre-linked component.
    pub async fn new(
        app: &App,
        session: Session,
        deadline: Instant,
    ) -> Result<FreshInstance, Failure> {
        let capabilities = Capabilities::new(app.capabilities(), session);
        let state = RequestState::new(capabilities, app.config().memory_bytes);
        let mut store = Store::new(app.host().engine(), state);
        store.limiter(|state| state.limiter());
        // Every epoch tick the guest yields to tokio, so a busy guest cannot hold a worker
        // thread from other requests; once the deadline has passed, the next tick traps it.
        // tokio's own `yield_now` lets the worker poll the I/O driver first; a plain self-wake
        // would let busy guests starve the sockets of everyone else.
        let timeout = app.config().request_timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::msg(format!(
                    "request exceeded its deadline of {timeout:?}"
                )))
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        let instance = app.pre().instantiate_async(&mut store).await.map_err(|e| {
            if e.is::<wasmtime::PoolConcurrencyLimitError>() {
                Failure::Busy(e.into())
            } else {
                Failure::Guest(anyhow::Error::from(e).context("instantiating the component"))
            }
        })?;
        let export = app.handle_export();
        let handle = if app.handle_checked() {
            let func = instance
                .get_func(&mut store, export)
                .ok_or_else(|| Failure::Guest(anyhow!("the instance has no `handle` export")))?;
            // SAFETY: `get_typed_func` below checked this export's type against `HandleFunc`
            // on an earlier instance of the same component and linker, which gives every
            // instance the same types; checking again per request would find the same.
            unsafe { HandleFunc::new_unchecked(func) }
        } else {
            let typed = instance
                .get_typed_func(&mut store, export)
                .map_err(|e| Failure::Guest(anyhow::Error::from(e).context("typing `handle`")))?;
            app.set_handle_checked();
            typed
        };
        Ok(FreshInstance { store, handle })
    }

    /// Calls the guest's `wasi:http/incoming-handler.handle` with `req`. The response head
    /// goes to `respond` as soon as the guest sets it; the call returns once the guest has
    /// finished, streaming the body included.
    pub async fn call<B>(
        &mut self,
        req: hyper::Request<B>,
        respond: ResponseSender,
    ) -> Result<(), Failure>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let mut http = self.store.data_mut().http();
        let req = http
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| Failure::Guest(e.into()))?;
        let out = http
            .new_response_outparam(respond)
            .map_err(|e| Failure::Guest(e.into()))?;
        self.handle
            .call_async(&mut self.store, (req, out))
            .await
            .map_err(|e| Failure::Guest(e.into()))
    }

    /// Aborts every outgoing body the guest left without `outgoing-body.finish` when it
    /// returned, as dropping one does. wasmtime ends such a
    /// body cleanly once the store goes away, so a client would take a body cut short for a
    /// whole one; aborted, it ends in an error. (An aborted body that never went out, of a
    /// response the guest made and did not send, ends nowhere.)
    pub fn abort_unfinished_bodies(&mut self) {
        for entry in self.store.data_mut().http().table.iter_mut() {
            if let Some(body) = entry.downcast_mut::<HostOutgoingBody>() {
                let (stand_in, _) = HostOutgoingBody::new(StreamContext::Response, None, 1, 1);
                std::mem::replace(body, stand_in).abort();
            }
        }
    }
}
