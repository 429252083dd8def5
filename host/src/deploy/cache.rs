//! Compiled components on local disk, by digest and engine fingerprint, so a restarted
//! replica loads a deployed app in milliseconds instead of compiling it again.
//!
//! It is a cache, never trusted blindly: each entry is stored with the sha-256 of its bytes
//! and checked against it before wasmtime loads it, and wasmtime itself refuses code built by
//! another version or configuration. An entry that fails either check is compiled again and
//! replaced. The directory is created private to the user (0700): what is in it becomes
//! machine code.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasmtime::component::Component;

use super::registry::{digest, file_digest};
use crate::app::App;
use crate::file_lock::with_lock;
use crate::host::Host;

/// Where compiled components are kept; `None` compiles every time.
pub struct CompileCache {
    dir: Option<PathBuf>,
    fingerprint: String,
}

/// How a component was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Loaded from the cache.
    Cached,
    /// Compiled now (and cached, if there is a cache).
    Fresh,
}

impl CompileCache {
    /// A cache in `dir` (made if missing) for `host`'s engine.
    pub fn new(dir: Option<PathBuf>, host: &Host) -> Result<CompileCache> {
        if let Some(dir) = &dir {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating the compile cache {}", dir.display()))?;
            let mode = std::fs::metadata(dir)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("making {} private", dir.display()))?;
            }
        }
        let mut hasher = DefaultHasher::new();
        host.engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        Ok(CompileCache {
            dir,
            fingerprint: format!("{:016x}", hasher.finish()),
        })
    }

    fn entry(&self, digest: &str) -> Option<(PathBuf, PathBuf)> {
        let dir = self.dir.as_ref()?;
        let stem = format!("{digest}-{}", self.fingerprint);
        Some((
            dir.join(format!("{stem}.cwasm")),
            dir.join(format!("{stem}.sha256")),
        ))
    }

    /// The component whose source is `bytes` (with digest `digest`): from the cache when a
    /// sound entry is there, else compiled and cached.
    ///
    /// Processes sharing the cache compile a component one at a time: the worker processes
    /// of one `tabula serve` all load a deployed app at once, and the first compiles it while
    /// the others wait and then load its entry, instead of each spending the seconds and the
    /// hundreds of MiB an interpreter's component takes to compile.
    pub fn component(
        &self,
        host: &Host,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, Compiled)> {
        let Some((code, sum)) = self.entry(digest) else {
            return Ok((App::compile(host, bytes)?, Compiled::Fresh));
        };
        if let Some(component) = cached(host, &code, &sum) {
            return Ok((component, Compiled::Cached));
        }
        with_lock(&code.with_extension("lock"), || {
            if let Some(component) = cached(host, &code, &sum) {
                return Ok((component, Compiled::Cached));
            }
            let compiled = App::compile(host, bytes)?;
            if let Err(e) = store(&compiled, &code, &sum) {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not cache a compiled component"
                );
                return Ok((compiled, Compiled::Fresh));
            }
            // Served from the entry just written (no need to check it again): its code is then
            // mapped from the file, so only the pages that run are in memory, shared with
            // every process that maps it, where the compiler's copy is all resident. An 18 MB
            // Python component's first start was ready at 183-196 MiB instead of 207.
            let component = map(host, &code).unwrap_or(compiled);
            Ok((component, Compiled::Fresh))
        })
    }
}

/// The component in the entry `code` (checked against `sum`), if it is there and sound.
fn cached(host: &Host, code: &Path, sum: &Path) -> Option<Component> {
    let found = file_digest(code).ok()?;
    let expected = std::fs::read_to_string(sum).ok()?;
    if found != expected.trim() {
        tracing::warn!(entry = %code.display(), "a compile cache entry is damaged; compiling again");
        return None;
    }
    map(host, code)
}

/// The component compiled into `code`, mapped from the file, once its digest is known good.
fn map(host: &Host, code: &Path) -> Option<Component> {
    // SAFETY: the file is what this process family wrote into a directory only this user
    // can write, checked against the digest written beside it (or just written from the
    // component); entries are replaced by rename and never written in place, so the mapping
    // keeps what was checked; wasmtime checks that they were compiled by this version and
    // configuration.
    match unsafe { Component::deserialize_file(host.engine(), code) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(entry = %code.display(), error = %e, "a compile cache entry does not fit this engine; compiling again");
            None
        }
    }
}

/// Writes `component`'s compiled code and its digest, each through a rename so a reader never
/// sees half a file.
fn store(component: &Component, code: &Path, sum: &Path) -> Result<()> {
    let bytes = component.serialize()?;
    let unique = format!("tmp-{}", std::process::id());
    let tmp_code = code.with_extension(&unique);
    std::fs::write(&tmp_code, &bytes)?;
    std::fs::rename(&tmp_code, code)?;
    let tmp_sum = sum.with_extension(&unique);
    std::fs::write(&tmp_sum, digest(&bytes))?;
    std::fs::rename(&tmp_sum, sum)?;
    Ok(())
}
