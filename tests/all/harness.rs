//! Starting the real thing: guest components are built once per test run with `tabula build`
//! (into `target/guests`, since the outer `cargo test` holds the lock on `target/`), and each
//! test starts its own `tabula serve` on a free loopback port.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The binary under test: the one this build made, or `TABULA_TEST_BINARY` (to show that a
/// test fails on an older build, e.g. one from before a fix).
pub static TABULA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("TABULA_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tabula").into())
});

/// The workspace root, where `examples/` and `tests/` live.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Built components by app name: every Rust project under `examples/` and `tests/guests/`
/// (`hello`, `counter`, `kvtool`, `fstool`, `hostile`, ...).
pub fn guests() -> &'static HashMap<String, Guest> {
    static GUESTS: OnceLock<HashMap<String, Guest>> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let target_dir = root().join("target/guests");
        // The Rust projects: the Python and JavaScript ones need their toolchains, and their
        // own tests (`polyglot.rs`) build them and say how to install those.
        let rust_projects: Vec<PathBuf> = ["examples", "tests/guests"]
            .iter()
            .flat_map(|dir| std::fs::read_dir(root().join(dir)).expect("listing projects"))
            .map(|entry| entry.expect("listing projects").path())
            .filter(|dir| dir.join("tabula.toml").is_file() && dir.join("Cargo.toml").is_file())
            .collect();
        let output = Command::new(&*TABULA)
            .current_dir(root())
            .arg("build")
            .args(&rust_projects)
            .arg("--target-dir")
            .arg(&target_dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("running `tabula build`");
        assert!(
            output.status.success(),
            "`tabula build` of the Rust projects in examples/ and tests/guests failed (see cargo's output above). Guests need \
             the wasm32-wasip2 target: `rustup target add wasm32-wasip2`"
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let mut fields = line.split('\t');
                let name = fields.next().unwrap().to_string();
                let route = fields.next().expect("route").to_string();
                let wasm = PathBuf::from(fields.next().expect("path"));
                (name, Guest { route, wasm })
            })
            .collect()
    })
}

pub struct Guest {
    pub route: String,
    pub wasm: PathBuf,
}

/// `ROUTE=PATH` arguments serving the named guests at their own routes.
pub fn app_args(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let guest = guests()
                .get(*name)
                .unwrap_or_else(|| panic!("no guest named {name} was built"));
            format!("{}={}", guest.route, guest.wasm.display())
        })
        .collect()
}

/// A running `tabula` process, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    /// The operator listener's base URL.
    pub operator: String,
    /// The admin API's base URL, when it was started with `--admin-listen`.
    pub admin: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// `tabula serve` with the named guests and the embedded store on a free loopback port.
    pub fn serve(names: &[&str]) -> Server {
        Server::serve_with("memory", names)
    }

    /// `tabula serve --store STORE` with the named guests.
    pub fn serve_with(store: &str, names: &[&str]) -> Server {
        Server::start(
            ["serve", "--store", store]
                .iter()
                .map(|s| s.to_string())
                .chain(app_args(names)),
        )
    }

    /// Runs `tabula ARGS... --listen 127.0.0.1:0` and waits until it says where it listens.
    pub fn start(args: impl IntoIterator<Item = String>) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with `env` added to tabula's environment. `--listen` and
    /// `--operator-listen` default to free loopback ports; a test that needs a replica back
    /// on the same ports (behind a load balancer) gives its own.
    pub fn start_with_env(args: impl IntoIterator<Item = String>, env: &[(&str, &str)]) -> Server {
        Server::start_program(&TABULA, args, env)
    }

    /// Like [`Server::start_with_env`], running `program` rather than the binary under test:
    /// an older build, to write data as it did.
    pub fn start_program(
        program: &str,
        args: impl IntoIterator<Item = String>,
        env: &[(&str, &str)],
    ) -> Server {
        let mut args: Vec<String> = args.into_iter().collect();
        for flag in ["--listen", "--operator-listen"] {
            if !args.iter().any(|arg| arg == flag) {
                args.extend([flag.to_string(), "127.0.0.1:0".to_string()]);
            }
        }
        let mut child = Command::new(program)
            .current_dir(root())
            .args(args)
            // One process, whatever the cores: tests that are about worker processes say
            // so (`processes.rs`), and a server is then one replica on any machine.
            .env("TABULA_PROCESSES", "1")
            .envs(env.iter().copied())
            .env("TABULA_LOG", "info")
            .env("TABULA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TABULA_CACHE_DIR", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tabula");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut operator = String::new();
        let mut admin = String::new();
        let base = loop {
            line.clear();
            let read = stdout.read_line(&mut line).unwrap_or(0);
            if let Some(addr) = line.trim().strip_prefix("tabula: operator on ") {
                operator = addr.to_string();
            }
            if let Some(addr) = line.trim().strip_prefix("tabula: admin API on ") {
                admin = addr.to_string();
            }
            if let Some(addr) = line.trim().strip_prefix("tabula: serving on ") {
                break addr.to_string();
            }
            if read == 0 || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("tabula did not start; its log:\n{}", log.lock().unwrap());
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        Server {
            child,
            base,
            operator,
            admin,
            log,
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for tabula") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tabula did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn operator_url(&self, path: &str) -> String {
        format!("{}{path}", self.operator)
    }

    /// The process id, e.g. to read its memory use.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the log contains `needle` within a few seconds: lines arrive through a pipe
    /// and a reader thread, so a line may trail the response it belongs to.
    pub fn logged(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tabula log ---\n{}", self.log());
        }
    }
}

/// A status and body read in full.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client that speaks HTTP/2 without upgrade (prior knowledge).
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    let req = hyper::Request::get(url).body(Full::default()).unwrap();
    send(client, req).await
}

