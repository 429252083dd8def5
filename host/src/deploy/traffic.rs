//! Each app's traffic over the last minute, as one process counts it: requests, errors and a
//! latency histogram, carried in the process's heartbeat so that the dashboard sums the fleet
//! from the registry alone.
//!
//! Why in the heartbeat rather than the dashboard reading each replica's `/metrics`: the
//! heartbeat is written every second anyway, so the figures cost no new connection, no new
//! port to open between the admin listener and the replicas (the operator ports stay private
//! to their own network policy), and one read per replica that the dashboard already makes to
//! list them. Histograms are sent rather than percentiles, because bucket counts add up across
//! processes and percentiles do not.
//!
//! The figures are read from the process's own Prometheus families (the requests counter and
//! the latency histogram), so the request path does no extra work and the dashboard agrees
//! with what Prometheus scrapes.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics;

/// How far back the figures reach.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One app's traffic on one process over the last [`WINDOW`] (or since it started).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Milliseconds the figures cover.
    pub millis: u64,
    /// Requests answered.
    pub requests: u64,
    /// Those answered with a 5xx: guest traps, timeouts, a busy host, a store down.
    pub errors: u64,
    /// Requests per latency bucket, not cumulative: bucket `i` counts those that took at most
    /// the `i`th of [`metrics::latency_bounds`] and more than the one before; the last bucket
    /// counts the slower ones.
    pub latency: Vec<u64>,
}

/// Totals since the process started, per app, as the metrics hold them.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    requests: u64,
    errors: u64,
    /// Cumulative, one per bound and one for `+Inf`, as Prometheus writes them.
    buckets: Vec<u64>,
}

/// The samples the last minute's figures are the difference of.
#[derive(Default)]
pub struct Window {
    samples: VecDeque<(Instant, BTreeMap<String, Totals>)>,
}

impl Window {
    /// Samples the metrics now, and answers each app's traffic since the oldest sample still
    /// within [`WINDOW`] (the newest one older than it, once there is one).
    pub fn sample(&mut self) -> BTreeMap<String, Traffic> {
        let now = Instant::now();
        self.samples
            .push_back((now, totals(&metrics::get().render_traffic())));
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            self.samples.pop_front();
        }
        let (since, before) = self.samples.front().expect("pushed above");
        let millis = now.duration_since(*since).as_millis() as u64;
        let (_, current) = self.samples.back().expect("pushed above");
        current
            .iter()
            .map(|(app, totals)| {
                let zero = Totals::default();
                let old = before.get(app).unwrap_or(&zero);
                (app.clone(), difference(totals, old, millis))
            })
            .filter(|(_, traffic)| traffic.requests > 0)
            .collect()
    }
}

/// `new - old`, with the buckets made per-bucket rather than cumulative.
fn difference(new: &Totals, old: &Totals, millis: u64) -> Traffic {
    let cumulative: Vec<u64> = new
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(old.buckets.get(i).copied().unwrap_or(0)))
        .collect();
    let latency = cumulative
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(if i == 0 { 0 } else { cumulative[i - 1] }))
        .collect();
    Traffic {
        millis,
        requests: new.requests.saturating_sub(old.requests),
        errors: new.errors.saturating_sub(old.errors),
        latency,
    }
}

/// The totals in an exposition of the requests and latency families.
fn totals(exposition: &str) -> BTreeMap<String, Totals> {
    let mut apps: BTreeMap<String, Totals> = BTreeMap::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let label = |key: &str| {
            labels
                .trim_end_matches('}')
                .split(',')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"'))
        };
        let (Some(app), Ok(value)) = (label("app"), value.parse::<f64>()) else {
            continue;
        };
        let totals = apps.entry(app.to_string()).or_default();
        let value = value as u64;
        match name {
            "tabula_requests_total" => {
                totals.requests += value;
                if label("status").is_some_and(|s| s.starts_with('5')) {
                    totals.errors += value;
                }
            }
            "tabula_request_duration_seconds_bucket" => totals.buckets.push(value),
            _ => {}
        }
    }
    apps
}

