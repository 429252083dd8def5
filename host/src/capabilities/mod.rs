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
//! (`tabula:host/kv` and `wasi:keyvalue`), [`session`] (`tabula:host/session`) and
//! [`variables`] (`wasi:config/store`: the app's own settings).
//! Adding one is a module here plus its line in each list of this file: [`ALLOWED_IMPORTS`],
//! [`AppCapabilities`], [`Capabilities`] and `add_to_linker`.

mod http;
mod kv;
mod session;
mod variables;
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
use crate::storage::{Layout, Namespace, Storage};

pub use kv::KvLimits;
pub use session::{
    Session, SessionConfig, SessionDefaults, SessionSettings, refuse_guest_cookies, strip_cookies,
};
pub use variables::{
    DEFAULT_SECRET_PREFIX, SecretPolicy, VariableSetting, VariableSettings, Variables,
    validate_variable_name,
};
pub use vfs::{Assets, TmpQuota};

/// Interface packages a guest may import, each with a version served (a package may have
/// several entries): a version ending in `.` is any version it begins (the linker matches
/// WASI 0.2.x by semver), another is exactly that one. Anything else is refused when an app
/// loads.
pub const ALLOWED_IMPORTS: &[(&str, &str)] = &[
    ("wasi:cli", "0.2."),
    ("wasi:clocks", "0.2."),
    ("wasi:filesystem", "0.2."),
    ("wasi:http", "0.2."),
    ("wasi:io", "0.2."),
    ("wasi:random", "0.2."),
    ("wasi:sockets", "0.2."),
    ("wasi:keyvalue", kv::VERSIONS[0]),
    ("wasi:keyvalue", kv::VERSIONS[1]),
    ("wasi:config", variables::VERSIONS[0]),
    ("wasi:config", variables::VERSIONS[1]),
    ("wasi:config", variables::VERSIONS[2]),
    ("tabula:host", "0.1."),
];

/// Why `import` (`PACKAGE/INTERFACE@VERSION`) is refused, if it is.
fn refusal(import: &str) -> Option<String> {
    let (path, version) = import.split_once('@').unwrap_or((import, ""));
    let package = path.split_once('/').map_or(path, |(package, _)| package);
    let served: Vec<&str> = ALLOWED_IMPORTS
        .iter()
        .filter(|(p, _)| *p == package)
        .map(|(_, v)| *v)
        .collect();
    if served.is_empty() {
        return Some(format!("{import} (not an interface tabula provides)"));
    }
    let fits = |served: &&str| match served.strip_suffix('.') {
        Some(_) => version.starts_with(served),
        None => version == *served,
    };
    if served.iter().any(fits) {
        return None;
    }
    let wanted = served
        .iter()
        .map(|v| format!("{package}@{}", v.trim_end_matches('.')))
        .collect::<Vec<_>>()
        .join(" or ");
    Some(
        if version.starts_with("0.3") && package.starts_with("wasi:") {
            format!(
                "{import} (WASI 0.3, which tabula does not serve yet: build the component for \
             WASI 0.2, e.g. the wasm32-wasip2 target with a 0.2 SDK; tabula serves {wanted})"
            )
        } else {
            format!("{import} (a version tabula does not serve: it serves {wanted})")
        },
    )
}

/// Why a component that wasmtime would not compile is refused, if it is a WASI 0.3 one.
///
/// wasmtime 48 implements `wasi:http@0.3.0`, the version spin-sdk 7 emits, but behind its
/// component-model-async feature, which it calls experimental, incomplete and outside semver;
/// tabula is built without it, and its limits and hardening cover the WASI 0.2 request path
/// only. So the compiler's message ("`stream` requires the component model async feature")
/// is replaced by one that says what to build. Looked for only after compiling failed, so a
/// good component pays nothing.
pub fn wasi_03_refusal(bytes: &[u8]) -> Option<String> {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    let mut names = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(imports) if depth == 0 => {
                names.extend(imports.into_iter().flatten().map(|i| i.name.0.to_string()))
            }
            Payload::ComponentExportSection(exports) if depth == 0 => {
                names.extend(exports.into_iter().flatten().map(|e| e.name.0.to_string()))
            }
            _ => {}
        }
    }
    let wasi_03: Vec<String> = names
        .into_iter()
        .filter(|name| name.starts_with("wasi:") && name.contains("@0.3."))
        .collect();
    (!wasi_03.is_empty()).then(|| {
        format!(
            "this is a WASI 0.3 component ({}), and tabula serves WASI 0.2 (wasmtime's 0.3 \
             support is still experimental): build it for WASI 0.2, the `wasi:http/proxy` \
             world that exports `wasi:http/incoming-handler@0.2.x` (e.g. tabula's SDK, \
             spin-sdk 5, wstd 0.6, or componentize-py and componentize-js with their default \
             worlds)",
            wasi_03.join(", ")
        )
    })
}

