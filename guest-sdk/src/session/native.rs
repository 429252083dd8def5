//! The native stand-in: one visitor's session per test thread, ids from a counter.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use super::Result;

/// The visitor's session: its id and values.
type Current = Option<(String, BTreeMap<String, Vec<u8>>)>;

thread_local! {
    static SESSION: RefCell<Current> = const { RefCell::new(None) };
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

fn fresh_id() -> String {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        format!("{id:064x}")
    })
}

pub fn get(name: &str) -> Result<Option<Vec<u8>>> {
    Ok(SESSION.with(|s| s.borrow().as_ref().and_then(|(_, m)| m.get(name).cloned())))
}

pub fn set(name: &str, value: &[u8]) -> Result<()> {
    SESSION.with(|s| {
        let mut s = s.borrow_mut();
        let (_, map) = s.get_or_insert_with(|| (fresh_id(), BTreeMap::new()));
        map.insert(name.to_string(), value.to_vec());
    });
    Ok(())
}

pub fn remove(name: &str) -> Result<()> {
    SESSION.with(|s| {
        if let Some((_, map)) = s.borrow_mut().as_mut() {
            map.remove(name);
        }
    });
    Ok(())
}

pub fn clear() -> Result<()> {
    SESSION.with(|s| {
        if let Some((_, map)) = s.borrow_mut().as_mut() {
            map.clear();
        }
    });
    Ok(())
}

pub fn destroy() -> Result<()> {
    SESSION.with(|s| *s.borrow_mut() = None);
    Ok(())
}

pub fn regenerate() -> Result<()> {
    SESSION.with(|s| {
        if let Some((id, _)) = s.borrow_mut().as_mut() {
            *id = fresh_id();
        }
    });
    Ok(())
}

pub fn id() -> Result<Option<String>> {
    Ok(SESSION.with(|s| s.borrow().as_ref().map(|(id, _)| id.clone())))
}
