//! Configuration in three tiers, named by tier:
//! - [`HostConfig`]: the host's, from flags and environment; its per-app values are both
//!   defaults and caps;
//! - [`AppSettings`]: what an app asks for in its `tabula.toml`, every value optional (its
//!   `[limits]`, [`LimitSettings`], `[session]`, [`SessionSettings`], and `[variables]`,
//!   [`VariableSettings`]);
//! - [`AppConfig`]: one app's, resolved from the two: a manifest may lower a host value, or
//!   raise it up to the host's cap, never beyond it.
//!
//! Each capability defines its own section and this module composes them: [`KvLimits`] and
//! [`TmpQuota`] have one shape at both ends; sessions have [`SessionDefaults`] (host: its
//! defaults and caps), [`SessionSettings`] (manifest) and [`SessionConfig`] (app: with its
//! cookie's name and path), which caps a manifest's session settings the same way. [`AppSpec`] names an app: where its component is and what it asks for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

pub use crate::storage::Layout;

pub use crate::capabilities::{
    DEFAULT_SECRET_PREFIX, KvLimits, RequestBounds, SecretPolicy, SessionConfig, SessionDefaults,
    SessionSettings, TmpQuota, VariableSetting, VariableSettings, Variables,
    validate_variable_name,
};

/// Host-wide configuration. The per-app values are both defaults and caps.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Instances alive at once, across all apps. The pooling allocator reserves this many slots.
    pub max_instances: u32,
    /// Largest linear memory of one instance.
    pub max_memory_bytes: usize,
    /// Wall-clock time a request may run before its instance is stopped.
    pub request_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Instances of one app alive at once; more concurrent requests wait for one to end.
    pub max_concurrency: u32,
    /// How long a request over an app's concurrency limit waits for an instance to end
    /// before it gets 503 + Retry-After: bursts queue briefly instead of failing.
    pub queue_timeout: Duration,
    /// How instance memory is allocated.
    pub allocator: Allocator,
    /// Linear memory a pool slot keeps mapped between instances. With pagemap scanning (Linux
    /// 6.7+) only the pages a request dirtied are reset, so large values cost little. It does
    /// not spare an interpreter its unmapping: wasmtime 48's scan stops after 32 dirty ranges
    /// and unmaps the rest, and an interpreter dirties more (worker processes are the cure;
    /// see `--processes`).
    pub keep_resident_bytes: usize,
    /// Key and value sizes for `kv`.
    pub kv: KvLimits,
    /// What a request may keep in `/tmp`.
    pub tmp: TmpQuota,
    /// Session settings for apps whose manifest does not say otherwise, and their caps.
    pub session: SessionDefaults,
    /// What one request may make the host hold for it: see [`RequestBounds`].
    pub request: RequestBounds,
    /// What a component may cost to compile: see [`CompileLimits`].
    pub compile: CompileLimits,
    /// Which environment variables an app's secrets may name.
    pub secrets: SecretPolicy,
}

/// Bounds on what compiling one component may cost, checked on its bytes before the
/// compiler sees them. Host-wide: a deploy cannot change them.
///
/// Compiling is linear in what these count: a component carrying an unused module of
/// 400,000 empty functions (1.6 MB) took 31-44 s and +2.5 GiB to compile, so within the
/// 100 MiB upload limit a deploy could ask every replica for half an hour and 150 GiB. The
/// defaults are about 3.6 times the largest real components measured: componentize-py's
/// (13,758 functions, 6.3 MiB of code) and componentize-js's (13,005, 8.8 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Functions to compile: the bodies in every core module of the component, plus the
    /// adapters between them and the host (canonical lifts and lowers).
    pub max_functions: u64,
    /// Bytes of code: the code sections of every core module, together.
    pub max_code_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_functions: 50_000,
            max_code_bytes: 32 << 20,
        }
    }
}

