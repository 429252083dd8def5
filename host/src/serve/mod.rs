//! The process model of `tabula up` and `tabula serve`: which store, which apps, one process
//! or a supervisor with workers (`supervisor.rs`), the operator listener (`operator.rs`), and
//! the signals that start a graceful drain.

mod operator;
mod supervisor;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::app::App;
use crate::config::{AppSpec, HostConfig};
use crate::deploy::admin::{self, AdminConfig};
use crate::deploy::artifacts::Sharing;
use crate::deploy::cache::{CompileCache, Compiled};
use crate::deploy::registry::{self, Process, Registry};
use crate::deploy::replica::{self, Agent};
use crate::listener::{self, ServerConfig};
use crate::project::{self, BuildOptions};
use crate::request::front;
use crate::request::router::{Router, Routes};
use crate::runtime::Runtime;
use crate::storage;
use operator::{MetricsSource, Readiness};
use supervisor::{Supervisor, WorkDir, WorkerSetup};

/// What `tabula up` and `tabula serve` were asked to do.
pub struct ServeOptions {
    /// Projects, directories of projects and components to serve (see [`project::build`]).
    pub paths: Vec<String>,
    /// How projects are built.
    pub build: BuildOptions,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the operator listener listens, if anywhere.
    pub operator_listen: Option<String>,
    /// Processes serving requests; more than one needs a shared store.
    pub processes: NonZeroUsize,
    /// Where apps keep state: a `--store` value (see [`storage::open`]).
    pub store: String,
    /// The host's configuration.
    pub host: HostConfig,
    /// How the HTTP front protects itself.
    pub server: ServerConfig,
    /// The admin API's address and settings, if it is to be served.
    pub admin: Option<(String, AdminConfig)>,
    /// Where compiled components (deployed and fixed) are cached, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// How deployed components are shared with the other replicas, if they are.
    pub sharing: Option<Sharing>,
    /// How long the replica keeps serving, unready, between the signal and the drain.
    pub shutdown_delay: Duration,
    /// Rebuild a project when its sources change and serve the new build in place
    /// (`tabula up`).
    pub watch: bool,
}

/// Serves until SIGTERM or ctrl-c, then drains.
pub fn run(options: ServeOptions) -> Result<()> {
    let worker = WorkerSetup::from_env()?;
    if worker.is_none() && options.processes.get() > 1 && options.store == "memory" {
        bail!(
            "--processes needs a store the processes share: the in-memory store lives in one \
             process. Use --store redis://… or drop --processes"
        );
    }
    // The sources as the build below sees them, so that an edit made from now on (even
    // while the build runs, or before the watch task first runs) is rebuilt.
    let watched = options.watch.then(|| Watched::now(&options.paths));
    let specs = match &worker {
        // A worker serves what its supervisor built and compiled (`WorkerSetup::load_apps`),
        // and goes when its supervisor goes.
        Some(_) => {
            // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
            Vec::new()
        }
        None => project::build(&options.paths, &options.build)?,
    };

    // This runtime only starts things up and runs the signals, the operator listener and the
    // store's connection; requests are served by the server's own worker threads.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tabula-control")
        .enable_all()
        .build()?;
    raise_open_files_limit();
    let ServeOptions {
        listen,
        operator_listen,
        processes,
        store,
        host: host_config,
        server: server_config,
        admin,
        cache_dir,
        sharing,
        build,
        shutdown_delay,
        ..
    } = options;
    control.block_on(async move {
        // Turned on by the first signal, before the drain starts: `/readyz` then answers 503
        // so load balancers stop sending new requests. The drain waits `--shutdown-delay` for
        // them to notice; a worker process drains at once, when its supervisor (which waited)
        // passes the signal on.
        let draining = Arc::new(AtomicBool::new(false));
        let signal = shutdown_signal()?;
        let flag = draining.clone();
        let delay = if worker.is_some() {
            Duration::ZERO
        } else {
            shutdown_delay
        };
        let shutdown = async move {
            signal.await;
            flag.store(true, Ordering::Relaxed);
            if !delay.is_zero() {
                info!(?delay, "unready; draining after the shutdown delay");
                tokio::time::sleep(delay).await;
            }
        };
        let storage = open_store(&store).await?;
        let registry = Registry::new(storage.clone());
        let host = Runtime::new(host_config, storage)?;
        // One cache for the admin API's checks and this process's replica: a component
        // checked on upload is compiled once here, not twice.
        let cache = Arc::new(CompileCache::new(cache_dir, &host, sharing)?);

        if let Some(worker) = worker {
            return serve_as_worker(worker, host, registry, cache, server_config, shutdown).await;
        }

        // The replica's id: its processes' heartbeats carry it, and `/readyz` counts them.
        let group = replica::new_id()?;
        let apps = specs
            .iter()
            .map(|spec| load_through_cache(&host, &cache, spec))
            .collect::<Result<Vec<_>>>()?;
        release_free_memory();
        let workdir = match processes.get() {
            1 => None,
            _ => Some(WorkDir::create()?),
        };
        // Written before the apps move into the router: `apps[i]` was loaded from `specs[i]`.
        let compiled = workdir
            .as_ref()
            .map(|dir| supervisor::write_compiled(&apps, &specs, dir))
            .transpose()?;
        let router = Router::new(apps.clone())?;
        // A socket per process; the worker threads of a process share theirs.
        let mut listeners = listener::bind(listen, processes.get())?;
        let supervisor = workdir
            .as_ref()
            .zip(compiled)
            .map(|(dir, apps)| Supervisor {
                listeners: &listeners,
                apps,
                dir,
                drain: server_config.drain_timeout,
                group: group.clone(),
            });
        let metrics = match &supervisor {
            None => MetricsSource::Local,
            Some(supervisor) => MetricsSource::Workers(supervisor.metrics()),
        };
        let operator = match operator_listen {
            None => None,
            Some(addr) => {
                let readiness = Readiness {
                    registry: registry.clone(),
                    group: group.clone(),
                    processes: processes.get(),
                    draining: draining.clone(),
                };
                Some(start_operator(&addr, &host, metrics, &server_config, readiness).await?)
            }
        };
        let admin = match admin {
            None => None,
            Some((addr, config)) => {
                Some(start_admin(&addr, &host, &registry, &cache, config, &server_config).await?)
            }
        };
        let addr = listeners[0].local_addr()?;
        println!("tabula: serving on http://{addr}");
        for app in router.apps() {
            println!("  {:<16} http://{addr}{}", app.name(), app.route());
        }
        match supervisor {
            // One process, so one socket.
            None => {
                let listener = listeners.swap_remove(0);
                let here = Here {
                    group,
                    host,
                    registry,
                    cache,
                    router,
                    apps,
                };
                serve_here(here, listener, watched, build, server_config, shutdown).await?;
            }
            Some(supervisor) => {
                // The workers serve from the compiled files: the supervisor's copies can go.
                drop((router, apps));
                release_free_memory();
                supervisor.run(shutdown).await?
            }
        }
        for task in [operator, admin].into_iter().flatten() {
            task.abort();
        }
        Ok(())
    })
}

