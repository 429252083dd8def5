//! The `tabula` command: flags and environment variables into the library's configuration,
//! plus the few choices that depend on how it was started: the store for each mode
//! (`memory` for `up`, required for `serve`), the worker-process count, the rule that an
//! admin listener needs a token, and the `--access-log off` check. What serving means is
//! [`tabula::serve`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tabula::config::{
    Allocator, CompileLimits, HostConfig, KvLimits, RequestBounds, SecretPolicy, SessionDefaults,
    TmpQuota,
};
use tabula::deploy::CanaryPlan;
use tabula::deploy::admin::AdminConfig;
use tabula::deploy::artifacts::{ArtifactKey, Sharing};
use tabula::deploy::{check, client};
use tabula::listener::ServerConfig;
use tabula::project::{self, BuildOptions, CliVariable, Lang};
use tabula::serve::ServeOptions;
use tabula::storage::Layout;

/// Every request allocates and frees a little (its store, its WASI contexts, hyper's buffers),
/// on every worker thread. mimalloc's thread-local heaps make that cheaper than glibc's
/// arenas, and it gives freed memory back to the system instead of keeping each thread's
/// high-water mark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run HTTP handlers as WebAssembly components, each request in a fresh instance.
///
/// Every flag can also be set through the environment variable shown with it.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,

    /// Log format.
    #[arg(long, global = true, env = "TABULA_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    /// Log filter, e.g. `info`, `tabula=debug,guest=info`.
    #[arg(long, global = true, env = "TABULA_LOG", default_value = "info")]
    log: String,
}

