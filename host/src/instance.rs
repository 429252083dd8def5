//! One request, one instance: the per-request [`RequestCtx`] and [`handle`], which runs a
//! request in a brand-new instance of an app's component.
//!
//! This is where statelessness is enforced. The `Store` (and with it the instance's memory,
//! globals and tables, and every WASI resource) is created for the request and dropped when
//! the guest has finished, so nothing a guest does can reach the next request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};
use tracing::{Instrument, info, warn};
use wasmtime::component::{Linker, Resource, ResourceTable, TypedFunc};
use wasmtime::{Store, StoreContextMut, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::FieldMap;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, HostFields, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::app::App;
use crate::budget::{Budget, Charge};
use crate::guest_log::{GuestLog, GuestOutput};
use crate::kv::{KvView, Namespace};
use crate::limits::RequestBounds;
use crate::session::{self, Session};
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
    /// What the host holds for this request beyond its linear memory (see [`crate::budget`]).
    budget: Arc<Budget>,
    /// What the header fields the guest has built reserve of `budget`.
    fields: Charge,
    bounds: RequestBounds,
}

/// The most a header-fields resource a guest builds may hold. wasmtime's default is 128 KiB;
/// this matches the host's default limit on a request's whole head.
const FIELD_SIZE_LIMIT: usize = 64 << 10;

impl RequestCtx {
    fn new(app: &App, session: Session) -> RequestCtx {
        let limits = app.limits();
        let memory = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .build();
        let budget = Budget::new(limits.request.host_memory_bytes);
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.request.max_resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(FIELD_SIZE_LIMIT);
        RequestCtx {
            table,
            wasi: None,
            app: app.name().clone(),
            http,
            hooks: DenyOutbound,
            namespace: app.namespace().clone(),
            session,
            memory,
            vfs: Vfs::new(app.assets(), app.tmp_quota(), &budget),
            fields: budget.empty_charge(),
            budget,
            bounds: limits.request,
        }
    }

    /// The view the filesystem host functions work through.
    pub(crate) fn vfs(&mut self) -> VfsView<'_> {
        VfsView::new(&self.vfs, &mut self.table)
    }

    /// The view the kv host functions work through.
    pub(crate) fn kv(&mut self) -> KvView<'_> {
        KvView::new(&self.namespace, &self.budget, &mut self.table)
    }

    /// Reserves a header-fields resource's worth of the budget, for the rest of the request:
    /// wasmtime owns the fields and does not say when they go, so they are charged at their
    /// limit when made and never given back. A guest that builds more than its budget allows
    /// is stopped, rather than the host growing without bound.
    fn reserve_fields(&mut self) -> wasmtime::Result<()> {
        let reserved = self.fields.amount() + FIELD_SIZE_LIMIT as u64;
        self.fields
            .resize(reserved)
            .map_err(|e| wasmtime::Error::msg(format!("too many header fields built: {e}")))
    }

    /// The request's session, for the session host functions.
    pub(crate) fn session(&mut self) -> &mut Session {
        &mut self.session
    }
}

impl WasiView for RequestCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (app, bounds) = (&self.app, &self.bounds);
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| guest_wasi(app, bounds)),
            table: &mut self.table,
        }
    }
}

