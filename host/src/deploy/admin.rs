//! The admin API: JSON over HTTP on its own listener, every call with the bearer token.
//!
//! ```text
//! GET    /v1/limits                      what an upload may be
//! GET    /v1/apps                        the apps and their active versions
//! GET    /v1/apps/{name}                 versions, the active one, which replica runs which
//! PUT    /v1/assets                      upload an assets bundle (the body); answers its digest
//! POST   /v1/apps/{name}/versions        upload a component (the body) and, unless
//!                                        ?activate=false, deploy it; ?route= ?message= ?source=
//!                                        ?assets=DIGEST (uploaded before),
//!                                        manifest settings as JSON in `tabula-settings`,
//!                                        ?canary=10,50,100 (and ?canary_interval= _window=
//!                                        _max_error_excess= _min_requests=) as a canary
//! POST   /v1/apps/{name}/activate        {"version": N} deploys version N; {} ends the
//!                                        canary, or without one rolls back
//! POST   /v1/apps/{name}/promote         makes the canary the active version
//! DELETE /v1/apps/{name}                 removes the app from every replica
//! GET    /ui                             the dashboard (see `dashboard`)
//! ```
//!
//! Every call takes the bearer token, or the dashboard's login cookie from the dashboard's
//! own page (checked against cross-site use there).
//!
//! An upload is checked whole before anything is stored: name, route, size, that it compiles,
//! is a component, exports the HTTP handler, imports only what the host serves, and that its
//! name and route do not clash. A refusal is a 4xx with a message that says what to change.
//! Deploys answer with one JSON object per line: progress as it happens, then the outcome.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::cache::CompileCache;
use super::registry::{AppRecord, Blob, CanaryPlan, Pin, Registry, RouteTaken, Version};
use super::rollout;
use crate::app::App;
use crate::capabilities::Assets;
use crate::config::{AppSettings, AppSpec, RouteClash, validate_name, validate_route};
use crate::listener::ServerConfig;
use crate::listener::serve_side_listener;
use crate::runtime::Runtime;

mod dashboard;

/// How the admin API is run.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The bearer token every call must carry.
    pub token: String,
    /// The largest component an upload may send.
    pub max_component_bytes: u64,
    /// How long a deploy waits for every replica to get the new version ready.
    pub deploy_timeout: Duration,
    /// Whether an app may be deployed at a route below or above another app's (`/shop/admin`
    /// and `/shop`): only where one team owns both, since the inner app receives the outer
    /// one's cookies.
    pub allow_nested_routes: bool,
    /// Versions of each app kept besides the active one, the one being rolled out and the
    /// one a rollback returns to; older ones, and the blobs no kept version names, are
    /// deleted after each deploy and removal.
    pub keep_versions: usize,
}

#[derive(Clone)]
struct Admin {
    host: Runtime,
    registry: Registry,
    cache: Arc<CompileCache>,
    config: Arc<AdminConfig>,
}

/// Longest message or source a version keeps: they are listed with every version.
const MAX_NOTE_BYTES: usize = 4096;

impl Admin {
    /// Whether `given` is the admin token; compared in constant time, so its timing says
    /// nothing about how much of a guess was right.
    fn token_is(&self, given: &str) -> bool {
        let expected = self.config.token.as_bytes();
        given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected))
    }

    /// Deploys `version` of app `name` to every replica within this host's deploy timeout,
    /// at once or as a canary by `plan`, then collects what its retention no longer keeps
    /// (see [`rollout::roll_out`]).
    fn roll_out(&self, name: String, version: Version, plan: Option<CanaryPlan>) -> Response {
        let config = &self.config;
        rollout::roll_out(
            self.registry.clone(),
            config.deploy_timeout,
            config.keep_versions,
            name,
            version,
            plan,
        )
    }
}

