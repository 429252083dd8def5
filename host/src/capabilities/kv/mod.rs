//! The guest-facing key-value interfaces, `tabula:host/kv` and the standard `wasi:keyvalue`
//! (`store`, `atomics`, `batch`) in each version in use ([`VERSIONS`]), all served from one
//! [`Keyspace`] per app: its [`Namespace`] of the host's store, within its [`KvLimits`]. A
//! key written through one of them is read through any other: the default bucket of
//! `wasi:keyvalue` is `tabula:host/kv`'s space.
//!
//! `wasi:keyvalue@0.2.0-draft2`'s `batch.get-many` is published in two shapes under one
//! name (see `host/wit/README.md`); [`BatchShape::of`] tells which one a component imports,
//! and [`add_to_linker`] links that one.
//!
//! Every key a guest names is placed under its app's namespace before it reaches the store,
//! and every key listed back has the namespace removed (see [`Namespace`] for why one app
//! cannot reach another's keys).

mod bindings;

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, HasData, Linker, Resource, ResourceTable};

use crate::budget::{Budget, Charge};
use crate::storage::{Namespace, Storage, StorageError, StoreOutcome, Ttl};
use bindings::draft::wasi::keyvalue as draft_wasi;
use bindings::published_batch;
use bindings::tabula::host::kv;
use bindings::wasi::keyvalue::{atomics, batch, store};

/// The versions of `wasi:keyvalue` served.
pub const VERSIONS: &[&str] = &["0.2.0-draft", "0.2.0-draft2"];

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
const MAX_PAGE: u32 = 1000;

/// The longest expiry a guest may set, 100 years: beyond it the backends disagreed (Redis
/// refuses what overflows its milliseconds, the embedded store's clock overflowed).
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// One app's key-value state: its namespace of the store and its limits. Built once per
/// app, shared by its requests.
pub struct Keyspace {
    namespace: Arc<Namespace>,
    limits: KvLimits,
}

impl Keyspace {
    /// The key-value space of the app that owns `namespace`, within `limits` (whose quota
    /// `namespace` already carries).
    pub fn new(namespace: Arc<Namespace>, limits: KvLimits) -> Keyspace {
        Keyspace { namespace, limits }
    }

    fn storage(&self) -> &dyn Storage {
        &**self.namespace.storage()
    }
}

/// A key space inside a namespace: `kv:` for `tabula:host/kv` (and the `default`
/// wasi:keyvalue bucket), `b:NAME:` for other buckets.
#[derive(Debug, Clone)]
pub struct Bucket {
    space: String,
}

/// A `wasi:keyvalue/atomics` compare-and-swap handle: the key and the value it saw, charged
/// to the request's budget while the handle lives.
#[derive(Debug)]
pub struct Cas {
    bucket: Bucket,
    key: String,
    seen: Option<Vec<u8>>,
    _charge: Charge,
}

/// Why a kv call was refused. Converted into each interface's own error type.
#[derive(Debug)]
enum KvError {
    KeyTooLarge(u32),
    ValueTooLarge(u32),
    TtlTooLong,
    /// The request's host memory budget is spent (see [`crate::budget`]).
    OverBudget(String),
    /// A bucket name or listing cursor the guest gave is not one.
    Invalid(String),
    Storage(StorageError),
}

impl From<StorageError> for KvError {
    fn from(e: StorageError) -> Self {
        KvError::Storage(e)
    }
}

impl StoreOutcome for KvError {
    fn storage_error(&self) -> Option<&StorageError> {
        match self {
            KvError::Storage(e) => Some(e),
            _ => None,
        }
    }
}

type KvResult<T> = Result<T, KvError>;

impl Keyspace {
    /// The store key of `key` in `bucket`, for reading it.
    fn full_key(&self, bucket: &Bucket, key: &str) -> KvResult<String> {
        if key.len() > self.limits.max_key_bytes as usize {
            return Err(KvError::KeyTooLarge(self.limits.max_key_bytes));
        }
        Ok(self.namespace.key(&format!("{}{key}", bucket.space)))
    }

