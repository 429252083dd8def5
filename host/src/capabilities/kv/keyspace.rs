//! The contract every kv interface serves: one app's [`Keyspace`] of the store, its buckets
//! and CAS handles, what a guest may store ([`KvLimits`]) and why a call is refused
//! ([`KvError`]). Nothing here knows WIT: each interface maps these in `host.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::budget::Charge;
use crate::storage::{Namespace, StorageError, Ttl};

/// Limits on what a guest may store: each key and value, and its app's whole namespace (a
/// quota of keys and of bytes, each key's name plus its value; 0 turns a quota off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes (for `wasi:keyvalue`, with its bucket's name).
    pub max_key_bytes: u32,
    /// Largest value, in bytes.
    pub max_value_bytes: u32,
    /// Keys the app may keep (0: no limit).
    pub max_keys: u64,
    /// Bytes the app may keep, each key's name plus its value (0: no limit).
    pub max_bytes: u64,
}

impl Default for KvLimits {
    fn default() -> Self {
        // A quota is what keeps one app from filling the Redis every app shares.
        KvLimits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_keys: 1_000_000,
            max_bytes: 256 << 20,
        }
    }
}

/// Keys listed per `wasi:keyvalue` `list-keys` page, which takes no size of its own, and the
/// most a `tabula:host/kv` page may ask for: a larger page is cut to this and continues
/// through its cursor. A guest's own limit once went to Redis unbounded and froze it.
pub(super) const MAX_PAGE: u32 = 1000;

/// The longest expiry a guest may set, 100 years: beyond it the backends disagreed (Redis
/// refuses what overflows its milliseconds, the embedded store's clock overflowed).
pub(super) const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// One app's key-value state: its namespace of the store and its limits. Built once per
/// app, shared by its requests.
pub struct Keyspace {
    pub(super) namespace: Arc<Namespace>,
    pub(super) limits: KvLimits,
}

impl Keyspace {
    /// The key-value space of the app that owns `namespace`, within `limits` (whose quota
    /// `namespace` already carries).
    pub fn new(namespace: Arc<Namespace>, limits: KvLimits) -> Keyspace {
        Keyspace { namespace, limits }
    }
}

/// A key space inside a namespace: `kv:` for `tabula:host/kv` (and the `default`
/// wasi:keyvalue bucket), `b:NAME:` for other buckets.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub(super) space: String,
}

/// A `wasi:keyvalue/atomics` compare-and-swap handle: the key and the value it saw, charged
/// to the request's budget while the handle lives.
#[derive(Debug)]
pub struct Cas {
    pub(super) bucket: Bucket,
    pub(super) key: String,
    pub(super) seen: Option<Vec<u8>>,
    pub(super) _charge: Charge,
}

/// Why a kv call was refused. Converted into each interface's own error type.
#[derive(Debug)]
pub(super) enum KvError {
    KeyTooLarge(u32),
    ValueTooLarge(u32),
    TtlTooLong,
    /// The request's host memory budget is spent (see [`crate::budget`]).
    OverBudget(String),
    /// A bucket name or listing cursor the guest gave is not one.
    Invalid(String),
    Storage(StorageError),
}

crate::storage::carries_storage_error!(KvError::Storage);

pub(super) type KvResult<T> = Result<T, KvError>;

impl Keyspace {
    /// The namespace's name of `key` in `bucket`, for reading it.
    pub(super) fn full_key(&self, bucket: &Bucket, key: &str) -> KvResult<String> {
        if key.len() > self.limits.max_key_bytes as usize {
            return Err(KvError::KeyTooLarge(self.limits.max_key_bytes));
        }
        Ok(format!("{}{key}", bucket.space))
    }

    pub(super) fn check_value(&self, value: &[u8]) -> KvResult<()> {
        if value.len() > self.limits.max_value_bytes as usize {
            return Err(KvError::ValueTooLarge(self.limits.max_value_bytes));
        }
        Ok(())
    }

    pub(super) async fn get(&self, b: &Bucket, key: &str) -> KvResult<Option<Vec<u8>>> {
        Ok(self.namespace.get(&self.full_key(b, key)?).await?)
    }

    /// The values of `keys` in `b`, in order, read shard by shard (see
    /// [`Namespace::get_many`]).
    pub(super) async fn get_many(
        &self,
        b: &Bucket,
        keys: &[String],
    ) -> KvResult<Vec<Option<Vec<u8>>>> {
        let full: Vec<String> = keys
            .iter()
            .map(|key| self.full_key(b, key))
            .collect::<KvResult<_>>()?;
        Ok(self.namespace.get_many(&full).await?)
    }

