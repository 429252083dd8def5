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
#[macro_use]
mod macros;
mod draft;
mod host;
mod keyspace;

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, HasData, Linker, ResourceTable};

use crate::budget::Budget;
use bindings::draft::wasi::keyvalue as draft_wasi;
use bindings::published_batch;
use bindings::tabula::host::kv;
use bindings::wasi::keyvalue::{atomics, batch, store};
pub use keyspace::Keyspace;
pub use keyspace::KvLimits;

/// The versions of `wasi:keyvalue` served.
pub const VERSIONS: &[&str] = &["0.2.0-draft", "0.2.0-draft2"];

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