/// What the fleet's processes together served of one app over the last minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetTraffic {
    /// Requests per second, all processes together.
    pub rate: f64,
    /// The share of requests answered with a 5xx, 0 to 1.
    pub error_rate: f64,
    /// Median latency in seconds, from the summed histograms.
    pub p50: Option<f64>,
    /// 99th percentile latency in seconds.
    pub p99: Option<f64>,
    /// Requests counted.
    pub requests: u64,
}

/// Adds up the processes' figures for one app.
pub fn fleet<'a>(reports: impl IntoIterator<Item = &'a Traffic>) -> FleetTraffic {
    let bounds: Vec<f64> = metrics::latency_bounds().collect();
    let mut buckets = vec![0u64; bounds.len() + 1];
    let (mut rate, mut requests, mut errors) = (0.0, 0, 0);
    for report in reports {
        rate += report.requests as f64 * 1000.0 / report.millis.max(1000) as f64;
        requests += report.requests;
        errors += report.errors;
        for (sum, n) in buckets.iter_mut().zip(&report.latency) {
            *sum += n;
        }
    }
    FleetTraffic {
        rate,
        error_rate: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        p50: quantile(0.5, &bounds, &buckets),
        p99: quantile(0.99, &bounds, &buckets),
        requests,
    }
}

/// The `q` quantile of a histogram, interpolated within its bucket as Prometheus's
/// `histogram_quantile` does, so the dashboard and a Grafana panel agree. A quantile in the
/// last, unbounded bucket is reported as the highest bound.
fn quantile(q: f64, bounds: &[f64], buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if (below + count) as f64 >= rank && count > 0 {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lower + (upper - lower) * (rank - below as f64) / count as f64);
        }
        below += count;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_read_requests_errors_and_buckets_per_app() {
        let text = "# TYPE tabula_requests counter\n\
            tabula_requests_total{app=\"a\",status=\"200\"} 7\n\
            tabula_requests_total{app=\"a\",status=\"503\"} 2\n\
            tabula_requests_total{app=\"b\",status=\"404\"} 1\n\
            tabula_request_duration_seconds_sum{app=\"a\"} 0.5\n\
            tabula_request_duration_seconds_count{app=\"a\"} 9\n\
            tabula_request_duration_seconds_bucket{le=\"0.1\",app=\"a\"} 4\n\
            tabula_request_duration_seconds_bucket{le=\"+Inf\",app=\"a\"} 9\n";
        let apps = totals(text);
        assert_eq!(
            apps["a"],
            Totals {
                requests: 9,
                errors: 2,
                buckets: vec![4, 9]
            }
        );
        assert_eq!(apps["b"].requests, 1);
        assert_eq!(apps["b"].errors, 0);
    }

    #[test]
    fn a_difference_is_per_bucket_and_the_fleet_adds_histograms_not_percentiles() {
        let old = Totals {
            requests: 10,
            errors: 1,
            buckets: vec![5, 8, 10],
        };
        let new = Totals {
            requests: 30,
            errors: 3,
            buckets: vec![15, 28, 30],
        };
        let traffic = difference(&new, &old, 10_000);
        assert_eq!(traffic.latency, vec![10, 10, 0]);
        assert_eq!((traffic.requests, traffic.errors), (20, 2));

        // Two processes: one fast, one slow. The median of the fleet lies between them.
        let bounds: Vec<f64> = metrics::latency_bounds().collect();
        let mut fast = vec![0; bounds.len() + 1];
        fast[0] = 100;
        let mut slow = vec![0; bounds.len() + 1];
        slow[10] = 100;
        let reports = [
            Traffic {
                millis: 10_000,
                requests: 100,
                errors: 0,
                latency: fast,
            },
            Traffic {
                millis: 10_000,
                requests: 100,
                errors: 10,
                latency: slow,
            },
        ];
        let fleet = fleet(&reports);
        assert_eq!(fleet.rate, 20.0);
        assert_eq!(fleet.error_rate, 0.05);
        assert_eq!(fleet.p50, Some(bounds[0]));
        let p99 = fleet.p99.unwrap();
        assert!(bounds[9] < p99 && p99 <= bounds[10], "{p99}");
    }
}
