//! Compiled components on local disk, by digest and engine fingerprint, so a restarted
//! replica loads a deployed app in milliseconds instead of compiling it again.
//!
//! It is a cache, never trusted blindly: each entry is stored with a record of what it is
//! (the digest of the component it was compiled from, the engine's fingerprint and the
//! sha-256 of the compiled code), checked before wasmtime loads it, so an entry damaged, or
//! copied over another component's, is never served as that component; wasmtime itself
//! refuses code built by another version or configuration. An entry that fails a check is
//! compiled again and replaced.
//!
//! What is in the cache becomes machine code, so entries live in a directory of tabula's
//! own, `compiled/` inside the `--cache-dir`, created private to the user (0700). An
//! existing directory is never changed: `--cache-dir /tmp` must not make `/tmp` private
//! (as root, that breaks the machine), and a `compiled/` that is not private and the user's
//! is refused, not repaired.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use wasmtime::component::Component;

use super::registry::{digest, file_digest};
use crate::app::App;
use crate::file_lock::with_lock;
use crate::runtime::Runtime;

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
    /// A cache in `compiled/` under `dir` (made private if missing) for `host`'s engine.
    pub fn new(dir: Option<PathBuf>, host: &Runtime) -> Result<CompileCache> {
        let dir = dir
            .map(|dir| private_dir(&dir.join("compiled")))
            .transpose()?;
        let mut hasher = DefaultHasher::new();
        host.engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        Ok(CompileCache {
            dir,
            fingerprint: format!("{:016x}", hasher.finish()),
        })
    }

    /// The entry of component `digest`: its compiled code and the record of what it is.
    fn entry(&self, digest: &str) -> Option<Entry> {
        let dir = self.dir.as_ref()?;
        let stem = format!("{digest}-{}", self.fingerprint);
        Some(Entry {
            code: dir.join(format!("{stem}.cwasm")),
            record: dir.join(format!("{stem}.record")),
            component: digest.to_string(),
            fingerprint: self.fingerprint.clone(),
        })
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
        host: &Runtime,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, Compiled)> {
        let Some(entry) = self.entry(digest) else {
            return Ok((App::compile(host, bytes)?, Compiled::Fresh));
        };
        if let Some(component) = entry.load(host) {
            return Ok((component, Compiled::Cached));
        }
        with_lock(&entry.code.with_extension("lock"), || {
            if let Some(component) = entry.load(host) {
                return Ok((component, Compiled::Cached));
            }
            let compiled = App::compile(host, bytes)?;
            if let Err(e) = entry.store(&compiled) {
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
            let component = map(host, &entry.code).unwrap_or(compiled);
            Ok((component, Compiled::Fresh))
        })
    }
}

/// `dir`, created private to the user if missing (with any missing parents), and refused if
/// it is there but not private and the user's. Never changes an existing directory.
fn private_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the compile cache {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("reading the compile cache {}", dir.display()))?;
    // SAFETY: geteuid only reads the process's effective user id.
    let me = unsafe { libc::geteuid() };
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() || meta.uid() != me || mode & 0o077 != 0 {
        bail!(
            "the compile cache {} is not a private directory of this user (uid {}, mode {:o}; \
             needed: uid {me}, mode 700): what is in it becomes machine code, so tabula will \
             not use or change it. Remove it (tabula makes it again, private), or give \
             --cache-dir another directory",
            dir.display(),
            meta.uid(),
            mode,
        );
    }
    Ok(dir.to_path_buf())
}

/// One component's place in the cache.
struct Entry {
    /// The compiled code, exactly as wasmtime serialized it (so it can be mapped).
    code: PathBuf,
    /// What the code is: see [`Entry::record_for`].
    record: PathBuf,
    /// The digest of the component the entry is for.
    component: String,
    /// The engine's fingerprint.
    fingerprint: String,
}

impl Entry {
    /// The record that binds compiled code whose sha-256 is `code` to this entry's component
    /// and engine: an entry copied to another component's name, or the code of another
    /// compile put under this record, no longer fits.
    fn record_for(&self, code: &str) -> String {
        format!(
            "component {}\nengine {}\ncode {code}\n",
            self.component, self.fingerprint
        )
    }

    /// The component in the entry, if it is there and its record fits.
    fn load(&self, host: &Runtime) -> Option<Component> {
        let record = std::fs::read_to_string(&self.record).ok()?;
        let code = file_digest(&self.code).ok()?;
        if record != self.record_for(&code) {
            tracing::warn!(
                entry = %self.code.display(),
                "a compile cache entry is not this component's or is damaged; compiling again"
            );
            return None;
        }
        map(host, &self.code)
    }

    /// Writes `component`'s compiled code and its record, each through a rename so a reader
    /// never sees half a file.
    fn store(&self, component: &Component) -> Result<()> {
        let bytes = component.serialize()?;
        let unique = format!("tmp-{}", std::process::id());
        let tmp_code = self.code.with_extension(&unique);
        std::fs::write(&tmp_code, &bytes)?;
        std::fs::rename(&tmp_code, &self.code)?;
        let tmp_record = self.record.with_extension(&unique);
        let code = digest(&bytes);
        std::fs::write(&tmp_record, self.record_for(&code))?;
        std::fs::rename(&tmp_record, &self.record)?;
        Ok(())
    }
}

/// The component compiled into `code`, mapped from the file, once its record is known good.
fn map(host: &Runtime, code: &Path) -> Option<Component> {
    // SAFETY: the file is what this process family wrote into a directory only this user
    // can write, checked against the record written beside it (or just written from the
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