/// Where instances get their memory, tables and stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Allocator {
    /// Slots reserved up front and recycled: instantiation is a few microseconds, at the cost
    /// of a large virtual-address reservation. The default.
    #[default]
    Pooling,
    /// wasmtime's default: map memory per instance. For hosts that limit virtual memory
    /// (`ulimit -v`), and the baseline the benchmarks compare against.
    OnDemand,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_instances: 1000,
            // Large enough for a componentize-py interpreter; small enough that a pool of a
            // thousand slots stays a cheap virtual reservation.
            max_memory_bytes: 256 << 20,
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 10 << 20,
            max_concurrency: 250,
            queue_timeout: Duration::from_secs(1),
            allocator: Allocator::Pooling,
            keep_resident_bytes: 4 << 20,
            kv: KvLimits::default(),
            tmp: TmpQuota::default(),
            session: SessionDefaults::default(),
            request: RequestBounds::default(),
            compile: CompileLimits::default(),
            secrets: SecretPolicy::default(),
        }
    }
}

/// What an app asks for: its manifest's `[limits]` and `[session]`, or nothing for a bare
/// component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct AppSettings {
    /// `strip_route = true`: the guest sees paths without the app's route in front (an app
    /// at `/api` gets `/users` for `/api/users`), for components written for the root.
    #[serde(default)]
    pub strip_route: bool,
    /// `[limits]`.
    pub limits: LimitSettings,
    /// `[session]`.
    pub session: SessionSettings,
    /// `[kv]`.
    #[serde(default, skip_serializing_if = "KvSettings::is_default")]
    pub kv: KvSettings,
    /// `[variables]`, and `--var`/`--secret`: what the guest reads through `wasi:config`.
    #[serde(default, skip_serializing_if = "VariableSettings::is_empty")]
    pub variables: VariableSettings,
}

/// What an app's manifest may say about its key-value state (`[kv]` in `tabula.toml`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvSettings {
    /// How its keys are laid out over a Redis Cluster: `spread` (the default) or
    /// `single-slot`. See `docs/architecture.md`, "Data on a Redis Cluster".
    #[serde(default)]
    pub layout: Layout,
}

impl KvSettings {
    fn is_default(&self) -> bool {
        self.layout.is_default()
    }
}

/// What an app's manifest may say about its limits (`[limits]` in `tabula.toml`). Each is a
/// [`HostConfig`] value of the same name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub memory_mib: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub kv_max_key_bytes: Option<u32>,
    pub kv_max_value_bytes: Option<u32>,
    pub kv_max_keys: Option<u64>,
    pub kv_max_bytes: Option<u64>,
    pub tmp_max_bytes: Option<u64>,
    pub tmp_max_files: Option<u64>,
}

/// One app's configuration, resolved. Each value is the [`HostConfig`] one of the same name
/// as it applies to this app.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub memory_bytes: usize,
    pub request_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_concurrency: u32,
    pub queue_timeout: Duration,
    pub kv: KvLimits,
    pub kv_layout: Layout,
    pub tmp: TmpQuota,
    pub request: RequestBounds,
    pub session: SessionConfig,
    pub strip_route: bool,
    pub variables: Arc<Variables>,
}