/// A refusal: its status and what to do about it.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    /// What is not the caller's fault: the store, mostly.
    fn from(e: anyhow::Error) -> Self {
        tracing::warn!(error = format!("{e:#}"), "admin call failed");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Serves the admin API on `listener` (connections bounded as every other listener's).
pub async fn run(
    listener: TcpListener,
    host: Runtime,
    registry: Registry,
    cache: Arc<CompileCache>,
    config: AdminConfig,
    server: ServerConfig,
) {
    let admin = Admin {
        host,
        registry,
        cache,
        config: Arc::new(config),
    };
    let routes = routes(admin);
    let handle = move |req: hyper::Request<hyper::body::Incoming>| {
        let routes = routes.clone();
        async move {
            let response = routes
                .oneshot(req.map(Body::new))
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            response.map(|body| body.map_err(anyhow::Error::from).boxed_unsync())
        }
    };
    serve_side_listener(listener, server, handle).await;
}

fn routes(admin: Admin) -> Router {
    Router::new()
        .route("/v1/limits", get(limits))
        .route("/v1/assets", axum::routing::put(upload_assets))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{name}", get(show_app).delete(remove_app))
        .route("/v1/apps/{name}/versions", post(upload))
        .route("/v1/apps/{name}/activate", post(activate))
        .route("/v1/apps/{name}/promote", post(promote))
        .merge(dashboard::private())
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            authenticate,
        ))
        .merge(dashboard::public())
        .with_state(admin)
}

/// Refuses a call without the token, or without a dashboard login used from the dashboard.
async fn authenticate(State(admin): State<Admin>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if admin.token_is(given) {
        return next.run(req).await;
    }
    if given.is_empty() {
        let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
        match dashboard::check(&admin, mutating, req.headers().clone()).await {
            Ok(Some(login)) => {
                req.extensions_mut().insert(login);
                return next.run(req).await;
            }
            Ok(None) => {}
            Err(refused) => return refused.into_response(),
        }
    }
    let why = if given.is_empty() {
        "no admin token: send `Authorization: Bearer TOKEN` (the CLI reads TABULA_ADMIN_TOKEN)"
    } else {
        "wrong admin token: use the host's TABULA_ADMIN_TOKEN"
    };
    ApiError(StatusCode::UNAUTHORIZED, why.into()).into_response()
}

/// What an upload may be, so the CLI can refuse a component too large before sending it.
async fn limits(State(admin): State<Admin>) -> Json<serde_json::Value> {
    Json(json!({ "max_component_bytes": admin.config.max_component_bytes }))
}

#[derive(Serialize)]
struct AppSummary {
    name: String,
    route: Option<String>,
    active: Option<String>,
    pending: Option<String>,
    generation: u64,
    /// The canary in progress: its version, share, plan and times.
    canary: Option<serde_json::Value>,
    /// How the last canary ended and why (for a rollback by the fleet, with the figures).
    last_canary: Option<serde_json::Value>,
}

impl From<&AppRecord> for AppSummary {
    fn from(record: &AppRecord) -> Self {
        AppSummary {
            name: record.name.clone(),
            route: record.active.as_ref().map(|v| v.route.clone()),
            active: record.active.as_ref().map(Version::id),
            pending: record.pending.as_ref().map(Version::id),
            generation: record.generation,
            canary: record.canary.as_ref().map(|c| {
                json!({
                    "version": c.version.id(),
                    "percent": c.percent,
                    "steps": c.plan.steps,
                    "interval_secs": c.plan.interval_secs,
                    "window_secs": c.plan.window_secs,
                    "max_error_excess": c.plan.max_error_excess,
                    "min_requests": c.plan.min_requests,
                    "started": c.started,
                    "since": c.since,
                })
            }),
            last_canary: record.last_canary.as_ref().map(|end| {
                json!({
                    "version": format!("v{}", end.version),
                    "percent": end.percent,
                    "outcome": if end.promoted { "promoted" } else { "rolled back" },
                    "reason": end.reason,
                    "at": end.at,
                })
            }),
        }
    }
}

async fn list_apps(State(admin): State<Admin>) -> ApiResult<Json<Vec<AppSummary>>> {
    let apps = admin.registry.apps().await?;
    Ok(Json(
        apps.iter()
            .filter(|r| r.active.is_some() || r.pending.is_some())
            .map(AppSummary::from)
            .collect(),
    ))
}

