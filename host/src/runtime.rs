//! The parts of the host that are built once and shared by every request: the wasmtime
//! [`Engine`] and the [`Linker`] that decides what a guest may import.
//!
//! Per-request work is kept to a new `Store` and an instantiation (see [`crate::instance`]);
//! everything that can be prepared ahead of time is prepared here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::budget::Budget;
use crate::instance::RequestCtx;
use crate::limits::{Allocator, Limits};
use crate::storage::Storage;

/// How often the epoch ticks: how long guest code runs before it yields to other requests,
/// and so the resolution of request deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Request-body bytes the process may hold read ahead, across all requests waiting for an
/// instance (64 KiB each at most; see `instance::handle`). Past it, bodies stream unread.
const PREBUFFER_BUDGET: u64 = 256 << 20;

/// The shared engine and linker. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<RequestCtx>,
    limits: Limits,
    storage: Arc<dyn Storage>,
    prebuffer: Arc<Budget>,
}

impl Runtime {
    /// Builds the engine, starts its epoch ticker and fills the linker. Apps keep their state
    /// in `storage`.
    pub fn new(limits: Limits, storage: Arc<dyn Storage>) -> Result<Runtime> {
        let engine = Engine::new(&engine_config(&limits))
            .map_err(anyhow::Error::from)
            .context("configuring wasmtime")?;
        spawn_epoch_ticker(&engine);
        let mut linker = Linker::new(&engine);
        // All of WASI 0.2 that toolchains link (cli, clocks, random, io, filesystem, sockets),
        // each denied or emptied by `RequestCtx`, plus wasi:http with outbound requests denied.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // …except that the filesystem is ours: in memory, fresh per request.
        crate::vfs::add_to_linker(&mut linker, RequestCtx::vfs)?;
        // …and that streams and pollables reach the resource table without the WASI context,
        // which is then only built for a guest that asks for clocks, random or stdio.
        linker.allow_shadowing(true);
        wasmtime_wasi_io::add_to_linker_async(&mut linker)?;
        linker.allow_shadowing(false);
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        // …with the header fields a guest builds charged to its request's budget.
        crate::instance::add_fields_limits(&mut linker)?;
        // tabula:host/kv and wasi:keyvalue, on the app's namespace.
        crate::kv::add_to_linker(&mut linker, RequestCtx::kv)?;
        crate::session::add_to_linker(&mut linker, RequestCtx::session)?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                limits,
                storage,
                prebuffer: Budget::new(PREBUFFER_BUDGET),
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn linker(&self) -> &Linker<RequestCtx> {
        &self.inner.linker
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// What request bodies read ahead of their instance may hold, across the process.
    pub fn prebuffer_budget(&self) -> &Arc<Budget> {
        &self.inner.prebuffer
    }
}

fn engine_config(limits: &Limits) -> Config {
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
