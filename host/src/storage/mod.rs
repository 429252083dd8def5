//! The backing store behind `kv` and sessions: one [`Storage`] trait, two backends.
//!
//! - `MemoryStorage`: in-process, with real TTL expiry. The default for `tabula up`,
//!   so examples run with no Redis installed. Not shared between processes.
//! - `RedisStorage`: Redis, standalone or Cluster, for production and for many
//!   replicas sharing one state.
//!
//! The trait speaks in full keys; [`Namespace`] gives each app its own slice of them, for
//! every capability that keeps state, and lays that slice out over a Redis Cluster
//! ([`Layout`]). The same conformance tests run against both backends
//! (`tests/all/kv_conformance.rs`), through [`open`].

mod memory;
mod namespace;
mod redis;

pub use namespace::{Layout, Namespace, StoreOutcome};

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};

/// Why a storage call failed. Callers branch on this: `Unavailable` becomes a 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The store could not be reached or did not answer in time.
    Unavailable(String),
    /// `increment` on a value that is not a decimal integer, or that would overflow.
    NotAnInteger,
    /// The write would take its namespace over its [`Quota`]; nothing was changed.
    QuotaExceeded,
    /// Anything else the store reported.
    Other(String),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Unavailable(why) => write!(f, "the store is unavailable: {why}"),
            StorageError::NotAnInteger => f.write_str("the value is not an integer"),
            StorageError::QuotaExceeded => f.write_str("the namespace is at its storage quota"),
            StorageError::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StorageError {}

/// The two impls a capability's error needs when one of its variants carries a
/// [`StorageError`]: `From<StorageError>` (so `?` works on store calls) and [`StoreOutcome`]
/// (so the metrics can tell the store's failures from the guest's).
macro_rules! carries_storage_error {
    ($error:ident :: $variant:ident) => {
        impl From<$crate::storage::StorageError> for $error {
            fn from(e: $crate::storage::StorageError) -> Self {
                $error::$variant(e)
            }
        }

        impl $crate::storage::StoreOutcome for $error {
            fn storage_error(&self) -> Option<&$crate::storage::StorageError> {
                match self {
                    $error::$variant(e) => Some(e),
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use carries_storage_error;

/// What a storage call returns.
pub type StorageResult<T> = Result<T, StorageError>;

/// The expiry state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// There is no such key.
    Missing,
    /// The key does not expire.
    Persistent,
    /// The key expires in this long.
    ExpiresIn(Duration),
}

/// How much one usage record may count: keys, and bytes (each key's name plus its value).
/// Writes given a quota keep its usage record up to date in the store itself, so every
/// replica sees the same usage; a write that would go over it changes nothing and fails with
/// [`StorageError::QuotaExceeded`]. Keys the store expires are given back. The record also
/// indexes the plain (non-hash) keys it counts, by name, for [`Storage::list_counted`].
///
/// The record's room is its `max_*` plus what [`Storage::quota_move`] moved to it (less what
/// it moved away): a [`Namespace`] splits one app's quota between its shards this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// The store key of the usage record. In Redis Cluster it must share the hash tag of the
    /// keys it counts, so the record and those keys live in one slot.
    pub usage: String,
    /// Keys the record may count, before any room moved.
    pub max_keys: u64,
    /// Bytes the record may count, each key's name plus its value, before any room moved.
    pub max_bytes: u64,
}

/// What a usage record counts and may count, and what a [`Storage::quota_move`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaStanding {
    /// Keys counted.
    pub keys: u64,
    /// Bytes counted.
    pub bytes: u64,
    /// Keys it may count now: its quota's `max_keys` plus the room moved to it.
    pub max_keys: u64,
    /// Bytes it may count now.
    pub max_bytes: u64,
    /// Key room this call moved to it (negative: away from it).
    pub moved_keys: i64,
    /// Byte room this call moved to it (negative: away from it).
    pub moved_bytes: i64,
}

/// The longest expiry the stores keep; a longer one is cut to it (about 146 million years).
/// Redis refuses an expiry past `i64::MAX` ms from now, and `Instant` arithmetic past what it
/// holds panics: a guest or a deploy asking for `u64::MAX` must get neither.
const LONGEST_TTL: Duration = Duration::from_millis(i64::MAX as u64 / 2);

/// How large one hash may grow: [`Storage::hash_set`] refuses a write past either bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLimits {
    /// Its fields' names and values, added up.
    pub max_bytes: u64,
    /// Its fields.
    pub max_fields: u32,
}

/// What [`Storage::hash_set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashWrite {
    /// The field is set.
    Stored,
    /// The hash would have gone over its `max_bytes`; nothing changed.
    TooLarge,
    /// A new field would have gone over its `max_fields`; nothing changed.
    TooManyFields,
}

/// One page of a key listing. `cursor` is `None` when the listing is complete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// The keys of this page.
    pub keys: Vec<String>,
    /// Where the next page starts.
    pub cursor: Option<String>,
}

