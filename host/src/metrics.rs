//! Prometheus metrics, served on the operator listener at `/metrics`.
//!
//! One process-wide registry (like a logger, metrics are ambient): requests by app and status,
//! latency and instantiation-time histograms, live instances, and store operations by outcome.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub app: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub app: String,
    /// `kv` (including wasi:keyvalue) or `session`.
    pub api: &'static str,
    /// `ok`, `error` (refused: too large, not an integer…) or `unavailable`.
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<StatusLabels, Counter>,
    pub latency: HistogramFamily<AppLabel>,
    pub instantiation: HistogramFamily<AppLabel>,
    pub live_instances: Family<AppLabel, Gauge>,
    pub store_operations: Family<StoreLabels, Counter>,
    pub rejected: Family<StatusLabels, Counter>,
}

fn seconds_histogram() -> Histogram {
    // 50 µs to ~1.6 s: instantiation lives at the bottom, slow handlers at the top.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("tabula");
        let requests = Family::default();
        let latency: HistogramFamily<AppLabel> = Family::new_with_constructor(seconds_histogram);
        let instantiation: HistogramFamily<AppLabel> =
            Family::new_with_constructor(seconds_histogram);
        let live_instances = Family::default();
        let store_operations = Family::default();
        let rejected = Family::default();
        registry.register(
            "requests",
            "Requests answered, by app and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response head, by app",
            latency.clone(),
        );
        registry.register(
            "instantiation_seconds",
            "Time to instantiate a fresh component instance, by app",
            instantiation.clone(),
        );
        registry.register(
            "live_instances",
            "Component instances alive now, by app",
            live_instances.clone(),
        );
        registry.register(
            "store_operations",
            "kv and session calls, by app, API and outcome",
            store_operations.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused before reaching a guest (413, 503 busy), by app and status",
            rejected.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            instantiation,
            live_instances,
            store_operations,
            rejected,
        }
    })
}

/// One app's series, looked up once when the app loads rather than on every request.
pub struct AppMetrics {
    pub latency: Histogram,
    pub instantiation: Histogram,
    live_instances: Gauge,
}

impl AppMetrics {
    pub fn new(app: &str) -> AppMetrics {
        let m = get();
        let label = AppLabel {
            app: app.to_string(),
        };
        AppMetrics {
            latency: m.latency.get_or_create(&label).clone(),
            instantiation: m.instantiation.get_or_create(&label).clone(),
            live_instances: m.live_instances.get_or_create(&label).clone(),
        }
    }

    /// Counts one more live instance until the guard is dropped.
    pub fn live_instance(&self) -> LiveInstance {
        self.live_instances.inc();
        LiveInstance(self.live_instances.clone())
    }
}

/// A live instance, counted while it exists.
pub struct LiveInstance(Gauge);

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn store_operation(&self, app: &str, api: &'static str, outcome: &'static str) {
        self.store_operations
            .get_or_create(&StoreLabels {
                app: app.to_string(),
                api,
                outcome,
            })
            .inc();
    }
}
