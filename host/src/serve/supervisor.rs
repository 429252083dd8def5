//! `tabula serve --processes N`: a supervisor process and N worker processes that share the
//! listening socket and nothing else: the twelve-factor process model inside one host.
//!
//! Why processes as well as threads: giving a large instance's memory back unmaps pages, and
//! in a multi-threaded process every unmap interrupts the other cores that run the process's
//! threads so they flush their TLBs (an inter-processor interrupt each). A worker process
//! alone on its core has no one to interrupt. For a componentize-py component that was a
//! third of all CPU time; see the README's benchmarks.
//!
//! The supervisor loads (validates and compiles) every app once, writes the compiled
//! components to a private directory, and starts the workers: this same binary with the same
//! arguments and environment, plus a [`WorkerSetup`] in [`WORKER_ENV`] that hands over the
//! listening socket (an inherited descriptor) and the compiled apps. It restarts a worker that
//! dies, passes SIGTERM/ctrl-c on for a graceful drain, and serves the operator endpoints,
//! with the workers' metrics summed (each worker answers on a Unix socket in that directory).

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::app::App;
use crate::config::AppSpec;
use crate::deploy::registry::Process;
use crate::metrics;
use crate::runtime::Runtime;

/// The environment variable that makes a `tabula serve` process a worker.
pub const WORKER_ENV: &str = "TABULA_INTERNAL_WORKER";

/// What a worker process is given by its supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerSetup {
    /// The listening socket, inherited.
    listener_fd: RawFd,
    /// Each app with the file holding its compiled component.
    apps: Vec<(AppSpec, PathBuf)>,
    /// Where the worker answers the supervisor's requests for its metrics.
    metrics_socket: PathBuf,
    /// The replica the worker belongs to (see `Heartbeat::group`).
    group: String,
    /// Which of its workers this is.
    index: usize,
}

impl WorkerSetup {
    /// The setup, when this process was started as a worker.
    pub fn from_env() -> Result<Option<WorkerSetup>> {
        let Some(json) = std::env::var_os(WORKER_ENV) else {
            return Ok(None);
        };
        let json = json.to_str().context("the worker setup is not UTF-8")?;
        let setup = serde_json::from_str(json)
            .with_context(|| format!("{WORKER_ENV} is set but is not a worker setup; unset it"))?;
        Ok(Some(setup))
    }