impl AppConfig {
    /// The configuration of app `name` at `route`: what its `settings` ask for, capped by
    /// the `host`'s, else the host's. Each value the cap lowered is reported, so the operator
    /// sees why an app gets less than it asked for.
    pub fn resolve(
        host: &HostConfig,
        name: &str,
        route: &str,
        settings: &AppSettings,
    ) -> Result<(AppConfig, Vec<String>)> {
        let (session, mut capped) =
            SessionConfig::new(name, route, &host.session, &settings.session)?;
        let (app, host) = (&settings.limits, host);
        let mut cap = |what: &str, asked: Option<u64>, cap: u64| -> u64 {
            match asked {
                Some(asked) if asked > cap => {
                    capped.push(format!("{what} {asked} is over the host's cap, {cap}"));
                    cap
                }
                Some(asked) => asked.max(1),
                None => cap,
            }
        };
        let memory_mib = cap(
            "memory_mib",
            app.memory_mib.map(|m| m as u64),
            (host.max_memory_bytes >> 20) as u64,
        );
        let timeout = cap(
            "request_timeout_secs",
            app.request_timeout_secs,
            host.request_timeout.as_secs().max(1),
        );
        let config = AppConfig {
            memory_bytes: (memory_mib as usize) << 20,
            request_timeout: if app.request_timeout_secs.is_some() {
                Duration::from_secs(timeout)
            } else {
                host.request_timeout
            },
            max_body_bytes: cap("max_body_bytes", app.max_body_bytes, host.max_body_bytes),
            max_concurrency: cap(
                "max_concurrency",
                app.max_concurrency.map(u64::from),
                u64::from(host.max_concurrency.min(host.max_instances)),
            ) as u32,
            queue_timeout: host.queue_timeout,
            kv: KvLimits {
                max_key_bytes: cap(
                    "kv_max_key_bytes",
                    app.kv_max_key_bytes.map(u64::from),
                    u64::from(host.kv.max_key_bytes),
                ) as u32,
                max_value_bytes: cap(
                    "kv_max_value_bytes",
                    app.kv_max_value_bytes.map(u64::from),
                    u64::from(host.kv.max_value_bytes),
                ) as u32,
                // A host quota of 0 is none: then the app's own, if it sets one, stands.
                max_keys: match host.kv.max_keys {
                    0 => app.kv_max_keys.unwrap_or(0),
                    host_cap => cap("kv_max_keys", app.kv_max_keys, host_cap),
                },
                max_bytes: match host.kv.max_bytes {
                    0 => app.kv_max_bytes.unwrap_or(0),
                    host_cap => cap("kv_max_bytes", app.kv_max_bytes, host_cap),
                },
            },
            kv_layout: settings.kv.layout,
            tmp: TmpQuota {
                max_bytes: cap("tmp_max_bytes", app.tmp_max_bytes, host.tmp.max_bytes),
                max_files: cap("tmp_max_files", app.tmp_max_files, host.tmp.max_files),
            },
            request: host.request,
            session,
            strip_route: settings.strip_route,
            variables: Arc::new(Variables::resolve(&settings.variables, &host.secrets)?),
        };
        Ok((config, capped))
    }
}

/// An app ready to load: a name, a route, a component file and what it asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppSpec {
    /// Names the app's state and its log lines: see [`validate_name`].
    pub name: String,
    /// The path prefix the app serves.
    pub route: String,
    /// The component.
    pub wasm: PathBuf,
    /// What its manifest asks for.
    pub settings: AppSettings,
    /// A directory whose files the app sees, read-only, at `/app`.
    pub assets: Option<PathBuf>,
}

/// Longest app name: names become key prefixes, cookie names and log fields.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest route.
pub const MAX_ROUTE_BYTES: usize = 256;

/// App names become key namespaces and log fields, so they are kept to `[A-Za-z0-9_-]`, at
/// most [`MAX_NAME_BYTES`] long.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(
            "app name {:?} must be 1 to {MAX_NAME_BYTES} letters, digits, `-` and `_`",
            shorten(name)
        );
    }
    Ok(())
}

/// Routes are `/` or `/`-separated segments of URL-safe characters (`A-Z a-z 0-9 - . _ ~`,
/// RFC 3986's unreserved set), none of them `.` or `..`, at most [`MAX_ROUTE_BYTES`] long.
///
/// A route is matched against request paths and is the `Path` of the app's session cookie,
/// and a deployer is not trusted with either: a route like `/shop;Domain=example.com` was
/// pasted into the cookie's attributes, and `/a/../b` or `//x` can never match the path a
/// client sends (clients normalise them away).
pub fn validate_route(route: &str) -> Result<()> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    let ok = route == "/"
        || (route.len() <= MAX_ROUTE_BYTES
            && route
                .strip_prefix('/')
                .is_some_and(|rest| rest.split('/').all(segment_ok)));
    if !ok {
        bail!(
            "route {:?}: a route is `/` or `/`-separated names of letters, digits, `-`, `.`, \
             `_` and `~` (not `.` or `..`), with no `/` at the end, at most {MAX_ROUTE_BYTES} \
             bytes (e.g. `/hello` or `/shop/api`)",
            shorten(route)
        );
    }
    Ok(())
}