    fn check_value(&self, value: &[u8]) -> KvResult<()> {
        if value.len() > self.limits.max_value_bytes as usize {
            return Err(KvError::ValueTooLarge(self.limits.max_value_bytes));
        }
        Ok(())
    }

    async fn get(&self, b: &Bucket, key: &str) -> KvResult<Option<Vec<u8>>> {
        Ok(self.storage().get(&self.full_key(b, key)?).await?)
    }

    /// The store key of `key` in `bucket`, for writing it. A bucket's name counts toward the
    /// key limit here, so long bucket names cannot store what a long key may not (keys
    /// written before this rule stay readable and deletable through [`Keyspace::full_key`]).
    fn full_key_to_write(&self, bucket: &Bucket, key: &str) -> KvResult<String> {
        if bucket.name_len() + key.len() > self.limits.max_key_bytes as usize {
            return Err(KvError::KeyTooLarge(self.limits.max_key_bytes));
        }
        self.full_key(bucket, key)
    }

    async fn set(
        &self,
        b: &Bucket,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> KvResult<()> {
        let key = self.full_key_to_write(b, key)?;
        self.check_value(value)?;
        check_ttl(ttl)?;
        Ok(self
            .storage()
            .set(&key, value, ttl, self.namespace.quota())
            .await?)
    }

    async fn delete(&self, b: &Bucket, key: &str) -> KvResult<bool> {
        Ok(self
            .storage()
            .delete(&self.full_key(b, key)?, self.namespace.quota())
            .await?)
    }

    async fn exists(&self, b: &Bucket, key: &str) -> KvResult<bool> {
        Ok(self.storage().exists(&self.full_key(b, key)?).await?)
    }

    async fn increment(&self, b: &Bucket, key: &str, delta: i64) -> KvResult<i64> {
        Ok(self
            .storage()
            .increment(
                &self.full_key_to_write(b, key)?,
                delta,
                self.namespace.quota(),
            )
            .await?)
    }

    async fn compare_and_swap(
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
            .storage()
            .compare_and_swap(&key, expected, new, ttl, self.namespace.quota())
            .await?)
    }

    /// Lists keys of bucket `b` starting with `prefix`, with the namespace removed.
    async fn list(
        &self,
        b: &Bucket,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> KvResult<(Vec<String>, Option<String>)> {
        let full_prefix = self.full_key(b, prefix)?;
        let strip = full_prefix.len() - prefix.len();
        let limit = limit.clamp(1, MAX_PAGE);
        let page = self.storage().list(&full_prefix, cursor, limit).await?;
        let keys = page
            .keys
            .into_iter()
            .map(|k| k[strip..].to_string())
            .collect();
        Ok((keys, page.cursor))
    }

    async fn expire(&self, b: &Bucket, key: &str, ttl: Option<Duration>) -> KvResult<bool> {
        let key = self.full_key(b, key)?;
        check_ttl(ttl)?;
        Ok(self
            .storage()
            .expire(&key, ttl, self.namespace.quota())
            .await?)
    }

    async fn ttl(&self, b: &Bucket, key: &str) -> KvResult<Ttl> {
        Ok(self.storage().ttl(&self.full_key(b, key)?).await?)
    }
}

fn check_ttl(ttl: Option<Duration>) -> KvResult<()> {
    match ttl {
        Some(ttl) if ttl > MAX_TTL => Err(KvError::TtlTooLong),
        _ => Ok(()),
    }
}

/// The bucket behind `tabula:host/kv`.
fn kv_bucket() -> Bucket {
    Bucket {
        space: "kv:".into(),
    }
}

impl Bucket {
    /// The bytes of the guest's bucket name inside the key space (`b:NAME:`), which count
    /// toward the key limit; the default bucket's are free.
    fn name_len(&self) -> usize {
        if self.space == "kv:" {
            0
        } else {
            self.space.len()
        }
    }
}

fn ttl_from_ms(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

/// What the kv host functions borrow from a request's store.
pub struct KvView<'a> {
    ns: &'a Keyspace,
    /// What CAS handles and batch answers take from the request's host memory.
    budget: &'a Arc<Budget>,
    table: &'a mut ResourceTable,
}

impl<'a> KvView<'a> {
    pub fn new(
        ns: &'a Keyspace,
        budget: &'a Arc<Budget>,
        table: &'a mut ResourceTable,
    ) -> KvView<'a> {
        KvView { ns, budget, table }
    }
}

