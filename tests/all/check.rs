//! `tabula check` against live hosts: a fleet of two replicas sharing a real Redis (clean), a
//! replica that does not follow the fleet, an interrupted check, and two hosts that break the
//! promise. Those two are real wasmtime hosts started here, serving the probe that
//! `tabula check --write-probe` writes: one keeps a single instance (and a real `/tmp`
//! directory) across requests, the other seeds every fresh instance's randomness the same.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::deploy::replica;
use crate::harness::{ADMIN_TOKEN, CliRun, Server, TABULA, admin_cli, admin_cli_with, root};
use crate::redis_server::RedisServer;

/// `tabula check --admin-url ADMIN URLS...`, with a few requests so tests stay quick.
pub fn check(admin: &Server, urls: &[&str]) -> (Option<i32>, CliRun) {
    let mut args = vec!["check", "--requests", "60", "--concurrency", "8"];
    args.extend(urls);
    let output = Command::new(&*TABULA)
        .current_dir(root())
        .args(&args)
        .args(["--admin-url", &admin.admin])
        .env("TABULA_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("running tabula check");
    (output.status.code(), run_of(&output))
}

/// `tabula check --probe-url URL` against a host that serves the probe itself.
fn check_served(url: &str) -> (Option<i32>, CliRun) {
    let output = Command::new(&*TABULA)
        .args([
            "check",
            "--requests",
            "60",
            "--concurrency",
            "8",
            "--probe-url",
            url,
        ])
        .env_remove("TABULA_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("running tabula check");
    (output.status.code(), run_of(&output))
}

fn run_of(output: &std::process::Output) -> CliRun {
    CliRun {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The lines of `tabula check`'s report that name a finding, with the lines that explain it.
fn findings(report: &str) -> String {
    report
        .lines()
        .skip_while(|line| !line.contains("FINDING"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `tabula apps` lists: the probe must never be left there.
pub fn no_probe_left(admin: &Server) {
    let apps = admin_cli(admin, &["apps"]);
    assert!(apps.ok, "{}", apps.stderr);
    assert!(
        !apps.stdout.contains("tabula-check"),
        "the probe was left deployed:\n{}",
        apps.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_two_replicas_on_redis_checks_clean() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let b = replica(&redis.url(), false, &[]);
    let (code, run) = check(&a, &[&a.base, &b.base]);
    assert_eq!(code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("clean: nothing survived between requests"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("FINDING"), "{}", run.stdout);
    // Every request was answered, by both replicas: 60 to each URL.
    assert!(run.stdout.contains("120 requests"), "{}", run.stdout);
    no_probe_left(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_follow_the_fleet_is_named() {
    let redis = RedisServer::start();
    let other = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    // Serving, but on another store: it never hears of the fleet's deploys.
    let stray = replica(&other.url(), false, &[]);
    let (code, run) = check(&a, &[&a.base, &stray.base]);
    assert_eq!(code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let found = findings(&run.stdout);
    assert!(
        found.contains("every request reached the probe")
            && found.contains(&format!("{}/tabula-check-", stray.base))
            && found.contains("60 of 60 requests were not answered by the probe")
            && found.contains("404"),
        "{}",
        run.stdout
    );
    assert!(!found.contains(&format!("{}/", a.base)), "{}", run.stdout);
    no_probe_left(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_check_removes_its_probe_first() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let mut child = Command::new(&*TABULA)
        .args(["check", "--requests", "100000000", "--concurrency", "4"])
        .arg(&a.base)
        .args(["--admin-url", &a.admin])
        .env("TABULA_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tabula check");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut probe = String::new();
    while !line.contains("tabula: sending") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tabula check ended before probing"
        );
        if let Some(rest) = line.trim().strip_prefix("tabula: deploying the probe as ") {
            probe = rest.split(' ').next().unwrap().to_string();
        }
    }
    // Probing: the probe is deployed and answering.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = admin_cli(&a, &["apps"]);
    assert!(listed.stdout.contains(&probe), "{}", listed.stdout);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tabula check did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted: removing the probe"), "{rest}");
    no_probe_left(&a);
    let gone = crate::harness::get(&crate::harness::client(), &a.url(&format!("/{probe}"))).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_needs_a_token_or_a_probe_url() {
    let run = admin_cli_with("http://127.0.0.1:1", None, &["check", "http://127.0.0.1:2"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("TABULA_ADMIN_TOKEN"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_reuses_its_instance_is_reported() {
    let host = ProbeHost::start(Mode::ReuseOneInstance).await;
    let (code, run) = check_served(&host.url);
    assert_eq!(code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let found = findings(&run.stdout);
    for finding in [
        "FINDING  a fresh instance per request (linear memory, globals)",
        "59 of 60 answers came from an instance that had served earlier requests (a counter \
         in its linear memory reached 60)",
        "FINDING  a fresh /tmp per request",
        "59 of 60 answers found the file an earlier request wrote to /tmp",
        "FINDING  a fresh environment per request",
        "59 of 60 answers found the environment variable an earlier request set",
    ] {
        assert!(
            found.contains(finding),
            "no {finding:?} in:\n{}",
            run.stdout
        );
    }
    // Its randomness is real, but the insecure seed is fixed for an instance's life.
    assert!(
        found.contains(
            "wasi:random/insecure-seed gave the same value to more than one request (1 values \
             repeated; "
        ) && found.contains("came 60 times): requests shared an instance"),
        "{}",
        run.stdout
    );
    assert!(!found.contains("wasi:random/random "), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_seeds_every_instance_the_same_is_reported() {
    let host = ProbeHost::start(Mode::FreshButSeededTheSame).await;
    let (code, run) = check_served(&host.url);
    assert_eq!(code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let found = findings(&run.stdout);
    assert!(
        found.contains("FINDING  randomness differs per request")
            && found.contains("wasi:random/random gave the same value to more than one request")
            && found.contains("came 60 times"),
        "{}",
        run.stdout
    );
    // Fresh instances: nothing else survives.
    assert!(
        run.stdout.contains("ok       a fresh instance per request"),
        "{}",
        run.stdout
    );
}

/// How a [`ProbeHost`] breaks the promise.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One instance serves every request, with a real directory as its `/tmp`.
    ReuseOneInstance,
    /// A fresh instance per request, its randomness the same fixed bytes each time.
    FreshButSeededTheSame,
}

/// A `wasi:http/proxy` host of a few lines on wasmtime, serving the probe at `url`.
struct ProbeHost {
    url: String,
    _scratch: Scratch,
}

/// The store data of the probe host: WASI with a preopened `/tmp`, and wasi-http.
struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: NoOutbound,
}

/// The probe makes no outbound requests; any would be refused.
struct NoOutbound;

type Sent = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for NoOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Sent,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, Sent), wasmtime_wasi_http::Error>>
            + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl ProbeHost {
    async fn start(mode: Mode) -> ProbeHost {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = Scratch(
            std::env::temp_dir().join(format!("tabula-probe-host-{}-{n}", std::process::id())),
        );
        let tmp = scratch.0.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let wasm = scratch.0.join("probe.wasm");
        let (status, stderr) =
            crate::harness::run_tabula(&["check", "--write-probe", wasm.to_str().unwrap()]);
        assert!(status.success(), "{stderr}");

        let engine = Engine::default();
        let component = Component::from_file(&engine, &wasm).unwrap();
        let mut linker = Linker::<HostState>::new(&engine);
        // All of WASI (the probe uses the filesystem, which the proxy world lacks), and HTTP.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
        let pre = ProxyPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        let host = Arc::new(Host {
            engine,
            pre,
            tmp,
            mode,
            instance: tokio::sync::Mutex::new(None),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let host = host.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let host = host.clone();
                        async move { host.handle(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ProbeHost {
            url,
            _scratch: scratch,
        }
    }
}

struct Host {
    engine: Engine,
    pre: ProxyPre<HostState>,
    tmp: PathBuf,
    mode: Mode,
    /// The instance kept across requests ([`Mode::ReuseOneInstance`]).
    instance: tokio::sync::Mutex<Option<(Store<HostState>, Proxy)>>,
}

impl Host {
    fn store(&self) -> Store<HostState> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.preopened_dir(&self.tmp, "/tmp", FsPerms::ReadWrite)
            .unwrap();
        if self.mode == Mode::FreshButSeededTheSame {
            wasi.secure_random(wasmtime_wasi::Deterministic::new(vec![42; 64]))
                .insecure_random_seed(42);
        }
        Store::new(
            &self.engine,
            HostState {
                wasi: wasi.build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                hooks: NoOutbound,
            },
        )
    }

    /// Runs `req` in the kept instance (made on the first request), or in a fresh one; one
    /// request at a time.
    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> anyhow::Result<hyper::Response<http_body_util::Full<bytes::Bytes>>> {
        use http_body_util::BodyExt;
        let mut kept = self.instance.lock().await;
        if kept.is_none() || self.mode == Mode::FreshButSeededTheSame {
            let mut store = self.store();
            let proxy = self.pre.instantiate_async(&mut store).await?;
            *kept = Some((store, proxy));
        }
        let (store, proxy) = kept.as_mut().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        let call = proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut *store, req, out);
        let (called, response) = tokio::join!(call, async {
            let response = rx.await??;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(hyper::Response::from_parts(
                parts,
                http_body_util::Full::new(body),
            ))
        });
        called?;
        response
    }
}