#[derive(Subcommand)]
enum Commands {
    /// Local development: build handler projects and serve them.
    ///
    /// Each PATH is a project directory (it has a tabula.toml), a directory of projects, a .wasm
    /// component (served at /), or ROUTE=FILE.wasm. Projects are built first: Rust with cargo
    /// for wasm32-wasip2, Python (`lang = "python"`) with componentize-py, JavaScript
    /// (`lang = "js"`) with componentize-js.
    Up(ServeArgs),
    /// Production server: serve components (or projects, built first) on the listen address,
    /// and every app deployed to the store (with no PATH, only those).
    Serve(ServeArgs),
    /// Build handler projects (Rust, Python, JavaScript) into components and print where each
    /// is: `NAME<TAB>ROUTE<TAB>PATH` per line.
    Build(BuildArgs),
    /// Deploy a project (built first) or a .wasm component to running hosts, through the
    /// admin API of any of them; every replica switches at once, or with --canary the new
    /// version gets a growing share of the requests and goes back by itself if it fails.
    Deploy(DeployArgs),
    /// List the deployed apps and their active versions.
    Apps(AdminArgs),
    /// Show an app's versions, the active one, and which replica runs which.
    Versions {
        /// The app.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Switch an app back to its previous version, or to VERSION (e.g. v3). During a
    /// canary (`deploy --canary`), without VERSION: end the canary, back to the active
    /// version.
    Rollback {
        /// The app.
        name: String,
        /// The version to switch to [default: the one before the active one].
        version: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Finish an app's canary (`deploy --canary`): its version becomes the active one on
    /// every replica.
    Promote {
        /// The app.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a deployed app from every replica.
    Rm {
        /// The app.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check that a running fleet keeps nothing between requests: deploy a probe through the
    /// admin API, send it many requests at once through every URL, remove it, and report
    /// what survived between requests (linear memory, globals, /tmp, environment, randomness
    /// seeded the same) or differed between replicas (versions, clocks, what a guest is
    /// given). Exits 0 when clean, 1 on findings, 2 when the check could not run, 130 when
    /// interrupted (SIGINT or SIGTERM; the probe is removed first).
    Check(CheckArgs),
    /// Create a handler project in a new directory NAME, ready to build, test and deploy.
    New {
        /// The directory and the app's name.
        name: String,

        /// The language: `rust` (the SDK, with a native test), `python` (built with
        /// componentize-py) or `js` (built with componentize-js).
        #[arg(long, default_value = "rust")]
        lang: Lang,
    },
    /// Work on the backing store itself.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Move an app's keys written before keys were spread over the cluster (all under
    /// `tabula:{APP}:`, kv keys and sessions) into its layout, counted in its quota. A key
    /// already written in the new layout is kept. Safe to run while the app serves, and to
    /// run again.
    Migrate {
        /// The app.
        app: String,
        /// The store, as `serve --store` takes it.
        #[arg(long, env = "TABULA_STORE")]
        store: String,
        /// The app's layout: its manifest's `[kv] layout`.
        #[arg(long, env = "TABULA_KV_LAYOUT", default_value = "spread")]
        layout: Layout,
    },
}

#[derive(Args)]
struct AdminArgs {
    /// The admin API of any host of the fleet (its --admin-listen). The token is read from
    /// TABULA_ADMIN_TOKEN.
    #[arg(
        long,
        env = "TABULA_ADMIN_URL",
        default_value = "http://127.0.0.1:9091"
    )]
    admin_url: String,
}

#[derive(Args)]
struct CheckArgs {
    /// Where the fleet serves apps: every replica's address, or a load balancer's (e.g.
    /// `http://10.0.0.5:8080`). The probe's route is appended.
    #[arg(required_unless_present_any = ["probe_url", "write_probe"])]
    urls: Vec<String>,

    /// Requests sent to each URL.
    #[arg(long, env = "TABULA_CHECK_REQUESTS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,

    /// Requests in flight at once to each URL.
    #[arg(long, env = "TABULA_CHECK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,

    /// Check the probe where it is already served, at exactly this URL (repeat for more),
    /// on a host without tabula's admin API (e.g. `wasmtime serve`): nothing is deployed or
    /// removed. --write-probe writes the probe to serve there.
    #[arg(long, value_name = "URL", conflicts_with = "urls")]
    probe_url: Vec<String>,

    /// Write the probe component to FILE, to serve it on another host, and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["urls", "probe_url"])]
    write_probe: Option<PathBuf>,

    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
struct DeployArgs {
    /// A project directory (with a tabula.toml) or a .wasm component.
    #[arg(default_value = ".")]
    path: PathBuf,

    /// The app's name [default: the manifest's, or the file's].
    #[arg(long)]
    name: Option<String>,

    /// The app's route [default: the manifest's, or /NAME].
    #[arg(long)]
    route: Option<String>,

    /// A note kept with the version, shown by `tabula versions`.
    #[arg(long, short, default_value = "")]
    message: String,

    /// A directory served read-only to the app at /app [default: the manifest's `assets`].
    #[arg(long)]
    assets: Option<PathBuf>,

    /// Cargo target directory for the build (default: the project's own).
    #[arg(long, env = "TABULA_TARGET_DIR")]
    target_dir: Option<PathBuf>,

    #[command(flatten)]
    variables: VariableArgs,

    #[command(flatten)]
    canary: CanaryArgs,

    #[command(flatten)]
    admin: AdminArgs,
}

/// A gradual rollout: `tabula deploy --canary`.
#[derive(Args)]
struct CanaryArgs {
    /// Roll out as a canary: the new version gets this share of the app's requests on every
    /// replica (the rest stay on the active version), then each next share once the last
    /// lasted --canary-interval with its checks passed; reaching 100 makes it the active
    /// version. E.g. `10`, or `10,50,100`. A share under 100 at the end holds until
    /// `tabula promote` or `tabula rollback`. Clients keep their version through it by their
    /// session cookie or a `tabula-version-key` header; others are split at random.
    #[arg(long, env = "TABULA_CANARY", value_name = "PERCENT[,PERCENT...]")]
    canary: Option<String>,

    /// Seconds each canary step lasts at least (or with a unit: `90s`, `5m`, `1h`).
    #[arg(long, env = "TABULA_CANARY_INTERVAL", default_value_t = CanaryPlan::INTERVAL_SECS, value_parser = seconds)]
    canary_interval: u64,

    /// Seconds of requests the canary's checks look back over (or `30s`, `5m`, ...).
    #[arg(long, env = "TABULA_CANARY_WINDOW", default_value_t = CanaryPlan::WINDOW_SECS, value_parser = seconds)]
    canary_window: u64,

    /// Percentage points by which the canary's error rate (5xx, traps, timeouts) over the
    /// window may exceed the active version's; beyond them every replica goes back to the
    /// active version by itself, whether or not this command still runs.
    #[arg(long, env = "TABULA_CANARY_MAX_ERROR_EXCESS", default_value_t = CanaryPlan::MAX_ERROR_EXCESS)]
    canary_max_error_excess: f64,

    /// Requests the canary must have had in the window before it is judged; with fewer it
    /// neither rolls back nor advances.
    #[arg(long, env = "TABULA_CANARY_MIN_REQUESTS", default_value_t = CanaryPlan::MIN_REQUESTS)]
    canary_min_requests: u64,
}

impl CanaryArgs {
    /// The plan asked for, if --canary was given.
    fn plan(&self) -> Result<Option<CanaryPlan>> {
        let Some(steps) = &self.canary else {
            return Ok(None);
        };
        let plan = CanaryPlan {
            steps: CanaryPlan::steps(steps).context("--canary")?,
            interval_secs: self.canary_interval,
            window_secs: self.canary_window,
            max_error_excess: self.canary_max_error_excess,
            min_requests: self.canary_min_requests,
        };
        plan.check()?;
        Ok(Some(plan))
    }
}

/// A whole number of seconds, as `90`, `90s`, `5m` or `1h`.
fn seconds(value: &str) -> Result<u64, String> {
    let (number, unit) = match value.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => value.split_at(at),
        None => (value, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if scale > 0 => Ok(n * scale),
        _ => Err(format!(
            "`{value}` is not a time: write e.g. `90s`, `5m` or `1h`"
        )),
    }
}

/// An app's variables from the command line, which it reads through `wasi:config/store`
/// (and the SDKs' `config`). They override the manifest's `[variables]`.
#[derive(Args)]
struct VariableArgs {
    /// A variable, for every app given or for APP only (repeat for more): e.g. `--var
    /// greeting=hello`, `--var shop:currency=EUR`.
    #[arg(long = "var", value_name = "[APP:]NAME=VALUE", value_parser = CliVariable::value)]
    vars: Vec<CliVariable>,

    /// A secret: its value is tabula's environment variable ENV_VAR, read where the app loads
    /// (on every replica, for a deploy). Only the reference is stored or sent; the value never
    /// appears in logs or metrics. ENV_VAR must start with the host's --secret-prefix
    /// (TABULA_SECRET_ by default). E.g. `--secret api_key=TABULA_SECRET_ACME_API_KEY`.
    #[arg(long = "secret", value_name = "[APP:]NAME=ENV_VAR", value_parser = CliVariable::secret)]
    secrets: Vec<CliVariable>,
}

impl VariableArgs {
    fn into_vec(self) -> Vec<CliVariable> {
        self.vars.into_iter().chain(self.secrets).collect()
    }
}

#[derive(Args)]
struct BuildArgs {
    /// Projects, directories of projects, or components [default for `up` and `build`: the
    /// current directory; `serve` without any serves only what is deployed].
    paths: Vec<String>,

    /// Cargo target directory for guest builds (default: each project's own).
    #[arg(long, env = "TABULA_TARGET_DIR")]
    target_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    build: BuildArgs,

    #[command(flatten)]
    variables: VariableArgs,

    /// Address to listen on. Port 0 picks a free port; the address is printed.
    #[arg(long, env = "TABULA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Operator listener (`/metrics`, `/healthz`, `/readyz`), or `off`. Keep it private
    /// [default: 127.0.0.1:9090 for `serve`; for `up` a free port, printed, so that two `up`
    /// on one machine do not collide].
    #[arg(long, env = "TABULA_OPERATOR_LISTEN")]
    operator_listen: Option<String>,

    /// Instances alive at once across all apps; more concurrent requests get 503.
    #[arg(long, env = "TABULA_MAX_INSTANCES", default_value_t = HostConfig::default().max_instances)]
    max_instances: u32,

    /// Largest linear memory an instance may have, in MiB.
    #[arg(long, env = "TABULA_MAX_MEMORY_MIB", default_value_t = HostConfig::default().max_memory_bytes >> 20)]
    max_memory_mib: usize,

    /// Instances of one app alive at once; beyond it requests queue (see --queue-timeout).
    #[arg(long, env = "TABULA_MAX_CONCURRENCY", default_value_t = HostConfig::default().max_concurrency)]
    max_concurrency: u32,

    /// Seconds a request over an app's concurrency limit waits for an instance to end before
    /// it gets 503.
    #[arg(long, env = "TABULA_QUEUE_TIMEOUT", default_value_t = HostConfig::default().queue_timeout.as_secs_f64())]
    queue_timeout: f64,

    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, env = "TABULA_MAX_BODY_BYTES", default_value_t = HostConfig::default().max_body_bytes)]
    max_body_bytes: u64,

    /// Longest kv key in bytes. Apps may lower it.
    #[arg(long, env = "TABULA_KV_MAX_KEY_BYTES", default_value_t = KvLimits::default().max_key_bytes)]
    kv_max_key_bytes: u32,

    /// Largest kv value in bytes. Apps may lower it.
    #[arg(long, env = "TABULA_KV_MAX_VALUE_BYTES", default_value_t = KvLimits::default().max_value_bytes)]
    kv_max_value_bytes: u32,

    /// Keys one app may keep in the store (0: no limit). Past it, writes of new keys fail
    /// with "storage quota exceeded". Apps may lower it.
    #[arg(long, env = "TABULA_KV_MAX_KEYS", default_value_t = KvLimits::default().max_keys)]
    kv_max_keys: u64,

    /// Bytes one app may keep in the store, each key's name plus its value (0: no limit).
    /// Apps may lower it.
    #[arg(long, env = "TABULA_KV_MAX_BYTES", default_value_t = KvLimits::default().max_bytes)]
    kv_max_bytes: u64,

    /// Bytes a request may keep in its `/tmp`; writes past it fail with no-space.
    #[arg(long, env = "TABULA_TMP_MAX_BYTES", default_value_t = TmpQuota::default().max_bytes)]
    tmp_max_bytes: u64,

    /// Files and directories a request may create in its `/tmp`.
    #[arg(long, env = "TABULA_TMP_MAX_FILES", default_value_t = TmpQuota::default().max_files)]
    tmp_max_files: u64,

    /// Processes serving requests, sharing the listener and the store and nothing else:
    /// a number, or `auto`: one per core for `tabula serve` with a shared store (Redis), else
    /// one (`--store memory` lives in one process; `tabula up` reloads in one). Why per core:
    /// a fresh instance's first writes to its memory image fault in copies of its pages,
    /// and in a process with threads on other cores each fault interrupts those cores; a
    /// process of one thread interrupts nobody. That nearly doubles the req/s of an 18 MB
    /// Python component on 2 cores and is even for small ones (docs/operating.md, "Threads and processes").
    #[arg(long, env = "TABULA_PROCESSES", default_value = "auto", value_parser = parse_processes)]
    processes: Processes,

    /// Threads serving requests in each process, each with its own connections and instances
    /// [default: the cores divided among the processes].
    #[arg(long, env = "TABULA_WORKERS")]
    workers: Option<std::num::NonZeroUsize>,

    /// Connections open at once; more wait in the kernel's accept queue.
    #[arg(long, env = "TABULA_MAX_CONNECTIONS", default_value_t = ServerConfig::default().max_connections)]
    max_connections: usize,

    /// Largest request head (all headers) in bytes; larger ones get 431.
    #[arg(long, env = "TABULA_MAX_HEADER_BYTES", default_value_t = ServerConfig::default().max_header_bytes)]
    max_header_bytes: usize,

    /// Seconds a new connection has to send its first request's headers (whatever the
    /// protocol), a client has to send a request's headers, and to start its next request on
    /// an idle kept-alive HTTP/1 connection; slower clients are disconnected.
    #[arg(long, env = "TABULA_HEADER_TIMEOUT", default_value_t = ServerConfig::default().header_timeout.as_secs_f64())]
    header_timeout: f64,

    /// Seconds a connection may stay open with no request in flight (HTTP/2 connections that
    /// only answer PINGs too); then it is closed (GOAWAY for HTTP/2).
    #[arg(long, env = "TABULA_IDLE_TIMEOUT", default_value_t = ServerConfig::default().idle_timeout.as_secs_f64())]
    idle_timeout: f64,

    /// Seconds a write to a client may make no progress (it stopped reading) before the
    /// connection is closed and its request's instance stopped.
    #[arg(long, env = "TABULA_WRITE_TIMEOUT", default_value_t = ServerConfig::default().write_timeout.as_secs_f64())]
    write_timeout: f64,

    /// Seconds a request body (an app's request or an admin upload) may keep the server
    /// waiting at a time; in all it may keep it waiting this long plus a second per
    /// --body-min-rate bytes received. Slower bodies get 408, so a trickling client cannot
    /// hold an instance or one of the admin listener's connections.
    #[arg(long, env = "TABULA_BODY_TIMEOUT", default_value_t = RequestBounds::default().body_timeout.as_secs_f64())]
    body_timeout: f64,

    /// Bytes per second a request body must keep up, beyond --body-timeout (see there).
    #[arg(long, env = "TABULA_BODY_MIN_RATE", default_value_t = RequestBounds::default().body_min_rate)]
    body_min_rate: u64,

    /// MiB of host memory one request may make the host hold for it beyond its linear
    /// memory: /tmp contents, file names, open descriptors and listings, kv CAS handles and
    /// batch answers, header fields it builds. Past it, the call fails.
    #[arg(long, env = "TABULA_REQUEST_HOST_MEMORY_MIB", default_value_t = RequestBounds::default().host_memory_bytes >> 20)]
    request_host_memory_mib: u64,

    /// Resource handles (streams, descriptors, fields, buckets, ...) a request may hold at once;
    /// past it, the guest is stopped.
    #[arg(long, env = "TABULA_MAX_RESOURCES", default_value_t = RequestBounds::default().max_resources)]
    max_resources: usize,

    /// Bytes of guest stdout and stderr logged per request; the rest is dropped and counted.
    #[arg(long, env = "TABULA_GUEST_LOG_MAX_BYTES", default_value_t = RequestBounds::default().log_bytes)]
    guest_log_max_bytes: usize,

    /// Lines of guest stdout and stderr logged per request; the rest is dropped and counted.
    #[arg(long, env = "TABULA_GUEST_LOG_MAX_LINES", default_value_t = RequestBounds::default().log_lines)]
    guest_log_max_lines: usize,

    /// Log a line per request (`--access-log`, `--access-log=off`) once its response is over
    /// (`served`, at `info`, with the request's id, app, method and path, its status and
    /// time, and `aborted` for a body cut short or left by the client) [default: on for
    /// `tabula up`, off for `tabula serve`]. Off in production because
    /// at tens of thousands of requests a second the line costs 8-9% of the throughput, and
    /// /metrics counts requests by app and status anyway. Failures and guest output are logged
    /// either way, naming the request.
    #[arg(
        long,
        env = "TABULA_ACCESS_LOG",
        value_name = "on|off",
        num_args = 0..=1,
        require_equals = true,
        hide_possible_values = true,
        default_missing_value = "on",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    access_log: Option<bool>,

    /// What a secret (`--secret`, `{ env = ... }` in [variables], a deploy's) may name: only
    /// environment variables that start with this prefix. A deploy naming another fails, so
    /// a deployer cannot read the host's own environment (the admin token, the store's
    /// password, cloud credentials). tabula's own settings (TABULA_* outside TABULA_SECRET_*)
    /// are refused whatever the prefix; an empty prefix allows every other variable.
    #[arg(long, env = "TABULA_SECRET_PREFIX", default_value = tabula::config::DEFAULT_SECRET_PREFIX)]
    secret_prefix: String,

    /// Seconds in-flight requests get to finish after SIGTERM or ctrl-c.
    #[arg(long, env = "TABULA_DRAIN_TIMEOUT", default_value_t = ServerConfig::default().drain_timeout.as_secs_f64())]
    drain_timeout: f64,

    /// Seconds to keep serving after SIGTERM or ctrl-c, with `/readyz` answering 503, before
    /// the drain starts. A load balancer that health-checks `/readyz` takes the replica out
    /// in this time (make it longer than its interval times its failure count); without it,
    /// a request it sends on a connection the drain is closing fails. 0 drains at once.
    #[arg(long, env = "TABULA_SHUTDOWN_DELAY", default_value_t = 0.0)]
    shutdown_delay: f64,

    /// Seconds a request may run before its instance is stopped (the client gets 500).
    #[arg(long, env = "TABULA_REQUEST_TIMEOUT", default_value_t = HostConfig::default().request_timeout.as_secs_f64())]
    request_timeout: f64,

    /// Where apps keep state: `memory` (this process only; the default for `up`),
    /// `redis://HOST:PORT[/DB]`, `rediss://…` (TLS), or `redis+cluster://HOST:PORT,HOST:PORT`.
    #[arg(long, env = "TABULA_STORE")]
    store: Option<String>,

    /// Seconds an unused session lives (its expiry slides on every use). Apps may set their
    /// own, up to --session-max-lifetime.
    #[arg(long, env = "TABULA_SESSION_IDLE_TIMEOUT", default_value_t = SessionDefaults::default().idle_timeout.as_secs())]
    session_idle_timeout: u64,

    /// Seconds any session lives at most, however busy. Apps may set their own, up to
    /// --session-max-lifetime.
    #[arg(long, env = "TABULA_SESSION_LIFETIME", default_value_t = SessionDefaults::default().lifetime.as_secs())]
    session_lifetime: u64,

    /// Seconds an app's manifest or deploy may set a session's lifetime or idle timeout to
    /// (longer asks get this, with a warning). At least --session-lifetime and
    /// --session-idle-timeout.
    #[arg(long, env = "TABULA_SESSION_MAX_LIFETIME", default_value_t = SessionDefaults::default().max_lifetime.as_secs())]
    session_max_lifetime: u64,

    /// Mark session cookies `Secure` (HTTPS only): set it when clients reach tabula over TLS.
    #[arg(long, env = "TABULA_SESSION_SECURE")]
    session_secure: bool,

    /// Largest session in bytes (names and values). Apps may lower it.
    #[arg(long, env = "TABULA_SESSION_MAX_BYTES", default_value_t = SessionDefaults::default().max_bytes)]
    session_max_bytes: u32,

    /// MiB of linear memory each pool slot keeps mapped between instances (see docs/operating.md).
    #[arg(long, env = "TABULA_KEEP_RESIDENT_MIB", default_value_t = HostConfig::default().keep_resident_bytes >> 20)]
    keep_resident_mib: usize,

    /// The admin API's address (deploys, rollbacks, `tabula apps`); off unless given. Needs
    /// TABULA_ADMIN_TOKEN. Keep it private, like the operator listener.
    #[arg(long, env = "TABULA_ADMIN_LISTEN")]
    admin_listen: Option<String>,

    /// Largest component a deploy may upload, in MiB.
    #[arg(long, env = "TABULA_MAX_COMPONENT_MIB", default_value_t = 100)]
    max_component_mib: u64,

    /// Seconds a deploy waits for every replica to have the new version compiled and ready
    /// before it switches anyway (the late ones switch when they are ready).
    #[arg(long, env = "TABULA_DEPLOY_TIMEOUT", default_value_t = 120.0)]
    deploy_timeout: f64,

    /// Let a deploy take a route below or above another app's (`/shop/admin` beside
    /// `/shop`, or `/` beside anything). Off by default: the inner app receives the outer
    /// one's cookies, so allow it only where one team owns every app.
    #[arg(long, env = "TABULA_ALLOW_NESTED_ROUTES")]
    allow_nested_routes: bool,

    /// Versions of each app the registry keeps besides the active one, the one being rolled
    /// out and the one a rollback returns to. Older versions, and the stored components and
    /// assets no kept version names, are deleted after each deploy and `tabula rm`.
    #[arg(long, env = "TABULA_KEEP_VERSIONS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    keep_versions: u64,

    /// Where compiled components (deployed ones and those given as PATH) are kept across
    /// restarts, or `off`
    /// [default: $XDG_CACHE_HOME/tabula or ~/.cache/tabula].
    #[arg(long, env = "TABULA_CACHE_DIR")]
    cache_dir: Option<String>,

    /// A file holding the key (32 bytes or more, the same on every replica of the fleet)
    /// with which replicas share compiled components through the store: a replica that joins
    /// then loads what another compiled instead of compiling every deployed app itself.
    /// Artifacts are signed with it (HMAC-SHA256) and refused unless they fit, so writing to
    /// the store alone cannot make a replica run native code. Without it, nothing is shared.
    /// A file (e.g. a mounted Kubernetes Secret) rather than a value, so that the key stays
    /// out of the environment, which /proc shows and child processes inherit.
    #[arg(long, env = "TABULA_ARTIFACT_KEY_FILE", value_name = "FILE")]
    artifact_key_file: Option<PathBuf>,

    /// Largest compiled component shared through the store, in MiB (an 18 MB Python
    /// component compiles to 34 MiB); each replica compiles a larger one itself.
    #[arg(long, env = "TABULA_MAX_ARTIFACT_MIB", default_value_t = 128)]
    max_artifact_mib: u64,

    /// Most functions a component may have to compile (every core module's, plus its
    /// adapters); a larger one is refused before compiling: compile time and memory grow
    /// with it, on every replica.
    #[arg(long, env = "TABULA_MAX_COMPILE_FUNCTIONS", default_value_t = CompileLimits::default().max_functions)]
    max_compile_functions: u64,

    /// Most code a component may have to compile, in MiB (every core module's code
    /// section); a larger one is refused before compiling.
    #[arg(long, env = "TABULA_MAX_COMPILE_CODE_MIB", default_value_t = CompileLimits::default().max_code_bytes >> 20)]
    max_compile_code_mib: u64,

    /// Instance allocator: `pooling` (fast, reserves virtual memory up front) or `on-demand`.
    #[arg(long, env = "TABULA_ALLOCATOR", default_value = "pooling")]
    allocator: Allocator,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_check = matches!(cli.command, Commands::Check(_));
    let mut code = ExitCode::SUCCESS;
    let result = init_logging(cli.log_format, &cli.log).and_then(|()| match cli.command {
        Commands::Build(args) => build(&args),
        Commands::Up(args) => serve(args, Mode::Up),
        Commands::Serve(args) => serve(args, Mode::Serve),
        Commands::Deploy(args) => admin(&args.admin.admin_url, |client| async move {
            let options = client::DeployOptions {
                canary: args.canary.plan()?,
                path: args.path,
                name: args.name,
                route: args.route,
                message: args.message,
                assets: args.assets,
                build: BuildOptions {
                    target_dir: args.target_dir,
                    variables: args.variables.into_vec(),
                },
            };
            client::deploy(&client, options).await
        }),
        Commands::Apps(args) => admin(&args.admin_url, |client| async move {
            client::apps(&client).await
        }),
        Commands::Versions { name, admin: args } => admin(&args.admin_url, |client| async move {
            client::versions(&client, &name).await
        }),
        Commands::Rollback {
            name,
            version,
            admin: args,
        } => admin(&args.admin_url, |client| async move {
            client::rollback(&client, &name, version.as_deref()).await
        }),
        Commands::Promote { name, admin: args } => admin(&args.admin_url, |client| async move {
            client::promote(&client, &name).await
        }),
        Commands::Rm { name, admin: args } => admin(&args.admin_url, |client| async move {
            client::remove(&client, &name).await
        }),
        Commands::Check(args) => run_check(args).map(|outcome| code = outcome),
        Commands::New { name, lang } => project::scaffold(&name, lang),
        Commands::Store(StoreCommand::Migrate { app, store, layout }) => {
            migrate(&app, &store, layout)
        }
    });
    match result {
        Ok(()) => code,
        Err(e) => {
            // The cause chain on one line; backtraces are for bugs, not for user errors.
            eprintln!("tabula: error: {e:#}");
            // `tabula check` keeps 1 for findings, so that a script can tell them apart.
            if is_check {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `tabula check`: its exit code says what it found (see its `--help`).
fn run_check(args: CheckArgs) -> Result<ExitCode> {
    if let Some(file) = &args.write_probe {
        std::fs::write(file, check::PROBE)
            .with_context(|| format!("writing the probe to {}", file.display()))?;
        println!("{}", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let options = check::CheckOptions {
        requests: args.requests as usize,
        concurrency: args.concurrency as usize,
    };
    let outcome = if args.probe_url.is_empty() {
        let client = client::AdminClient::new(
            &args.admin.admin_url,
            std::env::var("TABULA_ADMIN_TOKEN").ok(),
        )?;
        block_on(async { check::fleet(&client, &args.urls, &options).await })??
    } else {
        block_on(check::served(&args.probe_url, &options))??
    };
    Ok(match outcome {
        check::Outcome::Clean => ExitCode::SUCCESS,
        check::Outcome::Findings => ExitCode::FAILURE,
        check::Outcome::Interrupted => ExitCode::from(130),
    })
}

fn init_logging(format: LogFormat, filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log {filter:?} is not a valid filter (try `info`)"))?;
    // Colour only for a terminal: in a file or a pipe, escape codes are noise, and they would
    // hide whether a guest managed to put control characters into the log.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(tabula::log_batch::Stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Runs an admin API command against `url`, with the token from TABULA_ADMIN_TOKEN.
fn admin<F, Fut>(url: &str, command: F) -> Result<()>
where
    F: FnOnce(client::AdminClient) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let client = client::AdminClient::new(url, std::env::var("TABULA_ADMIN_TOKEN").ok())?;
    block_on(command(client))?
}

/// Runs a CLI command's `future` on a runtime of one thread: the CLI waits on the network,
/// it does not compute.
fn block_on<F: Future>(future: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future))
}

/// `tabula store migrate`: moves `app`'s keys of the one-slot layout of old into `layout`.
fn migrate(app: &str, store: &str, layout: Layout) -> Result<()> {
    tabula::config::validate_name(app)?;
    block_on(async {
        let storage = tabula::storage::open(store).await?;
        // Counted without limits: the serving hosts apply the app's quota to what
        // comes next; the counts themselves are exact either way.
        let namespace = tabula::storage::Namespace::new(storage, app, layout, 0, 0);
        let moved = namespace.migrate_legacy().await?;
        println!("moved {moved} keys of {app} into the {layout:?} layout");
        Ok(())
    })?
}

/// PATHs, or the current directory.
fn paths_or_here(paths: &[String]) -> Vec<String> {
    if paths.is_empty() {
        vec![".".into()]
    } else {
        paths.to_vec()
    }
}

fn build(args: &BuildArgs) -> Result<()> {
    let options = BuildOptions {
        target_dir: args.target_dir.clone(),
        variables: Vec::new(),
    };
    for built in project::build(&paths_or_here(&args.paths), &options)? {
        println!("{}\t{}\t{}", built.name, built.route, built.wasm.display());
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Serve,
}

fn serve(args: ServeArgs, mode: Mode) -> Result<()> {
    let host = HostConfig {
        max_instances: args.max_instances,
        max_memory_bytes: args.max_memory_mib << 20,
        request_timeout: positive_duration(args.request_timeout, "--request-timeout")?,
        allocator: args.allocator,
        keep_resident_bytes: args.keep_resident_mib << 20,
        max_concurrency: args.max_concurrency,
        queue_timeout: Duration::try_from_secs_f64(args.queue_timeout)
            .context("--queue-timeout must be a number of seconds, 0 or more")?,
        max_body_bytes: args.max_body_bytes,
        tmp: TmpQuota {
            max_bytes: args.tmp_max_bytes,
            max_files: args.tmp_max_files,
        },
        kv: KvLimits {
            max_key_bytes: args.kv_max_key_bytes,
            max_value_bytes: args.kv_max_value_bytes,
            max_keys: args.kv_max_keys,
            max_bytes: args.kv_max_bytes,
        },
        session: SessionDefaults {
            secure: args.session_secure,
            idle_timeout: positive_duration(
                args.session_idle_timeout as f64,
                "--session-idle-timeout",
            )?,
            lifetime: positive_duration(args.session_lifetime as f64, "--session-lifetime")?,
            max_lifetime: Duration::from_secs(args.session_max_lifetime),
            max_bytes: args.session_max_bytes,
        },
        secrets: SecretPolicy::new(&args.secret_prefix),
        request: RequestBounds {
            host_memory_bytes: args.request_host_memory_mib.saturating_mul(1 << 20),
            max_resources: args.max_resources.max(1),
            log_bytes: args.guest_log_max_bytes,
            log_lines: args.guest_log_max_lines,
            body_timeout: positive_duration(args.body_timeout, "--body-timeout")?,
            body_min_rate: args.body_min_rate,
        },
        compile: CompileLimits {
            max_functions: args.max_compile_functions,
            max_code_bytes: args.max_compile_code_mib.saturating_mul(1 << 20),
        },
    };
    let session = &host.session;
    if session.lifetime.max(session.idle_timeout) > session.max_lifetime {
        bail!(
            "--session-lifetime ({} s) and --session-idle-timeout ({} s) must be at most \
             --session-max-lifetime ({} s): raise --session-max-lifetime or lower them",
            session.lifetime.as_secs(),
            session.idle_timeout.as_secs(),
            session.max_lifetime.as_secs()
        );
    }
    // `--access-log off` hands `off` to clap as an app: the flag takes a value only after `=`,
    // so that `--access-log app/` still means the flag and an app.
    if let Some(word) = args.build.paths.iter().find(|path| {
        ["on", "off", "true", "false", "yes", "no"].contains(&path.as_str())
            && !std::path::Path::new(path).exists()
    }) {
        bail!(
            "`{word}` is not a project or a component; to set the access log, join the value \
             to the flag: `--access-log={word}`"
        );
    }
    // Local development may keep state in memory; production must say where state lives.
    let store = match (args.store.as_deref(), mode) {
        (Some(store), _) => store.to_string(),
        (None, Mode::Up) => "memory".to_string(),
        (None, Mode::Serve) => bail!(
            "tabula serve needs --store (or TABULA_STORE): e.g. `--store redis://127.0.0.1:6379`, \
             or `--store memory` for one process whose state dies with it"
        ),
    };
    let cores = ServerConfig::default().workers;
    let processes = match args.processes {
        Processes::Count(n) => n,
        Processes::Auto if mode == Mode::Serve && store != "memory" => cores,
        Processes::Auto => NonZeroUsize::MIN,
    };
    let server_config = ServerConfig {
        max_connections: args.max_connections.max(1),
        header_timeout: positive_duration(args.header_timeout, "--header-timeout")?,
        idle_timeout: positive_duration(args.idle_timeout, "--idle-timeout")?,
        write_timeout: positive_duration(args.write_timeout, "--write-timeout")?,
        max_header_bytes: args.max_header_bytes,
        drain_timeout: positive_duration(args.drain_timeout, "--drain-timeout")?,
        workers: args.workers.unwrap_or_else(|| {
            NonZeroUsize::new(cores.get() / processes.get()).unwrap_or(NonZeroUsize::MIN)
        }),
        access_log: args.access_log.unwrap_or(mode == Mode::Up),
    };
    let admin = match args.admin_listen {
        None => None,
        Some(addr) => {
            let token = std::env::var("TABULA_ADMIN_TOKEN").unwrap_or_default();
            if token.len() < 16 {
                bail!(
                    "--admin-listen needs TABULA_ADMIN_TOKEN set to a secret of 16 characters or \
                     more (e.g. `export TABULA_ADMIN_TOKEN=$(openssl rand -hex 32)`): every admin \
                     call must carry it"
                );
            }
            let config = AdminConfig {
                token,
                max_component_bytes: args.max_component_mib.saturating_mul(1 << 20),
                deploy_timeout: positive_duration(args.deploy_timeout, "--deploy-timeout")?,
                allow_nested_routes: args.allow_nested_routes,
                keep_versions: args.keep_versions as usize,
            };
            Some((addr, config))
        }
    };
    let cache_dir = match args.cache_dir.as_deref() {
        Some("off") => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => project::user_cache_dir(),
    };
    let sharing = args
        .artifact_key_file
        .as_deref()
        .map(|path| -> Result<Sharing> {
            Ok(Sharing {
                key: ArtifactKey::from_file(path)?,
                max_bytes: args.max_artifact_mib.saturating_mul(1 << 20),
            })
        })
        .transpose()?;
    tabula::serve::run(ServeOptions {
        paths: match mode {
            Mode::Up => paths_or_here(&args.build.paths),
            Mode::Serve => args.build.paths,
        },
        build: BuildOptions {
            target_dir: args.build.target_dir,
            variables: args.variables.into_vec(),
        },
        listen: args.listen,
        operator_listen: match (args.operator_listen.as_deref(), mode) {
            (Some("off"), _) => None,
            (Some(addr), _) => Some(addr.to_string()),
            (None, Mode::Serve) => Some("127.0.0.1:9090".into()),
            (None, Mode::Up) => Some("127.0.0.1:0".into()),
        },
        processes,
        store,
        host,
        server: server_config,
        admin,
        cache_dir,
        sharing,
        shutdown_delay: Duration::try_from_secs_f64(args.shutdown_delay)
            .ok()
            .context("--shutdown-delay must be a number of seconds, 0 or more")?,
        watch: mode == Mode::Up,
    })
}

/// `--processes`: a count, or `auto` (resolved in [`serve`], which knows the store).
#[derive(Debug, Clone, Copy)]
enum Processes {
    Auto,
    Count(NonZeroUsize),
}

fn parse_processes(value: &str) -> Result<Processes, String> {
    match value {
        "auto" => Ok(Processes::Auto),
        n => n
            .parse()
            .map(Processes::Count)
            .map_err(|_| format!("`{n}` is not `auto` or a number of processes (1 or more)")),
    }
}

fn positive_duration(secs: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number"))
}
