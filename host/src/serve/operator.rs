//! The operator listener: `/metrics`, `/healthz` and `/readyz`, for scrapers, probes and load
//! balancers. Keep it on a private address.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::warn;

use super::supervisor::WorkerMetrics;
use crate::metrics;
use crate::request::ResponseBody;
use crate::request::connection::{
    accept, connection_builder, plain, serve_connection, text_response,
};
use crate::request::server::ServerConfig;
use crate::storage::Storage;

/// Connections the operator listener keeps open at once: enough for scrapers and probes,
/// few enough that idle ones cannot use up the process's file descriptors.
const OPERATOR_CONNECTIONS: usize = 64;

/// The operator listener: `/metrics` (Prometheus), `/healthz` (the process is up) and
/// `/readyz` (the backing store answers, so requests that need state can succeed; unready as
/// soon as `draining` turns true, so a load balancer stops sending before the drain). Its
/// connections get the same timeouts as the main listener's, and at most
/// [`OPERATOR_CONNECTIONS`] of them are open at once.
pub(super) async fn run(
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
