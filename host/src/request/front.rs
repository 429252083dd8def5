//! The HTTP front: accepts connections on worker threads, routes each request to its app and
//! turns failures into status codes.
//!
//! [`run`] takes a bound listener and a shutdown future, so the binary passes a real port and
//! ctrl-c while tests bind port 0 and start the same server.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{error, info, warn};

use super::router::Routes;
use super::{Failure, ResponseBody};
use crate::listener::{ServerConfig, accept, connection_builder, plain, serve_connection};
use crate::metrics::{self, StatusLabels};
use crate::request::log::Label;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Serves the apps of `routes` on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish, for up to the drain timeout.
///
/// The work is done by [`ServerConfig::workers`] threads, each with its own single-threaded
/// tokio runtime, all accepting from the process's one socket (see [`bind`]). A connection,
/// its requests and the instances they run stay on the thread that accepted it: a request
/// never hops threads, so there are no work-stealing wake-ups between cores (each one an
/// inter-processor interrupt) and the instance's pooled memory stays in that core's caches.
pub async fn run(
    listener: std::net::TcpListener,
    routes: Routes,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        routes,
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
                crate::log_batch::batch_this_thread();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_park(crate::log_batch::flush)
                    .build()
                    .expect("building a worker's tokio runtime");
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => worker(listener, shared, stopped).await,
                        Err(e) => error!(error = %e, "a worker could not use the listener"),
                    }
                });
                crate::log_batch::flush();
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
    routes: Routes,
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
        let handle = move |req| serve(worker.clone(), req);
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

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 24];
        let mut rest = &mut id[..];
        write!(rest, "{:08x}{n:08x}", self.prefix).expect("a u32 and a u64 in hex fit in 24 bytes");
        let len = 24 - rest.len();
        HeaderValue::from_bytes(&id[..len]).expect("hex is a valid header value")
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

async fn serve(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let router = shared.routes.current();
    // The guest sees the id too, so its own logs can carry it.
    let id = match incoming_id(&req) {
        Some(id) => id,
        None => {
            let id = shared.ids.next();
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
    let app = router.route(req.uri().path(), req.headers());
    let (Some((app, tally)), None) = (app, &refused) else {
        let mut response =
            refused.unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "no app serves this path\n"));
        response.headers_mut().insert(REQUEST_ID.clone(), id);
        return response;
    };
    let label = Label::new(
        id,
        app.name().clone(),
        req.method().clone(),
        req.uri().clone(),
        shared.config.access_log.then_some(started),
    );
    label
        .clone()
        .scope(async {
            let mut response = match super::handle(app, req, router.session_cookies()).await {
                Ok(response) => response,
                Err(failure) => {
                    failure.log();
                    let response = failure.response();
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
            response
                .headers_mut()
                .insert(REQUEST_ID.clone(), label.id.clone());
            let status = response.status().as_u16();
            app.metrics().answered(status);
            if let Some(tally) = tally {
                tally.count(status);
            }
            let elapsed = started.elapsed().as_secs_f64();
            app.metrics().latency.observe(elapsed);
            label.answered(status);
            response
        })
        .await
}
