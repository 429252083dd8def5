//! Key-value storage: the one place a handler can keep something for the next request.
//!
//! Each app has its own keyspace: the same key in two apps names two values. On the host the
//! store is Redis (or an in-memory store under `tabula up`); in native `cargo test` runs it is
//! an in-memory stand-in private to the test's thread, so handler tests need no host.
//!
//! ```
//! use tabula_sdk::kv;
//!
//! let visits = kv::increment("visits", 1)?;
//! kv::set_with_ttl("greeting", "hi", std::time::Duration::from_secs(60))?;
//! assert_eq!(kv::get("greeting")?.as_deref(), Some(&b"hi"[..]));
//! # assert_eq!(visits, 1);
//! # Ok::<(), kv::Error>(())
//! ```

use std::fmt;
use std::time::Duration;

#[cfg(not(target_arch = "wasm32"))]
#[path = "kv/native.rs"]
mod backend;
#[cfg(target_arch = "wasm32")]
#[path = "kv/host.rs"]
mod backend;

/// Why a kv call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The key is longer than the host allows (`limit` bytes).
    KeyTooLarge { limit: u32 },
    /// The value is larger than the host allows (`limit` bytes).
    ValueTooLarge { limit: u32 },
    /// The store could not be reached; retrying later may work. Returned from a handler
    /// (through [`crate::Error`]), this becomes `503 Service Unavailable`.
    Unavailable(String),
    /// Anything else, e.g. incrementing a value that is not an integer.
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::KeyTooLarge { limit } => write!(f, "key too large (limit {limit} bytes)"),
            Error::ValueTooLarge { limit } => write!(f, "value too large (limit {limit} bytes)"),
            Error::Unavailable(why) => write!(f, "the store is unavailable: {why}"),
            Error::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

/// The expiry state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// There is no such key.
    Missing,
    /// The key does not expire.
    Persistent,
    /// The key expires after this long.
    In(Duration),
}

/// One page of [`list_keys`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub keys: Vec<String>,
    /// Pass to the next [`list_keys`] call; `None` when the listing is complete.
    pub cursor: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

/// The value at `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    backend::get(key)
}

/// Stores `value` at `key` with no expiry, replacing any earlier value.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<()> {
    backend::set(key, value.as_ref(), None)
}

/// Stores `value` at `key`; it disappears after `ttl`.
pub fn set_with_ttl(key: &str, value: impl AsRef<[u8]>, ttl: Duration) -> Result<()> {
    backend::set(key, value.as_ref(), Some(ttl))
}

/// Deletes `key`; whether it existed.
pub fn delete(key: &str) -> Result<bool> {
    backend::delete(key)
}

pub fn exists(key: &str) -> Result<bool> {
    backend::exists(key)
}

/// Atomically adds `delta` to the integer at `key` (a missing key counts as 0) and returns
/// the result. The value is stored as decimal text and keeps its expiry.
pub fn increment(key: &str, delta: i64) -> Result<i64> {
    backend::increment(key, delta)
}

/// Atomically replaces the value at `key` with `new` if it currently is `expected`
/// (`None`: only if there is no such key). Returns whether it did.
pub fn compare_and_swap(key: &str, expected: Option<&[u8]>, new: impl AsRef<[u8]>) -> Result<bool> {
    backend::compare_and_swap(key, expected, new.as_ref(), None)
}

/// One page of the keys that start with `prefix`. Start with `cursor: None`, then pass
/// each page's cursor until it is `None`. `limit` is a hint for the page size.
pub fn list_keys(prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Page> {
    backend::list_keys(prefix, cursor, limit)
}

/// Every key that starts with `prefix`, fetched page by page.
pub fn all_keys(prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = list_keys(prefix, cursor.as_deref(), 1000)?;
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

/// Sets (`Some`) or removes (`None`) the expiry of `key`; whether the key exists.
pub fn expire(key: &str, ttl: Option<Duration>) -> Result<bool> {
    backend::expire(key, ttl)
}

/// The expiry state of `key`.
pub fn ttl(key: &str) -> Result<Expiry> {
    backend::ttl(key)
}
