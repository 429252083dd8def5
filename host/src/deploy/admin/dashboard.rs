//! The dashboard: one page on the admin listener (`/ui`) that shows the fleet and rolls back
//! or removes apps through the admin API itself.
//!
//! ```text
//! GET    /ui                the page (HTML, CSS and JS built into the binary: nothing else is fetched)
//! POST   /ui/login          {"token": ...} -> a login cookie
//! POST   /ui/logout         ends the login
//! GET    /ui/api/state      apps, versions, replicas and each app's last minute of traffic
//! ```
//!
//! The admin token is typed once and exchanged for a random login id in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` when the page was reached over HTTPS): the page's
//! scripts never hold the token, and it is in no URL and no log. Logins live in the store,
//! by the hash of the id, for [`LOGIN_TTL`]. A request that carries the cookie instead of the
//! token is refused when it comes from another site (`Sec-Fetch-Site`, and `Origin` against
//! `Host`), and one that changes anything must also echo the login's CSRF token in the
//! `x-tabula-csrf` header, which only the page, reading `/ui/api/state`, can learn.
//!
//! The figures come from the replicas' heartbeats (see [`crate::deploy::traffic`]): one read
//! of the registry per refresh, whatever the number of replicas, and no request to them.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{Admin, ApiError, ApiResult};
use crate::deploy::canary;
use crate::deploy::registry::{self, digest};
use crate::deploy::traffic;

/// How long a login lasts, from the moment the token was typed: a working day, after which
/// the token is asked for again.
pub const LOGIN_TTL: Duration = Duration::from_secs(8 * 3600);

/// The login cookie's name.
const COOKIE: &str = "tabula_admin";

/// The header a mutating call made with the cookie must carry the login's CSRF token in.
const CSRF_HEADER: &str = "x-tabula-csrf";

const PAGE: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The pages and the login, which need no login.
pub(super) fn public() -> Router<Admin> {
    Router::new()
        .route("/ui", get(|| asset("text/html; charset=utf-8", PAGE)))
        .route(
            "/ui/dashboard.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/ui/dashboard.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/ui/login", post(login))
}

/// The calls that need a login (or the token), beside the admin API's.
pub(super) fn private() -> Router<Admin> {
    Router::new()
        .route("/ui/api/state", get(state))
        .route("/ui/logout", post(logout))
}

/// One of the page's files, with headers that keep it from being framed (its buttons would
/// be clickjacked) and its scripts to what it ships.
async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A login as stored.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Login {
    /// What a mutating call must echo in [`CSRF_HEADER`].
    csrf: String,
}

/// The login id the request's cookie carries, if any.
pub(super) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|id| !id.is_empty())
}

/// The login of a request that carries the cookie instead of the token, checked to come from
/// the page itself: refused when it comes from another site, when the login has expired, and,
/// for a call that changes anything, without the login's CSRF token.
pub(super) async fn check(
    admin: &Admin,
    mutating: bool,
    headers: HeaderMap,
) -> ApiResult<Option<Login>> {
    let Some(id) = cookie(&headers) else {
        return Ok(None);
    };
    let key = digest(id.as_bytes());
    same_origin(&headers, mutating)?;
    let login = match admin.registry.login(&key).await? {
        Some(bytes) => serde_json::from_slice::<Login>(&bytes).ok(),
        None => None,
    };
    let Some(login) = login else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "the dashboard login has expired or ended: log in again".into(),
        ));
    };
    if mutating {
        let given = headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !bool::from(given.ct_eq(login.csrf.as_bytes())) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "a change made with the dashboard's cookie needs the {CSRF_HEADER} header \
                     the page sends; other clients use the admin token"
                ),
            ));
        }
    }
    Ok(Some(login))
}

/// Refuses a request a browser made for another site: `Sec-Fetch-Site` says so, or `Origin`
/// names another host than the one asked. A change must name its origin: browsers always do
/// for the page's own calls.
fn same_origin(headers: &HeaderMap, change: bool) -> ApiResult<()> {
    let cross = |why: String| {
        ApiError(
            StatusCode::FORBIDDEN,
            format!("cross-site request refused: {why}"),
        )
    };
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err(cross(format!(
            "Sec-Fetch-Site is {}",
            String::from_utf8_lossy(site.as_bytes())
        )));
    }
    let host = headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    match headers.get(header::ORIGIN) {
        Some(origin) => {
            let authority = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, authority)| authority.as_bytes());
            if authority != Some(host) {
                return Err(cross(format!(
                    "Origin {} is not this host ({})",
                    String::from_utf8_lossy(origin.as_bytes()),
                    String::from_utf8_lossy(host)
                )));
            }
        }
        None if change => return Err(cross("a change must carry an Origin header".into())),
        None => {}
    }
    Ok(())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Exchanges the admin token for a login cookie.
