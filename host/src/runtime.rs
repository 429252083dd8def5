//! The [`Runtime`]: what is built once and shared by every request: the wasmtime `Engine` and
//! the `Linker` that decides what a guest may import, with the host's config and store.
//!
//! Per-request work is kept to a new `Store` and an instantiation (see [`crate::request`]);
//! everything that can be prepared ahead of time is prepared here.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::budget::Budget;
use crate::capabilities;
use crate::config::{Allocator, HostConfig};
use crate::request::state::RequestState;
use crate::storage::Storage;

/// How often the epoch ticks: how long guest code runs before it yields to other requests,
/// and so the resolution of request deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Request-body bytes the process may hold read ahead, across all requests waiting for an
/// instance (64 KiB each at most; see [`crate::request`]). Past it, bodies stream unread.
const PREBUFFER_BUDGET: u64 = 256 << 20;

/// The shared engine and linker, the host's config and its store. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linkers: capabilities::Linkers<RequestState>,
    config: HostConfig,
    storage: Arc<dyn Storage>,
    prebuffer: Arc<Budget>,
    /// Held while a component compiles: see [`Runtime::compile_turn`].
    compiling: Mutex<()>,
}

impl Runtime {
    /// Builds the engine, starts its epoch ticker and fills the linker with every
    /// capability. Apps keep their state in `storage`.
    pub fn new(config: HostConfig, storage: Arc<dyn Storage>) -> Result<Runtime> {
        let engine = Engine::new(&engine_config(&config))
            .map_err(anyhow::Error::from)
            .context("configuring wasmtime")?;
        spawn_epoch_ticker(&engine);
        crate::metrics::get()
            .instance_slots
            .set(i64::from(config.max_instances));
        let linkers = capabilities::Linkers::new(&engine)?;
        Ok(Runtime {
            inner: Arc::new(HostInner {
                engine,
                linkers,
                config,
                storage,
                prebuffer: Budget::new(PREBUFFER_BUDGET),
                compiling: Mutex::new(()),
            }),
        })
    }

    /// The wasmtime engine every app is compiled for.
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The linker `component` is linked with.
    pub(crate) fn linker_for(&self, component: &Component) -> &Linker<RequestState> {
        self.inner
            .linkers
            .for_component(&self.inner.engine, component)
    }

    /// The host's configuration.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Where apps keep their state.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// This process's turn to compile a component, held until the guard drops: one compile
    /// at a time. wasmtime already spreads one compile over every core (rayon), so a second
    /// one at once would finish no sooner and only add its memory to the first's: a burst of
    /// deploys (uploads checked by the admin API, versions prepared by the replica, `tabula
    /// up` rebuilds) queues here instead of taking the machine's memory together. Components
    /// already compiled (the compile cache, `--processes` workers) load without a turn.
    pub(crate) fn compile_turn(&self) -> MutexGuard<'_, ()> {
        // A compile that panicked leaves nothing half-done behind the lock.
        self.inner
            .compiling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// What request bodies read ahead of their instance may hold, across the process.
    pub(crate) fn prebuffer_budget(&self) -> &Arc<Budget> {
        &self.inner.prebuffer
    }
}

fn engine_config(limits: &HostConfig) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(limits.max_instances)
        // A component made by a toolchain holds several core modules (the program, the WASI
        // adapter, shims); each takes a core-instance, memory and table slot.
        .total_core_instances(limits.max_instances.saturating_mul(4))
        .total_memories(limits.max_instances.saturating_mul(2))
        .total_tables(limits.max_instances.saturating_mul(4))
        .total_stacks(limits.max_instances)
        .max_memory_size(limits.max_memory_bytes)
        // Reset memory by rewriting only the pages a request dirtied, and keep them mapped:
        // unmapping is what costs fresh-instance hosts their time (TLB-shootdown IPIs).
        .linear_memory_keep_resident(limits.keep_resident_bytes)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config.epoch_interruption(true).memory_init_cow(true);
    if limits.allocator == Allocator::Pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine lives. A plain
/// thread, not a tokio task, so a busy runtime cannot delay the deadlines that protect it.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("tabula-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}
