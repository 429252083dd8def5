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

use crate::capabilities::{self, AppCapabilities, AppParts, Assets};
use crate::config::{AppConfig, AppSpec, CompileLimits, validate_name};
use crate::metrics::AppMetrics;
use crate::request::state::RequestState;
use crate::runtime::Runtime;

/// The interface every app exports, in the version the host's bindings were made from; a
/// component exporting another 0.2.x version is found too (lookups are semver-aware).
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.12";

/// A loaded app, shared by every request routed to it. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    name: Arc<str>,
    route: String,
    /// `route` as the `tabula-route` header each request carries, made once.
    route_header: http::HeaderValue,
    pre: InstancePre<RequestState>,
    /// The component's `wasi:http/incoming-handler.handle`.
    handle: ComponentExportIndex,
    /// Whether an instance has had `handle`'s type checked against the signature the
    /// request path calls it with (see [`App::handle_checked`]).
    handle_checked: AtomicBool,
    host: Runtime,
    config: AppConfig,
    capabilities: AppCapabilities,
    /// One permit per instance the app may have alive at once.
    admission: Arc<Semaphore>,
    metrics: AppMetrics,
}

impl App {
    /// Compiles the component `spec` names and prepares it to be instantiated per request.
    pub fn load(host: &Runtime, spec: &AppSpec) -> Result<App> {
        let path = &spec.wasm;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        App::from_bytes(host, spec, &bytes)
            .with_context(|| format!("loading app `{}` from {}", spec.name, path.display()))
    }

    /// Like [`App::load`], with the component's bytes already in memory.
    pub fn from_bytes(host: &Runtime, spec: &AppSpec, bytes: &[u8]) -> Result<App> {
        App::from_component(host, spec, App::compile(host, bytes)?)
    }

    /// Compiles a component for `host`'s engine, refusing a core module with the fix, and
    /// a component that would cost more to compile than the host's [`CompileLimits`] allow
    /// before the compiler sees it. Compiles take turns (see [`Runtime::compile_turn`]).
    ///
    /// The limits are checked on the bytes rather than enforced on the compiler (a child
    /// process under `RLIMIT_AS` and `RLIMIT_CPU`), because wasmtime cannot stop a compile
    /// midway and the checks already bound it: compile time and memory grow with the
    /// functions and the code to compile, and no worse (cranelift compiles one function at a
    /// time, and wasmparser caps a function at 7.6 MB and 50,000 locals). Measured on a
    /// loaded 2-core machine: 50,000 empty functions took 5 s and 379 MiB; 30 MiB of code in
    /// 45,000 functions 12 s and 393 MiB, in four functions 11 s and 430 MiB; the real
    /// componentize-js and componentize-py components (13,005 and 13,758 functions, 8.8 and
    /// 6.3 MiB of code) 33 and 27 s and 540 and 518 MiB. A child process would add a spawn
    /// and a copy of the compiled code to every compile, for costs the limits already keep
    /// to a few times a real component's.
    pub(crate) fn compile(host: &Runtime, bytes: &[u8]) -> Result<Component> {
        if is_core_module(bytes) {
            bail!(
                "this is a core WebAssembly module, not a component: build it for the \
                 `wasm32-wasip2` target (or wrap it with `wasm-tools component new`)"
            );
        }
        check_compile_cost(bytes, &host.config().compile)?;
        let _turn = host.compile_turn();
        Component::new(host.engine(), bytes).map_err(|e| {
            match capabilities::wasi_03_refusal(bytes) {
                Some(why) => anyhow::anyhow!(why),
                None => anyhow::Error::from(e).context("compiling the component"),
            }
        })
    }

    /// Like [`App::load`], from a component that [`App::serialize`] compiled for an engine
    /// configured like `host`'s: how `--processes` workers skip compiling.
    ///
    /// # Safety
    /// `compiled` must be a file [`App::serialize`] wrote and nobody else could change:
    /// wasmtime maps it and runs its machine code as is.
    pub unsafe fn load_compiled(host: &Runtime, spec: &AppSpec, compiled: &Path) -> Result<App> {
        // SAFETY: the caller vouches for the file.
        let component = unsafe { Component::deserialize_file(host.engine(), compiled) }
            .map_err(anyhow::Error::from)
            .with_context(|| format!("loading the compiled app `{}`", spec.name))?;
        App::from_component(host, spec, component)
    }

    /// The app's compiled component, for [`App::load_compiled`].
    pub fn serialize(&self) -> Result<Vec<u8>> {
        self.inner
            .pre
            .component()
            .serialize()
            .map_err(anyhow::Error::from)
    }

