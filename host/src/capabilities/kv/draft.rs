//! `wasi:keyvalue@0.2.0-draft`: as 0.2.0-draft2 without CAS, with `u64` listing cursors
//! (see [`KvView::take_draft_cursor`]) and unsigned increments, on the same keyspace.

use wasmtime::component::Resource;

use super::KvView;
use super::bindings::draft::wasi::keyvalue::{atomics, batch, store};
use super::host::{answer, entries};
use super::keyspace::{Bucket, KvError, KvResult};

/// A listing cursor of `wasi:keyvalue@0.2.0-draft`, where a cursor is a `u64`: the store's
/// own cursor kept in the request's table, and the guest gets its handle's number. So a
/// cursor is good within the request that got it, as every value of an instance is.
struct DraftCursor(String);

impl KvView<'_> {
    /// Takes back the store cursor behind a `0.2.0-draft` cursor. A number that is not one
    /// of this request's cursors is refused; another handle's number is left alone.
    fn take_draft_cursor(&mut self, cursor: u64) -> KvResult<String> {
        let unknown = || {
            KvError::Invalid(format!(
                "{cursor} is not a listing cursor of this request (wasi:keyvalue@0.2.0-draft \
                 cursors are good within the request that got them)"
            ))
        };
        let handle =
            Resource::<DraftCursor>::new_own(u32::try_from(cursor).map_err(|_| unknown())?);
        if self.table.get(&handle).is_err() {
            return Err(unknown());
        }
        self.table
            .delete(handle)
            .map(|c| c.0)
            .map_err(|_| unknown())
    }

    fn give_draft_cursor(&mut self, cursor: Option<String>) -> wasmtime::Result<Option<u64>> {
        Ok(match cursor {
            Some(cursor) => Some(u64::from(self.table.push(DraftCursor(cursor))?.rep())),
            None => None,
        })
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
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let after = match cursor.map(|c| self.take_draft_cursor(c)).transpose() {
            Ok(after) => after,
            Err(e) => return answer(self.ns, Err(e)),
        };
        let listed = match self.list_page(&b, after.as_deref()).await? {
            Ok(listed) => listed,
            Err(e) => return answer(self.ns, Err(e)),
        };
        let (keys, next) = listed;
        let cursor = self.give_draft_cursor(next)?;
        answer(self.ns, Ok(store::KeyResponse { keys, cursor }))
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let b = self.bucket(&b)?;
        let result = match i64::try_from(delta) {
            Ok(delta) => self.ns.increment(&b, &key, delta).await.and_then(|n| {
                u64::try_from(n)
                    .map_err(|_| KvError::Invalid(format!("`{key}` holds {n}, which is not a u64")))
            }),
            Err(_) => Err(KvError::Invalid(format!(
                "an increment of {delta} is over the largest, {}",
                i64::MAX
            ))),
        };
        answer(self.ns, result)
    }
}

impl batch::Host for KvView<'_> {
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
