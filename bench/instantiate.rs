//! Micro-benchmarks of the per-request cost, sequential on one thread, in one invocation so
//! that every figure has a baseline measured on the same machine at the same time:
//!
//! 1. instantiate + handle + drop of `examples/hello` on tabula's runtime (pooling allocator,
//!    kept-resident memory, copy-on-write images) against the same runtime on wasmtime's
//!    default on-demand allocator;
//! 2. the filesystem: a request that writes 1 MiB to `/tmp` and reads it back
//!    (`tests/guests/fstool`), against a request of the same component that touches no file.
//!
//! `cargo bench -p tabula --bench instantiate` (builds the guests first if needed).
//! `TABULA_BENCH_ITERS` sets the number of timed requests per case (default 20000).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tabula::config::{Allocator, AppSpec, HostConfig};
use tabula::project::{self, BuildOptions};
use tabula::{App, Runtime, bench, storage};

/// The allocator the `tabula` binary uses, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let iters: usize = std::env::var("TABULA_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let build = |dir: &str| -> anyhow::Result<AppSpec> {
        let options = BuildOptions {
            target_dir: Some(root.join("target/guests")),
            variables: Vec::new(),
        };
        Ok(project::build(&[root.join(dir).display().to_string()], &options)?.remove(0))
    };
    let hello = build("examples/hello")?;
    let fstool = build("tests/guests/fstool")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let storage = rt.block_on(storage::open("memory"))?;
    let host = |allocator| {
        let config = HostConfig {
            allocator,
            ..HostConfig::default()
        };
        Runtime::new(config, storage.clone())
    };

    println!("per-request cost, {iters} sequential requests per case");
    let mut base = None;
    for (label, allocator) in [
        ("hello, on-demand allocator", Allocator::OnDemand),
        ("hello, tabula (pooling)", Allocator::Pooling),
    ] {
        let app = App::load(&host(allocator)?, &hello)?;
        let stats = rt.block_on(measure(
            &app,
            iters,
            "/hello?name=bench",
            b"Hello, bench!\n",
        ))?;
        print_row(label, &stats);
        match &base {
            None => base = Some(stats),
            Some(b) => println!(
                "  ratio on-demand/tabula: median {:.2}x, mean {:.2}x (higher is better for tabula)",
                ratio(b.median, stats.median),
                ratio(b.mean, stats.mean)
            ),
        }
    }

    let app = App::load(&host(Allocator::Pooling)?, &hello)?;
    let split = rt.block_on(measure_split(
        &app,
        iters,
        "/hello?name=bench",
        b"Hello, bench!\n",
    ))?;
    println!("hello on tabula, the cost split (each phase timed on its own):");
    print_row("  instantiate", &split.instantiate);
    print_row("  handle", &split.handle);
    print_row("  drop", &split.drop);
    print_row("  instantiate + drop", &Stats::of(split.instantiate_drop));

    let app = App::load(&host(Allocator::Pooling)?, &fstool)?;
    let plain = rt.block_on(measure(&app, iters, "/fstool/nothing", b"not found\n"))?;
    print_row("fstool, no file", &plain);
    let fs = rt.block_on(measure(
        &app,
        iters / 4,
        "/fstool/fill?mib=1",
        b"ok: 1048576\n",
    ))?;
    print_row("fstool, 1 MiB write+read", &fs);
    println!(
        "  filesystem cost: {:.1?} median per request for 1 MiB written and read back ({:.2}x the request without files)",
        fs.median.saturating_sub(plain.median),
        ratio(fs.median, plain.median)
    );
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn print_row(label: &str, s: &Stats) {
    println!(
        "{label:<28} median {:>9.1?}  p99 {:>9.1?}  mean {:>9.1?}  {:>8.0} req/s on one core",
        s.median,
        s.p99,
        s.mean,
        1.0 / s.mean.as_secs_f64()
    );
}

async fn measure(app: &App, iters: usize, path: &str, expect: &[u8]) -> anyhow::Result<Stats> {
    // Warm up: the pool's slots, the page cache and the branch predictors.
    for _ in 0..iters / 10 {
        one_request(app, path, expect).await?;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        one_request(app, path, expect).await?;
        samples.push(start.elapsed());
    }
    Ok(Stats::of(samples))
}

struct Split {
    instantiate: Stats,
    handle: Stats,
    drop: Stats,
    /// Per request, instantiate and drop together.
    instantiate_drop: Vec<Duration>,
}

/// The phases of a request that the request path runs in one task, timed one by one:
/// a new store and instantiation, the guest's `handle` (with the response body read to its
/// end), and the drop of the store with the instance in it.
async fn measure_split(
    app: &App,
    iters: usize,
    path: &str,
    expect: &[u8],
) -> anyhow::Result<Split> {
    let mut phases = [
        Vec::with_capacity(iters),
        Vec::with_capacity(iters),
        Vec::with_capacity(iters),
    ];
    for i in 0..iters + iters / 10 {
        let far = Instant::now() + Duration::from_secs(60);
        let t0 = Instant::now();
        let mut fresh = bench::instantiate(app, far).await?;
        let t1 = Instant::now();
        let body = fresh.call(request(path)?).await?;
        anyhow::ensure!(body.as_ref() == expect, "unexpected body {body:?}");
        let t2 = Instant::now();
        drop(fresh);
        let t3 = Instant::now();
        // The first tenth warms up the pool's slots, the page cache and the branch predictors.
        if i >= iters / 10 {
            for (phase, d) in phases.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                phase.push(d);
            }
        }
    }
    let [instantiate, handle, dropped] = phases;
    let instantiate_drop = instantiate
        .iter()
        .zip(&dropped)
        .map(|(a, b)| *a + *b)
        .collect();
    Ok(Split {
        instantiate: Stats::of(instantiate),
        handle: Stats::of(handle),
        drop: Stats::of(dropped),
        instantiate_drop,
    })
}

fn request(
    path: &str,
) -> anyhow::Result<hyper::Request<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>> {
    Ok(hyper::Request::get(format!("http://localhost{path}")).body(
        Full::new(Bytes::new())
            .map_err(|never| -> hyper::Error { match never {} })
            .boxed(),
    )?)
}

async fn one_request(app: &App, path: &str, expect: &[u8]) -> anyhow::Result<()> {
    let body = bench::handle(app, request(path)?).await?;
    anyhow::ensure!(body.as_ref() == expect, "unexpected body {body:?}");
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
