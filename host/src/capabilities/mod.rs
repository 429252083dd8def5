//! What a guest may import, and everything behind it: each capability is one module here,
//! and they are composed in this file and nowhere else.
//!
//! Every capability has the same shape, after wasmtime's own capability crates and Spin's
//! factors:
//! - its configuration (e.g. [`KvLimits`]), part of the host's and each app's config;
//! - its per-app state, built when an app loads: a field of [`AppCapabilities`];
//! - its per-request state, built with the request's store: a field of [`Capabilities`];
//! - `add_to_linker<T>(linker, get: fn(&mut T) -> View<'_>)`, which never names the store's
//!   data type, so a capability depends on nothing above it (see [`add_to_linker`]).
//!
//! The capabilities: [`wasi`] (cli, clocks, random, io, sockets, with nothing of the host's),
//! [`vfs`] (`wasi:filesystem` in memory), [`http`] (`wasi:http`, outbound denied), [`kv`]
//! (`tabula:host/kv` and `wasi:keyvalue`) and [`session`] (`tabula:host/session`).
//! Adding one is a module here plus its line in each list of this file: [`ALLOWED_IMPORTS`],
//! [`AppCapabilities`], [`Capabilities`] and [`add_to_linker`].

mod http;
mod kv;
mod session;
mod vfs;
mod wasi;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};
use wasmtime_wasi_io::IoView;

use crate::budget::Budget;
use crate::storage::{Namespace, Storage};

pub use kv::KvLimits;
pub use session::{
    Session, SessionConfig, SessionDefaults, SessionSettings, refuse_guest_cookies, strip_cookies,
};
pub use vfs::{Assets, TmpQuota};

/// Interface packages a guest may import. Anything else is refused when an app loads.
pub const ALLOWED_IMPORTS: &[&str] = &[
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:http/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
    "wasi:keyvalue/",
    "tabula:host/",
];

/// Refuses imports outside [`ALLOWED_IMPORTS`], naming all of them in one error.
pub fn check_imports(engine: &Engine, component: &Component) -> Result<()> {
    let ty = component.component_type();
    let refused: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !ALLOWED_IMPORTS.iter().any(|p| name.starts_with(p)))
        .map(str::to_string)
        .collect();
    if !refused.is_empty() {
        bail!(
            "the component imports interfaces tabula does not provide: {}. \
             Allowed are WASI 0.2 ({})",
            refused.join(", "),
            ALLOWED_IMPORTS.join(" ")
        );
    }
    Ok(())
}

/// Bounds on what one request may make the host hold or do on its behalf, beyond its linear
/// memory. Host-wide: a manifest cannot change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBounds {
    /// Host memory in bytes: `/tmp` contents, names, descriptors, listings, kv CAS handles
    /// and batch answers, header fields the guest builds (see `budget.rs`).
    pub host_memory_bytes: u64,
    /// Resource handles alive at once (streams, descriptors, fields, buckets, ...).
    pub max_resources: usize,
    /// Guest stdout and stderr logged per request, in bytes.
    pub log_bytes: usize,
    /// Guest stdout and stderr logged per request, in lines; the rest is dropped and counted.
    pub log_lines: usize,
    /// A request body must keep arriving: no single wait for it longer than `body_timeout`,
    /// and all waits together no longer than `body_timeout` plus a second per
    /// `body_min_rate` bytes received, or the request gets 408.
    pub body_timeout: Duration,
    /// See `body_timeout`.
    pub body_min_rate: u64,
}

impl Default for RequestBounds {
    fn default() -> Self {
        RequestBounds {
            host_memory_bytes: 128 << 20,
            max_resources: 10_000,
            log_bytes: 64 << 10,
            log_lines: 1000,
            body_timeout: Duration::from_secs(10),
            body_min_rate: 1024,
        }
    }
}

/// What the capabilities keep for one app, built once when it loads and shared by its
/// requests.
pub struct AppCapabilities {
    name: Arc<str>,
    bounds: RequestBounds,
    namespace: Arc<Namespace>,
    kv: Arc<kv::Keyspace>,
    session: Arc<SessionConfig>,
    assets: Assets,
    tmp: TmpQuota,
}

