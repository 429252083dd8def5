//! How every connection is served, on the main listener and the side listeners (operator,
//! admin) alike: HTTP/1.1 and HTTP/2 through hyper, with the time a client may take to start
//! a request, to sit idle, and to read what it is sent all bounded; and how a side listener
//! shares its few connection slots so that idle clients cannot take them all.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{error, info};

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
    /// Threads serving requests; one per core is best (see `request::front::run`).
    pub workers: NonZeroUsize,
    /// Whether every request is logged (`served`, at `info`) once its response head is out.
    /// Off by default for `serve`: a line per request cost hello 8-9% of its throughput,
    /// and metrics count requests by app and status anyway. Failures are logged either way.
    pub access_log: bool,
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
            access_log: false,
        }
    }
}

/// The body type of every response the host sends, whether the guest made it or the host did.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, anyhow::Error>;

/// hyper's settings for every connection, the operator listener's included.
pub(crate) fn connection_builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
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
pub(crate) async fn serve_connection<F, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    handle: F,
    config: &ServerConfig,
    stopped: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let activity = Activity::new();
    serve_tracked(builder, stream, peer, handle, config, stopped, activity).await;
}

/// [`serve_connection`], keeping its requests in `activity`, which the caller may watch too.
async fn serve_tracked<F, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    handle: F,
    config: &ServerConfig,
    mut stopped: watch::Receiver<bool>,
    activity: Arc<Activity>,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
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

    /// When the connection last started or finished a request, if it ever did.
    fn last_request(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(self.opened + Duration::from_millis(ms)),
        }
    }

    /// When a connection with nothing in flight has been idle too long: `first` after it
    /// opened if it never started a request, else `idle` after its last one.
    fn idle_after(&self, first: Duration, idle: Duration) -> Instant {
        let (from, wait) = match self.last_request() {
            None => (self.opened, first),
            Some(at) => (at, idle),
        };
        from.checked_add(wait).unwrap_or(from + YEAR)
    }

    /// Since when the connection has had nothing in flight (since it opened, if it never
    /// started a request); `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Relaxed) == 0)
            .then(|| self.last_request().unwrap_or(self.opened))
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

/// Connections a side listener (operator, admin) keeps open at once: enough for scrapers,
/// probes and deploys, few enough that idle ones cannot use up the process's descriptors.
pub(crate) const SIDE_CONNECTIONS: usize = 64;

