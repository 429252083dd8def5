//! The HTTP front: accepts connections, speaks HTTP/1.1 and HTTP/2, routes each request to its
//! app and turns failures into status codes; and the operator listener, with `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! [`run`] takes a bound listener and a shutdown future, so the binary passes a real port and
//! ctrl-c while tests bind port 0 and start the same server.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{Instrument, error, info, info_span, warn};

use crate::instance::{self, Failure, ResponseBody};
use crate::metrics::{self, StatusLabels};
use crate::router::Router;
use crate::storage::Storage;
use crate::supervisor::WorkerMetrics;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How the front protects itself from its clients.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections open at once; past it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a new connection has to send its first request's headers (whatever the
    /// protocol: the HTTP/2 preface counts for nothing), a client has to send a request's
    /// headers (slowloris), and to start the next request on a kept-alive HTTP/1 connection.
    pub header_timeout: Duration,
    /// How long a connection with no request in flight stays open (HTTP/2 connections that
    /// only answer PINGs included).
    pub idle_timeout: Duration,
    /// How long a write to a client may make no progress (a client that stops reading)
    /// before the connection is closed.
    pub write_timeout: Duration,
    /// Largest request head: HTTP/1 read buffer, HTTP/2 header list.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish once shutdown begins.
    pub drain_timeout: Duration,
    /// Threads serving requests; one per core is best (see [`run`]).
    pub workers: NonZeroUsize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
            workers: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Binds `count` listening sockets on `addr` (port 0 picks one free port for all), one per
/// worker process, with `SO_REUSEPORT` when there are several so that the kernel spreads new
/// connections evenly over the processes. (With one socket shared by processes, whichever
/// wakes first takes a whole burst of connections while the others idle.) Threads share their
/// process's socket instead: a thread busy with spinning guests does not accept, so an idle
/// one takes the next connection. The port is first checked to be free without
/// `SO_REUSEPORT`, so a second server started on the same address fails instead of quietly
/// sharing it.
pub fn bind(
    addr: std::net::SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let in_use = || format!("listening on {addr} (is the port in use? try --listen)");
    let probe = std::net::TcpListener::bind(addr).with_context(in_use)?;
    let addr = probe.local_addr()?;
    drop(probe);
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(count > 1)?;
        socket.bind(addr).with_context(in_use)?;
        listeners.push(socket.listen(1024)?.into_std()?);
    }
    Ok(listeners)
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish, for up to the drain timeout.
///
/// The work is done by [`ServerConfig::workers`] threads, each with its own single-threaded
/// tokio runtime, all accepting from the process's one socket (see [`bind`]). A connection,
/// its requests and the instances they run stay on the thread that accepted it: a request
/// never hops threads, so there are no work-stealing wake-ups between cores (each one an
/// inter-processor interrupt) and the instance's pooled memory stays in that core's caches.
pub async fn run(
    listener: std::net::TcpListener,
    router: Arc<Router>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        router,
        connections: Arc::new(Semaphore::new(config.max_connections)),
        ids: RequestIds::new(),
        config,
    });
    let mut workers = Vec::new();
    for index in 0..shared.config.workers.get() {
        let listener = listener
            .try_clone()
            .context("sharing the listening socket with a worker")?;
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let shared = shared.clone();
        let stopped = stopped.clone();
        std::thread::Builder::new()
            .name(format!("tabula-worker-{index}"))
            .spawn(move || {
                // Dropped when the thread ends, however it ends: `run` waits for that.
                let _done = done;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a worker's tokio runtime");
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => worker(listener, shared, stopped).await,
                        Err(e) => error!(error = %e, "a worker could not use the listener"),
                    }
                });
            })
            .context("starting a worker thread")?;
        workers.push(finished);
    }
    // The workers hold their own handles on the socket; the port closes when they let go.
    drop(listener);
    shutdown.await;
    info!("shutting down: stopped accepting, draining in-flight requests");
    let _ = stop.send(true);
    for finished in workers {
        let _ = finished.await;
    }
    info!("all worker threads stopped");
    Ok(())
}