/// Whether `route` serves `path`: its own path and everything below it (`/hello` serves
/// `/hello` and `/hello/x`, not `/helloworld`); the route `/` serves every path.
pub fn serves(route: &str, path: &str) -> bool {
    route == "/"
        || path
            .strip_prefix(route)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether one of two routes serves paths of the other: the same route, or one below the
/// other (`/` is above every route).
pub fn nested(a: &str, b: &str) -> bool {
    serves(a, b) || serves(b, a)
}

/// How a route clashes with one another app holds: the same route, or (unless nesting is
/// allowed) one serving paths of the other. One rule for the registry, which refuses, and the
/// admin API, which says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClash {
    /// Both are the same route.
    Same,
    /// One serves paths of the other, and nesting is not allowed.
    Nested,
}

/// How `route` clashes with `held`, if it does (see [`RouteClash`]).
pub fn route_clash(held: &str, route: &str, allow_nested: bool) -> Option<RouteClash> {
    if held == route {
        Some(RouteClash::Same)
    } else if !allow_nested && nested(held, route) {
        Some(RouteClash::Nested)
    } else {
        None
    }
}

/// The start of what a user gave, for an error message that must not echo kilobytes.
fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_safe_paths() {
        for good in ["/", "/hello", "/shop/api", "/a.b/c_d/e-f~"] {
            validate_route(good).unwrap();
        }
        let long = format!("/{}", "a".repeat(MAX_ROUTE_BYTES));
        for bad in [
            "",
            "hello",
            "/hello/",
            "//double",
            "/a/../b",
            "/a/./b",
            "/..",
            "/shop;Domain=example.com;SameSite=None",
            "/sp ace",
            "/café",
            "/a%2fb",
            "/a?b",
            "/a#b",
            "/a\r\nSet-Cookie:x",
            &long,
        ] {
            let e = validate_route(bad).expect_err(bad);
            assert!(e.to_string().contains("e.g. `/hello`"), "{e}");
        }
    }

    #[test]
    fn names_are_bounded() {
        validate_name(&"a".repeat(MAX_NAME_BYTES)).unwrap();
        let e = validate_name(&"a".repeat(8192)).unwrap_err().to_string();
        assert!(e.len() < 200, "the message does not echo the name: {e}");
    }

    #[test]
    fn apps_get_the_host_defaults_and_never_more_than_its_caps() {
        let host = HostConfig::default();
        let resolve = |limits: &LimitSettings| {
            let settings = AppSettings {
                limits: limits.clone(),
                ..AppSettings::default()
            };
            AppConfig::resolve(&host, "app", "/app", &settings).unwrap()
        };
        let (l, capped) = resolve(&LimitSettings::default());
        assert_eq!(l.memory_bytes, host.max_memory_bytes);
        assert_eq!(l.request_timeout, host.request_timeout);
        assert!(capped.is_empty());

        let asks = LimitSettings {
            memory_mib: Some(64),
            request_timeout_secs: Some(3600),
            max_body_bytes: Some(1024),
            max_concurrency: Some(5),
            kv_max_key_bytes: None,
            kv_max_value_bytes: Some(100),
            kv_max_keys: Some(10),
            kv_max_bytes: None,
            tmp_max_bytes: None,
            tmp_max_files: None,
        };
        let (l, capped) = resolve(&asks);
        assert_eq!(l.memory_bytes, 64 << 20, "lower is fine");
        assert_eq!(l.request_timeout, host.request_timeout, "higher is capped");
        assert_eq!((l.max_body_bytes, l.max_concurrency), (1024, 5));
        assert_eq!(
            (l.kv.max_key_bytes, l.kv.max_value_bytes),
            (host.kv.max_key_bytes, 100)
        );
        assert_eq!((l.kv.max_keys, l.kv.max_bytes), (10, host.kv.max_bytes));
        assert_eq!(capped.len(), 1, "{capped:?}");
    }
}
