//! `tabula serve --processes N`: worker processes that share the listener and the store,
//! under a supervisor that restarts them, sums their metrics and drains them on SIGTERM.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::harness::{
    Server, admin_cli, app_args, client, distinct_counts, get, guests, request, run_tabula,
};
use crate::redis_server::RedisServer;

/// The worker processes of the supervisor `pid`.
fn workers(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The fields after the parenthesised command name: state, then the parent's pid.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields[1] == pid.to_string() && fields[0] != "Z" {
            children.push(child);
        }
    }
    children.sort_unstable();
    children
}

/// Waits until the supervisor `pid` has `n` workers, none of them in `gone`.
async fn wait_for_workers(pid: u32, n: usize, gone: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = workers(pid);
        if now.len() == n && !now.iter().any(|w| gone.contains(w)) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} workers, not {gone:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs to the counter `n` times at once, on fresh connections, and checks that every
/// answer is a distinct count.
async fn count_concurrently(server: &Server, n: usize) {
    let mut requests = JoinSet::new();
    for _ in 0..n {
        let url = server.url("/counter");
        // One client per request: connections spread over the worker processes.
        requests.spawn(async move { request(&client(), "POST", &url, "").await });
    }
    assert_eq!(distinct_counts(requests).await.len(), n);
}

#[tokio::test]
async fn worker_processes_share_listener_and_store_and_are_supervised() {
    let redis = RedisServer::start();
    let mut server = Server::start(
        [
            "serve",
            "--processes",
            "2",
            "--access-log",
            "--store",
            &redis.url(),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(app_args(&["counter", "hello"])),
    );
    let started = wait_for_workers(server.pid(), 2, &[]).await;

    count_concurrently(&server, 200).await;
    // Each worker thread writes its log lines in batches (`log_batch`): every request's line
    // arrives, once and whole, though two processes and their threads share the one stderr.
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = |log: &str| log.matches("app=\"counter\" method=POST").count();
    while served(&server.log()) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log();
    assert_eq!(served(&log), 200, "{log}");
    for line in log.lines() {
        assert!(
            line.starts_with("20") && line.len() > 30,
            "a torn line: {line:?}"
        );
    }
    // The operator listener sums the workers' metrics.
    let metrics = get(&client(), &server.operator_url("/metrics")).await.body;
    assert!(
        metrics.contains("tabula_requests_total{app=\"counter\",status=\"200\"} 200\n"),
        "{metrics}"
    );
    assert_eq!(metrics.matches("# TYPE tabula_requests counter").count(), 1);

    // A worker that dies is replaced; meanwhile the other one serves.
    let killed = started[0];
    std::process::Command::new("kill")
        .args(["-KILL", &killed.to_string()])
        .status()
        .unwrap();
    assert_eq!(get(&client(), &server.url("/hello")).await.status, 200);
    wait_for_workers(server.pid(), 2, &[killed]).await;
    assert!(server.logged("worker exited"), "{}", server.log());
    count_concurrently(&server, 50).await;

    // SIGTERM drains every worker, then the supervisor exits cleanly.
    let remaining = workers(server.pid());
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    for pid in remaining {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z "),
            "worker {pid} outlived its supervisor"
        );
    }
}

#[test]
fn processes_refuse_the_in_memory_store() {
    let (status, stderr) = run_tabula(&[
        "serve",
        "--processes",
        "2",
        "--store",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "tests/guests/does-not-matter.wasm",
    ]);
    assert!(!status.success());
    assert!(stderr.contains("--store redis://"), "{stderr}");
}

/// `tabula serve` on a shared store runs a worker process per core unless told otherwise,
/// each one a replica; a deploy reaches them all, and they compile it once between them.
#[tokio::test]
async fn serve_on_a_shared_store_runs_a_worker_per_core_and_they_compile_a_deploy_once() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let redis = RedisServer::start();
    let admin = Server::start(
        [
            "serve",
            "--admin-listen",
            "127.0.0.1:0",
            "--store",
            &redis.url(),
        ]
        .map(String::from),
    );
    let cache = std::env::temp_dir().join(format!("tabula-workers-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let cache_arg = cache.display().to_string();
    let mut server = Server::start_with_env(
        ["serve", "--store", &redis.url(), "--cache-dir", &cache_arg].map(String::from),
        &[("TABULA_PROCESSES", "auto")],
    );
    // One process serves alone; more are workers under a supervisor.
    let workers = if cores > 1 { cores } else { 0 };
    wait_for_workers(server.pid(), workers, &[]).await;
    let replicas = 1 + workers.max(1);

    let hello = guests()["hello"].wasm.display().to_string();
    let run = admin_cli(&admin, &["deploy", &hello, "--name", "hello"]);
    assert!(run.ok, "deploy failed:\n{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains(&format!("({replicas} replicas switched")),
        "{}",
        run.stdout
    );
    // Fresh connections spread over the workers: every one of them serves the deploy.
    for _ in 0..8 * workers.max(1) {
        assert_eq!(get(&client(), &server.url("/hello")).await.status, 200);
    }
    // One worker compiled it; the others waited for its cache entry and loaded that.
    let log = server.log();
    let ready: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("version ready"))
        .collect();
    assert_eq!(ready.len(), workers.max(1), "{log}");
    let compiled = ready.iter().filter(|l| l.contains("cached=false")).count();
    assert_eq!(compiled, 1, "{log}");
    server.terminate();
    let _ = std::fs::remove_dir_all(&cache);
}