/// What every worker shares.
struct Shared {
    router: Arc<Router>,
    config: ServerConfig,
    /// Connections open at once, across workers.
    connections: Arc<Semaphore>,
    ids: RequestIds,
}

/// One worker's accept loop, and its drain once `stopped` turns true.
async fn worker(listener: TcpListener, shared: Arc<Shared>, stopped: watch::Receiver<bool>) {
    let config = &shared.config;
    let builder = connection_builder(config);
    // Every connection task holds a clone of `done`; the drain waits for the last to go.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let mut stop = stopped.clone();
    loop {
        let permit = tokio::select! {
            permit = shared.connections.clone().acquire_owned() => permit.expect("never closed"),
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = tokio::select! {
            conn = accept(&listener) => conn,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let worker = shared.clone();
        let handle = move |req| serve(worker.router.clone(), req, worker.ids.next());
        let (builder, config, stopped, done) = (
            builder.clone(),
            shared.config.clone(),
            stopped.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let _done = done;
            serve_connection(&builder, stream, peer, handle, &config, stopped).await;
        });
    }

    drop(listener);
    drop(done);
    if tokio::time::timeout(config.drain_timeout, all_done.recv())
        .await
        .is_err()
    {
        warn!(timeout = ?config.drain_timeout, "drain timed out; closing the remaining connections");
    }
}

/// hyper's settings for every connection, the operator listener's included.
fn connection_builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        // Not `pipeline_flush(true)`: it made pipelined hello ~40% faster, but hyper then
        // closes the connection of a malformed request without sending its 400.
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes as u32)
        .keep_alive_interval(Some(config.idle_timeout))
        .keep_alive_timeout(config.header_timeout);
    builder
}

/// Serves one connection until it ends, it has been idle too long, or the server stops.
///
/// hyper bounds the time to send HTTP/1 headers, but nothing bounded the time before hyper
/// knows the protocol (a client sending nothing, or just `P`), nor an HTTP/2 connection that
/// answers PINGs and never opens a stream; 10k such connections made every app unreachable.
/// Here a connection must start its first request within the header timeout and may then
/// sit with no request in flight for the idle timeout; past either it is shut down
/// gracefully (HTTP/2 gets GOAWAY) and, if that does not end it within the header timeout,
/// dropped. Writes are bounded by [`StallTimeout`].
///
/// `handle` answers each request; the requests in flight (until their responses are sent) are
/// what keeps the connection from being idle.
async fn serve_connection<F, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    handle: F,
    config: &ServerConfig,
    mut stopped: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let activity = Activity::new();
    let tracked = activity.clone();
    let handle = Arc::new(handle);
    let service = hyper::service::service_fn(move |req| {
        let request = tracked.begin();
        let answer = handle(req);
        async move { Ok::<_, Infallible>(request.until_sent(answer.await)) }
    });
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(StallTimeout::new(stream, config.write_timeout));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let check_at = activity.next_check(config.header_timeout, config.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    info!(%peer, error = %e, "connection closed with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(check_at.into()), if closing.is_none() => {
                if activity.is_idle(config.header_timeout, config.idle_timeout) {
                    info!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(tokio::time::Instant::now() + config.header_timeout);
                }
            }
            () = async { closing.map(tokio::time::sleep_until).expect("armed").await }, if closing.is_some() => {
                info!(%peer, "dropping a connection that did not close when asked");
                return;
            }
            Ok(_) = stopped.wait_for(|stop| *stop), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                // The worker's drain timeout bounds what follows.
                closing = Some(tokio::time::Instant::now() + config.drain_timeout);
            }
        }
    }
}