    /// The namespace's name of `key` in `bucket`, for writing it. A bucket's name counts toward the
    /// key limit here, so long bucket names cannot store what a long key may not (keys
    /// written before this rule stay readable and deletable through [`Keyspace::full_key`]).
    pub(super) fn full_key_to_write(&self, bucket: &Bucket, key: &str) -> KvResult<String> {
        if bucket.name_len() + key.len() > self.limits.max_key_bytes as usize {
            return Err(KvError::KeyTooLarge(self.limits.max_key_bytes));
        }
        self.full_key(bucket, key)
    }

    pub(super) async fn set(
        &self,
        b: &Bucket,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> KvResult<()> {
        let key = self.full_key_to_write(b, key)?;
        self.check_value(value)?;
        check_ttl(ttl)?;
        Ok(self.namespace.set(&key, value, ttl).await?)
    }

    pub(super) async fn delete(&self, b: &Bucket, key: &str) -> KvResult<bool> {
        Ok(self.namespace.delete(&self.full_key(b, key)?).await?)
    }

    pub(super) async fn exists(&self, b: &Bucket, key: &str) -> KvResult<bool> {
        Ok(self.namespace.exists(&self.full_key(b, key)?).await?)
    }

    pub(super) async fn increment(&self, b: &Bucket, key: &str, delta: i64) -> KvResult<i64> {
        Ok(self
            .namespace
            .increment(&self.full_key_to_write(b, key)?, delta)
            .await?)
    }

    pub(super) async fn compare_and_swap(
        &self,
        b: &Bucket,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<Duration>,
    ) -> KvResult<bool> {
        let key = self.full_key_to_write(b, key)?;
        self.check_value(new)?;
        check_ttl(ttl)?;
        Ok(self
            .namespace
            .compare_and_swap(&key, expected, new, ttl)
            .await?)
    }

    /// Lists keys of bucket `b` starting with `prefix`, in key order, with the namespace
    /// removed. The cursor is the last key a page covers, bucket and all.
    pub(super) async fn list(
        &self,
        b: &Bucket,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> KvResult<(Vec<String>, Option<String>)> {
        let full_prefix = self.full_key(b, prefix)?;
        let strip = b.space.len();
        let limit = limit.clamp(1, MAX_PAGE);
        let (keys, cursor) = self.namespace.list(&full_prefix, cursor, limit).await?;
        let keys = keys.into_iter().map(|k| k[strip..].to_string()).collect();
        Ok((keys, cursor))
    }

    pub(super) async fn expire(
        &self,
        b: &Bucket,
        key: &str,
        ttl: Option<Duration>,
    ) -> KvResult<bool> {
        let key = self.full_key(b, key)?;
        check_ttl(ttl)?;
        Ok(self.namespace.expire(&key, ttl).await?)
    }

    pub(super) async fn ttl(&self, b: &Bucket, key: &str) -> KvResult<Ttl> {
        Ok(self.namespace.ttl(&self.full_key(b, key)?).await?)
    }
}

pub(super) fn check_ttl(ttl: Option<Duration>) -> KvResult<()> {
    match ttl {
        Some(ttl) if ttl > MAX_TTL => Err(KvError::TtlTooLong),
        _ => Ok(()),
    }
}

/// The bucket behind `tabula:host/kv`.
pub(super) fn kv_bucket() -> Bucket {
    Bucket {
        space: "kv:".into(),
    }
}

impl Bucket {
    /// The bytes of the guest's bucket name inside the key space (`b:NAME:`), which count
    /// toward the key limit; the default bucket's are free.
    pub(super) fn name_len(&self) -> usize {
        if self.space == "kv:" {
            0
        } else {
            self.space.len()
        }
    }
}

pub(super) fn ttl_from_ms(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Layout, Storage};

    async fn keyspace(app: &str, storage: &Arc<dyn Storage>, limits: KvLimits) -> Keyspace {
        let namespace = Namespace::new(
            storage.clone(),
            app,
            Layout::Spread,
            limits.max_keys,
            limits.max_bytes,
        );
        Keyspace::new(Arc::new(namespace), limits)
    }

    fn bucket(name: &str) -> Bucket {
        Bucket {
            space: format!("b:{name}:"),
        }
    }

    #[tokio::test]
    async fn apps_and_buckets_are_separate_keyspaces() {
        let storage = crate::storage::open("memory").await.unwrap();
        let a = keyspace("a", &storage, KvLimits::default()).await;
        let b = keyspace("b", &storage, KvLimits::default()).await;
        a.set(&kv_bucket(), "k", b"from a", None).await.unwrap();
        assert_eq!(b.get(&kv_bucket(), "k").await.unwrap(), None, "apps apart");
        assert_eq!(
            a.get(&bucket("other"), "k").await.unwrap(),
            None,
            "buckets apart"
        );
        assert_eq!(
            a.get(&kv_bucket(), "k").await.unwrap().as_deref(),
            Some(&b"from a"[..])
        );
        let (keys, cursor) = a.list(&kv_bucket(), "", None, 10).await.unwrap();
        assert_eq!(
            (keys, cursor),
            (vec!["k".to_string()], None),
            "names come back bare"
        );
    }

    #[tokio::test]
    async fn keys_values_expiries_and_quotas_are_bounded() {
        let storage = crate::storage::open("memory").await.unwrap();
        let limits = KvLimits {
            max_key_bytes: 8,
            max_value_bytes: 4,
            max_keys: 2,
            max_bytes: 1000,
        };
        let ks = keyspace("a", &storage, limits).await;
        let kv = kv_bucket();
        assert!(matches!(
            ks.set(&kv, "123456789", b"v", None).await,
            Err(KvError::KeyTooLarge(8))
        ));
        // A bucket's name counts toward the key limit when writing.
        assert!(matches!(
            ks.set(&bucket("long"), "12345", b"v", None).await,
            Err(KvError::KeyTooLarge(8))
        ));
        assert!(matches!(
            ks.set(&kv, "k", b"12345", None).await,
            Err(KvError::ValueTooLarge(4))
        ));
        let too_long = MAX_TTL + Duration::from_secs(1);
        assert!(matches!(
            ks.set(&kv, "k", b"v", Some(too_long)).await,
            Err(KvError::TtlTooLong)
        ));
        ks.set(&kv, "one", b"1", None).await.unwrap();
        ks.set(&kv, "two", b"2", None).await.unwrap();
        assert!(matches!(
            ks.set(&kv, "three", b"3", None).await,
            Err(KvError::Storage(StorageError::QuotaExceeded))
        ));
        assert!(ks.delete(&kv, "one").await.unwrap());
        ks.set(&kv, "three", b"3", None).await.unwrap();
    }

    #[tokio::test]
    async fn increments_and_compare_and_swap_are_per_key() {
        let storage = crate::storage::open("memory").await.unwrap();
        let ks = keyspace("a", &storage, KvLimits::default()).await;
        let kv = kv_bucket();
        assert_eq!(ks.increment(&kv, "n", 2).await.unwrap(), 2);
        assert_eq!(ks.increment(&kv, "n", -5).await.unwrap(), -3);
        ks.set(&kv, "s", b"text", None).await.unwrap();
        assert!(matches!(
            ks.increment(&kv, "s", 1).await,
            Err(KvError::Storage(StorageError::NotAnInteger))
        ));
        assert!(
            !ks.compare_and_swap(&kv, "c", Some(b"x"), b"y", None)
                .await
                .unwrap()
        );
        assert!(
            ks.compare_and_swap(&kv, "c", None, b"y", None)
                .await
                .unwrap()
        );
        assert!(
            !ks.compare_and_swap(&kv, "c", None, b"z", None)
                .await
                .unwrap()
        );
        assert!(
            ks.compare_and_swap(&kv, "c", Some(b"y"), b"z", None)
                .await
                .unwrap()
        );
        assert_eq!(ks.get(&kv, "c").await.unwrap().as_deref(), Some(&b"z"[..]));
    }

    #[tokio::test]
    async fn listings_are_paged_within_the_cap() {
        let storage = crate::storage::open("memory").await.unwrap();
        let ks = keyspace("a", &storage, KvLimits::default()).await;
        let kv = kv_bucket();
        for n in 0..25 {
            ks.set(&kv, &format!("p{n:02}"), b"v", None).await.unwrap();
        }
        ks.set(&kv, "q", b"v", None).await.unwrap();
        let (mut all, mut cursor) = (Vec::new(), None);
        loop {
            let (keys, next) = ks.list(&kv, "p", cursor.as_deref(), 10).await.unwrap();
            assert!(keys.len() <= 10);
            all.extend(keys);
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 25, "{all:?}");
        assert!(all.iter().all(|k| k.starts_with('p')));
    }
}
