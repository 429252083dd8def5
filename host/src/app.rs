//! An [`App`]: one component, compiled and pre-instantiated once, served under one route.
//!
//! Loading is where a component is judged: it must be a component (not a core module), it must
//! export `wasi:http/incoming-handler`, and it may import only the interfaces the host offers.
//! Everything found wrong is reported at once, at load time, never in the middle of a request.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::instance::RequestCtx;
use crate::kv::Namespace;
use crate::limits::AppLimits;
use crate::metrics::AppMetrics;
use crate::project::AppSpec;
use crate::runtime::Runtime;
use crate::session::SessionConfig;
use crate::vfs::{Assets, TmpQuota};

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
    pre: ProxyPre<RequestCtx>,
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
            .instance_pre()
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
        let pre = ProxyPre::new(pre).map_err(anyhow::Error::from).context(
            "the component does not export `wasi:http/incoming-handler@0.2.x`: \
             is it a `wasi:http/proxy` component?",
        )?;
        Ok(App {
            inner: Arc::new(AppInner {
                name: name.into(),
                route: route.to_string(),
                pre,
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

    pub fn pre(&self) -> &ProxyPre<RequestCtx> {
        &self.inner.pre
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