async fn login(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Json(form): Json<LoginForm>,
) -> ApiResult<Response> {
    same_origin(&headers, false)?;
    if !admin.token_is(&form.token) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong admin token: use the host's TABULA_ADMIN_TOKEN".into(),
        ));
    }
    let (id, csrf) = (random_hex()?, random_hex()?);
    let record = serde_json::to_vec(&Login { csrf }).map_err(anyhow::Error::from)?;
    admin
        .registry
        .put_login(&digest(id.as_bytes()), &record, LOGIN_TTL)
        .await?;
    // Secure when the browser reached the page over HTTPS (a TLS proxy in front), so that the
    // cookie is never sent in the clear; the listener itself speaks plain HTTP.
    let secure = headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes().starts_with(b"https://"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LOGIN_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    tracing::info!("dashboard login");
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "logged_in": true })),
    )
        .into_response())
}

/// Ends the login in the store and clears the cookie.
async fn logout(State(admin): State<Admin>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(id) = cookie(&headers) {
        admin.registry.end_login(&digest(id.as_bytes())).await?;
    }
    let cleared = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((
        [(header::SET_COOKIE, cleared)],
        Json(json!({ "logged_in": false })),
    )
        .into_response())
}

/// 256 random bits, hex.
fn random_hex() -> ApiResult<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for a dashboard login: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the page shows, read from the registry at each refresh.
async fn state(
    State(admin): State<Admin>,
    login: Option<Extension<Login>>,
) -> ApiResult<Json<Value>> {
    let now = registry::now_millis();
    let records = admin.registry.apps().await?;
    let mut replicas = admin.registry.replicas().await?;
    replicas.sort_by(|a, b| (&a.group, &a.id).cmp(&(&b.group, &b.id)));
    let mut apps = Vec::new();
    for record in records
        .iter()
        .filter(|r| r.active.is_some() || r.pending.is_some())
    {
        let versions = admin.registry.versions(&record.name).await?;
        // The canary as the admin API shows it, with its figures over its window so far: what
        // the judge compares.
        let summary = super::AppSummary::from(record);
        let mut canary = summary.canary;
        if let (Some(canary), Some(figures)) = (
            canary.as_mut(),
            canary::figures(&admin.registry, record).await?,
        ) {
            let count = |c: registry::Count| json!({ "requests": c.total, "errors": c.errors });
            canary["figures"] = json!({
                "seconds": figures.seconds,
                "canary": count(figures.canary),
                "active": count(figures.active),
            });
        }
        apps.push(json!({
            "name": record.name,
            "route": record.active.as_ref().or(record.pending.as_ref()).map(|v| &v.route),
            "active": record.active.as_ref().map(registry::Version::id),
            "pending": record.pending.as_ref().map(registry::Version::id),
            "canary": canary,
            "last_canary": summary.last_canary,
            "traffic": traffic::fleet(replicas.iter().filter_map(|r| r.traffic.get(&record.name))),
            "versions": versions.iter().rev().map(|v| json!({
                "id": v.id(),
                "created": v.created,
                "message": v.message,
                "source": v.source,
                "digest": v.digest,
                "size": v.size,
            })).collect::<Vec<_>>(),
        }));
    }
    // Apps served from replicas' command lines: no versions, but traffic.
    let mut fixed: Vec<&str> = replicas
        .iter()
        .flat_map(|r| r.fixed.iter().map(|(name, _)| name.as_str()))
        .collect();
    fixed.sort_unstable();
    fixed.dedup();
    let fixed: Vec<Value> = fixed
        .into_iter()
        .map(|name| {
            json!({
                "name": name,
                "traffic": traffic::fleet(replicas.iter().filter_map(|r| r.traffic.get(name))),
            })
        })
        .collect();
    let replicas: Vec<Value> = replicas
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "group": r.group,
                "address": r.address,
                "age_ms": now.saturating_sub(r.at),
                "generation": r.generation,
                "running": r.running.iter().map(|(app, n)| (app.clone(), format!("v{n}"))).collect::<std::collections::BTreeMap<_, _>>(),
                "canary": r.canary.iter().map(|(app, share)| (app.clone(), format!("v{} {}%", share.version, share.percent))).collect::<std::collections::BTreeMap<_, _>>(),
                "fixed": r.fixed.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({
        // Only a login has one; a caller with the token needs none.
        "csrf": login.map(|Extension(l)| l.csrf),
        "window_seconds": traffic::WINDOW.as_secs(),
        "apps": apps,
        "fixed": fixed,
        "replicas": replicas,
    })))
}
