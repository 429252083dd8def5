//! The embedded store: a sorted map in this process, with real expiry.
//!
//! Expired keys are invisible at once (every read checks the deadline) and are swept from
//! memory at most once a second, on writes, so an idle host does no work.
//!
//! Quotas are kept as in Redis: a record per namespace of the keys it counts and their sizes.
//! Checking one walks that record, which is fine for a store meant for development. A hash
//! keeps its running size as in Redis, so both stores refuse the same writes.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    HashLimits, HashWrite, LONGEST_TTL, Page, Quota, QuotaStanding, Storage, StorageError,
    StorageResult, Ttl,
};

const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    expires: Option<Instant>,
}

/// Like Redis, a key holds either bytes or a hash, and using one as the other is an error.
#[derive(Debug, Clone)]
enum Value {
    Bytes(Vec<u8>),
    Hash(Hash),
}

/// A hash's fields and the running total of their names and values.
#[derive(Debug, Clone, Default)]
struct Hash {
    fields: BTreeMap<String, Vec<u8>>,
    bytes: u64,
}

/// When something given `ttl` at `now` expires: `None` (never) past what an `Instant` holds.
fn deadline(now: Instant, ttl: Duration) -> Option<Instant> {
    now.checked_add(ttl.min(LONGEST_TTL))
}

fn wrong_type() -> StorageError {
    StorageError::Other("the key holds a different kind of value".into())
}

impl Entry {
    fn bytes(&self) -> StorageResult<&[u8]> {
        match &self.value {
            Value::Bytes(b) => Ok(b),
            Value::Hash(_) => Err(wrong_type()),
        }
    }

    /// What the entry at `key` counts in a quota: the key's name plus its value (a hash's
    /// fields' names and values).
    fn size(&self, key: &str) -> u64 {
        key.len() as u64
            + match &self.value {
                Value::Bytes(b) => b.len() as u64,
                Value::Hash(h) => h.bytes,
            }
    }
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

#[derive(Debug)]
struct Map {
    entries: BTreeMap<String, Entry>,
    /// By quota usage key: the keys it counts and each one's size (name plus value).
    usage: HashMap<String, BTreeMap<String, u64>>,
    /// By quota usage key: the room (keys, bytes) moved to it, or away when negative.
    moved: HashMap<String, (i64, i64)>,
    last_sweep: Instant,
}

/// `max` plus `moved`, never below 0.
fn room(max: u64, moved: i64) -> u64 {
    max.saturating_add_signed(moved)
}

/// An in-process [`Storage`]. A std `Mutex`, because no `.await` happens while it is held.
#[derive(Debug)]
pub struct MemoryStorage {
    map: Mutex<Map>,
    /// Every message sent, with its channel; each subscriber picks its own channel's.
    messages: tokio::sync::broadcast::Sender<(String, String)>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new()
    }
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage {
            map: Mutex::new(Map {
                entries: BTreeMap::new(),
                usage: HashMap::new(),
                moved: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            messages: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Runs `f` on the map with expired entries already out of sight.
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>, Instant) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = map.sweep();
        f(&mut map.entries, now)
    }

    /// Runs the write `f` on `key`, counted against `quota` when there is one: the write is
    /// undone, and refused, if it would take the namespace over it.
    fn with_quota<R>(
        &self,
        quota: Option<&Quota>,
        key: &str,
        f: impl FnOnce(&mut BTreeMap<String, Entry>, Instant) -> StorageResult<R>,
    ) -> StorageResult<R> {
        let Some(quota) = quota else {
            return self.with(f);
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = map.sweep();
        let Map {
            entries,
            usage,
            moved,
            ..
        } = &mut *map;
        let (moved_keys, moved_bytes) = moved.get(&quota.usage).copied().unwrap_or_default();
        let counted = usage.entry(quota.usage.clone()).or_default();
        counted.retain(|k, _| entries.get(k).is_some_and(|e| e.live(now)));
        let saved = entries.get(key).filter(|e| e.live(now)).cloned();
        let result = f(entries, now)?;
        let old = counted.get(key).copied();
        let size = entries
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.size(key));
        let Some(size) = size else {
            counted.remove(key);
            return Ok(result);
        };
        let keys = counted.len() as u64 + u64::from(old.is_none());
        let bytes = counted.values().sum::<u64>() - old.unwrap_or(0) + size;
        if (old.is_none() && keys > room(quota.max_keys, moved_keys))
            || (size > old.unwrap_or(0) && bytes > room(quota.max_bytes, moved_bytes))
        {
            match saved {
                Some(entry) => entries.insert(key.to_string(), entry),
                None => entries.remove(key),
            };
            return Err(StorageError::QuotaExceeded);
        }
        counted.insert(key.to_string(), size);
        Ok(result)
    }
}

impl Map {
    /// Drops expired entries, at most once every [`SWEEP_EVERY`]; answers the time now.
    fn sweep(&mut self) -> Instant {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.entries.retain(|_, e| e.live(now));
            self.last_sweep = now;
        }
        now
    }
}