/// What WASI gives a guest of `app`: no preopened directories, environment variables,
/// arguments, stdin or network (the builder's defaults, except that sockets are refused
/// outright instead of per address); stdout and stderr go to the log, within the request's
/// bounds on output.
fn guest_wasi(app: &Arc<str>, bounds: &RequestBounds) -> WasiCtx {
    let output = GuestOutput::new(app, bounds.log_bytes, bounds.log_lines);
    WasiCtx::builder()
        .stdout(GuestLog::stdout(&output))
        .stderr(GuestLog::stderr(&output))
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

/// The interface whose header-fields constructors [`add_fields_limits`] wraps, in the version
/// wasmtime-wasi-http registers (guests importing any 0.2.x find it by semver).
const HTTP_TYPES: &str = "wasi:http/types@0.2.12";

/// Wraps the three ways a guest builds a header-fields resource (`new`, `from-list`,
/// `clone`) so each reserves its worth of the request's budget first (see
/// [`RequestCtx::reserve_fields`]). Without it thousands of full fields were the quickest way
/// for one request to take gigabytes of host memory.
pub(crate) fn add_fields_limits(linker: &mut Linker<RequestCtx>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(HTTP_TYPES)?;
    types.func_wrap(
        "[constructor]fields",
        |mut store: StoreContextMut<'_, RequestCtx>, (): ()| {
            let ctx = store.data_mut();
            ctx.reserve_fields()?;
            Ok((HostFields::new(&mut ctx.http())?,))
        },
    )?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store: StoreContextMut<'_, RequestCtx>, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let ctx = store.data_mut();
            ctx.reserve_fields()?;
            match HostFields::from_list(&mut ctx.http(), entries) {
                Ok(fields) => Ok((Ok(fields),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    types.func_wrap(
        "[method]fields.clone",
        |mut store: StoreContextMut<'_, RequestCtx>, (fields,): (Resource<FieldMap>,)| {
            let ctx = store.data_mut();
            ctx.reserve_fields()?;
            Ok((HostFields::clone(&mut ctx.http(), fields)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
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
    /// The request body stopped arriving, or arrived slower than the host's minimum rate.
    BodyTooSlow,
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
/// when the guest is done or its deadline passes. If the client goes away first (this future
/// or the response body is dropped unfinished), the task is aborted: a guest never works for
/// nobody while holding one of its app's instance slots.
///
/// `session_cookies` names every app's session cookie: none of them reaches the guest, and
/// the guest cannot set one (see [`session::strip_cookies`]).
pub async fn handle<B>(
    app: &App,
    mut req: hyper::Request<B>,
    session_cookies: &[String],
) -> Result<hyper::Response<ResponseBody>, Failure>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let limits = app.limits();
    let timeout = limits.request_timeout;
    // No body will be sent for these: the response is complete once its head is.
    let bodyless_method = req.method() == hyper::Method::HEAD;
    if content_length(req.headers()).is_some_and(|len| len > limits.max_body_bytes) {
        return Err(Failure::BodyTooLarge(limits.max_body_bytes));
    }
    let presented = app.session_config().id_from_cookies(
        req.headers()
            .get_all(hyper::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
    );
    session::strip_cookies(req.headers_mut(), session_cookies);
    // A body without a length is counted as it streams; the guest's read fails past the limit
    // and the client gets 413 instead of whatever the guest makes of the failure.
    let verdict = Arc::new(BodyVerdict::default());
    let req = req.map(|body| GuestRequestBody::new(body, limits, verdict.clone()));
    let session = Session::new(
        app.session_config().clone(),
        app.namespace().clone(),
        presented,
    );
    let jar = session.jar();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let unfinished = Arc::new(AtomicBool::new(false));
    let task_app = app.clone();
    let task_unfinished = unfinished.clone();
    let task = tokio::spawn(
        async move {
            let app = task_app;
            // The start of the body arrives before an instance is taken: a client trickling
            // its body holds a connection, never one of the app's instance slots.
            let mut req = req;
            req.body_mut()
                .prebuffer(app.runtime().prebuffer_budget())
                .await;
            if let Some(failure) = req.body().verdict.failure(app.limits().max_body_bytes) {
                return Err(failure);
            }
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
            // Both live exactly as long as the instance: until this task ends. The request's
            // time starts now, once its body has begun and it has an instance slot.
            let _live = app.metrics().live_instance();
            let admitted = Instant::now();
            let run = async {
                let mut fresh = FreshInstance::new(&app, session, admitted + timeout).await?;
                app.metrics()
                    .instantiation
                    .observe(admitted.elapsed().as_secs_f64());
                // Dropped before `fresh` (and so before the response body's channel closes)
                // however this ends: a failure, the deadline, an abort.
                let mut marker = UnfinishedMarker(Some(task_unfinished));
                let result = fresh.handle(req, sender).await;
                if result.is_ok() {
                    marker.0 = None;
                }
                result
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
    let task = AbortOnDrop(Some(task));

    let answer = receiver.await;
    // A guest may answer anyway after its body read failed; the client hears why it failed.
    if matches!(answer, Ok(Ok(_)))
        && let Some(failure) = verdict.failure(limits.max_body_bytes)
    {
        return Err(failure);
    }
    match answer {
        Ok(Ok(response)) if response.status().is_informational() => Err(Failure::Guest(anyhow!(
            "the guest answered {}: a handler must send a final status (1xx responses and \
             upgrades are not supported)",
            response.status()
        ))),
        Ok(Ok(mut response)) => {
            let mut task = task;
            let status = response.status();
            if bodyless_method
                || status == hyper::StatusCode::NO_CONTENT
                || status == hyper::StatusCode::NOT_MODIFIED
            {
                task.disarm();
            }
            // hyper stops reading a body once its declared length has gone out, and drops it.
            let declared = content_length(response.headers());
            session::refuse_guest_cookies(response.headers_mut(), session_cookies);
            let cookie = jar
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_header(app.session_config());
            if let Some(cookie) = cookie {
                add_session_cookie(response.headers_mut(), &cookie);
            }
            Ok(response.map(|body| {
                GuestResponseBody {
                    inner: body,
                    task,
                    unfinished,
                    declared,
                }
                .boxed_unsync()
            }))
        }
        Ok(Err(code)) => Err(Failure::GuestErrorCode(code)),
        // The guest dropped the outparam without setting it: the task says why.
        Err(_) => match task.join().await {
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

/// The guest's task, aborted if dropped while still armed: when the client is gone before the
/// guest has finished its response.
struct AbortOnDrop(Option<tokio::task::JoinHandle<Result<(), Failure>>>);

impl AbortOnDrop {
    async fn join(mut self) -> Result<Result<(), Failure>, tokio::task::JoinError> {
        self.0.take().expect("joined once").await
    }

    /// Lets the task run to its end on its own: the response is complete.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Sets its flag when dropped unless cleared: the guest did not finish its response.
struct UnfinishedMarker(Option<Arc<AtomicBool>>);

impl Drop for UnfinishedMarker {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Release);
        }
    }
}

/// The guest's response body, as the client gets it.
///
/// wasmtime ends the body cleanly when the guest's store goes away, even if the guest trapped
/// or ran out of time halfway: a client (or a cache) would take a cut-short body for a whole
/// one. Here such an end is an error instead, so HTTP/1 closes the connection without the
/// last chunk and HTTP/2 resets the stream. Dropping the body unfinished (the client went
/// away) aborts the guest; a body is finished at its end, at its declared length, or, for
/// HEAD, 204 and 304, at once.
struct GuestResponseBody {
    inner: HyperOutgoingBody,
    task: AbortOnDrop,
    /// Set before the guest's store is dropped when the guest did not finish.
    unfinished: Arc<AtomicBool>,
    /// The bytes still to come of a body with a declared length: at 0 the client has it all.
    declared: Option<u64>,
}

impl Body for GuestResponseBody {
    type Data = Bytes;
    type Error = anyhow::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, anyhow::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match frame {
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                let complete = match &mut self.declared {
                    Some(left) => {
                        *left = left.saturating_sub(len);
                        *left == 0
                    }
                    None => frame.is_trailers(),
                };
                if complete {
                    self.task.disarm();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None if self.unfinished.load(Ordering::Acquire) => Poll::Ready(Some(Err(anyhow!(
                "the guest failed before finishing its response body; the body is cut short"
            )))),
            None => {
                self.task.disarm();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a request body went, for the status when the guest answers anyway.
#[derive(Default)]
struct BodyVerdict(AtomicU8);

impl BodyVerdict {
    const FINE: u8 = 0;
    const TOO_LARGE: u8 = 1;
    const TOO_SLOW: u8 = 2;

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, verdict: u8) {
        self.0.store(verdict, Ordering::Relaxed);
    }

    /// What the request fails with, given the app's body `limit`, if the body was refused.
    fn failure(&self, limit: u64) -> Option<Failure> {
        match self.get() {
            BodyVerdict::TOO_LARGE => Some(Failure::BodyTooLarge(limit)),
            BodyVerdict::TOO_SLOW => Some(Failure::BodyTooSlow),
            _ => None,
        }
    }

    /// What the guest's read fails with, given the app's body `limit`, if the body was
    /// refused.
    fn error(&self, limit: u64) -> Option<wasmtime_wasi_http::Error> {
        match self.get() {
            BodyVerdict::TOO_LARGE => {
                Some(wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit)))
            }
            BodyVerdict::TOO_SLOW => Some(wasmtime_wasi_http::Error::ConnectionReadTimeout),
            _ => None,
        }
    }
}

/// A message's declared `Content-Length`, if it has a valid one.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// The most of a request body read before the request takes an instance.
const PREBUFFER: usize = 64 << 10;

/// A request body as the guest reads it: what arrived before the instance was made, then the
/// rest as it streams. It fails once more than the app's limit has come through, or when the
/// client is too slow, counting only the time spent waiting for it (not the guest's own): no
/// single wait may exceed `body_timeout`, and all the waits together may not exceed
/// `body_timeout` plus a second per `body_min_rate` bytes received (as Apache's
/// `mod_reqtimeout` does), so a client trickling a byte every few seconds, or pausing after
/// a fast start, cannot hold an instance for the whole request timeout.
struct GuestRequestBody<B> {
    inner: B,
    /// Read ahead by [`GuestRequestBody::prebuffer`], handed out first, and what holding it
    /// takes from the process's prebuffer budget until then.
    buffered: Option<Bytes>,
    buffered_charge: Charge,
    trailers: Option<http::HeaderMap>,
    /// An error met while prebuffering, handed out after the data that came before it.
    error: Option<wasmtime_wasi_http::Error>,
    ended: bool,
    remaining: u64,
    limit: u64,
    received: u64,
    /// Time spent waiting for the client so far, and since when it is being waited for now.
    waited: Duration,
    waiting_since: Option<Instant>,
    grace: Duration,
    min_rate: u64,
    /// Armed only while the body is waited for, so a body that arrives at once costs no
    /// timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    verdict: Arc<BodyVerdict>,
}

impl<B> GuestRequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    fn new(inner: B, limits: &crate::limits::AppLimits, verdict: Arc<BodyVerdict>) -> Self {
        GuestRequestBody {
            ended: inner.is_end_stream(),
            inner,
            buffered: None,
            buffered_charge: Charge::none(),
            trailers: None,
            error: None,
            remaining: limits.max_body_bytes,
            limit: limits.max_body_bytes,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            grace: limits.request.body_timeout,
            min_rate: limits.request.body_min_rate.max(1),
            timer: None,
            verdict,
        }
    }

    /// When the current wait for the client, begun at `since`, runs out.
    fn deadline(&self, since: Instant) -> Instant {
        let earned = Duration::try_from_secs_f64(self.received as f64 / self.min_rate as f64)
            .unwrap_or(Duration::MAX);
        let allowance = self.grace.saturating_add(earned);
        let left = self.grace.min(allowance.saturating_sub(self.waited));
        since
            .checked_add(left)
            .unwrap_or_else(|| since + Duration::from_secs(365 * 24 * 3600))
    }

    /// Reads the body until it ends or [`PREBUFFER`] bytes have come, holding them against
    /// `budget` (shared by the process, so many streams prebuffering at once cannot add up
    /// without bound: past it, bodies stream without a read-ahead). A failure is handed to
    /// the guest after the data that came before it.
    async fn prebuffer(&mut self, budget: &Arc<Budget>) {
        if self.ended {
            return;
        }
        let mut data = bytes::BytesMut::new();
        let mut charge = budget.empty_charge();
        while data.len() < PREBUFFER && !self.ended {
            match std::future::poll_fn(|cx| self.poll_inner(cx)).await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        data.extend_from_slice(&chunk);
                        if charge.resize(data.len() as u64).is_err() {
                            break;
                        }
                    }
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.ended = true;
                    }
                },
                Some(Err(e)) => {
                    self.error = Some(e);
                    self.ended = true;
                }
                None => self.ended = true,
            }
        }
        self.buffered = Some(data.freeze());
        self.buffered_charge = charge;
    }

    /// Ends the body with `verdict`, and hands the guest its error.
    fn refuse(
        &mut self,
        verdict: u8,
    ) -> Poll<Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>> {
        self.verdict.set(verdict);
        self.ended = true;
        Poll::Ready(self.verdict.error(self.limit).map(Err))
    }

    /// The next frame from the client, within the size limit and the pace.
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>> {
        if self.ended {
            return Poll::Ready(self.verdict.error(self.limit).map(Err));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = self.waiting_since.take() {
                    self.waited += since.elapsed();
                }
                frame
            }
            Poll::Pending => {
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                let deadline = tokio::time::Instant::from_std(self.deadline(since));
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                return self.refuse(BodyVerdict::TOO_SLOW);
            }
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.ended = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            None => {
                self.ended = true;
                return Poll::Ready(None);
            }
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                return self.refuse(BodyVerdict::TOO_LARGE);
            }
            self.remaining -= len;
            self.received += len;
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl<B> Body for GuestRequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.buffered.take() {
            self.buffered_charge = Charge::none();
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if let Some(error) = self.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        self.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            && self.buffered.as_ref().is_none_or(Bytes::is_empty)
            && self.trailers.is_none()
            && self.error.is_none()
            && self.verdict.get() == BodyVerdict::FINE
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.buffered, &self.trailers, self.ended) {
            (None, None, false) => self.inner.size_hint(),
            (None, None, true) if self.error.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
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
            Failure::BodyTooSlow => info!("request body too slow: refused"),
        }
    }
}