    /// An app of `component`, checked and pre-instantiated, with the assets in
    /// `spec.assets`.
    pub(crate) fn from_component(
        host: &Runtime,
        spec: &AppSpec,
        component: Component,
    ) -> Result<App> {
        let assets = match &spec.assets {
            Some(dir) => Assets::load(dir)
                .with_context(|| format!("loading the assets of app `{}`", spec.name))?,
            None => Assets::empty(),
        };
        App::with_assets(host, spec, component, assets)
    }

    /// Like [`App::from_component`], with the assets already in memory (a deploy's).
    pub(crate) fn with_assets(
        host: &Runtime,
        spec: &AppSpec,
        component: Component,
        assets: Assets,
    ) -> Result<App> {
        let (name, route) = (spec.name.as_str(), spec.route.as_str());
        validate_name(name)?;
        let (config, capped) = AppConfig::resolve(host.config(), name, route, &spec.settings)?;
        for what in capped {
            tracing::warn!(app = name, "{what}: using the cap");
        }
        capabilities::check_imports(host.engine(), &component)?;
        let pre = host
            .linker_for(&component)
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
        let name: Arc<str> = name.into();
        let capabilities = AppCapabilities::new(
            &name,
            host.storage(),
            AppParts {
                bounds: config.request,
                kv: config.kv,
                kv_layout: config.kv_layout,
                session: config.session.clone(),
                variables: config.variables.clone(),
                tmp: config.tmp,
                assets,
            },
        );
        Ok(App {
            inner: Arc::new(AppInner {
                route_header: http::HeaderValue::from_str(route)
                    .context("the route is not a valid header value")?,
                route: route.to_string(),
                pre,
                handle,
                handle_checked: AtomicBool::new(false),
                host: host.clone(),
                admission: Arc::new(Semaphore::new(config.max_concurrency as usize)),
                metrics: AppMetrics::new(&name),
                name,
                config,
                capabilities,
            }),
        })
    }

    /// The app's name.
    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }

    /// The app's counters and histograms.
    pub(crate) fn metrics(&self) -> &AppMetrics {
        &self.inner.metrics
    }

    /// The path prefix the app serves.
    pub fn route(&self) -> &str {
        &self.inner.route
    }

    /// The route as a header value, for the `tabula-route` header.
    pub(crate) fn route_header(&self) -> &http::HeaderValue {
        &self.inner.route_header
    }

    /// The app's component, linked and ready to instantiate.
    pub(crate) fn pre(&self) -> &InstancePre<RequestState> {
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

    /// The host the app runs on.
    pub(crate) fn host(&self) -> &Runtime {
        &self.inner.host
    }

    /// The app's configuration.
    pub(crate) fn config(&self) -> &AppConfig {
        &self.inner.config
    }

    /// What the capabilities keep for the app.
    pub(crate) fn capabilities(&self) -> &AppCapabilities {
        &self.inner.capabilities
    }

    /// A permit for one more live instance: at once if the app is under its concurrency
    /// limit, else as soon as an instance ends, waiting at most the app's queue timeout.
    pub(crate) async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let admission = &self.inner.admission;
        if let Ok(permit) = admission.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(
            self.inner.config.queue_timeout,
            admission.clone().acquire_owned(),
        )
        .await
        .ok()?
        .ok()
    }
}

/// A core module's header is `\0asm` followed by version 1; a component's has a different
/// version/layer field. Checked by hand so the error names the fix instead of a parse failure.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// Refuses a component whose compile would cost more than `limits` allow, naming the limit
/// and its flag. Reads only section headers (wasmparser does not validate here): bytes it
/// cannot parse are left for the compiler to refuse with its own message.
fn check_compile_cost(bytes: &[u8], limits: &CompileLimits) -> Result<()> {
    use wasmparser::{Parser, Payload};
    let (mut functions, mut code_bytes) = (0u64, 0u64);
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::CodeSectionStart { count, size, .. } => {
                functions += u64::from(count);
                code_bytes += u64::from(size);
            }
            Payload::ComponentCanonicalSection(section) => {
                functions += u64::from(section.count());
            }
            _ => {}
        }
    }
    let over = |found: String, limit: String, flag: &str| {
        anyhow::anyhow!(
            "the component has {found} to compile, more than this host compiles ({limit}: \
             --{flag}, or TABULA_{}): compiling takes time and memory in proportion, on \
             every replica. Strip what it does not use (a release build, `wasm-opt`), or ask \
             the operator to raise the limit",
            flag.to_uppercase().replace('-', "_")
        )
    };
    if functions > limits.max_functions {
        return Err(over(
            format!("{functions} functions"),
            limits.max_functions.to_string(),
            "max-compile-functions",
        ));
    }
    if code_bytes > limits.max_code_bytes {
        let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
        return Err(over(
            format!("{} of code", mib(code_bytes)),
            mib(limits.max_code_bytes),
            "max-compile-code-mib",
        ));
    }
    Ok(())
}
