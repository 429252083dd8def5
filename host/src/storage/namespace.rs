//! [`Namespace`]: one app's slice of the store, shared by every capability that keeps state
//! for the app (kv, sessions).
//!
//! Isolation starts here: every key an app's requests touch is built by
//! [`Namespace::key`], under the prefix `tabula:{APP}:`. App names cannot contain `{`, `}`
//! or `:`, so no key string of one app can land in another's space. The braces are a Redis
//! Cluster hash tag: one app's keys share a slot, so its multi-key operations (a quota's
//! usage record beside the keys it counts) work on a cluster.

use std::sync::Arc;

use super::{Quota, Storage, StorageError};
use crate::metrics::StoreOperations;

/// One app's view of the store. Built once per app, shared by its requests.
pub struct Namespace {
    storage: Arc<dyn Storage>,
    operations: StoreOperations,
    prefix: String,
    /// The app's storage quota, kept at `tabula:{APP}:q` beside its keys.
    quota: Option<Quota>,
}

impl Namespace {
    /// The namespace of app `app`, whose name has been checked to be made of
    /// `[A-Za-z0-9_-]`, with a quota of `max_keys` keys and `max_bytes` bytes (0 for either
    /// is no limit on it; 0 for both is no quota).
    pub fn new(storage: Arc<dyn Storage>, app: &str, max_keys: u64, max_bytes: u64) -> Namespace {
        debug_assert!(!app.contains(['{', '}', ':']));
        let prefix = format!("tabula:{{{app}}}:");
        let quota = (max_keys > 0 || max_bytes > 0).then(|| Quota {
            usage: format!("{prefix}q"),
            max_keys: nonzero_or_max(max_keys),
            max_bytes: nonzero_or_max(max_bytes),
        });
        Namespace {
            storage,
            operations: StoreOperations::new(app),
            prefix,
            quota,
        }
    }

    /// The store itself: every key passed to it must come from [`Namespace::key`].
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The quota that writes counted against the app pass to the store.
    pub fn quota(&self) -> Option<&Quota> {
        self.quota.as_ref()
    }

    /// Counts one guest call of `api` (`kv` or `session`) by its outcome: `ok`,
    /// `unavailable` (the store did not answer) or `error` (anything the guest got wrong).
    pub fn record<T, E: StoreOutcome>(&self, api: &'static str, result: &Result<T, E>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) if matches!(e.storage_error(), Some(StorageError::Unavailable(_))) => {
                "unavailable"
            }
            Err(_) => "error",
        };
        self.operations.record(api, outcome);
    }

    /// The full store key for `suffix` inside this namespace.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

/// A capability's error, as the metrics see it: whether the store caused it.
pub trait StoreOutcome {
    /// The store's error behind this one, if the store caused it.
    fn storage_error(&self) -> Option<&StorageError>;
}

fn nonzero_or_max(limit: u64) -> u64 {
    if limit == 0 { u64::MAX } else { limit }
}