async fn show_app(
    State(admin): State<Admin>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let record = known_app(&admin, &name).await?;
    let versions = admin.registry.versions(&name).await?;
    let replicas: Vec<_> = admin
        .registry
        .replicas()
        .await?
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "address": r.address,
                "running": r.running.get(&name).map(|n| format!("v{n}")),
                "canary": r.canary.get(&name).map(|s| json!({
                    "version": format!("v{}", s.version),
                    "percent": s.percent,
                })),
                "ready": r.ready.get(&name).map(|ns| ns.iter().map(|n| format!("v{n}")).collect::<Vec<_>>()),
            })
        })
        .collect();
    Ok(Json(json!({
        "app": AppSummary::from(&record),
        "versions": versions.iter().map(|v| json!({
            "id": v.id(),
            "digest": v.digest,
            "size": v.size,
            "created": v.created,
            "message": v.message,
            "source": v.source,
            "route": v.route,
        })).collect::<Vec<_>>(),
        "replicas": replicas,
    })))
}

/// The record of an app that exists, or 404.
async fn known_app(admin: &Admin, name: &str) -> ApiResult<AppRecord> {
    match admin.registry.app(name).await? {
        Some((record, _)) if record.active.is_some() || record.pending.is_some() => Ok(record),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no app named `{name}` is deployed (see `tabula apps`)"),
        )),
    }
}

/// Takes the app off every replica, then frees its route: an app whose upload failed half
/// way holds a route without a version, and is removed the same way.
async fn remove_app(
    State(admin): State<Admin>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let deployed = known_app(&admin, &name).await;
    if deployed.is_ok() {
        admin
            .registry
            .update(&name, |current| {
                let mut record = current.cloned().expect("known above");
                record.active = None;
                record.pending = None;
                record.end_canary(false, "the app was removed".into());
                Ok(record)
            })
            .await?;
        admin.registry.remove_versions(&name).await?;
    }
    if !admin.registry.release_route(&name).await? {
        deployed?;
    }
    rollout::collect_later(admin.registry.clone(), admin.config.keep_versions);
    Ok(Json(json!({ "removed": name })))
}

/// Stores an assets bundle, after checking that it is one, and answers its digest.
async fn upload_assets(
    State(admin): State<Admin>,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let blob = Blob::new(read_limited(&admin, body, "assets bundle").await?);
    Assets::from_bundle(blob.bytes())
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    // Pinned until the component that names it is uploaded (it passes the pin back), or for
    // the pin's lifetime.
    let pin = admin.registry.put_blob(&blob).await?;
    Ok(Json(json!({ "digest": blob.digest(), "pin": pin.id() })))
}

/// An upload's body, refused past the host's size limit: at once, before a byte of it is
/// read, when its `Content-Length` says so (a client that sent `Expect: 100-continue` then
/// sends none), else when the limit is crossed. It must keep coming by the rule every request
/// body follows: no wait for it longer than `--body-timeout`, and all of it within that plus
/// a second per `--body-min-rate` bytes, or 408. An upload that stalled held its connection,
/// one of the admin listener's few slots, for as long as its client liked.
async fn read_limited(admin: &Admin, body: Body, what: &str) -> ApiResult<Bytes> {
    use hyper::body::Body as _;
    let limit = admin.config.max_component_bytes;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the {what} is larger than this host accepts ({limit} bytes; the host's \
                 --max-component-mib)"
            ),
        )
    };
    if body.size_hint().lower() > limit {
        return Err(too_large());
    }
    let bounds = &admin.host.config().request;
    let (grace, min_rate) = (bounds.body_timeout, bounds.body_min_rate.max(1));
    let started = Instant::now();
    let mut body = http_body_util::Limited::new(body, limit as usize);
    let mut bytes = bytes::BytesMut::new();
    loop {
        let earned = Duration::try_from_secs_f64(bytes.len() as f64 / min_rate as f64)
            .unwrap_or(Duration::MAX);
        let left = grace
            .saturating_add(earned)
            .saturating_sub(started.elapsed());
        match tokio::time::timeout(grace.min(left), body.frame()).await {
            Err(_) => {
                return Err(ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the {what} came too slowly ({} bytes in {:.1} s): an upload may pause \
                         at most {} s (the host's --body-timeout) and take at most that plus a \
                         second per {min_rate} bytes (--body-min-rate)",
                        bytes.len(),
                        started.elapsed().as_secs_f64(),
                        grace.as_secs_f64(),
                    ),
                ));
            }
            Ok(None) => return Ok(bytes.freeze()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(too_large());
            }
            Ok(Some(Err(e))) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("reading the upload: {e}"),
                ));
            }
        }
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    assets: Option<String>,
    /// The pin `PUT /v1/assets` answered with, released once this version names them.
    assets_pin: Option<String>,
    route: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    source: String,
    activate: Option<bool>,
    /// The canary's steps, e.g. `10,50,100`: a canary rollout instead of a switch.
    canary: Option<String>,
    canary_interval: Option<u64>,
    canary_window: Option<u64>,
    canary_max_error_excess: Option<f64>,
    canary_min_requests: Option<u64>,
}