/// `METHOD url` with `body`.
pub async fn request(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: impl Into<Bytes>,
) -> Reply {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body.into()))
        .unwrap();
    send(client, req).await
}

pub async fn send(client: &HttpClient, req: hyper::Request<Full<Bytes>>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("{what}: no response within 30 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("reading body");
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    }
}

/// The admin token the servers the harness starts are given.
pub const ADMIN_TOKEN: &str = "test-token-0123456789abcdef";

/// What a CLI command printed, and whether it succeeded.
pub struct CliRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the admin command `tabula ARGS... --admin-url URL` against `server`'s admin API,
/// with the token in the environment.
pub fn admin_cli(server: &Server, args: &[&str]) -> CliRun {
    admin_cli_with(&server.admin, Some(ADMIN_TOKEN), args)
}

/// Like [`admin_cli`], against `url` with `token` (or none).
pub fn admin_cli_with(url: &str, token: Option<&str>, args: &[&str]) -> CliRun {
    let mut command = Command::new(&*TABULA);
    command
        .current_dir(root())
        .args(args)
        .args(["--admin-url", url])
        .env_remove("TABULA_ADMIN_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("TABULA_ADMIN_TOKEN", token);
    }
    let output = command.output().expect("running tabula");
    CliRun {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `tabula ARGS...` to completion and returns its exit status and stderr.
pub fn run_tabula(args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = Command::new(&*TABULA)
        .current_dir(root())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tabula");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The counts a batch of concurrent counter increments answered, each checked to be a 200,
/// sorted, and checked to be consecutive: every increment saw a distinct count.
pub async fn distinct_counts(mut requests: tokio::task::JoinSet<Reply>) -> Vec<usize> {
    let mut answers = Vec::new();
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        answers.push(reply.body.trim().parse::<usize>().unwrap());
    }
    answers.sort_unstable();
    let first = answers[0];
    assert_eq!(
        answers,
        (first..first + answers.len()).collect::<Vec<_>>(),
        "each increment saw a distinct count"
    );
    answers
}

/// Sends raw bytes and returns what the server answers before it closes (or 5 s pass).
pub fn raw_exchange(server: &Server, bytes: &[u8]) -> (String, Duration) {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// The resident memory of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    memory_status(pid, "VmRSS:")
}

/// The peak resident memory of a process so far, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    memory_status(pid, "VmHWM:")
}

/// A `kB` line of `/proc/PID/status`, in bytes.
fn memory_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A server in this test process, as mini-redis's tests run theirs: `tabula::front::run` on
/// a listener bound to port 0, with a shutdown the test triggers. For tests of the library
/// that need no flag and no process of their own, and that want to look at the store the
/// server uses.
pub struct InProcess {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Serves the handler projects in `dirs` (relative to the workspace root, e.g.
    /// `tests/guests/kvtool`), built as `tabula build` builds them, with their manifests'
    /// settings, state in `storage`.
    pub fn start(
        dirs: &[&str],
        storage: Arc<dyn tabula::storage::Storage>,
        server: tabula::listener::ServerConfig,
    ) -> InProcess {
        InProcess::start_with(dirs, storage, server, |_| {})
    }

    /// Like [`InProcess::start`], with each app's spec changed by `adjust` before it loads
    /// (settings a manifest could give).
    pub fn start_with(
        dirs: &[&str],
        storage: Arc<dyn tabula::storage::Storage>,
        server: tabula::listener::ServerConfig,
        adjust: impl Fn(&mut tabula::config::AppSpec),
    ) -> InProcess {
        guests(); // Built once for every test, so the build below only checks them.
        let paths: Vec<String> = dirs
            .iter()
            .map(|dir| root().join(dir).display().to_string())
            .collect();
        let options = tabula::project::BuildOptions {
            target_dir: Some(root().join("target/guests")),
            variables: Vec::new(),
        };
        let mut specs = tabula::project::build(&paths, &options).expect("building the projects");
        specs.iter_mut().for_each(adjust);
        let host = tabula::Runtime::new(tabula::config::HostConfig::default(), storage)
            .expect("starting the host");
        let apps = specs
            .iter()
            .map(|spec| tabula::App::load(&host, spec).expect("loading an app"));
        let routes = tabula::Routes::new(tabula::Router::new(apps).expect("routing the apps"));
        let listener = tabula::listener::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let listener = listener.into_iter().next().unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let served = tokio::spawn(tabula::front::run(listener, routes, server, shutdown));
        InProcess {
            base,
            stop: Some(stop),
            served,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Starts the shutdown; `stopped` then says when the server has drained.
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `server::run` to return, after [`InProcess::shut_down`].
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.served.await.expect("the server task panicked")
    }
}
