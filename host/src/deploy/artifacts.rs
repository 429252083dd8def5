//! Compiled components shared through the store, so that a replica joining a fleet loads
//! what another replica already compiled instead of compiling every active app itself
//! (6-15 s per interpreter app on 2 cores: minutes for a fleet of such apps).
//!
//! Compiled code is native code: wasmtime maps it and runs it outside the sandbox. Anyone who
//! can write to the store (every app's data lives there) must not be able to make a replica
//! run code of their choosing, so an artifact is taken only if its HMAC-SHA256, under a key
//! that only replicas hold (`--artifact-key-file`), fits. The MAC covers the component's
//! digest, the engine's fingerprint and every byte of the code, and is checked before
//! wasmtime sees a byte. An artifact that does not fit (forged, altered, cut short, or made
//! for another component or engine) is refused, logged, compiled again and replaced by the
//! good one. Without a key nothing is shared: each replica compiles, as it always did.
//!
//! ```text
//! tabula:artifact:{SHA256}            the component's artifacts: engine fingerprint ->
//!                                     {upload id, size, chunks, mac}
//! tabula:artifact:{SHA256}:ID:N       one upload's compiled bytes, in chunks
//! ```
//!
//! The component's own hash tag, so on a Redis Cluster its artifacts live beside its blob.
//! Each upload writes its chunks under an id of its own and then swaps the record, so a
//! reader never mixes two uploads' chunks, and the one that loses a race deletes its own.
//! Artifacts go with their component: [`Registry::collect`](super::registry::Registry)
//! deletes them after it deletes the blob, and an upload that finds the blob gone after it
//! wrote takes its artifact back, so none outlives its component whichever runs first.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ring::hmac;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::registry::{blob_meta_key, hex};
use crate::storage::Storage;

/// Bytes per chunk, as for blobs: well under Redis's value limit and its latency comfort.
const CHUNK: usize = 512 << 10;

/// Fewest bytes a key may have: an HMAC-SHA256 key is as strong as its 32 bytes of entropy.
const MIN_KEY_BYTES: usize = 32;

/// The secret that makes an artifact authentic, read from a file. Never printed.
pub struct ArtifactKey(hmac::Key);

impl std::fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactKey(hidden)")
    }
}

impl ArtifactKey {
    /// The key in the file at `path`: its bytes, less trailing white space (a Secret written
    /// with `echo` ends with a newline that another replica's copy may lack).
    pub fn from_file(path: &Path) -> Result<ArtifactKey> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "reading the artifact key {} (--artifact-key-file)",
                path.display()
            )
        })?;
        let key = bytes.trim_ascii_end();
        if key.len() < MIN_KEY_BYTES {
            bail!(
                "the artifact key {} has {} bytes; it needs {MIN_KEY_BYTES} or more, the same on \
                 every replica (e.g. `openssl rand -base64 48 > {}`)",
                path.display(),
                key.len(),
                path.display(),
            );
        }
        Ok(ArtifactKey(hmac::Key::new(hmac::HMAC_SHA256, key)))
    }
}

/// How a replica shares compiled artifacts: `tabula serve`'s settings.
#[derive(Debug)]
pub struct Sharing {
    /// The key every replica of the fleet holds.
    pub key: ArtifactKey,
    /// The largest artifact stored or taken, in bytes: each is a value in the shared store.
    pub max_bytes: u64,
}

/// One upload of an artifact, as the record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Upload {
    id: String,
    size: u64,
    chunks: u64,
    /// HMAC-SHA256 of [`SharedArtifacts::mac`]'s message, hex.
    mac: String,
}

/// A component's artifacts, by engine fingerprint (a fleet mid-upgrade runs two engines).
type Record = BTreeMap<String, Upload>;

fn record_key(digest: &str) -> String {
    format!("tabula:artifact:{{{digest}}}")
}

fn chunk_key(digest: &str, id: &str, n: u64) -> String {
    format!("tabula:artifact:{{{digest}}}:{id}:{n}")
}

/// What the store holds for a component and this engine.
pub(crate) enum Fetched {
    /// A sound artifact: its bytes, MAC checked.
    Found(Vec<u8>),
    /// None (or one being replaced as it was read).
    Missing,
    /// One that does not fit: it is to be replaced.
    Refused,
}

/// The store's artifacts, as one engine sees them.
pub(crate) struct SharedArtifacts {
    storage: Arc<dyn Storage>,
    key: ArtifactKey,
    max_bytes: u64,
    fingerprint: String,
    /// The runtime the store's connection runs on: the compile cache calls in from a
    /// blocking thread, holding the lock that makes the processes of a replica take turns.
    runtime: tokio::runtime::Handle,
}