/// A key-value store with expiry and atomic operations. Every method is one atomic step.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// For start-up logs, e.g. "Redis at 127.0.0.1:6379".
    fn describe(&self) -> String;
    /// Whether the store answers right now.
    async fn ping(&self) -> StorageResult<()>;
    /// The value at `key`.
    async fn get(&self, key: &str) -> StorageResult<Option<Vec<u8>>>;
    /// The values at `keys`, in order, in one call where the store has one (Redis: `MGET`,
    /// so in a Cluster every key must hash to one slot, as a [`Namespace`] shard's do).
    async fn get_many(&self, keys: &[String]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }
    // The writes a guest can make take the quota of its namespace, if it has one.

    /// Stores `value` at `key`, replacing any value and expiry; with `ttl` it expires then.
    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<()>;
    /// Removes `key`; whether it was there.
    async fn delete(&self, key: &str, quota: Option<&Quota>) -> StorageResult<bool>;
    /// Whether `key` is there.
    async fn exists(&self, key: &str) -> StorageResult<bool>;
    /// Adds `delta` to the decimal integer at `key` (0 when missing), keeping its expiry.
    async fn increment(&self, key: &str, delta: i64, quota: Option<&Quota>) -> StorageResult<i64>;
    /// Sets `new` if the current value equals `expected` (`None`: the key is missing).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<bool>;
    /// Keys starting with `prefix`, however they were written; `limit` is a hint for the page
    /// size. On Redis this walks the node's whole keyspace (SCAN): it is for one-off work (a
    /// registry index, a migration), never for a guest's listing.
    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<Page>;
    /// The plain keys `quota` counts that start with `prefix` and sort after `after`, in key
    /// order, at most `limit`, from the record's index: the work is the page's, however many
    /// other keys the store holds. Keys that have expired are left out (and given back). The
    /// page's cursor, when more may follow, is the last key it covers.
    async fn list_counted(
        &self,
        quota: &Quota,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Page>;
    /// Moves room (`keys`, `bytes`) to `quota`'s record, or away from it when negative; room
    /// moved away is cut to what the record has spare, so it never counts more than its room.
    /// `(0, 0)` reads the record.
    async fn quota_move(
        &self,
        quota: &Quota,
        keys: i64,
        bytes: i64,
    ) -> StorageResult<QuotaStanding>;
    /// Sets or clears a key's expiry; whether the key exists.
    async fn expire(
        &self,
        key: &str,
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<bool>;
    /// `key`'s expiry.
    async fn ttl(&self, key: &str) -> StorageResult<Ttl>;

    // Hashes: a key holding named fields, each updated on its own (sessions use them, so that
    // concurrent requests changing different fields never overwrite each other). A hash keeps
    // the running total of its fields' names and values beside them (in Redis, in a field of
    // its own, `#bytes`: names starting with `#` are the store's), so that a write costs the
    // same however large the hash is. Counted against a quota, a hash is one key whose size
    // is its name plus that total.

    /// One field of the hash at `key`.
    async fn hash_get(&self, key: &str, field: &str) -> StorageResult<Option<Vec<u8>>>;
    /// Every field of the hash at `key` (the store's own, `#bytes`, left out).
    async fn hash_get_all(&self, key: &str) -> StorageResult<Vec<(String, Vec<u8>)>>;
    /// Sets one field and the hash's expiry to `ttl`, unless the hash would then be over
    /// `limits`: then nothing changes and it says which limit.
    async fn hash_set(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        limits: HashLimits,
        ttl: Duration,
        quota: Option<&Quota>,
    ) -> StorageResult<HashWrite>;
    /// Removes one field; whether it was there. The hash goes with its last field.
    async fn hash_delete(
        &self,
        key: &str,
        field: &str,
        quota: Option<&Quota>,
    ) -> StorageResult<bool>;
    /// Moves the value at `from` (with its expiry, and its place in `quota`) to `to`; false
    /// when `from` is missing.
    async fn rename(&self, from: &str, to: &str, quota: Option<&Quota>) -> StorageResult<bool>;

    // Messages, for replicas that must hear of a change at once (deploys). Best effort: a
    // subscriber that is not connected when a message is sent misses it, so whoever relies on
    // them also polls.

    /// Sends `message` to every current subscriber of `channel`.
    async fn publish(&self, channel: &str, message: &str) -> StorageResult<()>;
    /// The messages sent to `channel` from now on, for as long as the receiver is kept. A
    /// subscription that breaks is remade in the background.
    fn subscribe(&self, channel: &str) -> tokio::sync::mpsc::Receiver<String>;
}

/// Every key of `storage` starting with `prefix`, sorted, each once (a SCAN may give one
/// twice): [`Storage::list`] page after page, so one-off work only, never a guest's.
pub async fn list_all(storage: &dyn Storage, prefix: &str) -> StorageResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = storage.list(prefix, cursor.as_deref(), 1000).await?;
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Opens the store named by a `--store` value:
/// `memory`, `redis://HOST:PORT[/DB]`, `rediss://…` (TLS), or
/// `redis+cluster://HOST:PORT,HOST:PORT,…` (and `rediss+cluster://…`) for Redis Cluster.
pub async fn open(spec: &str) -> Result<Arc<dyn Storage>> {
    if spec == "memory" {
        return Ok(Arc::new(memory::MemoryStorage::new()));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        return Ok(Arc::new(redis::RedisStorage::standalone(spec).await?));
    }
    for (scheme, node_scheme) in [
        ("redis+cluster://", "redis://"),
        ("rediss+cluster://", "rediss://"),
    ] {
        if let Some(nodes) = spec.strip_prefix(scheme) {
            let nodes: Vec<String> = nodes
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| format!("{node_scheme}{n}"))
                .collect();
            return Ok(Arc::new(redis::RedisStorage::cluster(&nodes).await?));
        }
    }
    bail!(
        "unknown store `{spec}`: use `memory`, `redis://HOST:PORT`, `rediss://HOST:PORT` or \
         `redis+cluster://HOST:PORT,HOST:PORT,...`"
    )
}