/// Requests in flight on one connection (from their head until their response has been
/// sent), and when it last started or finished one.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened`; `u64::MAX` until the first request.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(u64::MAX),
        })
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// A request has started; it ends when the guard is dropped (answered or cancelled).
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// When a connection with nothing in flight has been idle too long: `first` after it
    /// opened if it never started a request, else `idle` after its last one.
    fn idle_after(&self, first: Duration, idle: Duration) -> Instant {
        let (from, wait) = match self.last.load(Ordering::Relaxed) {
            u64::MAX => (self.opened, first),
            ms => (self.opened + Duration::from_millis(ms), idle),
        };
        from.checked_add(wait).unwrap_or(from + YEAR)
    }

    /// When to look again: at the idle deadline, or, while a request is in flight, after
    /// another `idle` (it may well end before).
    fn next_check(&self, first: Duration, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let now = Instant::now();
            now.checked_add(idle).unwrap_or(now + YEAR)
        } else {
            self.idle_after(first, idle)
        }
    }

    /// Whether nothing is in flight and nothing has happened for too long.
    fn is_idle(&self, first: Duration, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && Instant::now() >= self.idle_after(first, idle)
    }
}

/// Far enough to mean never, for timeouts set beyond what an `Instant` can add.
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A request in flight on its connection, until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    /// The response, holding this guard until its body has been sent (or dropped): a
    /// response still streaming keeps its connection busy.
    fn until_sent(self, response: Response<ResponseBody>) -> Response<ResponseBody> {
        response.map(|body| {
            SentBody {
                inner: body,
                _in_flight: self,
            }
            .boxed_unsync()
        })
    }
}

/// A response body that holds its request's [`InFlight`] guard.
struct SentBody {
    inner: ResponseBody,
    _in_flight: InFlight,
}

impl hyper::body::Body for SentBody {
    type Data = Bytes;
    type Error = anyhow::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, anyhow::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection whose writes fail once they have made no progress for the write timeout: a
/// client that stops reading its response would otherwise keep its socket, and the instance
/// streaming to it, for as long as it liked.
struct StallTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Armed when a write first has to wait, disarmed when one succeeds.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallTimeout<T> {
    fn new(inner: T, timeout: Duration) -> StallTimeout<T> {
        StallTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes on a write's outcome, failing a pending one that has waited too long.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading (write timeout)",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The next connection. Accept errors (usually EMFILE) are logged and retried after a pause
/// instead of spinning or ending the server.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Request ids: the client's `x-request-id` when it sends a sane one, else a new one made of
/// a random per-process prefix and a counter (unique across replicas, cheap per request).
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        RequestIds {
            prefix: u32::from_le_bytes(bytes),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{n:08x}", self.prefix)
    }
}

fn incoming_id(req: &Request<Incoming>) -> Option<HeaderValue> {
    let value = req.headers().get(&REQUEST_ID)?;
    let ok = (1..=128).contains(&value.len())
        && value
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
    ok.then(|| value.clone())
}

async fn serve(
    router: Arc<Router>,
    mut req: Request<Incoming>,
    fresh_id: String,
) -> Response<ResponseBody> {
    let started = Instant::now();
    // The guest sees the id too, so its own logs can carry it.
    let id = match incoming_id(&req) {
        Some(id) => id,
        None => {
            let id = HeaderValue::from_str(&fresh_id).expect("hex is a valid header value");
            req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
            id
        }
    };
    // Guests are told the request's authority; HTTP/1.1 requires a Host header anyway.
    let has_authority = req.uri().authority().is_some()
        || req
            .headers()
            .get(hyper::header::HOST)
            .is_some_and(|host| host.to_str().is_ok());
    let refused = if !has_authority {
        Some(plain(
            StatusCode::BAD_REQUEST,
            "the request has no Host header (or it is not ASCII)\n",
        ))
    } else {
        None
    };
    let app = router.route(req.uri().path());
    let (Some(app), None) = (app, &refused) else {
        let mut response =
            refused.unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "no app serves this path\n"));
        response.headers_mut().insert(REQUEST_ID.clone(), id);
        return response;
    };
    let span = info_span!(
        "request",
        id = id.to_str().unwrap_or_default(),
        app = &**app.name(),
        method = %req.method(),
        path = req.uri().path()
    );
    async {
        let mut response = match instance::handle(app, req, router.session_cookies()).await {
            Ok(response) => response,
            Err(failure) => {
                failure.log();
                let response = failure_response(&failure);
                if matches!(
                    failure,
                    Failure::Busy(_) | Failure::BodyTooLarge(_) | Failure::BodyTooSlow
                ) {
                    metrics::get()
                        .rejected
                        .get_or_create(&StatusLabels {
                            app: app.name().to_string(),
                            status: response.status().as_u16(),
                        })
                        .inc();
                }
                response
            }
        };
        response.headers_mut().insert(REQUEST_ID.clone(), id);
        let status = response.status().as_u16();
        app.metrics().answered(status);
        app.metrics()
            .latency
            .observe(started.elapsed().as_secs_f64());
        info!(
            status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "served"
        );
        response
    }
    .instrument(span)
    .await
}