/// The live entry at `key`, removing it if it has expired.
fn live<'a>(
    entries: &'a mut BTreeMap<String, Entry>,
    key: &str,
    now: Instant,
) -> Option<&'a mut Entry> {
    if entries.get(key).is_some_and(|e| !e.live(now)) {
        entries.remove(key);
    }
    entries.get_mut(key)
}

#[async_trait::async_trait]
impl Storage for MemoryStorage {
    fn describe(&self) -> String {
        "the embedded in-memory store (not shared between processes; lost on exit)".into()
    }

    async fn ping(&self) -> StorageResult<()> {
        Ok(())
    }

    async fn get(&self, key: &str) -> StorageResult<Option<Vec<u8>>> {
        self.with(|m, now| match live(m, key, now) {
            Some(e) => e.bytes().map(|b| Some(b.to_vec())),
            None => Ok(None),
        })
    }

    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<()> {
        self.with_quota(quota, key, |m, now| {
            let entry = Entry {
                value: Value::Bytes(value.to_vec()),
                expires: ttl.and_then(|t| deadline(now, t)),
            };
            m.insert(key.to_string(), entry);
            Ok(())
        })
    }

    async fn delete(&self, key: &str, quota: Option<&Quota>) -> StorageResult<bool> {
        self.with_quota(quota, key, |m, now| {
            Ok(m.remove(key).is_some_and(|e| e.live(now)))
        })
    }

    async fn exists(&self, key: &str) -> StorageResult<bool> {
        Ok(self.with(|m, now| live(m, key, now).is_some()))
    }

