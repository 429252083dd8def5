//! An [`App`]: one component, compiled and pre-instantiated once, served under one route.
//!
//! Loading is where a component is judged: it must be a component (not a core module), it must
//! export `wasi:http/incoming-handler`, and it may import only the interfaces the host offers.
//! Everything found wrong is reported at once, at load time, never in the middle of a request.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::instance::RequestCtx;
use crate::kv::Namespace;
use crate::limits::AppLimits;
use crate::metrics::AppMetrics;
use crate::project::AppSpec;
use crate::runtime::Runtime;
use crate::session::SessionConfig;
use crate::vfs::{Assets, TmpQuota};

/// The interface every app exports, in the version the host's bindings were made from; a
/// component exporting another 0.2.x version is found too (lookups are semver-aware).
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.12";

/// Interface packages a guest may import. Anything else is refused at load time.
const ALLOWED_IMPORTS: &[&str] = &[
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

/// A loaded app, shared by every request routed to it. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    name: Arc<str>,
    route: String,
    pre: InstancePre<RequestCtx>,
    /// The component's `wasi:http/incoming-handler.handle`.
    handle: ComponentExportIndex,
    /// Whether an instance has had `handle`'s type checked against the signature
    /// [`crate::instance`] calls it with (see [`App::handle_checked`]).
    handle_checked: AtomicBool,
    runtime: Runtime,
    namespace: Arc<Namespace>,
    session: Arc<SessionConfig>,
    limits: AppLimits,
    assets: Assets,
    /// One permit per instance the app may have alive at once.
    admission: Arc<Semaphore>,
    metrics: AppMetrics,
}

impl App {
    /// Compiles the component `spec` names and prepares it to be instantiated per request.
    pub fn load(runtime: &Runtime, spec: &AppSpec) -> Result<App> {
        let path = &spec.wasm;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        App::from_bytes(runtime, spec, &bytes)
            .with_context(|| format!("loading app `{}` from {}", spec.name, path.display()))
    }

    /// Like [`App::load`], with the component's bytes already in memory.
    pub fn from_bytes(runtime: &Runtime, spec: &AppSpec, bytes: &[u8]) -> Result<App> {
        if is_core_module(bytes) {
            bail!(
                "this is a core WebAssembly module, not a component: build it for the \
                 `wasm32-wasip2` target (or wrap it with `wasm-tools component new`)"
            );
        }
        let component = Component::new(runtime.engine(), bytes)
            .map_err(anyhow::Error::from)
            .context("compiling the component")?;
        App::from_component(runtime, spec, component)
    }

    /// Like [`App::load`], from a component that [`App::serialize`] compiled for an engine
    /// configured like `runtime`'s: how `--processes` workers skip compiling.
    ///
    /// # Safety
    /// `compiled` must be a file [`App::serialize`] wrote and nobody else could change:
    /// wasmtime maps it and runs its machine code as is.
    pub unsafe fn load_compiled(runtime: &Runtime, spec: &AppSpec, compiled: &Path) -> Result<App> {
        // SAFETY: the caller vouches for the file.
        let component = unsafe { Component::deserialize_file(runtime.engine(), compiled) }
            .map_err(anyhow::Error::from)
            .with_context(|| format!("loading the compiled app `{}`", spec.name))?;
        App::from_component(runtime, spec, component)
    }

    /// The app's compiled component, for [`App::load_compiled`].
    pub fn serialize(&self) -> Result<Vec<u8>> {
        self.inner
            .pre
            .component()
            .serialize()
            .map_err(anyhow::Error::from)
    }

    fn from_component(runtime: &Runtime, spec: &AppSpec, component: Component) -> Result<App> {
        let (name, route) = (spec.name.as_str(), spec.route.as_str());
        validate_name(name)?;
        let session = SessionConfig::new(name, route, &runtime.limits().session, &spec.session)?;
        let (limits, capped) = AppLimits::resolve(runtime.limits(), &spec.limits);
        for what in capped {
            tracing::warn!(app = name, "{what}: using the cap");
        }
        check_imports(runtime, &component)?;
        let pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("linking the component's imports")?;
        // The bindings check that the export is there; a request then finds it by index.
        ProxyPre::new(pre.clone())
            .map_err(anyhow::Error::from)
            .context(
                "the component does not export `wasi:http/incoming-handler@0.2.x`: \
                 is it a `wasi:http/proxy` component?",
            )?;
        let handle = component
            .get_export_index(None, INCOMING_HANDLER)
            .and_then(|handler| component.get_export_index(Some(&handler), "handle"))
            .context("finding `handle` in the component's exports")?;
        Ok(App {
            inner: Arc::new(AppInner {
                name: name.into(),
                route: route.to_string(),
                pre,
                handle,
                handle_checked: AtomicBool::new(false),
                runtime: runtime.clone(),
                namespace: Arc::new(Namespace::new(runtime.storage().clone(), name, limits.kv)),
                session: Arc::new(session),
                admission: Arc::new(Semaphore::new(limits.max_concurrency as usize)),
                metrics: AppMetrics::new(name),
                assets: match &spec.assets {
                    Some(dir) => Assets::load(dir)
                        .with_context(|| format!("loading the assets of app `{name}`"))?,
                    None => Assets::empty(),
                },
                limits,
            }),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }

    pub fn metrics(&self) -> &AppMetrics {
        &self.inner.metrics
    }

    pub fn route(&self) -> &str {
        &self.inner.route
    }

    pub(crate) fn pre(&self) -> &InstancePre<RequestCtx> {
        &self.inner.pre
    }

    /// Where `wasi:http/incoming-handler.handle` is among the component's exports.
    pub(crate) fn handle_export(&self) -> &ComponentExportIndex {
        &self.inner.handle
    }

    /// Whether `handle`'s type has been checked on an instance of this app. Every instance
    /// comes from the same component and linker, so one check holds for all of them.
    pub(crate) fn handle_checked(&self) -> bool {
        self.inner.handle_checked.load(Ordering::Relaxed)
    }

    /// Records that an instance passed the check.
    pub(crate) fn set_handle_checked(&self) {
        self.inner.handle_checked.store(true, Ordering::Relaxed);
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The app's own slice of the store.
    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.inner.namespace
    }

    pub fn session_config(&self) -> &Arc<SessionConfig> {
        &self.inner.session
    }

    pub fn limits(&self) -> &AppLimits {
        &self.inner.limits
    }

    /// The read-only files mounted at `/app`.
    pub fn assets(&self) -> &Assets {
        &self.inner.assets
    }

    pub fn tmp_quota(&self) -> TmpQuota {
        self.inner.limits.tmp
    }

    /// A permit for one more live instance: at once if the app is under its concurrency
    /// limit, else as soon as an instance ends, waiting at most the app's queue timeout.
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let admission = &self.inner.admission;
        if let Ok(permit) = admission.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(
            self.inner.limits.queue_timeout,
            admission.clone().acquire_owned(),
        )
        .await
        .ok()?
        .ok()
    }
}

/// App names become key namespaces and log fields, so they are kept to `[A-Za-z0-9_-]`.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("app name {name:?} must be made of letters, digits, `-` and `_`");
    }
    Ok(())
}

/// Refuses imports outside [`ALLOWED_IMPORTS`], naming all of them in one error.
fn check_imports(runtime: &Runtime, component: &Component) -> Result<()> {
    let ty = component.component_type();
    let refused: Vec<String> = ty
        .imports(runtime.engine())
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

/// A core module's header is `\0asm` followed by version 1; a component's has a different
/// version/layer field. Checked by hand so the error names the fix instead of a parse failure.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}