impl UploadQuery {
    /// The canary plan asked for, if any, checked; the defaults fill what is not given.
    fn plan(&self) -> Result<Option<CanaryPlan>, String> {
        let Some(steps) = &self.canary else {
            return Ok(None);
        };
        let plan = CanaryPlan {
            steps: CanaryPlan::steps(steps).map_err(|e| format!("{e:#}"))?,
            interval_secs: self.canary_interval.unwrap_or(CanaryPlan::INTERVAL_SECS),
            window_secs: self.canary_window.unwrap_or(CanaryPlan::WINDOW_SECS),
            max_error_excess: self
                .canary_max_error_excess
                .unwrap_or(CanaryPlan::MAX_ERROR_EXCESS),
            min_requests: self.canary_min_requests.unwrap_or(CanaryPlan::MIN_REQUESTS),
        };
        plan.check().map_err(|e| format!("{e:#}"))?;
        Ok(Some(plan))
    }
}

async fn upload(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // Read first (within the limit), then judged: a refusal sent while the client is still
    // uploading reaches it as a broken connection instead of the reason.
    let bytes = read_limited(&admin, body, "component").await?;
    let bad = |why: String| ApiError(StatusCode::BAD_REQUEST, why);
    validate_name(&name).map_err(|e| bad(format!("{e:#}")))?;
    let plan = query.plan().map_err(bad)?;
    // A canary shares the active version's route, keys and sessions: that version, if any.
    let canary_of = match plan {
        Some(_) => match admin.registry.app(&name).await? {
            Some((
                AppRecord {
                    active: Some(active),
                    ..
                },
                _,
            )) => Some(active),
            _ => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "app `{name}` has no active version for a canary to share requests \
                         with: deploy its first version without --canary"
                    ),
                ));
            }
        },
        None => None,
    };
    let route = query.route.unwrap_or_else(|| format!("/{name}"));
    validate_route(&route).map_err(|e| bad(format!("{e:#}")))?;
    for (what, text) in [("message", &query.message), ("source", &query.source)] {
        if text.len() > MAX_NOTE_BYTES {
            return Err(bad(format!(
                "the {what} is {} bytes; at most {MAX_NOTE_BYTES} are kept with a version",
                text.len()
            )));
        }
    }
    let settings: AppSettings = match headers.get("tabula-settings") {
        Some(value) => serde_json::from_slice(value.as_bytes()).map_err(|e| {
            bad(format!(
                "the tabula-settings header is not valid settings: {e}"
            ))
        })?,
        None => AppSettings::default(),
    };
    if let Some(active) = &canary_of {
        canary_fits(active, &route, &settings).map_err(|why| {
            ApiError(
                StatusCode::CONFLICT,
                format!(
                    "a canary of `{name}` must share {} with its active version: {why}; \
                     deploy this one without --canary",
                    active.id()
                ),
            )
        })?;
    }
    // Pinned before it is checked, so that a collection cannot delete it under this upload.
    let assets_pin = match &query.assets {
        Some(digest) => {
            let pin = admin.registry.pin(digest).await?;
            admin.registry.get_blob(digest).await.map_err(|e| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("the assets {digest}: {e:#}; upload them first"),
                )
            })?;
            Some(pin)
        }
        None => None,
    };
    // The checks an app gets when it loads, on the blocking pool: compiling takes a while.
    let spec = AppSpec {
        name: name.clone(),
        route: route.clone(),
        wasm: PathBuf::from("upload"),
        settings: settings.clone(),
        assets: None,
    };
    // Through the compile cache: this process's replica then loads what was compiled here,
    // and a version uploaded again (a rollback by upload) is not compiled again.
    let blob = Blob::new(bytes);
    let (host, cache, checked) = (admin.host.clone(), admin.cache.clone(), blob.clone());
    tokio::task::spawn_blocking(move || {
        let (component, _) = cache.component(&host, checked.digest(), checked.bytes())?;
        App::from_component(&host, &spec, component)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    // The route is taken last, once the upload is known good: a refused upload holds none.
    claim_route(&admin, &name, &route).await?;
    let pin = admin.registry.put_blob(&blob).await?;
    let digest = blob.digest();
    let draft = Version {
        number: 0,
        digest: digest.to_string(),
        size: blob.bytes().len() as u64,
        created: 0,
        message: query.message,
        source: query.source,
        route,
        settings,
        assets: query.assets.clone(),
    };
    let version = admin.registry.add_version(&name, draft).await?;
    // The version names its blobs now: the uploads' pins can go.
    let upload_pin = (query.assets.zip(query.assets_pin)).map(|(digest, id)| Pin::new(digest, id));
    for pin in [Some(pin), assets_pin, upload_pin].into_iter().flatten() {
        admin.registry.unpin(&pin).await?;
    }
    tracing::info!(
        app = name,
        version = version.id(),
        digest,
        "version uploaded"
    );
    if query.activate == Some(false) {
        return Ok(Json(json!({ "uploaded": version.id(), "digest": digest })).into_response());
    }
    Ok(admin.roll_out(name, version, plan))
}

/// Gives `route` to app `name` (see [`Registry::claim_route`]), or refuses with 409: the
/// route is another deployed app's, or one a live replica serves from its command line.
async fn claim_route(admin: &Admin, name: &str, route: &str) -> ApiResult<()> {
    let allow_nested = admin.config.allow_nested_routes;
    let nests_badly = |held: &str| {
        crate::config::route_clash(held, route, allow_nested).map(|clash| match clash {
            RouteClash::Same => format!("route `{route}` is"),
            RouteClash::Nested => format!("route `{route}` would nest with `{held}`, which is"),
        })
    };
    for replica in admin.registry.replicas().await? {
        for (app, held) in &replica.fixed {
            let clash = if app == name {
                Some(format!("the name `{app}` is"))
            } else {
                nests_badly(held)
            };
            if let Some(clash) = clash {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "{clash} app `{app}`'s, which replica {} serves from its command line; \
                         a deployed app cannot take it{}",
                        replica.id,
                        nesting_fix(held, route)
                    ),
                ));
            }
        }
    }
    match admin.registry.claim_route(name, route, allow_nested).await {
        Ok(()) => Ok(()),
        Err(e) => match e.downcast::<RouteTaken>() {
            Ok(taken) => {
                let clash = nests_badly(&taken.route).unwrap_or_default();
                let fix = if taken.route == route {
                    format!(": pick another with --route, or `tabula rm {}`", taken.app)
                } else {
                    nesting_fix(&taken.route, route)
                };
                Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("{clash} app `{}`'s{fix}", taken.app),
                ))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// Why nested routes are refused and who may allow them, when `held` and `route` differ.
fn nesting_fix(held: &str, route: &str) -> String {
    if held == route {
        return String::new();
    }
    "; routes of different apps may not nest, since the inner app would receive the outer \
     one's cookies (an operator who owns both may allow it with --allow-nested-routes)"
        .to_string()
}

#[derive(Deserialize)]
struct ActivateBody {
    version: Option<String>,
}

async fn activate(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Json(body): Json<ActivateBody>,
) -> ApiResult<Response> {
    let record = known_app(&admin, &name).await?;
    if body.version.is_none() && record.canary.is_some() {
        return end_canary(&admin, &name, false).await;
    }
    let versions = admin.registry.versions(&name).await?;
    let version = match body.version {
        Some(id) => {
            let number: u64 = id.trim_start_matches('v').parse().map_err(|_| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("`{id}` is not a version (e.g. v3)"),
                )
            })?;
            versions
                .into_iter()
                .find(|v| v.number == number)
                .ok_or_else(|| {
                    ApiError(
                        StatusCode::NOT_FOUND,
                        format!("app `{name}` has no version {id} (see `tabula versions {name}`)"),
                    )
                })?
        }
        // A rollback: the newest version older than the active one that served everyone.
        None => record.rollback_target(&versions).cloned().ok_or_else(|| {
            ApiError(
                StatusCode::CONFLICT,
                format!("app `{name}` has no version older than the active one to roll back to"),
            )
        })?,
    };
    claim_route(&admin, &name, &version.route).await?;
    Ok(admin.roll_out(name, version, None))
}

