//! The native stand-in for `cargo test`: an in-memory store per thread (each test runs on
//! its own thread, so tests do not see each other's keys), with the host's semantics.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Error, Expiry, Page, Result};

/// Key to value and expiry.
type Map = BTreeMap<String, (Vec<u8>, Option<Instant>)>;

thread_local! {
    static MAP: RefCell<Map> = const { RefCell::new(BTreeMap::new()) };
}

/// Runs `f` on this thread's map, expired keys removed first.
fn with<R>(f: impl FnOnce(&mut Map) -> R) -> R {
    MAP.with(|map| {
        let mut map = map.borrow_mut();
        let now = Instant::now();
        map.retain(|_, (_, expires)| expires.is_none_or(|at| at > now));
        f(&mut map)
    })
}

pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    Ok(with(|m| m.get(key).map(|(v, _)| v.clone())))
}

pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
    with(|m| {
        m.insert(
            key.to_string(),
            (value.to_vec(), ttl.map(|t| Instant::now() + t)),
        )
    });
    Ok(())
}

pub fn delete(key: &str) -> Result<bool> {
    Ok(with(|m| m.remove(key).is_some()))
}

pub fn exists(key: &str) -> Result<bool> {
    Ok(with(|m| m.contains_key(key)))
}

pub fn increment(key: &str, delta: i64) -> Result<i64> {
    with(|m| {
        let (current, expires) = match m.get(key) {
            Some((v, expires)) => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| Error::Other("the value is not an integer".into()))?;
                (n, *expires)
            }
            None => (0, None),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| Error::Other("the value is not an integer".into()))?;
        m.insert(key.to_string(), (next.to_string().into_bytes(), expires));
        Ok(next)
    })
}

pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: &[u8],
    ttl: Option<Duration>,
) -> Result<bool> {
    with(|m| {
        if m.get(key).map(|(v, _)| v.as_slice()) != expected {
            return Ok(false);
        }
        m.insert(
            key.to_string(),
            (new.to_vec(), ttl.map(|t| Instant::now() + t)),
        );
        Ok(true)
    })
}

pub fn list_keys(prefix: &str, cursor: Option<&str>, limit: u32) -> Result<Page> {
    let limit = limit.max(1) as usize;
    Ok(with(|m| {
        let mut keys: Vec<String> = m
            .keys()
            .filter(|k| k.starts_with(prefix) && cursor.is_none_or(|c| k.as_str() > c))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let cursor = if more { keys.last().cloned() } else { None };
        Page { keys, cursor }
    }))
}

pub fn expire(key: &str, ttl: Option<Duration>) -> Result<bool> {
    Ok(with(|m| match m.get_mut(key) {
        Some((_, expires)) => {
            *expires = ttl.map(|t| Instant::now() + t);
            true
        }
        None => false,
    }))
}

pub fn ttl(key: &str) -> Result<Expiry> {
    Ok(with(|m| match m.get(key) {
        None => Expiry::Missing,
        Some((_, None)) => Expiry::Persistent,
        Some((_, Some(at))) => Expiry::In(at.saturating_duration_since(Instant::now())),
    }))
}
