//! The methods every version of `wasi:keyvalue` has in common, written once and stamped into
//! each version's impl (`host.rs`, `draft.rs`).

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