/// Serves a side listener (the operator's, the admin API's) until its task is aborted: every
/// connection with `handle`, the main listener's timeouts, and at most [`SIDE_CONNECTIONS`]
/// open at once. It is stopped by aborting it, not drained.
///
/// The slots are taken before any token is checked, by anyone who can reach the port, so
/// doing nothing must not hold one: 70 connections that sent nothing made the admin API
/// answer 0 of 3 calls in 30 s, and `/healthz` too. So when every slot is taken, a new
/// connection is not left waiting: the one idle the longest (no request in flight: it sent
/// nothing, half a request head, or sits kept alive between requests) is closed to make room
/// (see [`OpenConnections`]). Only a request in flight keeps its slot, and on these
/// listeners a request without the token is answered at once (401, or a probe's few bytes),
/// so only authenticated callers can fill them all; new connections then wait for a slot.
///
/// Why not just a shorter header timeout on these ports: a client that reconnects as soon as
/// it is closed refills the slots at once, and a caller queued in the kernel's backlog behind
/// its reconnects waits a timeout per batch of them. Closing the idlest instead makes a
/// caller that sends its request as it connects (as every client does) the last one closed:
/// more connections than there are slots would have to come between its accept and its
/// request head.
pub(crate) async fn serve_side_listener<F, Fut>(
    listener: TcpListener,
    config: ServerConfig,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let builder = connection_builder(&config);
    let slots = Arc::new(tokio::sync::Semaphore::new(SIDE_CONNECTIONS));
    let mut open = OpenConnections::default();
    let (_never, stopped) = watch::channel(false);
    loop {
        let (stream, peer) = accept(&listener).await;
        open.forget_closed();
        let permit = loop {
            if let Ok(permit) = slots.clone().try_acquire_owned() {
                break permit;
            }
            open.close_idlest();
            // The closed connection's task lets go of its slot as soon as it is dropped. If
            // every connection has a request in flight, one may go idle before any ends:
            // look again shortly.
            tokio::select! {
                permit = slots.clone().acquire_owned() => break permit.expect("never closed"),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        let activity = Activity::new();
        let (builder, config, stopped, handle, tracked) = (
            builder.clone(),
            config.clone(),
            stopped.clone(),
            handle.clone(),
            activity.clone(),
        );
        let task = tokio::spawn(async move {
            let _permit = permit;
            serve_tracked(&builder, stream, peer, handle, &config, stopped, tracked).await;
        });
        open.add(peer, activity, task.abort_handle());
    }
}

/// A side listener's open connections, so that the idlest can be closed to make room.
#[derive(Default)]
struct OpenConnections(Vec<OpenConnection>);

struct OpenConnection {
    peer: std::net::SocketAddr,
    activity: Arc<Activity>,
    task: tokio::task::AbortHandle,
}

impl OpenConnections {
    fn add(
        &mut self,
        peer: std::net::SocketAddr,
        activity: Arc<Activity>,
        task: tokio::task::AbortHandle,
    ) {
        self.0.push(OpenConnection {
            peer,
            activity,
            task,
        });
    }

    /// Drops the connections that have ended, so the list stays as short as the slots.
    fn forget_closed(&mut self) {
        self.0.retain(|c| !c.task.is_finished());
    }

    /// Closes the connection that has had no request in flight for the longest, if any has
    /// none. It is dropped, not shut down gracefully: it has nothing in flight to finish (a
    /// request whose head completes at this very instant is cut, as an idle timeout would).
    fn close_idlest(&mut self) {
        let idlest = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.task.is_finished())
            .filter_map(|(i, c)| Some((c.activity.idle_since()?, i)))
            .min();
        if let Some((since, i)) = idlest {
            let closed = self.0.swap_remove(i);
            closed.task.abort();
            info!(
                peer = %closed.peer,
                idle_ms = since.elapsed().as_millis() as u64,
                "every connection slot is taken: closing the connection idle the longest"
            );
        }
    }
}

/// The next connection. Accept errors (usually EMFILE) are logged and retried after a pause
/// instead of spinning or ending the server.
pub(crate) async fn accept(
    listener: &TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
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

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    text_response(
        status,
        Bytes::from_static(text.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

pub(crate) fn text_response(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection task that runs until aborted, tracked by `activity`.
    fn open(connections: &mut OpenConnections, port: u16, activity: Arc<Activity>) {
        let task = tokio::spawn(std::future::pending::<()>());
        connections.add(([127, 0, 0, 1], port).into(), activity, task.abort_handle());
    }

    /// The connection idle the longest goes first, counted from its last request if it made
    /// one, else from its opening; one with a request in flight is never closed, however old.
    #[tokio::test]
    async fn the_idlest_connection_is_closed_and_one_in_flight_never() {
        let mut connections = OpenConnections::default();
        let pause = || tokio::time::sleep(Duration::from_millis(5));
        let busy = Activity::new();
        let _in_flight = busy.begin();
        open(&mut connections, 1, busy);
        pause().await;
        let kept_alive = Activity::new();
        open(&mut connections, 2, kept_alive.clone());
        pause().await;
        open(&mut connections, 3, Activity::new());
        pause().await;
        drop(kept_alive.begin());
        let ports = |c: &OpenConnections| c.0.iter().map(|c| c.peer.port()).collect::<Vec<_>>();

        connections.close_idlest();
        assert_eq!(
            ports(&connections),
            [1, 2],
            "the silent one, idle since it opened"
        );
        connections.close_idlest();
        assert_eq!(
            ports(&connections),
            [1],
            "then the one idle since its request"
        );
        connections.close_idlest();
        assert_eq!(
            ports(&connections),
            [1],
            "a request in flight keeps its slot"
        );
    }
}