impl SharedArtifacts {
    /// Artifacts for the engine with `fingerprint`, in `storage`, store calls run on the
    /// current runtime.
    pub fn new(storage: Arc<dyn Storage>, sharing: Sharing, fingerprint: String) -> Self {
        SharedArtifacts {
            storage,
            key: sharing.key,
            max_bytes: sharing.max_bytes,
            fingerprint,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The MAC of `code` compiled from component `digest` by this engine: all three are in
    /// the message (each field of fixed form or length-prefixed), so an artifact moved to
    /// another component or engine, or changed by one byte, no longer fits.
    fn mac(&self, digest: &str, code: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key.0);
        context.update(b"tabula compiled artifact v1\0");
        for field in [digest.as_bytes(), self.fingerprint.as_bytes()] {
            context.update(&(field.len() as u64).to_le_bytes());
            context.update(field);
        }
        context.update(&(code.len() as u64).to_le_bytes());
        context.update(code);
        context.sign()
    }

    /// The artifact of component `digest` for this engine, if the store holds a sound one.
    /// Blocks on the store: call it from a blocking thread.
    pub fn fetch(&self, digest: &str) -> Fetched {
        match self.runtime.block_on(self.read(digest)) {
            Ok(Ok(code)) => Fetched::Found(code),
            Ok(Err(Refusal::Missing)) => Fetched::Missing,
            Ok(Err(Refusal::Unfit(why))) => {
                warn!(
                    component = digest,
                    engine = self.fingerprint,
                    why,
                    "refused a compiled artifact from the store; compiling it again"
                );
                Fetched::Refused
            }
            Err(e) => {
                warn!(
                    component = digest,
                    error = format!("{e:#}"),
                    "could not read compiled artifacts from the store; compiling"
                );
                Fetched::Missing
            }
        }
    }

    async fn read(&self, digest: &str) -> Result<Result<Vec<u8>, Refusal>> {
        let Some(stored) = self.storage.get(&record_key(digest)).await? else {
            return Ok(Err(Refusal::Missing));
        };
        let Ok(record) = serde_json::from_slice::<Record>(&stored) else {
            return Ok(Err(Refusal::Unfit("its record is not one tabula wrote")));
        };
        let Some(upload) = record.get(&self.fingerprint) else {
            return Ok(Err(Refusal::Missing));
        };
        // Checked before a byte is read, so a forged record cannot make a replica read
        // without end.
        if upload.size == 0
            || upload.size > self.max_bytes
            || upload.chunks != upload.size.div_ceil(CHUNK as u64)
        {
            return Ok(Err(Refusal::Unfit(
                "its size is not within --max-artifact-mib or its chunks do not add up",
            )));
        }
        let mut code = Vec::with_capacity(upload.size as usize);
        for n in 0..upload.chunks {
            match self.storage.get(&chunk_key(digest, &upload.id, n)).await? {
                Some(chunk) if chunk.len() <= CHUNK => code.extend_from_slice(&chunk),
                Some(_) => return Ok(Err(Refusal::Unfit("a chunk is too large"))),
                // Replaced (or collected) while it was read.
                None => return Ok(Err(Refusal::Missing)),
            }
            if code.len() as u64 > upload.size {
                return Ok(Err(Refusal::Unfit("its chunks hold more than its size")));
            }
        }
        let mac = self.mac(digest, &code);
        let fits = code.len() as u64 == upload.size
            && bool::from(hex(mac.as_ref()).as_bytes().ct_eq(upload.mac.as_bytes()));
        if !fits {
            return Ok(Err(Refusal::Unfit(
                "its MAC does not fit: forged, altered, or made with another key",
            )));
        }
        Ok(Ok(code))
    }

    /// Stores `code`, compiled from component `digest` by this engine, unless the store
    /// already has an artifact for them; with `replace`, in place of the one it has (refused
    /// by [`SharedArtifacts::fetch`]). `code` is only asked for when it is to be stored.
    /// Blocks on the store: call it from a blocking thread. Failures are logged: a replica
    /// that cannot share still serves what it compiled.
    pub fn offer<'c>(
        &self,
        digest: &str,
        replace: bool,
        code: impl FnOnce() -> Result<Cow<'c, [u8]>>,
    ) {
        let stored = self.runtime.block_on(async {
            if !replace && self.has(digest).await? {
                return Ok(None);
            }
            let code = code()?;
            if code.len() as u64 > self.max_bytes {
                info!(
                    component = digest,
                    bytes = code.len(),
                    "not sharing a compiled component larger than --max-artifact-mib"
                );
                return Ok(None);
            }
            self.write(digest, &code, replace).await
        });
        match stored {
            Ok(Some(bytes)) => info!(
                component = digest,
                engine = self.fingerprint,
                bytes,
                "compiled artifact stored for other replicas"
            ),
            Ok(None) => {}
            Err(e) => warn!(
                component = digest,
                error = format!("{e:#}"),
                "could not store a compiled artifact; other replicas will compile it"
            ),
        }
    }

