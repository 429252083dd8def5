//! The operator listener: `/metrics`, `/healthz` and `/readyz`, for scrapers, probes and load
//! balancers. Keep it on a private address.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tracing::warn;

use super::supervisor::WorkerMetrics;
use crate::listener::ServerConfig;
use crate::listener::{plain, serve_side_listener, text_response};
use crate::metrics;
use crate::request::ResponseBody;
use crate::storage::Storage;

/// The operator listener: `/metrics` (Prometheus), `/healthz` (the process is up) and
/// `/readyz` (the backing store answers, so requests that need state can succeed; unready as
/// soon as `draining` turns true, so a load balancer stops sending before the drain). Its
/// connections are bounded as every side listener's.
pub(super) async fn run(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    metrics: MetricsSource,
    config: ServerConfig,
    draining: Arc<AtomicBool>,
) {
    let handle = move |req: Request<Incoming>| {
        let (storage, metrics) = (storage.clone(), metrics.clone());
        let draining = draining.load(Ordering::Relaxed);
        async move { operator(req.uri().path(), &*storage, &metrics, draining).await }
    };
    serve_side_listener(listener, config, handle).await;
}

/// Where `/metrics` comes from.
#[derive(Clone)]
pub(super) enum MetricsSource {
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
