//! One request, one instance: the per-request [`RequestCtx`] and [`handle`], which runs a
//! request in a brand-new instance of an app's component.
//!
//! This is where statelessness is enforced. The `Store` (and with it the instance's memory,
//! globals and tables, and every WASI resource) is created for the request and dropped when
//! the guest has finished, so nothing a guest does can reach the next request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tracing::{Instrument, info, warn};
use wasmtime::component::{Resource, ResourceTable, TypedFunc};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::app::App;
use crate::guest_log::GuestLog;
use crate::kv::{KvView, Namespace};
use crate::session::Session;
use crate::vfs::{Vfs, VfsView};

/// The body type of every response the host sends, whether the guest made it or the host did.
pub type ResponseBody = UnsyncBoxBody<Bytes, anyhow::Error>;

/// Everything a single request's `Store` owns. Built fresh per request, dropped with it.
pub struct RequestCtx {
    table: ResourceTable,
    /// Built on the guest's first WASI call that needs it (clocks, random, stdio, ...), not
    /// per request: many handlers never make one, and seeding its random generators is a
    /// good part of a small request's fixed cost.
    wasi: Option<WasiCtx>,
    /// The app's name, for the guest's stdout and stderr.
    app: Arc<str>,
    http: WasiHttpCtx,
    hooks: DenyOutbound,
    namespace: Arc<Namespace>,
    session: Session,
    /// The app's memory limit, enforced by wasmtime on every `memory.grow`.
    memory: StoreLimits,
    /// This request's filesystem: a fresh `/tmp`, the app's assets.
    vfs: Vfs,
}

impl RequestCtx {
    fn new(app: &App, session: Session) -> RequestCtx {
        let memory = StoreLimitsBuilder::new()
            .memory_size(app.limits().memory_bytes)
            .build();
        RequestCtx {
            table: ResourceTable::new(),
            wasi: None,
            app: app.name().clone(),
            http: WasiHttpCtx::new(),
            hooks: DenyOutbound,
            namespace: app.namespace().clone(),
            session,
            memory,
            vfs: Vfs::new(app.assets(), app.tmp_quota()),
        }
    }

    /// The view the filesystem host functions work through.
    pub(crate) fn vfs(&mut self) -> VfsView<'_> {
        VfsView::new(&self.vfs, &mut self.table)
    }

    /// The view the kv host functions work through.
    pub(crate) fn kv(&mut self) -> KvView<'_> {
        KvView::new(&self.namespace, &mut self.table)
    }

    /// The request's session, for the session host functions.
    pub(crate) fn session(&mut self) -> &mut Session {
        &mut self.session
    }
}

impl WasiView for RequestCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let app = &self.app;
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| guest_wasi(app)),
            table: &mut self.table,
        }
    }
}

