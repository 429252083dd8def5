//! [`RequestState`]: the data of one request's `Store`, built fresh per request and dropped
//! with it. It holds the request's [`Capabilities`] and the limit on its linear memory, and
//! answers wasmtime's views from them.

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::capabilities::{Capabilities, CapabilitiesView};

/// Everything a single request's `Store` owns.
pub struct RequestState {
    capabilities: Capabilities,
    /// The app's memory limit, enforced by wasmtime on every `memory.grow`.
    memory: StoreLimits,
}

impl RequestState {
    /// The state of a request with `capabilities`, whose memories may grow to `memory_bytes`
    /// each.
    pub fn new(capabilities: Capabilities, memory_bytes: usize) -> RequestState {
        RequestState {
            capabilities,
            memory: StoreLimitsBuilder::new().memory_size(memory_bytes).build(),
        }
    }

    /// The limiter wasmtime asks before a memory or table grows.
    pub fn limiter(&mut self) -> &mut StoreLimits {
        &mut self.memory
    }
}

impl CapabilitiesView for RequestState {
    fn capabilities(&mut self) -> &mut Capabilities {
        &mut self.capabilities
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.capabilities.wasi()
    }
}

impl wasmtime_wasi_io::IoView for RequestState {
    fn table(&mut self) -> &mut ResourceTable {
        self.capabilities.table()
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.capabilities.http()
    }
}
