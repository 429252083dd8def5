//! What the builds of Python and JavaScript projects share: running a language's tools with
//! errors that name the fix, one at a time where they share a directory, and skipping a build
//! whose sources have not changed (their tools take seconds where cargo takes none).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A language's toolchain is not installed: what to run to install it.
#[derive(Debug)]
pub struct Missing {
    program: String,
    fix: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is not installed: {}", self.program, self.fix)
    }
}

impl std::error::Error for Missing {}

/// Fails with [`Missing`] unless `program --version` runs.
pub(super) fn require(program: &str, fix: &str) -> Result<()> {
    match Command::new(program).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => Err(Missing {
            program: program.into(),
            fix: fix.into(),
        }
        .into()),
    }
}

/// Runs `command`, all its output going to our stderr (our stdout is `tabula build`'s
/// machine-readable list); `what` names it in the error.
pub(super) fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("{what}: could not start {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status}): its errors are above");
    }
    Ok(())
}

/// Runs `f` holding an exclusive lock on `dir`, so two builds (two `tabula up`, parallel
/// tests) do not install into one directory at once.
pub(super) fn locked<T>(dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::file_lock::with_lock(&dir.join(".tabula-lock"), f)
}

/// Where a project built by a language toolchain puts its component: `TARGET/tabula/NAME.wasm`
/// (`TARGET` is `--target-dir`, else the project's `target/`), beside a stamp of the sources
/// and SDK it was built from.
pub(super) struct Output {
    pub wasm: PathBuf,
    stamp: PathBuf,
    sources: String,
}

impl Output {
    pub fn new(dir: &Path, name: &str, target_dir: Option<&Path>, sdk: &Path) -> Result<Output> {
        let root = target_dir.map_or_else(|| dir.join("target"), Path::to_path_buf);
        let out = root.join("tabula");
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        Ok(Output {
            wasm: out.join(format!("{name}.wasm")),
            stamp: out.join(format!("{name}.stamp")),
            sources: format!("{:016x} {}", super::fingerprint(dir), sdk.display()),
        })
    }

    /// Whether the component there was built from these sources with this SDK.
    pub fn is_current(&self) -> bool {
        self.wasm.is_file()
            && std::fs::read_to_string(&self.stamp).is_ok_and(|stamp| stamp == self.sources)
    }

    /// Records that the component there is built from these sources.
    pub fn built(&self) -> Result<()> {
        std::fs::write(&self.stamp, &self.sources)
            .with_context(|| format!("writing {}", self.stamp.display()))
    }
}
