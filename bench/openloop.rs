//! An open-loop load generator for `bench/compare.sh`: requests are scheduled at a fixed
//! rate whatever the server does, and each one's latency counts from when it was *due*, not
//! from when a connection got around to sending it. A closed-loop tool (wrk) waits for each
//! answer before sending the next, so a stall delays the requests that would have seen it and
//! hides them: coordinated omission. This is wrk2's model: a fixed number of keep-alive
//! connections, due requests queued for the next free one, the queueing counted.
//!
//! `openloop URL RATE SECONDS [CONNECTIONS]` prints one line:
//! `RESULT achieved_rps p50_ms p99_ms p99.9_ms max_ms errors`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::{Mutex, mpsc};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || anyhow::anyhow!("usage: openloop URL RATE SECONDS [CONNECTIONS]");
    let url: hyper::Uri = args.get(1).ok_or_else(usage)?.parse()?;
    let rate: f64 = args.get(2).ok_or_else(usage)?.parse()?;
    let seconds: f64 = args.get(3).ok_or_else(usage)?.parse()?;
    let connections: usize = args.get(4).map_or(Ok(64), |c| c.parse())?;
    let addr = format!(
        "{}:{}",
        url.host().ok_or_else(usage)?,
        url.port_u16().unwrap_or(80)
    );

    // The schedule: request i is due at start + i / rate.
    let (due_tx, due_rx) = mpsc::unbounded_channel::<Instant>();
    let due_rx = std::sync::Arc::new(Mutex::new(due_rx));
    let start = Instant::now() + Duration::from_millis(100);
    let total = (rate * seconds) as u64;
    tokio::spawn(async move {
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            if due_tx.send(due).is_err() {
                return;
            }
        }
    });

    let mut workers = Vec::new();
    for _ in 0..connections {
        let (due_rx, addr, url) = (due_rx.clone(), addr.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            loop {
                let Some(due) = due_rx.lock().await.recv().await else {
                    break;
                };
                let req = Request::get(url.clone())
                    .header(hyper::header::HOST, "127.0.0.1")
                    .body(Empty::<Bytes>::new())?;
                match sender.send_request(req).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let body = response.into_body().collect().await;
                        if ok && body.is_ok() {
                            latencies.push(due.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (latencies, e) = worker.await??;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "RESULT {:.0} {:.2} {:.2} {:.2} {:.2} {errors}",
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        all.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    Ok(())
}
