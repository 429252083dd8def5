//! The app's variables: its settings from `[variables]` in `tabula.toml`, `--var` and
//! `--secret` on the command line, or a deploy. They live outside the code, so one build runs
//! with different settings in each place it is deployed.
//!
//! Secrets are read like any other variable; the host keeps their values out of its logs
//! (even out of what the handler prints).
//!
//! ```
//! use tabula_sdk::config;
//!
//! # config::set_for_test("greeting", "Hello");
//! let greeting = config::get("greeting").unwrap_or_else(|| "Hi".into());
//! assert_eq!(greeting, "Hello");
//! ```
//!
//! On the host this is `wasi:config/store`. In native `cargo test` runs, variables are what
//! the test gave [`set_for_test`], private to the test's thread.

/// The variable `name`, if the app has one.
pub fn get(name: &str) -> Option<String> {
    backend::get(name)
}

/// Every variable of the app, by name.
pub fn all() -> Vec<(String, String)> {
    backend::all()
}

#[cfg(target_arch = "wasm32")]
mod backend {
    use crate::bindings::wasi::config::store;

    // The host resolves variables before the app starts, so a lookup has nothing to fail
    // on; an error from another host reads as no value.
    pub fn get(name: &str) -> Option<String> {
        store::get(name).ok().flatten()
    }

    pub fn all() -> Vec<(String, String)> {
        store::get_all().unwrap_or_default()
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use backend::set_for_test;

#[cfg(not(target_arch = "wasm32"))]
mod backend {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        static VARS: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// Gives this test's thread variable `name` (native builds only): what a handler under
    /// test then reads through [`get`](super::get).
    pub fn set_for_test(name: &str, value: &str) {
        VARS.with(|v| v.borrow_mut().insert(name.into(), value.into()));
    }

    pub fn get(name: &str) -> Option<String> {
        VARS.with(|v| v.borrow().get(name).cloned())
    }

    pub fn all() -> Vec<(String, String)> {
        VARS.with(|v| {
            v.borrow()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }
}