    /// Whether the record lists an artifact for this engine (sound or not: whoever reads it
    /// finds out, and replaces it if not).
    async fn has(&self, digest: &str) -> Result<bool> {
        Ok(match self.storage.get(&record_key(digest)).await? {
            Some(stored) => serde_json::from_slice::<Record>(&stored)
                .is_ok_and(|record| record.contains_key(&self.fingerprint)),
            None => false,
        })
    }

    /// Writes `code` in chunks of a new upload, then puts the upload in the record by
    /// compare-and-swap; the size written, or `None` when another upload came first.
    async fn write(&self, digest: &str, code: &[u8], replace: bool) -> Result<Option<usize>> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).context("no randomness for an upload id")?;
        let upload = Upload {
            id: hex(&id),
            size: code.len() as u64,
            chunks: code.len().div_ceil(CHUNK) as u64,
            mac: hex(self.mac(digest, code).as_ref()),
        };
        for (n, chunk) in code.chunks(CHUNK).enumerate() {
            let key = chunk_key(digest, &upload.id, n as u64);
            self.storage.set(&key, chunk, None, None).await?;
        }
        let key = record_key(digest);
        let mut replaced = None;
        let mut swapped = false;
        for _ in 0..20 {
            let stored = self.storage.get(&key).await?;
            let mut record: Record = stored
                .as_deref()
                .and_then(|s| serde_json::from_slice(s).ok())
                .unwrap_or_default();
            if !replace && record.contains_key(&self.fingerprint) {
                break;
            }
            replaced = record.insert(self.fingerprint.clone(), upload.clone());
            let new = serde_json::to_vec(&record)?;
            if self
                .storage
                .compare_and_swap(&key, stored.as_deref(), &new, None, None)
                .await?
            {
                swapped = true;
                break;
            }
        }
        if !swapped {
            delete_chunks(&*self.storage, digest, &upload).await?;
            return Ok(None);
        }
        if let Some(old) = replaced {
            delete_chunks(&*self.storage, digest, &old).await?;
        }
        // A collection that deleted the component meanwhile may have read the record before
        // this upload was in it: take it back.
        if !self.storage.exists(&blob_meta_key(digest)).await? {
            delete(&*self.storage, digest).await?;
            return Ok(None);
        }
        Ok(Some(code.len()))
    }
}

/// Why an artifact was not taken.
enum Refusal {
    Missing,
    Unfit(&'static str),
}

/// Deletes every artifact of component `digest`, whatever its engine: the record first, so
/// that no reader starts on chunks about to go. Needs no key: what it deletes is never run.
pub(crate) async fn delete(storage: &dyn Storage, digest: &str) -> Result<()> {
    let key = record_key(digest);
    let Some(stored) = storage.get(&key).await? else {
        return Ok(());
    };
    storage.delete(&key, None).await?;
    // A record that is not tabula's lists nothing to delete; its chunks, if any, were not
    // written by tabula either.
    let record: Record = serde_json::from_slice(&stored).unwrap_or_default();
    for upload in record.values() {
        delete_chunks(storage, digest, upload).await?;
    }
    Ok(())
}

/// Deletes one upload's chunks, up to the first one missing: the record may have been
/// forged, and its count then costs one call, not billions.
async fn delete_chunks(storage: &dyn Storage, digest: &str, upload: &Upload) -> Result<()> {
    for n in 0..upload.chunks {
        if !storage
            .delete(&chunk_key(digest, &upload.id, n), None)
            .await?
        {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn shared(key: &[u8], fingerprint: &str) -> SharedArtifacts {
        let storage = crate::storage::open("memory").await.unwrap();
        let sharing = Sharing {
            key: ArtifactKey(hmac::Key::new(hmac::HMAC_SHA256, key)),
            max_bytes: 1 << 20,
        };
        SharedArtifacts::new(storage, sharing, fingerprint.into())
    }

    /// An artifact moved to another component, read by another engine, or signed with
    /// another key does not fit: the MAC binds all three (the bytes are the integration
    /// tests' `an_altered_artifact_…`).
    #[tokio::test]
    async fn the_mac_binds_the_component_the_engine_and_the_key() {
        let key = [7u8; 32];
        let here = shared(&key, "engine-a").await;
        let tag = |s: &SharedArtifacts, digest: &str| s.mac(digest, b"code").as_ref().to_vec();
        let mac = tag(&here, "digest-1");
        assert_eq!(mac, tag(&here, "digest-1"));
        assert_ne!(mac, tag(&here, "digest-2"));
        assert_ne!(mac, tag(&shared(&key, "engine-b").await, "digest-1"));
        assert_ne!(mac, tag(&shared(&[8u8; 32], "engine-a").await, "digest-1"));
        // Fields are length-prefixed: moving a byte from one to the next changes the MAC.
        assert_ne!(
            tag(&shared(&key, "ab").await, "c"),
            tag(&shared(&key, "b").await, "ca")
        );
    }
}