    /// The inherited listening socket.
    pub fn listener(&self) -> Result<std::net::TcpListener> {
        // SAFETY: the supervisor left this descriptor open, and nothing else in this process
        // owns it; checked below to be a listening TCP socket.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(self.listener_fd) };
        listener
            .local_addr()
            .context("the inherited listening socket is not a TCP socket")?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Which process of which replica this worker is.
    pub fn process(&self) -> Process {
        Process {
            group: self.group.clone(),
            index: self.index,
        }
    }

    /// Loads the apps the supervisor compiled.
    pub fn load_apps(&self, host: &Runtime) -> Result<Vec<App>> {
        self.apps
            .iter()
            // SAFETY: the supervisor wrote these files into its own directory, which only
            // this user can write, with an engine configured like this one.
            .map(|(spec, compiled)| unsafe { App::load_compiled(host, spec, compiled) })
            .collect()
    }

    /// Answers the supervisor's metrics requests: each connection gets this process's
    /// metrics, rendered, and is closed.
    pub async fn serve_metrics(&self) -> Result<()> {
        let _ = std::fs::remove_file(&self.metrics_socket);
        let listener = tokio::net::UnixListener::bind(&self.metrics_socket)
            .with_context(|| format!("binding {}", self.metrics_socket.display()))?;
        loop {
            let (mut stream, _) = listener.accept().await?;
            let text = metrics::get().render();
            tokio::spawn(async move {
                let _ = stream.write_all(text.as_bytes()).await;
            });
        }
    }
}

/// The supervisor's private directory: compiled components and the workers' metrics sockets.
/// Removed when dropped.
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn create() -> Result<WorkDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("tabula-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn metrics_socket(&self, index: usize) -> PathBuf {
        self.0.join(format!("worker-{index}.sock"))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes each loaded app's compiled component into `dir`, for the workers: `apps[i]` is
/// the app loaded from `specs[i]`.
pub fn write_compiled(
    apps: &[App],
    specs: &[AppSpec],
    dir: &WorkDir,
) -> Result<Vec<(AppSpec, PathBuf)>> {
    apps.iter()
        .zip(specs)
        .map(|(app, spec)| {
            let path = dir.path().join(format!("{}.cwasm", app.name()));
            std::fs::write(&path, app.serialize()?)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok((spec.clone(), path))
        })
        .collect()
}

/// Where the supervisor's operator listener gets the workers' metrics.
#[derive(Clone)]
pub struct WorkerMetrics(Vec<PathBuf>);

impl WorkerMetrics {
    /// Every worker's metrics, summed. A worker that does not answer (it is restarting) is
    /// left out and logged.
    pub async fn render(&self) -> String {
        let mut texts = Vec::new();
        for socket in &self.0 {
            let read = async {
                let mut stream = tokio::net::UnixStream::connect(socket).await?;
                let mut text = String::new();
                stream.read_to_string(&mut text).await?;
                anyhow::Ok(text)
            };
            match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(Ok(text)) => texts.push(text),
                Ok(Err(e)) => {
                    warn!(socket = %socket.display(), error = %e, "a worker gave no metrics")
                }
                Err(_) => warn!(socket = %socket.display(), "a worker gave no metrics in 2 s"),
            }
        }
        metrics::merge(&texts)
    }
}

/// Runs a worker process per listener until `shutdown` resolves, then has them drain (up to
/// `drain` each) and returns once all have exited.
pub struct Supervisor<'a> {
    /// Worker `i` serves `listeners[i]`.
    pub listeners: &'a [std::net::TcpListener],
    pub apps: Vec<(AppSpec, PathBuf)>,
    pub dir: &'a WorkDir,
    pub drain: Duration,
    /// The replica's id, which every worker's heartbeat carries.
    pub group: String,
}

impl Supervisor<'_> {
    pub fn metrics(&self) -> WorkerMetrics {
        WorkerMetrics(
            (0..self.listeners.len())
                .map(|i| self.dir.metrics_socket(i))
                .collect(),
        )
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut running = JoinSet::new();
        let mut pids = (0..self.listeners.len())
            .map(|index| self.spawn(index, &mut running))
            .collect::<Result<Vec<_>>>()?;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(exited) = running.join_next() => {
                    let (index, status) = exited?;
                    error!(worker = index, status = %status, "worker exited; starting another in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    pids[index] = self.spawn(index, &mut running)?;
                }
            }
        }
        info!("shutting down: asking the workers to drain");
        for &pid in &pids {
            // SAFETY: signals our own child, which has not been reaped (its task still runs).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let all_exited = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(self.drain + Duration::from_secs(5), all_exited)
            .await
            .is_err()
        {
            warn!("workers did not exit in time; killing them");
            running.shutdown().await;
        }
        info!("all workers stopped");
        Ok(())
    }

    /// Starts worker `index` and returns its pid; its exit status arrives through `running`.
    fn spawn(
        &self,
        index: usize,
        running: &mut JoinSet<(usize, std::process::ExitStatus)>,
    ) -> Result<u32> {
        let listener_fd = self.listeners[index].as_raw_fd();
        let setup = WorkerSetup {
            listener_fd,
            apps: self.apps.clone(),
            metrics_socket: self.dir.metrics_socket(index),
            group: self.group.clone(),
            index,
        };
        let exe = std::env::current_exe().context("finding this executable to start workers")?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(std::env::args_os().skip(1))
            .env(WORKER_ENV, serde_json::to_string(&setup)?)
            // A worker that outlives a crashed supervisor would hold the port forever.
            .kill_on_drop(true);
        // SAFETY: between fork and exec the child only clears close-on-exec on its own
        // socket, so that this one descriptor (and no other worker's) survives the exec;
        // fcntl is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(listener_fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting a worker process")?;
        let pid = child.id().context("the worker exited at once")?;
        running.spawn(async move {
            let status = child.wait().await.unwrap_or_else(|e| {
                error!(worker = index, error = %e, "waiting for a worker failed");
                std::process::ExitStatus::default()
            });
            (index, status)
        });
        Ok(pid)
    }
}