/// What WASI gives a guest of `app`: no preopened directories, environment variables,
/// arguments, stdin or network (the builder's defaults, except that sockets are refused
/// outright instead of per address); stdout and stderr go to the log.
fn guest_wasi(app: &Arc<str>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(GuestLog::stdout(app))
        .stderr(GuestLog::stderr(app))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

impl wasmtime_wasi_io::IoView for RequestCtx {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiHttpView for RequestCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Guests get no outbound HTTP: every `outgoing-handler.handle` fails with the standard
/// `HTTP-request-denied` error code, which guests can recognise and report.
struct DenyOutbound;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Why a request produced no guest response. The server turns each into a status code.
#[derive(Debug)]
pub enum Failure {
    /// The guest trapped, panicked, ran out of time, or returned without a response.
    Guest(anyhow::Error),
    /// The guest answered `response-outparam.set` with an error code instead of a response.
    GuestErrorCode(ErrorCode),
    /// The app is at its concurrency limit, or the instance pool is full.
    Busy(anyhow::Error),
    /// The request body is larger than the app accepts (the limit, in bytes).
    BodyTooLarge(u64),
}

/// Where the guest's response head goes once the guest has set it.
pub type ResponseSender =
    tokio::sync::oneshot::Sender<Result<hyper::Response<HyperOutgoingBody>, ErrorCode>>;

/// A brand-new instance of an app's component in a brand-new `Store`, which owns everything
/// the request makes. Dropping it drops all of that: the instance, its memory, its files.
pub struct FreshInstance {
    store: Store<RequestCtx>,
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
        let mut store = Store::new(app.runtime().engine(), RequestCtx::new(app, session));
        store.limiter(|ctx| &mut ctx.memory);
        // Every epoch tick the guest yields to tokio, so a busy guest cannot hold a worker
        // thread from other requests; once the deadline has passed, the next tick traps it.
        // tokio's own `yield_now` lets the worker poll the I/O driver first; a plain self-wake
        // would let busy guests starve the sockets of everyone else.
        let timeout = app.limits().request_timeout;
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
    pub async fn handle<B>(
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
}

/// Runs `req` in a fresh instance of `app` and returns the guest's response.
///
/// The guest runs in its own task so that it can keep streaming the body after the response
/// head has been returned; that task owns the `Store` and drops it, and thereby the instance,
/// when the guest is done or its deadline passes.
pub async fn handle<B>(
    app: &App,
    req: hyper::Request<B>,
) -> Result<hyper::Response<ResponseBody>, Failure>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let started = Instant::now();
    let limits = app.limits();
    let timeout = limits.request_timeout;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes) {
        return Err(Failure::BodyTooLarge(limits.max_body_bytes));
    }
    // A body without a length is counted as it streams; the guest's read fails past the limit
    // and the client gets 413 instead of whatever the guest makes of the failure.
    let overflowed = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| LimitedBody::new(body, limits.max_body_bytes, overflowed.clone()));
    let presented = app.session_config().id_from_cookies(
        req.headers()
            .get_all(hyper::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let session = Session::new(
        app.session_config().clone(),
        app.namespace().clone(),
        presented,
    );
    let jar = session.jar();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let task_app = app.clone();
    let task = tokio::spawn(
        async move {
            let app = task_app;
            // Admitted here, when the task runs, rather than before it is spawned: a burst of
            // requests (one per ready connection in a scheduler tick) would otherwise hold
            // permits while queued behind each other in the run queue, fill the limit with
            // instances that do not exist yet, and send the rest through the slow path of
            // the admission queue (a timer and a cross-thread wake-up each). At 1000
            // connections that halved hello's throughput.
            let Some(_admission) = app.admit().await else {
                let limits = app.limits();
                return Err(Failure::Busy(anyhow!(
                    "app `{}` has had {} instances alive, its limit, for the whole queue \
                     timeout ({:?})",
                    app.name(),
                    limits.max_concurrency,
                    limits.queue_timeout
                )));
            };
            // Both live exactly as long as the instance: until this task ends.
            let _live = app.metrics().live_instance();
            let run = async {
                let mut fresh = FreshInstance::new(&app, session, started + timeout).await?;
                app.metrics()
                    .instantiation
                    .observe(started.elapsed().as_secs_f64());
                fresh.handle(req, sender).await
            };
            // The epoch callback stops guest code; this also stops a guest parked in a host
            // call, dropping the instance wherever it is.
            match tokio::time::timeout(timeout, run).await {
                Ok(result) => result,
                Err(_) => Err(Failure::Guest(anyhow!(
                    "request exceeded its deadline of {timeout:?}"
                ))),
            }
        }
        .in_current_span(),
    );

    match receiver.await {
        Ok(Ok(_)) if overflowed.load(Ordering::Relaxed) => {
            Err(Failure::BodyTooLarge(limits.max_body_bytes))
        }
        Ok(Ok(mut response)) => {
            let cookie = jar
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_header(app.session_config());
            if let Some(cookie) = cookie {
                add_session_cookie(response.headers_mut(), &cookie);
            }
            Ok(response.map(|body| body.map_err(anyhow::Error::from).boxed_unsync()))
        }
        Ok(Err(code)) => Err(Failure::GuestErrorCode(code)),
        // The guest dropped the outparam without setting it: the task says why.
        Err(_) => match task.await {
            Ok(Err(failure)) => Err(failure),
            Ok(Ok(())) => Err(Failure::Guest(anyhow!(
                "the guest returned without setting a response"
            ))),
            Err(join) => Err(Failure::Guest(
                anyhow::Error::new(join).context("the guest task failed"),
            )),
        },
    }
}

/// A request body that fails once more than `limit` bytes have come through, and says so in
/// `overflowed`.
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    overflowed: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    fn new(inner: B, limit: u64, overflowed: Arc<AtomicBool>) -> LimitedBody<B> {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
            overflowed,
        }
    }
}

impl<B> hyper::body::Body for LimitedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let frame = match std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return std::task::Poll::Ready(Some(Err(e.into()))),
            None => return std::task::Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                self.overflowed.store(true, Ordering::Relaxed);
                let limit = self.limit;
                return std::task::Poll::Ready(Some(Err(
                    wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit)),
                )));
            }
            self.remaining -= len;
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Adds the session cookie, and keeps the response out of shared caches: a response that
/// carries a session id must never be served to anyone else.
fn add_session_cookie(headers: &mut http::HeaderMap, cookie: &str) {
    match http::HeaderValue::from_str(cookie) {
        Ok(value) => {
            headers.append(http::header::SET_COOKIE, value);
            headers.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
        }
        Err(e) => warn!(error = %e, "could not encode the session cookie"),
    }
}

impl Failure {
    /// Logs the failure with its cause chain. Kept here so every caller logs the same way.
    pub fn log(&self) {
        match self {
            Failure::Guest(e) => warn!(error = format!("{e:#}"), "guest failed"),
            Failure::GuestErrorCode(code) => warn!(?code, "guest answered with an error code"),
            Failure::Busy(e) => warn!(error = format!("{e:#}"), "busy: request refused"),
            Failure::BodyTooLarge(limit) => {
                info!(limit, "request body over the app's limit: refused")
            }
        }
    }
}
