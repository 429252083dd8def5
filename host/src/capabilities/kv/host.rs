//! The host functions of `tabula:host/kv` and `wasi:keyvalue` (0.2.0-draft2 and the published
//! batch shape) over the [`Keyspace`], and how each maps a [`KvError`] to its own errors.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::KvView;
use super::bindings::draft::wasi::keyvalue as draft_wasi;
use super::bindings::published_batch;
use super::bindings::tabula::host::kv;
use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::keyspace::*;
use crate::budget::{Budget, Charge};
use crate::storage::{StorageError, Ttl};

/// Keys a `get-many` reads per round: one call per shard they fall in.
const ROUND: usize = 64;

pub(super) fn log_unavailable(e: &KvError) {
    if let KvError::Storage(StorageError::Unavailable(why)) = e {
        let _request = crate::request::log::enter();
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
pub(super) fn wasi_message(e: KvError) -> String {
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

pub(super) fn quota_exceeded() -> String {
    "storage quota exceeded: the app keeps as many keys or bytes as its quota allows \
     (kv_max_keys, kv_max_bytes); delete keys or give them an expiry"
        .into()
}

pub(super) fn ttl_too_long() -> String {
    format!(
        "expiry too long: the limit is {} ms (100 years)",
        MAX_TTL.as_millis()
    )
}

/// The guest's answer: `Ok(Ok(_))` or `Ok(Err(_))`, counted in the metrics. Host-side
/// failures never trap here; every storage problem is the guest's to handle.
pub(super) fn answer<T, E: From<KvError>>(
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
    pub(super) fn bucket(&self, b: &Resource<Bucket>) -> wasmtime::Result<Bucket> {
        Ok(self.table.get(b)?.clone())
    }
}

/// A CAS handle on `key` holding what the store has now, charged for as long as it lives.
pub(super) async fn new_cas(
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

pub(super) fn charge(budget: &Arc<Budget>, bytes: usize) -> KvResult<Charge> {
    budget
        .charge(bytes as u64)
        .map_err(|e| KvError::OverBudget(e.to_string()))
}

impl KvView<'_> {
    /// Opens bucket `identifier`: `default` (or empty) is `tabula:host/kv`'s space.
    pub(super) fn open(
        &mut self,
        identifier: &str,
    ) -> wasmtime::Result<KvResult<Resource<Bucket>>> {
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

    /// Every key's value, in order, read in rounds of up to [`ROUND`] keys, each round one
    /// call per shard its keys fall in (one `MGET` per slot on Redis). The answer is charged
    /// as it grows, and a round first reserves what its values could weigh at most (halved
    /// down to one key until the budget holds it), so a batch that would not fit the
    /// request's budget fails instead of building gigabytes first.
    pub(super) async fn get_many(
        &mut self,
        b: &Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<KvResult<Vec<(String, Option<Vec<u8>>)>>> {
        let b = self.bucket(b)?;
        let mut held = self.budget.empty_charge();
        let mut out = Vec::with_capacity(keys.len().min(MAX_PAGE as usize));
        let mut rest = &keys[..];
        while !rest.is_empty() {
            let mut n = rest.len().min(ROUND);
            let most = u64::from(self.ns.limits.max_value_bytes);
            // One key at a time needs no reservation: its value is charged once read.
            let reserved = loop {
                match self.budget.charge(n as u64 * most) {
                    Ok(charge) => break charge,
                    Err(_) if n > 1 => n /= 2,
                    Err(_) => break Charge::none(),
                }
            };
            let (round, next) = rest.split_at(n);
            rest = next;
            let values = match self.ns.get_many(&b, round).await {
                Ok(values) => values,
                Err(e) => return Ok(Err(e)),
            };
            // What was read is charged below, in the reservation's place.
            drop(reserved);
            for (key, value) in round.iter().zip(values) {
                let size = held.amount() + (key.len() + value.as_ref().map_or(0, Vec::len)) as u64;
                if let Err(e) = held.resize(size) {
                    return Ok(Err(KvError::OverBudget(e.to_string())));
                }
                out.push((key.clone(), value));
            }
        }
        Ok(Ok(out))
    }

    pub(super) async fn set_many(
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

    pub(super) async fn delete_many(
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
    pub(super) async fn list_page(
        &mut self,
        b: &Resource<Bucket>,
        cursor: Option<&str>,
    ) -> wasmtime::Result<KvResult<(Vec<String>, Option<String>)>> {
        let b = self.bucket(b)?;
        Ok(self.ns.list(&b, "", cursor, MAX_PAGE).await)
    }
}

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
pub(super) fn entries(got: Vec<(String, Option<Vec<u8>>)>) -> Vec<Option<(String, Vec<u8>)>> {
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