async fn promote(State(admin): State<Admin>, Path(name): Path<String>) -> ApiResult<Response> {
    known_app(&admin, &name).await?;
    end_canary(&admin, &name, true).await
}

/// Ends app `name`'s canary by hand: `promote`d, it becomes the active version, else the
/// app goes back to its active version. Answers once every replica has followed.
async fn end_canary(admin: &Admin, name: &str, promote: bool) -> ApiResult<Response> {
    let how = if promote { "promote" } else { "rollback" };
    let record = admin
        .registry
        .update(name, |current| {
            let mut record = current.cloned().unwrap_or_else(|| AppRecord::empty(name));
            let Some(canary) = &record.canary else {
                return Err(NoCanary.into());
            };
            let reason = format!("`tabula {how}` at {}%", canary.percent);
            if promote {
                record.active = Some(canary.version.clone());
            }
            record.end_canary(promote, reason);
            Ok(record)
        })
        .await
        .map_err(|e| match e.downcast_ref::<NoCanary>() {
            Some(_) => ApiError(
                StatusCode::CONFLICT,
                format!(
                    "app `{name}` has no canary to {how}: start one with `tabula deploy \
                     --canary`"
                ),
            ),
            None => e.into(),
        })?;
    // A canary starts only beside an active version, but a removal racing a deploy could
    // leave one behind without it: answered, never a panic of the admin task.
    let active = record.active.ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            format!("app `{name}` has no active version left: deploy it again"),
        )
    })?;
    Ok(rollout::settle(
        admin.registry.clone(),
        name.to_string(),
        active,
    ))
}

/// Why a canary with `route` and `settings` cannot share requests with `active`, if it
/// cannot: both are served at the active version's route, from one key space and one session
/// store, so the route, the kv layout and the session cookie and its path must be the same.
fn canary_fits(active: &Version, route: &str, settings: &AppSettings) -> Result<(), String> {
    if route != active.route {
        return Err(format!("route `{route}` is not its `{}`", active.route));
    }
    if settings.kv.layout != active.settings.kv.layout {
        return Err(format!(
            "kv layout {:?} is not its {:?}",
            settings.kv.layout, active.settings.kv.layout
        ));
    }
    if settings.session.cookie_name != active.settings.session.cookie_name
        || settings.strip_route != active.settings.strip_route
    {
        return Err("its session cookie and route handling differ".into());
    }
    Ok(())
}

/// The app has no canary: the caller answers 409.
#[derive(Debug)]
struct NoCanary;

impl std::fmt::Display for NoCanary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no canary")
    }
}

impl std::error::Error for NoCanary {}
