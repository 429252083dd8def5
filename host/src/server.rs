//! The HTTP front: accepts connections, speaks HTTP/1.1 and HTTP/2, routes each request to its
//! app and turns failures into status codes.
//!
//! [`run`] takes a bound listener and a shutdown future, so the binary passes a real port and
//! ctrl-c while tests bind port 0 and start the same server.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{Instrument, error, info, info_span, warn};

use crate::instance::{self, Failure, ResponseBody};
use crate::router::Router;

/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` resolves, then drains open connections.
pub async fn run(listener: TcpListener, router: Arc<Router>, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let next_id = Arc::new(AtomicU64::new(1));
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning, and keep serving.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let next_id = next_id.clone();
        let service = hyper::service::service_fn(move |req| {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            serve(router.clone(), req, id)
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                info!(%peer, error = %e, "connection closed with an error");
            }
        });
    }

    drop(listener);
    info!("shutting down: draining open connections");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("drain timed out; closing remaining connections"),
    }
}

async fn serve(
    router: Arc<Router>,
    req: Request<Incoming>,
    id: u64,
) -> Result<Response<ResponseBody>, Infallible> {
    let Some(app) = router.route(req.uri().path()) else {
        return Ok(plain(StatusCode::NOT_FOUND, "no app serves this path\n"));
    };
    let span = info_span!("request", id, app = &**app.name(), method = %req.method(), path = req.uri().path());
    async move {
        let response = match instance::handle(app, req).await {
            Ok(response) => response,
            Err(failure) => {
                failure.log();
                failure_response(&failure)
            }
        };
        info!(status = response.status().as_u16(), "served");
        Ok(response)
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
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
            response
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
