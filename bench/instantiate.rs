//! Micro-benchmark: the full per-request cost of a fresh instance of `examples/hello`:
//! new `Store`, instantiate, call `handle`, read the response body, drop everything.
//!
//! Runs the same loop on two runtimes in one invocation and prints their ratio, because
//! absolute numbers only mean something next to a baseline measured on the same machine:
//! - `tabula`: the runtime as `tabula serve` configures it (pooling allocator, kept-resident
//!   memory, copy-on-write images);
//! - `baseline`: the same runtime with wasmtime's default on-demand allocator.
//!
//! `cargo bench -p tabula --bench instantiate` (builds `examples/hello` first if needed).
//! `TABULA_BENCH_ITERS` sets the number of timed requests per runtime (default 20000).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tabula::app::App;
use tabula::instance;
use tabula::limits::{Allocator, Limits};
use tabula::project::{self, BuildOptions};
use tabula::runtime::Runtime;
use tabula::storage::memory::MemoryStorage;

fn main() -> anyhow::Result<()> {
    let iters: usize = std::env::var("TABULA_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let sources = project::discover(&[root.join("examples/hello").display().to_string()])?;
    let options = BuildOptions {
        target_dir: Some(root.join("target/guests")),
    };
    let spec = project::build_all(&sources, &options)?.remove(0);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for (label, allocator) in [
        ("baseline", Allocator::OnDemand),
        ("tabula", Allocator::Pooling),
    ] {
        let runtime = Runtime::new(
            Limits {
                allocator,
                ..Limits::default()
            },
            Arc::new(MemoryStorage::new()),
        )?;
        let app = App::load(&runtime, &spec)?;
        let samples = rt.block_on(measure(&app, iters))?;
        results.push((label, Stats::of(samples)));
    }

    println!("instantiate + handle + drop, examples/hello, {iters} sequential requests each");
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>12}",
        "runtime", "median", "p99", "mean", "req/s (1 core)"
    );
    for (label, s) in &results {
        println!(
            "{label:<10} {:>10.1?} {:>10.1?} {:>10.1?} {:>12.0}",
            s.median,
            s.p99,
            s.mean,
            1.0 / s.mean.as_secs_f64()
        );
    }
    let (base, ours) = (&results[0].1, &results[1].1);
    println!(
        "ratio baseline/tabula: median {:.2}x, mean {:.2}x (higher is better for tabula)",
        base.median.as_secs_f64() / ours.median.as_secs_f64(),
        base.mean.as_secs_f64() / ours.mean.as_secs_f64()
    );
    Ok(())
}

async fn measure(app: &App, iters: usize) -> anyhow::Result<Vec<Duration>> {
    // Warm up: the pool's slots, the page cache and the branch predictors.
    for _ in 0..iters / 10 {
        one_request(app).await?;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        one_request(app).await?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

async fn one_request(app: &App) -> anyhow::Result<()> {
    let req = hyper::Request::get("http://localhost/hello?name=bench")
        .body(Full::new(Bytes::new()).map_err(|never| -> hyper::Error { match never {} }))?;
    let response = instance::handle(app, req)
        .await
        .map_err(|f| anyhow::anyhow!("request failed: {f:?}"))?;
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        body.as_ref() == b"Hello, bench!\n",
        "unexpected body {body:?}"
    );
    Ok(())
}

struct Stats {
    median: Duration,
    p99: Duration,
    mean: Duration,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Stats {
            median: at(0.5),
            p99: at(0.99),
            mean: samples.iter().sum::<Duration>() / samples.len() as u32,
        }
    }
}