/// Opens the store and says whether it answers: a store that does not yet is not fatal (kv
/// calls fail as unavailable until it does).
async fn open_store(store: &str) -> Result<Arc<dyn storage::Storage>> {
    let storage = storage::open(store).await?;
    match storage.ping().await {
        Ok(()) => info!(store = storage.describe(), "store ready"),
        Err(e) => error!(
            store = storage.describe(),
            error = %e,
            "the store does not answer yet; kv calls will fail as unavailable until it does"
        ),
    }
    Ok(storage)
}

/// A worker process: serves what its supervisor compiled, and follows the registry.
async fn serve_as_worker(
    worker: WorkerSetup,
    host: Runtime,
    registry: Registry,
    cache: Arc<CompileCache>,
    server_config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let fixed = worker.load_apps(&host)?;
    let routes = Routes::new(Router::new(fixed.clone())?);
    let listener = worker.listener()?;
    let address = listener.local_addr()?.to_string();
    let process = worker.process();
    let agent = Agent::start(
        host,
        registry,
        routes.clone(),
        fixed,
        address,
        process,
        cache,
    )
    .await?;
    let metrics = tokio::spawn(async move { worker.serve_metrics().await });
    front::run(listener, routes, server_config, shutdown).await?;
    agent.leave().await;
    metrics.abort();
    Ok(())
}

/// Starts the operator listener (health, readiness, metrics) on `addr`.
async fn start_operator(
    addr: &str,
    host: &Runtime,
    metrics: MetricsSource,
    server_config: &ServerConfig,
    readiness: Readiness,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("operator listener on {addr} (in use? set --operator-listen, or `off`)")
    })?;
    println!("tabula: operator on http://{}", listener.local_addr()?);
    Ok(tokio::spawn(operator::run(
        listener,
        host.storage().clone(),
        metrics,
        server_config.clone(),
        readiness,
    )))
}

/// Starts the admin API on `addr`.
async fn start_admin(
    addr: &str,
    host: &Runtime,
    registry: &Registry,
    cache: &Arc<CompileCache>,
    config: AdminConfig,
    server_config: &ServerConfig,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin listener on {addr} (in use? set --admin-listen)"))?;
    println!("tabula: admin API on http://{}", listener.local_addr()?);
    Ok(tokio::spawn(admin::run(
        listener,
        host.clone(),
        registry.clone(),
        cache.clone(),
        config,
        server_config.clone(),
    )))
}