struct KvData;

impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

/// The shape of `wasi:keyvalue/batch@0.2.0-draft2`'s `get-many` a component imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchShape {
    /// `list<tuple<string, option<list<u8>>>>`: `wit/`, Spin's SDK.
    Pairs,
    /// `list<option<tuple<string, list<u8>>>>`: the published WIT.
    Entries,
}

impl BatchShape {
    /// The shape `component` imports; [`BatchShape::Pairs`] when it imports none.
    pub fn of(engine: &Engine, component: &Component) -> BatchShape {
        let batch = format!("wasi:keyvalue/batch@{}", VERSIONS[1]);
        let imports = component.component_type();
        let Some(ComponentItem::ComponentInstance(batch)) = imports
            .imports(engine)
            .find(|(name, _)| *name == batch)
            .map(|(_, import)| import.ty)
        else {
            return BatchShape::Pairs;
        };
        let get_many = batch
            .exports(engine)
            .find_map(|(name, item)| match item.ty {
                ComponentItem::ComponentFunc(f) if name == "get-many" => Some(f),
                _ => None,
            });
        // result<list<option<...>>, error>: look at the list's element.
        let element = get_many
            .and_then(|f| f.results().next())
            .and_then(|result| match result {
                Type::Result(r) => r.ok(),
                _ => None,
            })
            .and_then(|ok| match ok {
                Type::List(list) => Some(list.ty()),
                _ => None,
            });
        match element {
            Some(Type::Option(_)) => BatchShape::Entries,
            _ => BatchShape::Pairs,
        }
    }
}

/// Adds `tabula:host/kv` and every version of `wasi:keyvalue` to the linker, with
/// `wasi:keyvalue/batch@0.2.0-draft2` in `shape`.
///
/// `get` hands out the view from the embedder's store data, which this module never names (as
/// wasmtime's own capability crates do), so the capability depends on nothing above it.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KvView<'_>,
    shape: BatchShape,
) -> wasmtime::Result<()> {
    kv::add_to_linker::<T, KvData>(linker, get)?;
    store::add_to_linker::<T, KvData>(linker, get)?;
    atomics::add_to_linker::<T, KvData>(linker, get)?;
    match shape {
        BatchShape::Pairs => batch::add_to_linker::<T, KvData>(linker, get)?,
        BatchShape::Entries => {
            published_batch::wasi::keyvalue::batch::add_to_linker::<T, KvData>(linker, get)?
        }
    }
    draft_wasi::store::add_to_linker::<T, KvData>(linker, get)?;
    draft_wasi::atomics::add_to_linker::<T, KvData>(linker, get)?;
    draft_wasi::batch::add_to_linker::<T, KvData>(linker, get)
}

fn log_unavailable(e: &KvError) {
    if let KvError::Storage(StorageError::Unavailable(why)) = e {
        let _request = crate::request_log::enter();
        tracing::warn!(error = %why, "kv call failed: the store is unavailable");
    }
}

impl From<KvError> for kv::Error {
    fn from(e: KvError) -> Self {
        log_unavailable(&e);
        match e {
            KvError::KeyTooLarge(max) => kv::Error::KeyTooLarge(max),
            KvError::ValueTooLarge(max) => kv::Error::ValueTooLarge(max),
            KvError::TtlTooLong => kv::Error::Other(ttl_too_long()),
            KvError::OverBudget(why) | KvError::Invalid(why) => kv::Error::Other(why),
            KvError::Storage(StorageError::Unavailable(why)) => kv::Error::Unavailable(why),
            KvError::Storage(StorageError::QuotaExceeded) => kv::Error::Other(quota_exceeded()),
            KvError::Storage(e) => kv::Error::Other(e.to_string()),
        }
    }
}