/// What a client sees when the guest gives no response. The details stay in the log.
fn failure_response(failure: &Failure) -> Response<ResponseBody> {
    match failure {
        Failure::Guest(_) | Failure::GuestErrorCode(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the handler failed; the server log has the details\n",
        ),
        Failure::Busy(_) => {
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight; retry shortly\n",
            );
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Failure::BodyTooLarge(_) => plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this app accepts\n",
        ),
        Failure::BodyTooSlow => {
            let mut response = plain(
                StatusCode::REQUEST_TIMEOUT,
                "the request body arrived too slowly\n",
            );
            response
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    text_response(
        status,
        Bytes::from_static(text.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

fn text_response(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
) -> Response<ResponseBody> {
    let body = Full::new(body)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// Connections the operator listener keeps open at once: enough for scrapers and probes,
/// few enough that idle ones cannot use up the process's file descriptors.
const OPERATOR_CONNECTIONS: usize = 64;

/// The operator listener: `/metrics` (Prometheus), `/healthz` (the process is up) and
/// `/readyz` (the backing store answers, so requests that need state can succeed; unready as
/// soon as `draining` turns true, so a load balancer stops sending before the drain). Its
/// connections get the same timeouts as the main listener's, and at most
/// [`OPERATOR_CONNECTIONS`] of them are open at once.
pub async fn run_operator(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    metrics: MetricsSource,
    config: ServerConfig,
    draining: Arc<AtomicBool>,
) {
    let builder = connection_builder(&config);
    let connections = Arc::new(Semaphore::new(OPERATOR_CONNECTIONS));
    // The operator listener is stopped by aborting its task, not drained.
    let (_never, stopped) = watch::channel(false);
    loop {
        let permit = connections
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (stream, peer) = accept(&listener).await;
        let (storage, metrics, draining) = (storage.clone(), metrics.clone(), draining.clone());
        let handle = move |req: Request<Incoming>| {
            let (storage, metrics) = (storage.clone(), metrics.clone());
            let draining = draining.load(Ordering::Relaxed);
            async move { operator(req.uri().path(), &*storage, &metrics, draining).await }
        };
        let (builder, config, stopped) = (builder.clone(), config.clone(), stopped.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(&builder, stream, peer, handle, &config, stopped).await;
        });
    }
}

/// Where `/metrics` comes from.
#[derive(Clone)]
pub enum MetricsSource {
    /// This process's registry.
    Local,
    /// The worker processes' registries, summed (`--processes`).
    Workers(WorkerMetrics),
}

async fn operator(
    path: &str,
    storage: &dyn Storage,
    metrics: &MetricsSource,
    draining: bool,
) -> Response<ResponseBody> {
    match path {
        "/metrics" => text_response(
            StatusCode::OK,
            Bytes::from(match metrics {
                MetricsSource::Local => metrics::get().render(),
                MetricsSource::Workers(workers) => workers.render().await,
            }),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" if draining => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        ),
        "/readyz" => match storage.ping().await {
            Ok(()) => plain(StatusCode::OK, "ready\n"),
            Err(e) => {
                warn!(error = %e, "not ready: the store does not answer");
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the store does not answer\n",
                )
            }
        },
        _ => plain(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
    }
}
