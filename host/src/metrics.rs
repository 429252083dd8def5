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
pub struct VersionLabels {
    pub app: String,
    /// `v3`.
    pub version: String,
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
    /// The requests and latency families alone: what a replica's heartbeat summarises for
    /// the dashboard every second ([`Metrics::render_traffic`]), without rendering the rest.
    traffic: Registry,
    pub requests: Family<StatusLabels, Counter>,
    pub latency: HistogramFamily<AppLabel>,
    pub instantiation: HistogramFamily<AppLabel>,
    pub live_instances: Family<AppLabel, Gauge>,
    pub store_operations: Family<StoreLabels, Counter>,
    pub rejected: Family<StatusLabels, Counter>,
    /// Instances the pooling allocator holds slots for: `live_instances` over this is how
    /// full the pool is.
    pub instance_slots: Gauge,
    /// 1 for the version of each deployed app this process serves: summed over a fleet, the
    /// processes on each version.
    pub serving: Family<VersionLabels, Gauge>,
    /// Times this process switched a deployed app to another version (deploys, rollbacks).
    pub version_switches: Family<AppLabel, Counter>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(latency_bounds())
}

/// The seconds histograms' bucket bounds, 50 µs to ~1.6 s: instantiation lives at the
/// bottom, slow handlers at the top.
pub fn latency_bounds() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.0, 16)
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("tabula");
        let mut traffic = Registry::with_prefix("tabula");
        let requests = Family::default();
        let latency: HistogramFamily<AppLabel> = Family::new_with_constructor(seconds_histogram);
        let instantiation: HistogramFamily<AppLabel> =
            Family::new_with_constructor(seconds_histogram);
        let live_instances = Family::default();
        let store_operations = Family::default();
        let rejected = Family::default();
        let instance_slots = Gauge::default();
        let serving = Family::default();
        let version_switches = Family::default();
        for registry in [&mut registry, &mut traffic] {
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
        }
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
        registry.register(
            "instance_slots",
            "Component instances the pool holds slots for (--max-instances)",
            instance_slots.clone(),
        );
        registry.register(
            "serving",
            "1 for the version of each deployed app this process serves, by app and version",
            serving.clone(),
        );
        registry.register(
            "version_switches",
            "Times this process switched a deployed app to another version, by app",
            version_switches.clone(),
        );
        Metrics {
            registry,
            traffic,
            requests,
            latency,
            instantiation,
            live_instances,
            store_operations,
            rejected,
            instance_slots,
            serving,
            version_switches,
        }
    })
}

/// One app's series, looked up once when the app loads rather than on every request.
pub struct AppMetrics {
    app: String,
    pub latency: Histogram,
    pub instantiation: Histogram,
    live_instances: Gauge,
    /// The series of status 200, the one nearly every request adds to.
    ok: Counter,
}

impl AppMetrics {
    pub fn new(app: &str) -> AppMetrics {
        let m = get();
        let label = AppLabel {
            app: app.to_string(),
        };
        let ok = StatusLabels {
            app: app.to_string(),
            status: 200,
        };
        AppMetrics {
            latency: m.latency.get_or_create(&label).clone(),
            instantiation: m.instantiation.get_or_create(&label).clone(),
            live_instances: m.live_instances.get_or_create(&label).clone(),
            ok: m.requests.get_or_create(&ok).clone(),
            app: label.app,
        }
    }

    /// Counts a request answered with `status`.
    pub fn answered(&self, status: u16) {
        if status == 200 {
            self.ok.inc();
            return;
        }
        get()
            .requests
            .get_or_create(&StatusLabels {
                app: self.app.clone(),
                status,
            })
            .inc();
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

    /// The text exposition of the requests and latency families only.
    pub fn render_traffic(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.traffic)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One app's store-call counters, the successful ones looked up once.
pub struct StoreOperations {
    app: String,
    kv_ok: Counter,
    session_ok: Counter,
}

impl StoreOperations {
    pub fn new(app: &str) -> StoreOperations {
        let series = |api| {
            get()
                .store_operations
                .get_or_create(&StoreLabels {
                    app: app.to_string(),
                    api,
                    outcome: "ok",
                })
                .clone()
        };
        StoreOperations {
            app: app.to_string(),
            kv_ok: series("kv"),
            session_ok: series("session"),
        }
    }

    /// Counts one call of `api` (`kv` or `session`) that ended with `outcome`.
    pub fn record(&self, api: &'static str, outcome: &'static str) {
        match (api, outcome) {
            ("kv", "ok") => self.kv_ok.inc(),
            ("session", "ok") => self.session_ok.inc(),
            _ => get()
                .store_operations
                .get_or_create(&StoreLabels {
                    app: self.app.clone(),
                    api,
                    outcome,
                })
                .inc(),
        };
    }
}

/// Sums several processes' expositions of the same metrics into one (`tabula serve
/// --processes`). Every worker runs the same code, so their families are the same; a series
/// (name and labels) found in several is the sum of its values, which is right for every
/// kind this registry holds: counters, gauges of live things, and histogram buckets, sums
/// and counts.
pub fn merge(expositions: &[String]) -> String {
    // Families in first-seen order, each with its header lines and its series in order.
    struct Family {
        name: String,
        headers: Vec<String>,
        samples: Vec<(String, f64)>,
    }
    let mut families: Vec<Family> = Vec::new();
    for text in expositions {
        let mut current = None;
        for line in text.lines() {
            if line == "# EOF" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let index = match families.iter().position(|f| f.name == name) {
                    Some(index) => index,
                    None => {
                        families.push(Family {
                            name,
                            headers: Vec::new(),
                            samples: Vec::new(),
                        });
                        families.len() - 1
                    }
                };
                let headers = &mut families[index].headers;
                if !headers.iter().any(|h| h == line) {
                    headers.push(line.to_string());
                }
                current = Some(index);
                continue;
            }
            let (Some(index), Some((series, value))) = (current, line.rsplit_once(' ')) else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            let samples = &mut families[index].samples;
            match samples.iter_mut().find(|(s, _)| s == series) {
                Some((_, total)) => *total += value,
                None => samples.push((series.to_string(), value)),
            }
        }
    }
    let mut out = String::new();
    for Family {
        headers, samples, ..
    } in families
    {
        for header in headers {
            out.push_str(&header);
            out.push('\n');
        }
        for (series, value) in samples {
            out.push_str(&format!("{series} {value}\n"));
        }
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merging_sums_each_series_and_keeps_every_family_once() {
        let a = "# HELP t_requests Requests.\n# TYPE t_requests counter\n\
                 t_requests_total{app=\"a\",status=\"200\"} 3\n\
                 # HELP t_live Live.\n# TYPE t_live gauge\nt_live{app=\"a\"} 1\n# EOF\n";
        let b = "# HELP t_requests Requests.\n# TYPE t_requests counter\n\
                 t_requests_total{app=\"a\",status=\"200\"} 4\n\
                 t_requests_total{app=\"a\",status=\"500\"} 1\n\
                 # HELP t_live Live.\n# TYPE t_live gauge\nt_live{app=\"a\"} 0.5\n# EOF\n";
        assert_eq!(
            merge(&[a.to_string(), b.to_string()]),
            "# HELP t_requests Requests.\n# TYPE t_requests counter\n\
             t_requests_total{app=\"a\",status=\"200\"} 7\n\
             t_requests_total{app=\"a\",status=\"500\"} 1\n\
             # HELP t_live Live.\n# TYPE t_live gauge\nt_live{app=\"a\"} 1.5\n# EOF\n"
        );
    }
}