/// Refuses imports outside [`ALLOWED_IMPORTS`], naming all of them, each with its reason, in
/// one error.
pub fn check_imports(engine: &Engine, component: &Component) -> Result<()> {
    let ty = component.component_type();
    let refused: Vec<String> = ty
        .imports(engine)
        .filter_map(|(name, _)| refusal(name))
        .collect();
    if !refused.is_empty() {
        bail!(
            "the component imports interfaces tabula does not provide: {}",
            refused.join("; ")
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
    variables: Arc<Variables>,
    /// The values of the app's secrets, which its guests' log lines hide.
    secrets: Arc<[String]>,
    assets: Assets,
    tmp: TmpQuota,
}

/// Logs a warning, in the background, if `name` has keys of the one-slot layout of old,
/// which its requests no longer see: `tabula store migrate` moves them.
fn warn_of_legacy_keys(name: &str, namespace: &Arc<Namespace>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (name, namespace) = (name.to_string(), namespace.clone());
    runtime.spawn(async move {
        if let Ok(true) = namespace.has_legacy_keys().await {
            tracing::warn!(
                app = %name,
                "the store holds keys this app wrote before keys were spread over the \
                 cluster; its requests do not see them until `tabula store migrate {name} \
                 --store ...` moves them"
            );
        }
    });
}

/// An app's configuration as far as the capabilities take it, resolved.
pub struct AppParts {
    /// What each request may make the host hold or do.
    pub bounds: RequestBounds,
    /// Its kv limits and quota.
    pub kv: KvLimits,
    /// How its keys are laid out over a Redis Cluster.
    pub kv_layout: Layout,
    /// Its session cookie and expiry.
    pub session: SessionConfig,
    /// What it reads through `wasi:config`.
    pub variables: Arc<Variables>,
    /// Its `/tmp` quota.
    pub tmp: TmpQuota,
    /// Its files at `/app`.
    pub assets: Assets,
}

impl AppCapabilities {
    /// The state of app `name`, whose state lives in `storage`.
    pub fn new(name: &Arc<str>, storage: &Arc<dyn Storage>, parts: AppParts) -> AppCapabilities {
        let AppParts {
            bounds,
            kv,
            kv_layout,
            session,
            variables,
            tmp,
            assets,
        } = parts;
        let namespace = Arc::new(Namespace::new(
            storage.clone(),
            name,
            kv_layout,
            kv.max_keys,
            kv.max_bytes,
        ));
        warn_of_legacy_keys(name, &namespace);
        AppCapabilities {
            name: name.clone(),
            bounds,
            kv: Arc::new(kv::Keyspace::new(namespace.clone(), kv)),
            namespace,
            session: Arc::new(session),
            secrets: variables.secrets().into(),
            variables,
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
    /// The app's name, secrets and the request's bounds, for building `wasi`.
    app: Arc<str>,
    secrets: Arc<[String]>,
    bounds: RequestBounds,
    http: http::Http,
    kv: Arc<kv::Keyspace>,
    session: Session,
    variables: Arc<Variables>,
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
            secrets: app.secrets.clone(),
            bounds: app.bounds,
            http: http::Http::new(&budget),
            kv: app.kv.clone(),
            session,
            variables: app.variables.clone(),
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
        let (app, secrets, bounds) = (&self.app, &self.secrets, &self.bounds);
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| {
                wasi::guest_ctx(app, secrets, bounds.log_bytes, bounds.log_lines)
            }),
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

/// The linkers apps are linked with, one per shape of `wasi:keyvalue/batch@0.2.0-draft2`
/// (published in two shapes under one name: see [`kv`]). Each holds every capability.
pub struct Linkers<T: 'static> {
    pairs: Linker<T>,
    entries: Linker<T>,
}

impl<T: CapabilitiesView> Linkers<T> {
    /// Both linkers, filled.
    pub fn new(engine: &Engine) -> wasmtime::Result<Linkers<T>> {
        let linker = |shape| -> wasmtime::Result<Linker<T>> {
            let mut linker = Linker::new(engine);
            add_to_linker(&mut linker, shape)?;
            Ok(linker)
        };
        Ok(Linkers {
            pairs: linker(kv::BatchShape::Pairs)?,
            entries: linker(kv::BatchShape::Entries)?,
        })
    }

    /// The linker for `component`: the one whose interfaces have the shapes it imports.
    pub fn for_component(&self, engine: &Engine, component: &Component) -> &Linker<T> {
        match kv::BatchShape::of(engine, component) {
            kv::BatchShape::Pairs => &self.pairs,
            kv::BatchShape::Entries => &self.entries,
        }
    }
}

/// Adds every capability to `linker`. The order matters where a capability replaces part of
/// another: the in-memory filesystem shadows wasmtime-wasi's, and the header-fields
/// constructors shadow wasmtime-wasi-http's.
fn add_to_linker<T: CapabilitiesView>(
    linker: &mut Linker<T>,
    batch: kv::BatchShape,
) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    vfs::add_to_linker(linker, vfs_view::<T>)?;
    http::add_to_linker(linker, http_state::<T>)?;
    kv::add_to_linker(linker, kv_view::<T>, batch)?;
    session::add_to_linker(linker, session_view::<T>)?;
    variables::add_to_linker(linker, |data: &mut T| &data.capabilities().variables)
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

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn imports_are_judged_by_package_and_version() {
        for served in [
            "wasi:http/types@0.2.12",
            "wasi:cli/environment@0.2.0",
            "wasi:keyvalue/store@0.2.0-draft2",
            "wasi:keyvalue/batch@0.2.0-draft",
            "wasi:config/store@0.2.0-draft-2024-09-27",
            "tabula:host/kv@0.1.0",
        ] {
            assert_eq!(refusal(served), None, "{served}");
        }
        let old = refusal("wasi:keyvalue/store@0.1.0").unwrap();
        assert!(
            old.contains("serves wasi:keyvalue@0.2.0-draft or wasi:keyvalue@0.2.0-draft2"),
            "{old}"
        );
        let next = refusal("wasi:http/types@0.3.0").unwrap();
        assert!(next.contains("WASI 0.3"), "{next}");
        let unknown = refusal("acme:secret/vault").unwrap();
        assert!(
            unknown.contains("not an interface tabula provides"),
            "{unknown}"
        );
    }
}
