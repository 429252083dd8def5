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
use crate::deploy::registry::Registry;
use crate::listener::ServerConfig;
use crate::listener::{plain, serve_side_listener, text_response};
use crate::metrics;
use crate::request::ResponseBody;
use crate::storage::Storage;

/// What `/readyz` checks besides the store: that the replica is not draining, and that every
/// one of its processes serves every app the registry says is active. Without the second, a
/// replica joining a fleet answered ready for 6-10 s while its workers were still compiling a
/// deployed Python app, and requests sent to it hung meanwhile.
#[derive(Clone)]
pub(super) struct Readiness {
    pub registry: Registry,
    /// The replica's id, carried by its processes' heartbeats.
    pub group: String,
    /// How many processes serve requests.
    pub processes: usize,
    /// Turned on by the first signal, before the drain starts.
    pub draining: Arc<AtomicBool>,
}

/// The operator listener: `/metrics` (Prometheus), `/healthz` (the process is up) and
/// `/readyz` (the backing store answers and every process serves every active app, so a
/// request sent here can succeed; unready as soon as the drain is coming, so a load balancer
/// stops sending before it). Its connections are bounded as every side listener's.
pub(super) async fn run(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    metrics: MetricsSource,
    config: ServerConfig,
    readiness: Readiness,
) {
    let handle = move |req: Request<Incoming>| {
        let (storage, metrics, readiness) = (storage.clone(), metrics.clone(), readiness.clone());
        async move { operator(req.uri().path(), &*storage, &metrics, &readiness).await }
    };
    serve_side_listener(listener, config, handle).await;
}

/// Whether this replica should get traffic, or why not.
async fn ready(storage: &dyn Storage, readiness: &Readiness) -> Result<(), String> {
    if readiness.draining.load(Ordering::Relaxed) {
        return Err("shutting down".into());
    }
    if let Err(e) = storage.ping().await {
        warn!(error = %e, "not ready: the store does not answer");
        return Err("the store does not answer".into());
    }
    match readiness
        .registry
        .lagging(&readiness.group, readiness.processes)
        .await
    {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(why),
        Err(e) => {
            warn!(
                error = format!("{e:#}"),
                "not ready: the registry does not answer"
            );
            Err("the registry does not answer".into())
        }
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
    readiness: &Readiness,
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
        "/readyz" => match ready(storage, readiness).await {
            Ok(()) => plain(StatusCode::OK, "ready\n"),
            Err(why) => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from(format!("not ready: {why}\n")),
                "text/plain; charset=utf-8",
            ),
        },
        _ => plain(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
    }
}
