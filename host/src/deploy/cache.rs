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
//!
//! With `--artifact-key-file`, deployed components are also shared with the other replicas
//! through the store (`artifacts.rs`): one that is not here is taken from the store, MAC
//! checked, before it is compiled, and one compiled or found here is stored for the others
//! if the store lacks it.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use wasmtime::component::Component;

use super::artifacts::{Fetched, SharedArtifacts, Sharing};
use super::registry::{digest, file_digest};
use crate::app::App;
use crate::file_lock::with_lock;
use crate::runtime::Runtime;

/// Where compiled components are kept; `None` compiles every time.
pub struct CompileCache {
    dir: Option<PathBuf>,
    fingerprint: String,
    /// Where deployed components are shared with the other replicas, if anywhere.
    shared: Option<SharedArtifacts>,
}

/// How a component was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Loaded from the cache.
    Cached,
    /// Taken from the store, where another replica shared it.
    Shared,
    /// Compiled now (and cached, if there is a cache).
    Fresh,
}

impl CompileCache {
    /// A cache in `compiled/` under `dir` (made private if missing) for `host`'s engine,
    /// sharing deployed components through `host`'s store when `sharing` says how. Call it
    /// on the runtime the store runs on.
    pub fn new(
        dir: Option<PathBuf>,
        host: &Runtime,
        sharing: Option<Sharing>,
    ) -> Result<CompileCache> {
        let dir = dir
            .map(|dir| private_dir(&dir.join("compiled")))
            .transpose()?;
        let mut hasher = DefaultHasher::new();
        host.engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let fingerprint = format!("{:016x}", hasher.finish());
        let shared = sharing.map(|sharing| {
            SharedArtifacts::new(host.storage().clone(), sharing, fingerprint.clone())
        });
        Ok(CompileCache {
            dir,
            fingerprint,
            shared,
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
        self.get(host, digest, bytes, None)
    }

    /// A deployed component, like [`CompileCache::component`], shared with the other
    /// replicas when sharing is on: taken from the store before it would be compiled, and
    /// stored there if the store lacks it. Blocks on the store: call it from a blocking
    /// thread.
    pub fn deployed(
        &self,
        host: &Runtime,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, Compiled)> {
        self.get(host, digest, bytes, self.shared.as_ref())
    }

    fn get(
        &self,
        host: &Runtime,
        digest: &str,
        bytes: &[u8],
        shared: Option<&SharedArtifacts>,
    ) -> Result<(Component, Compiled)> {
        let Some(entry) = self.entry(digest) else {
            return without_cache(host, digest, bytes, shared);
        };
        if let Some(component) = entry.load(host) {
            if let Some(shared) = shared {
                shared.offer(digest, false, || {
                    Ok(Cow::Owned(std::fs::read(&entry.code)?))
                });
            }
            return Ok((component, Compiled::Cached));
        }
        // The store is read and written under the lock too: the other processes of this
        // replica wait, then find the entry, instead of each fetching or storing it again.
        with_lock(&entry.code.with_extension("lock"), || {
            if let Some(component) = entry.load(host) {
                return Ok((component, Compiled::Cached));
            }
            let fetched = shared.map(|shared| shared.fetch(digest));
            if let Some(Fetched::Found(code)) = &fetched {
                // Mapped from the entry written from bytes whose MAC was checked (so that
                // the processes of this replica share its pages), or read from those bytes.
                let component = match entry.store(code) {
                    Ok(()) => map(host, &entry.code),
                    Err(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "could not cache a compiled component"
                        );
                        deserialize(host, digest, code)
                    }
                };
                if let Some(component) = component {
                    return Ok((component, Compiled::Shared));
                }
            }
            let compiled = App::compile(host, bytes)?;
            let code = compiled.serialize()?;
            if let Some(shared) = shared {
                let replace = matches!(fetched, Some(Fetched::Refused));
                shared.offer(digest, replace, || Ok(Cow::Borrowed(&code)));
            }
            if let Err(e) = entry.store(&code) {
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

/// The component `digest` with no compile cache: from the store if it has it, else compiled
/// (and stored for the others).
fn without_cache(
    host: &Runtime,
    digest: &str,
    bytes: &[u8],
    shared: Option<&SharedArtifacts>,
) -> Result<(Component, Compiled)> {
    let fetched = shared.map(|shared| shared.fetch(digest));
    if let Some(Fetched::Found(code)) = &fetched
        && let Some(component) = deserialize(host, digest, code)
    {
        return Ok((component, Compiled::Shared));
    }
    let compiled = App::compile(host, bytes)?;
    if let Some(shared) = shared {
        let replace = matches!(fetched, Some(Fetched::Refused));
        shared.offer(digest, replace, || Ok(Cow::Owned(compiled.serialize()?)));
    }
    Ok((compiled, Compiled::Fresh))
}

/// The component in `code`, a shared artifact of component `digest` whose MAC was checked.
fn deserialize(host: &Runtime, digest: &str, code: &[u8]) -> Option<Component> {
    // SAFETY: the bytes fit the MAC that only a replica holding the fleet's key can make,
    // over this component's digest and this engine's fingerprint: they are what a replica
    // compiled. wasmtime checks that they were compiled by this version and configuration.
    match unsafe { Component::deserialize(host.engine(), code) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(
                component = digest,
                error = %e,
                "a shared artifact does not fit this engine; compiling"
            );
            None
        }
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

    /// Writes compiled code `bytes` (as wasmtime serialized it) and its record, each through
    /// a rename so a reader never sees half a file.
    fn store(&self, bytes: &[u8]) -> Result<()> {
        let unique = format!("tmp-{}", std::process::id());
        let tmp_code = self.code.with_extension(&unique);
        std::fs::write(&tmp_code, bytes)?;
        std::fs::rename(&tmp_code, &self.code)?;
        let tmp_record = self.record.with_extension(&unique);
        let code = digest(bytes);
        std::fs::write(&tmp_record, self.record_for(&code))?;
        std::fs::rename(&tmp_record, &self.record)?;
        Ok(())
    }
}

/// The component compiled into `code`, mapped from the file, once its record is known good.
fn map(host: &Runtime, code: &Path) -> Option<Component> {
    // SAFETY: the file is what this process family wrote into a directory only this user
    // can write, checked against the record written beside it (or just written from the
    // component, or from a shared artifact whose MAC was checked); entries are replaced by rename and never written in place, so the mapping
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