impl AppCapabilities {
    /// The state of app `name`, whose state lives in `storage`.
    pub fn new(
        name: &Arc<str>,
        storage: &Arc<dyn Storage>,
        bounds: RequestBounds,
        kv: KvLimits,
        session: SessionConfig,
        tmp: TmpQuota,
        assets: Assets,
    ) -> AppCapabilities {
        let namespace = Arc::new(Namespace::new(
            storage.clone(),
            name,
            kv.max_keys,
            kv.max_bytes,
        ));
        AppCapabilities {
            name: name.clone(),
            bounds,
            kv: Arc::new(kv::Keyspace::new(namespace.clone(), kv)),
            namespace,
            session: Arc::new(session),
            assets,
            tmp,
        }
    }

    /// The app's session settings: its cookie, for the request path.
    pub fn session_config(&self) -> &SessionConfig {
        &self.session
    }

    /// The session of a request that presented the session id `presented` in its cookie.
    pub fn session(&self, presented: Option<String>) -> Session {
        Session::new(self.session.clone(), self.namespace.clone(), presented)
    }
}

/// What the capabilities hold for one request: the part of its store's data that guests
/// reach through their imports. Built fresh per request, dropped with it.
pub struct Capabilities {
    table: ResourceTable,
    /// What the host holds for this request beyond its linear memory (see [`crate::budget`]).
    budget: Arc<Budget>,
    /// Built on the guest's first WASI call that needs it (clocks, random, stdio, ...), not
    /// per request: many handlers never make one, and seeding its random generators is a
    /// good part of a small request's fixed cost.
    wasi: Option<WasiCtx>,
    /// The app's name and the request's bounds, for building `wasi`.
    app: Arc<str>,
    bounds: RequestBounds,
    http: http::Http,
    kv: Arc<kv::Keyspace>,
    session: Session,
    /// This request's filesystem: a fresh `/tmp`, the app's assets.
    vfs: vfs::Vfs,
}

impl Capabilities {
    /// The capabilities of one request of `app`, whose session is `session`.
    pub fn new(app: &AppCapabilities, session: Session) -> Capabilities {
        let budget = Budget::new(app.bounds.host_memory_bytes);
        let mut table = ResourceTable::new();
        table.set_max_capacity(app.bounds.max_resources);
        Capabilities {
            table,
            wasi: None,
            app: app.name.clone(),
            bounds: app.bounds,
            http: http::Http::new(&budget),
            kv: app.kv.clone(),
            session,
            vfs: vfs::Vfs::new(&app.assets, app.tmp, &budget),
            budget,
        }
    }

    /// The resource table every capability keeps its handles in.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The view wasmtime-wasi's host functions work through.
    pub fn wasi(&mut self) -> WasiCtxView<'_> {
        let (app, bounds) = (&self.app, &self.bounds);
        WasiCtxView {
            ctx: self
                .wasi
                .get_or_insert_with(|| wasi::guest_ctx(app, bounds.log_bytes, bounds.log_lines)),
            table: &mut self.table,
        }
    }

    /// The view wasmtime-wasi-http's host functions work through.
    pub fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.http.view(&mut self.table)
    }
}

/// The store data of a request, as the capabilities see it: it holds a [`Capabilities`]
/// and answers wasmtime's views from it. The data type is the embedder's; only this trait
/// is named here.
pub trait CapabilitiesView: WasiView + WasiHttpView + IoView + Send + 'static {
    /// The request's capabilities.
    fn capabilities(&mut self) -> &mut Capabilities;
}

/// Adds every capability to `linker`. The order matters where a capability replaces part of
/// another: the in-memory filesystem shadows wasmtime-wasi's, and the header-fields
/// constructors shadow wasmtime-wasi-http's.
pub fn add_to_linker<T: CapabilitiesView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    vfs::add_to_linker(linker, vfs_view::<T>)?;
    http::add_to_linker(linker, http_state::<T>)?;
    kv::add_to_linker(linker, kv_view::<T>)?;
    session::add_to_linker(linker, session_view::<T>)
}

fn vfs_view<T: CapabilitiesView>(data: &mut T) -> vfs::VfsView<'_> {
    let caps = data.capabilities();
    vfs::VfsView::new(&caps.vfs, &mut caps.table)
}

fn http_state<T: CapabilitiesView>(data: &mut T) -> &mut http::Http {
    &mut data.capabilities().http
}

fn kv_view<T: CapabilitiesView>(data: &mut T) -> kv::KvView<'_> {
    let caps = data.capabilities();
    kv::KvView::new(&caps.kv, &caps.budget, &mut caps.table)
}

fn session_view<T: CapabilitiesView>(data: &mut T) -> session::SessionView<'_> {
    session::SessionView::new(&mut data.capabilities().session)
}