/// What one process serving by itself (no worker processes) is given.
struct Here {
    group: String,
    host: Runtime,
    registry: Registry,
    cache: Arc<CompileCache>,
    router: Router,
    apps: Vec<App>,
}

/// Serves in this process: the apps given, what the registry deploys, and (for `tabula up`)
/// rebuilds of the projects being watched.
async fn serve_here(
    here: Here,
    listener: std::net::TcpListener,
    watched: Option<Watched>,
    build: BuildOptions,
    server_config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let routes = Routes::new(here.router);
    let agent = Agent::start(
        here.host.clone(),
        here.registry,
        routes.clone(),
        here.apps,
        addr.to_string(),
        Process {
            group: here.group,
            index: 0,
        },
        here.cache,
    )
    .await?;
    for (name, route) in agent.deployed() {
        println!("  {name:<16} http://{addr}{route} (deployed)");
    }
    let reloads =
        watched.map(|watched| tokio::spawn(watched.reload(build, here.host, agent.clone())));
    front::run(listener, routes, server_config, shutdown).await?;
    agent.leave().await;
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    Ok(())
}

/// Loads the app of `spec` with its component from `cache` when it holds it, so a restart
/// does not compile it again (seconds for an interpreter: issue 17's start-up figures).
fn load_through_cache(host: &Runtime, cache: &CompileCache, spec: &AppSpec) -> Result<App> {
    let path = &spec.wasm;
    let loaded = std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))
        .and_then(|bytes| cache.component(host, &registry::digest(&bytes), &bytes))
        .and_then(|(component, how)| {
            let app = App::from_component(host, spec, component)?;
            // Said once the app is accepted: its imports and export are checked above.
            info!(
                app = spec.name,
                cached = how == Compiled::Cached,
                "component ready"
            );
            Ok(app)
        });
    loaded.with_context(|| format!("loading app `{}` from {}", spec.name, path.display()))
}

/// How often `tabula up` looks for changed sources.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The projects `tabula up` watches, with the fingerprint of their sources when last built.
struct Watched {
    projects: Vec<(String, PathBuf, u64)>,
}

impl Watched {
    fn now(paths: &[String]) -> Watched {
        let projects = project::projects(paths).unwrap_or_else(|e| {
            error!(error = format!("{e:#}"), "not watching the projects");
            Vec::new()
        });
        Watched {
            projects: projects
                .into_iter()
                .map(|(name, dir)| {
                    let seen = project::fingerprint(&dir);
                    (name, dir, seen)
                })
                .collect(),
        }
    }

    /// `tabula up`'s reload: rebuilds a project whose sources changed and serves the new
    /// build in place, as a deploy would (requests in flight finish on the old one). A build
    /// that fails is reported and the old build keeps serving.
    async fn reload(mut self, build: BuildOptions, host: Runtime, agent: Arc<Agent>) {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            for (name, dir, seen) in &mut self.projects {
                let now = project::fingerprint(dir);
                if now == *seen {
                    continue;
                }
                *seen = now;
                eprintln!("tabula: {name} changed; rebuilding");
                let (dir, build, host) = (dir.display().to_string(), build.clone(), host.clone());
                let rebuilt = tokio::task::spawn_blocking(move || -> Result<App> {
                    let spec = project::build(&[dir], &build)?
                        .into_iter()
                        .next()
                        .context("the project built nothing")?;
                    App::load(&host, &spec)
                })
                .await;
                match rebuilt {
                    Ok(Ok(app)) => {
                        agent.replace_fixed(app);
                        eprintln!("tabula: {name} reloaded");
                    }
                    Ok(Err(e)) => eprintln!(
                        "tabula: {name}: the build failed; still serving the previous one: {e:#}"
                    ),
                    Err(e) => eprintln!("tabula: {name}: the rebuild stopped: {e}"),
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard one: every connection is a file, and the
/// soft default (often 1024) let 1100 idle connections make `accept` fail for everyone.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open-files limit; see `ulimit -n`");
            }
        }
    }
}

/// Gives the memory that start-up work (compiling components) freed back to the system
/// instead of keeping it in the allocator: compiling an 18 MB Python component leaves
/// hundreds of MiB freed behind it.
///
/// mimalloc keeps freed memory per thread, and wasmtime compiles on rayon's threads, which
/// then sleep and never allocate again: so every one of them collects.
fn release_free_memory() {
    // SAFETY: mi_collect only returns free memory to the system.
    let collect = || unsafe { libmimalloc_sys::mi_collect(true) };
    collect();
    rayon::broadcast(|_| collect());
}

/// A future that resolves on ctrl-c or SIGTERM. The handlers are installed right away, before
/// the server announces itself: a SIGTERM that arrives during start-up must also drain, not
/// kill the process with the default action.
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