/// What a `wasi:keyvalue` error says (every version has only `other(string)` for these).
fn wasi_message(e: KvError) -> String {
    log_unavailable(&e);
    match e {
        KvError::KeyTooLarge(max) => format!("key too large: the limit is {max} bytes"),
        KvError::ValueTooLarge(max) => format!("value too large: the limit is {max} bytes"),
        KvError::TtlTooLong => ttl_too_long(),
        KvError::OverBudget(why) | KvError::Invalid(why) => why,
        KvError::Storage(StorageError::QuotaExceeded) => quota_exceeded(),
        KvError::Storage(e) => e.to_string(),
    }
}

impl From<KvError> for store::Error {
    fn from(e: KvError) -> Self {
        store::Error::Other(wasi_message(e))
    }
}

impl From<KvError> for draft_wasi::store::Error {
    fn from(e: KvError) -> Self {
        draft_wasi::store::Error::Other(wasi_message(e))
    }
}

fn quota_exceeded() -> String {
    "storage quota exceeded: the app keeps as many keys or bytes as its quota allows \
     (kv_max_keys, kv_max_bytes); delete keys or give them an expiry"
        .into()
}

fn ttl_too_long() -> String {
    format!(
        "expiry too long: the limit is {} ms (100 years)",
        MAX_TTL.as_millis()
    )
}

/// The guest's answer: `Ok(Ok(_))` or `Ok(Err(_))`, counted in the metrics. Host-side
/// failures never trap here; every storage problem is the guest's to handle.
fn answer<T, E: From<KvError>>(
    ns: &Keyspace,
    result: KvResult<T>,
) -> wasmtime::Result<Result<T, E>> {
    ns.namespace.record("kv", &result);
    Ok(result.map_err(E::from))
}

impl kv::Host for KvView<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::Error>> {
        answer(self.ns, self.ns.get(&kv_bucket(), &key).await)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        answer(
            self.ns,
            self.ns
                .set(&kv_bucket(), &key, &value, ttl_from_ms(ttl_ms))
                .await,
        )
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::Error>> {
        answer(self.ns, self.ns.delete(&kv_bucket(), &key).await)
    }