    async fn increment(&self, key: &str, delta: i64, quota: Option<&Quota>) -> StorageResult<i64> {
        self.with_quota(quota, key, |m, now| {
            let current = match live(m, key, now) {
                Some(e) => std::str::from_utf8(e.bytes()?)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or(StorageError::NotAnInteger)?,
                None => 0,
            };
            let next = current
                .checked_add(delta)
                .ok_or(StorageError::NotAnInteger)?;
            let expires = m.get(key).and_then(|e| e.expires);
            m.insert(
                key.to_string(),
                Entry {
                    value: Value::Bytes(next.to_string().into_bytes()),
                    expires,
                },
            );
            Ok(next)
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<bool> {
        self.with_quota(quota, key, |m, now| {
            let current = live(m, key, now).map(|e| e.bytes()).transpose()?;
            if current != expected {
                return Ok(false);
            }
            let entry = Entry {
                value: Value::Bytes(new.to_vec()),
                expires: ttl.and_then(|t| deadline(now, t)),
            };
            m.insert(key.to_string(), entry);
            Ok(true)
        })
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<Page> {
        let limit = limit.max(1) as usize;
        Ok(self.with(|m, now| {
            // The cursor is the last key of the previous page. One from elsewhere (a guest can
            // pass anything) is clamped to the prefix's range.
            let start = match cursor {
                Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
                _ => Bound::Included(prefix.to_string()),
            };
            let mut keys = Vec::with_capacity(limit.min(1024));
            let mut more = false;
            for (key, entry) in m.range((start, Bound::Unbounded)) {
                if !key.starts_with(prefix) {
                    break;
                }
                if !entry.live(now) {
                    continue;
                }
                if keys.len() == limit {
                    more = true;
                    break;
                }
                keys.push(key.clone());
            }
            let cursor = if more { keys.last().cloned() } else { None };
            Page { keys, cursor }
        }))
    }

    async fn list_counted(
        &self,
        _quota: &Quota,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Page> {
        // The map is sorted: listing it by prefix is already the work of the page alone.
        self.list(prefix, after, limit).await
    }

    async fn quota_move(
        &self,
        quota: &Quota,
        keys: i64,
        bytes: i64,
    ) -> StorageResult<QuotaStanding> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = map.sweep();
        let Map {
            entries,
            usage,
            moved,
            ..
        } = &mut *map;
        let counted = usage.entry(quota.usage.clone()).or_default();
        counted.retain(|k, _| entries.get(k).is_some_and(|e| e.live(now)));
        let (used_keys, used_bytes) = (counted.len() as u64, counted.values().sum::<u64>());
        let (mk, mb) = moved.entry(quota.usage.clone()).or_default();
        // Room moved away is cut to what is spare.
        let cut = |asked: i64, max: u64, moved: i64, used: u64| -> i64 {
            let spare = room(max, moved).saturating_sub(used);
            asked.max(-(spare.min(i64::MAX as u64) as i64))
        };
        let keys = cut(keys, quota.max_keys, *mk, used_keys);
        let bytes = cut(bytes, quota.max_bytes, *mb, used_bytes);
        *mk += keys;
        *mb += bytes;
        Ok(QuotaStanding {
            keys: used_keys,
            bytes: used_bytes,
            max_keys: room(quota.max_keys, *mk),
            max_bytes: room(quota.max_bytes, *mb),
            moved_keys: keys,
            moved_bytes: bytes,
        })
    }

    async fn expire(
        &self,
        key: &str,
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<bool> {
        self.with_quota(quota, key, |m, now| {
            Ok(match live(m, key, now) {
                Some(e) => {
                    e.expires = ttl.and_then(|t| deadline(now, t));
                    true
                }
                None => false,
            })
        })
    }

    async fn ttl(&self, key: &str) -> StorageResult<Ttl> {
        Ok(self.with(|m, now| match live(m, key, now) {
            None => Ttl::Missing,
            Some(Entry { expires: None, .. }) => Ttl::Persistent,
            Some(Entry {
                expires: Some(at), ..
            }) => Ttl::ExpiresIn(at.duration_since(now)),
        }))
    }

    async fn hash_get(&self, key: &str, field: &str) -> StorageResult<Option<Vec<u8>>> {
        self.with(|m, now| match live(m, key, now).map(|e| &e.value) {
            Some(Value::Hash(h)) => Ok(h.fields.get(field).cloned()),
            Some(Value::Bytes(_)) => Err(wrong_type()),
            None => Ok(None),
        })
    }

    async fn hash_get_all(&self, key: &str) -> StorageResult<Vec<(String, Vec<u8>)>> {
        self.with(|m, now| match live(m, key, now).map(|e| &e.value) {
            Some(Value::Hash(h)) => Ok(h.fields.clone().into_iter().collect()),
            Some(Value::Bytes(_)) => Err(wrong_type()),
            None => Ok(Vec::new()),
        })
    }

    async fn hash_set(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        limits: HashLimits,
        ttl: Duration,
        quota: Option<&Quota>,
    ) -> StorageResult<HashWrite> {
        self.with_quota(quota, key, |m, now| {
            let entry = match live(m, key, now) {
                Some(e) => e,
                None => m.entry(key.to_string()).or_insert(Entry {
                    value: Value::Hash(Hash::default()),
                    expires: None,
                }),
            };
            let Value::Hash(hash) = &mut entry.value else {
                return Err(wrong_type());
            };
            let old = hash
                .fields
                .get(field)
                .map(|v| (field.len() + v.len()) as u64);
            let bytes = hash.bytes - old.unwrap_or(0) + (field.len() + value.len()) as u64;
            let refused = if bytes > limits.max_bytes {
                Some(HashWrite::TooLarge)
            } else if old.is_none() && hash.fields.len() >= limits.max_fields as usize {
                Some(HashWrite::TooManyFields)
            } else {
                None
            };
            if let Some(refused) = refused {
                if hash.fields.is_empty() {
                    m.remove(key);
                }
                return Ok(refused);
            }
            hash.fields.insert(field.to_string(), value.to_vec());
            hash.bytes = bytes;
            entry.expires = deadline(now, ttl);
            Ok(HashWrite::Stored)
        })
    }

    async fn hash_delete(
        &self,
        key: &str,
        field: &str,
        quota: Option<&Quota>,
    ) -> StorageResult<bool> {
        self.with_quota(quota, key, |m, now| {
            let Some(entry) = live(m, key, now) else {
                return Ok(false);
            };
            let Value::Hash(hash) = &mut entry.value else {
                return Err(wrong_type());
            };
            let Some(value) = hash.fields.remove(field) else {
                return Ok(false);
            };
            hash.bytes -= (field.len() + value.len()) as u64;
            if hash.fields.is_empty() {
                m.remove(key);
            }
            Ok(true)
        })
    }

    async fn rename(&self, from: &str, to: &str, quota: Option<&Quota>) -> StorageResult<bool> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = map.sweep();
        let Map { entries, usage, .. } = &mut *map;
        if live(entries, from, now).is_none() {
            return Ok(false);
        }
        let entry = entries.remove(from).expect("checked above");
        entries.insert(to.to_string(), entry);
        // The count moves with the key; a counted key it replaced is gone, and so is its count.
        if let Some(counted) = quota.and_then(|q| usage.get_mut(&q.usage)) {
            counted.remove(to);
            if let Some(size) = counted.remove(from) {
                counted.insert(to.to_string(), size - from.len() as u64 + to.len() as u64);
            }
        }
        Ok(true)
    }

    async fn publish(&self, channel: &str, message: &str) -> StorageResult<()> {
        // No receiver is no error: nobody was listening.
        let _ = self
            .messages
            .send((channel.to_string(), message.to_string()));
        Ok(())
    }

    fn subscribe(&self, channel: &str) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut all = self.messages.subscribe();
        let channel = channel.to_string();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = all.recv() => match message {
                        Ok((on, message)) if on == channel => {
                            if tx.send(message).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }
}
