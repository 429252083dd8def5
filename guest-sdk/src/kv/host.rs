//! `tabula:host/kv` through the component's imports.

use std::time::Duration;

use super::{Error, Expiry, Page, Result};
use crate::bindings::tabula::host::kv as wit;

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::KeyTooLarge(limit) => Error::KeyTooLarge { limit },
            wit::Error::ValueTooLarge(limit) => Error::ValueTooLarge { limit },
            wit::Error::Unavailable(why) => Error::Unavailable(why),
            wit::Error::Other(why) => Error::Other(why),
        }
    }
}

fn ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
}

pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    Ok(wit::get(key)?)
}

pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
    Ok(wit::set(key, value, ms(ttl))?)
}

pub fn delete(key: &str) -> Result<bool> {
    Ok(wit::delete(key)?)
}

pub fn exists(key: &str) -> Result<bool> {
    Ok(wit::exists(key)?)
}

pub fn increment(key: &str, delta: i64) -> Result<i64> {
    Ok(wit::increment(key, delta)?)
}

pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
    ttl: Option<Duration>,
) -> Result<bool> {
    Ok(wit::compare_and_swap(key, expected, new, ms(ttl))?)
}

pub fn list_keys(prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Page> {
    let page = wit::list_keys(prefix, cursor, limit)?;
    Ok(Page {
        keys: page.keys,
        cursor: page.cursor,
    })
}

pub fn expire(key: &str, ttl: Option<Duration>) -> Result<bool> {
    Ok(wit::expire(key, ms(ttl))?)
}

pub fn ttl(key: &str) -> Result<Expiry> {
    Ok(match wit::ttl(key)? {
        wit::Expiry::Missing => Expiry::Missing,
        wit::Expiry::Persistent => Expiry::Persistent,
        wit::Expiry::ExpiresInMs(ms) => Expiry::In(Duration::from_millis(ms)),
    })
}