    async fn exists(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::Error>> {
        answer(self.ns, self.ns.exists(&kv_bucket(), &key).await)
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, kv::Error>> {
        answer(self.ns, self.ns.increment(&kv_bucket(), &key, delta).await)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<bool, kv::Error>> {
        let b = kv_bucket();
        answer(
            self.ns,
            self.ns
                .compare_and_swap(&b, &key, expected.as_deref(), &new, ttl_from_ms(ttl_ms))
                .await,
        )
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<kv::Page, kv::Error>> {
        let listed = self
            .ns
            .list(&kv_bucket(), &prefix, cursor.as_deref(), limit)
            .await;
        answer(
            self.ns,
            listed.map(|(keys, cursor)| kv::Page { keys, cursor }),
        )
    }

    async fn expire(
        &mut self,
        key: String,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<bool, kv::Error>> {
        answer(
            self.ns,
            self.ns
                .expire(&kv_bucket(), &key, ttl_from_ms(ttl_ms))
                .await,
        )
    }

    async fn ttl(&mut self, key: String) -> wasmtime::Result<Result<kv::Expiry, kv::Error>> {
        let ttl = self.ns.ttl(&kv_bucket(), &key).await.map(|t| match t {
            Ttl::Missing => kv::Expiry::Missing,
            Ttl::Persistent => kv::Expiry::Persistent,
            Ttl::ExpiresIn(d) => kv::Expiry::ExpiresInMs(d.as_millis() as u64),
        });
        answer(self.ns, ttl)
    }
}

impl KvView<'_> {
    fn bucket(&self, b: &Resource<Bucket>) -> wasmtime::Result<Bucket> {
        Ok(self.table.get(b)?.clone())
    }
}

/// A CAS handle on `key` holding what the store has now, charged for as long as it lives.
async fn new_cas(
    ns: &Keyspace,
    budget: &Arc<Budget>,
    bucket: Bucket,
    key: String,
) -> KvResult<Cas> {
    let seen = ns.get(&bucket, &key).await?;
    let held = key.len() + bucket.space.len() + seen.as_ref().map_or(0, Vec::len);
    Ok(Cas {
        _charge: charge(budget, held)?,
        bucket,
        key,
        seen,
    })
}

fn charge(budget: &Arc<Budget>, bytes: usize) -> KvResult<Charge> {
    budget
        .charge(bytes as u64)
        .map_err(|e| KvError::OverBudget(e.to_string()))
}

impl KvView<'_> {
    /// Opens bucket `identifier`: `default` (or empty) is `tabula:host/kv`'s space.
    fn open(&mut self, identifier: &str) -> wasmtime::Result<KvResult<Resource<Bucket>>> {
        let space = match identifier {
            "" | "default" => "kv:".to_string(),
            name if name.contains(':') => {
                return Ok(Err(KvError::Invalid(
                    "a bucket identifier may not contain `:`".into(),
                )));
            }
            // Every key in it would be over the limit anyway; refusing here also keeps
            // open handles small.
            name if name.len() + 3 > self.ns.limits.max_key_bytes as usize => {
                return Ok(Err(KvError::Invalid(format!(
                    "bucket identifier too long: with its keys it must fit the key limit of \
                     {} bytes",
                    self.ns.limits.max_key_bytes
                ))));
            }
            name => format!("b:{name}:"),
        };
        Ok(Ok(self.table.push(Bucket { space })?))
    }

    /// Every key's value, in order. The answer is charged as it grows, so a batch that would
    /// not fit the request's budget fails instead of building gigabytes first.
    async fn get_many(
        &mut self,
        b: &Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<KvResult<Vec<(String, Option<Vec<u8>>)>>> {
        let b = self.bucket(b)?;
        let mut held = self.budget.empty_charge();
        let mut out = Vec::with_capacity(keys.len().min(MAX_PAGE as usize));
        for key in keys {
            let value = match self.ns.get(&b, &key).await {
                Ok(value) => value,
                Err(e) => return Ok(Err(e)),
            };
            let size = held.amount() + (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
            if let Err(e) = held.resize(size) {
                return Ok(Err(KvError::OverBudget(e.to_string())));
            }
            out.push((key, value));
        }
        Ok(Ok(out))
    }

    async fn set_many(
        &mut self,
        b: &Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<KvResult<()>> {
        let b = self.bucket(b)?;
        for (key, value) in key_values {
            if let Err(e) = self.ns.set(&b, &key, &value, None).await {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        b: &Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<KvResult<()>> {
        let b = self.bucket(b)?;
        for key in keys {
            if let Err(e) = self.ns.delete(&b, &key).await {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// One page of bucket `b`'s keys, after `cursor`.
    async fn list_page(
        &mut self,
        b: &Resource<Bucket>,
        cursor: Option<&str>,
    ) -> wasmtime::Result<KvResult<(Vec<String>, Option<String>)>> {
        let b = self.bucket(b)?;
        Ok(self.ns.list(&b, "", cursor, MAX_PAGE).await)
    }
}

/// The `bucket` methods every version of `wasi:keyvalue/store` has in common (`get`, `set`,
/// `delete`, `exists`, and dropping it), in a version's `HostBucket` impl, with its `error`.
macro_rules! bucket_methods {
    ($error:ty) => {
        async fn get(
            &mut self,
            b: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, $error>> {
            let b = self.bucket(&b)?;
            answer(self.ns, self.ns.get(&b, &key).await)
        }

        async fn set(
            &mut self,
            b: Resource<Bucket>,
            key: String,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), $error>> {
            let b = self.bucket(&b)?;
            answer(self.ns, self.ns.set(&b, &key, &value, None).await)
        }

        async fn delete(
            &mut self,
            b: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<(), $error>> {
            let b = self.bucket(&b)?;
            answer(self.ns, self.ns.delete(&b, &key).await.map(drop))
        }

        async fn exists(
            &mut self,
            b: Resource<Bucket>,
            key: String,
        ) -> wasmtime::Result<Result<bool, $error>> {
            let b = self.bucket(&b)?;
            answer(self.ns, self.ns.exists(&b, &key).await)
        }

        async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
            self.table.delete(b)?;
            Ok(())
        }
    };
}

/// The `batch` functions every version and shape has in common (`set-many`,
/// `delete-many`), in a version's `batch::Host` impl, with its `error`.
macro_rules! batch_writes {
    ($error:ty) => {
        async fn set_many(
            &mut self,
            b: Resource<Bucket>,
            key_values: Vec<(String, Vec<u8>)>,
        ) -> wasmtime::Result<Result<(), $error>> {
            let done = KvView::set_many(self, &b, key_values).await?;
            answer(self.ns, done)
        }

        async fn delete_many(
            &mut self,
            b: Resource<Bucket>,
            keys: Vec<String>,
        ) -> wasmtime::Result<Result<(), $error>> {
            let done = KvView::delete_many(self, &b, keys).await?;
            answer(self.ns, done)
        }
    };
}

// After the macros, which it uses (a `macro_rules!` is seen only below its definition).
mod draft;

impl store::Host for KvView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        Ok(KvView::open(self, &identifier)?.map_err(Into::into))
    }
}

impl store::HostBucket for KvView<'_> {
    bucket_methods!(store::Error);

    async fn list_keys(
        &mut self,
        b: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let listed = self.list_page(&b, cursor.as_deref()).await?;
        answer(
            self.ns,
            listed.map(|(keys, cursor)| store::KeyResponse { keys, cursor }),
        )
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        let b = self.bucket(&b)?;
        answer(self.ns, self.ns.increment(&b, &key, delta).await)
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(cas)?;
        let swapped = self
            .ns
            .compare_and_swap(&cas.bucket, &cas.key, cas.seen.as_deref(), &value, None)
            .await;
        match swapped {
            Ok(true) => Ok(Ok(())),
            // Someone else wrote first: hand back a fresh handle holding what they wrote.
            Ok(false) => {
                let fresh = new_cas(self.ns, self.budget, cas.bucket, cas.key).await;
                match fresh {
                    Ok(fresh) => Ok(Err(atomics::CasError::CasFailed(self.table.push(fresh)?))),
                    Err(e) => Ok(Err(atomics::CasError::StoreError(e.into()))),
                }
            }
            Err(e) => Ok(Err(atomics::CasError::StoreError(e.into()))),
        }
    }
}

impl atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        b: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let bucket = self.bucket(&b)?;
        match new_cas(self.ns, self.budget, bucket, key).await {
            Ok(cas) => Ok(Ok(self.table.push(cas)?)),
            Err(e) => Ok(Err(e.into())),
        }
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

/// `get-many` as Spin's copy of the WIT (and `wit/`) has it: every key, with its value if
/// it has one.
impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
        let got = KvView::get_many(self, &b, keys).await?;
        answer(self.ns, got)
    }

    batch_writes!(store::Error);
}

/// Present keys as `some((key, value))` and missing ones as `none`, in order: the
/// published `get-many` (0.2.0-draft and 0.2.0-draft2).
fn entries(got: Vec<(String, Option<Vec<u8>>)>) -> Vec<Option<(String, Vec<u8>)>> {
    got.into_iter()
        .map(|(key, value)| value.map(|value| (key, value)))
        .collect()
}

/// `get-many` as the published `0.2.0-draft2` has it; `set-many` and `delete-many` are the
/// same as in the other shape.
impl published_batch::wasi::keyvalue::batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
        let got = KvView::get_many(self, &b, keys).await?;
        answer(self.ns, got.map(entries))
    }

    batch_writes!(store::Error);
}
