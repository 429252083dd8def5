//! The request path: from a connection to a fresh instance and back.
//!
//! - [`server`] accepts connections (HTTP/1.1 and HTTP/2) on worker threads and turns each
//!   [`Failure`] into a status; [`connection`] is how every connection is served and bounded,
//!   the operator listener's too.
//! - [`router`] picks the app by path prefix.
//! - [`handle`] runs one request: its body within the app's limits ([`body`]), an instance
//!   slot, a [`instance::FreshInstance`] for the guest, the session cookie on the way out.

mod body;
mod failure;
pub mod front;
pub(crate) mod instance;
pub(crate) mod log;
pub(crate) mod router;
pub(crate) mod state;

use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::BodyExt;

use self::log as request_log;
use crate::app::App;
use crate::capabilities::{refuse_guest_cookies, strip_cookies};
pub(crate) use crate::listener::ResponseBody;
use body::{
    AbortOnDrop, BodyVerdict, GuestRequestBody, GuestResponseBody, Unfinished, UnfinishedMarker,
    content_length,
};
pub(crate) use failure::Failure;
use instance::FreshInstance;

/// Runs `req` in a fresh instance of `app` and returns the guest's response.
///
/// The guest runs in its own task so that it can keep streaming the body after the response
/// head has been returned; that task owns the `Store` and drops it, and thereby the instance,
/// when the guest is done or its deadline passes. If the client goes away first (this future
/// or the response body is dropped unfinished), the task is aborted: a guest never works for
/// nobody while holding one of its app's instance slots.
///
/// `session_cookies` names every app's session cookie: none of them reaches the guest, and
/// the guest cannot set one (see [`strip_cookies`]).
pub(crate) async fn handle<B>(
    app: &App,
    mut req: hyper::Request<B>,
    session_cookies: &[String],
) -> Result<hyper::Response<ResponseBody>, Failure>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let limits = app.config();
    let timeout = limits.request_timeout;
    // No body will be sent for these: the response is complete once its head is.
    let bodyless_method = req.method() == hyper::Method::HEAD;
    if content_length(req.headers()).is_some_and(|len| len > limits.max_body_bytes) {
        return Err(Failure::BodyTooLarge(limits.max_body_bytes));
    }
    let presented = app.capabilities().session_config().id_from_cookies(
        req.headers()
            .get_all(hyper::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
    );
    strip_cookies(req.headers_mut(), session_cookies);
    tell_route(&mut req, app);
    // A body without a length is counted as it streams; the guest's read fails past the limit
    // and the client gets 413 instead of whatever the guest makes of the failure.
    let verdict = Arc::new(BodyVerdict::default());
    let req = req.map(|body| GuestRequestBody::new(body, limits, verdict.clone()));
    let session = app.capabilities().session(presented);
    let jar = session.jar();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let unfinished = Arc::new(Unfinished::default());
    let task_app = app.clone();
    let task_unfinished = unfinished.clone();
    let task = tokio::spawn(request_log::carry(async move {
        let app = task_app;
        // The start of the body arrives before an instance is taken: a client trickling
        // its body holds a connection, never one of the app's instance slots.
        let mut req = req;
        req.body_mut()
            .prebuffer(app.host().prebuffer_budget())
            .await;
        if let Some(failure) = req.body().verdict.failure(app.config().max_body_bytes) {
            return Err(failure);
        }
        // Admitted here, when the task runs, rather than before it is spawned: a burst of
        // requests (one per ready connection in a scheduler tick) would otherwise hold
        // permits while queued behind each other in the run queue, fill the limit with
        // instances that do not exist yet, and send the rest through the slow path of
        // the admission queue (a timer and a cross-thread wake-up each). At 1000
        // connections that halved hello's throughput.
        let Some(_admission) = app.admit().await else {
            let limits = app.config();
            return Err(Failure::Busy(anyhow!(
                "app `{}` has had {} instances alive, its limit, for the whole queue \
                     timeout ({:?})",
                app.name(),
                limits.max_concurrency,
                limits.queue_timeout
            )));
        };
        // Both live exactly as long as the instance: until this task ends. The request's
        // time starts now, once its body has begun and it has an instance slot.
        let _live = app.metrics().live_instance();
        let admitted = Instant::now();
        let run = async {
            let mut fresh = FreshInstance::new(&app, session, admitted + timeout).await?;
            app.metrics()
                .instantiation
                .observe(admitted.elapsed().as_secs_f64());
            // Settled or dropped before `fresh` (and so before the response body's channel
            // closes) however this ends: a return, a failure, the deadline, an abort.
            let marker = UnfinishedMarker::new(task_unfinished);
            let result = fresh.call(req, sender).await;
            match &result {
                Ok(()) => {
                    fresh.abort_unfinished_bodies();
                    marker.returned();
                }
                Err(Failure::Guest(e)) => marker.failed(format!("{e:#}")),
                Err(other) => marker.failed(format!("{other:?}")),
            }
            result
        };
        // The epoch callback stops guest code; this also stops a guest parked in a host
        // call, dropping the instance wherever it is.
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Guest(anyhow!(
                "request exceeded its deadline of {timeout:?}"
            ))),
        }
    }));
    let task = AbortOnDrop(Some(task));

    let answer = receiver.await;
    // A guest may answer anyway after its body read failed; the client hears why it failed.
    if matches!(answer, Ok(Ok(_)))
        && let Some(failure) = verdict.failure(limits.max_body_bytes)
    {
        return Err(failure);
    }
    match answer {
        Ok(Ok(response)) if response.status().is_informational() => Err(Failure::Guest(anyhow!(
            "the guest answered {}: a handler must send a final status (1xx responses and \
             upgrades are not supported)",
            response.status()
        ))),
        Ok(Ok(mut response)) => {
            let mut task = task;
            let status = response.status();
            if bodyless_method
                || status == hyper::StatusCode::NO_CONTENT
                || status == hyper::StatusCode::NOT_MODIFIED
            {
                task.disarm();
            }
            // hyper stops reading a body once its declared length has gone out, and drops it.
            let declared = content_length(response.headers());
            refuse_guest_cookies(response.headers_mut(), session_cookies);
            jar.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_to(response.headers_mut(), app.capabilities().session_config());
            Ok(response.map(|body| {
                GuestResponseBody {
                    inner: body,
                    task,
                    unfinished,
                    declared,
                    label: request_log::current(),
                }
                .boxed_unsync()
            }))
        }
        Ok(Err(code)) => Err(Failure::GuestErrorCode(code)),
        // The guest dropped the outparam without setting it: the task says why.
        Err(_) => match task.join().await {
            Ok(Err(failure)) => Err(failure),
            Ok(Ok(())) => Err(Failure::Guest(anyhow!(
                "the guest returned without setting a response"
            ))),
            Err(join) => Err(Failure::Guest(
                anyhow::Error::new(join).context("the guest task failed"),
            )),
        },
    }
}

/// The header that tells a guest the route its app is served at (whatever a client sent
/// under that name is replaced), as Spin's `spin-base-path` does.
static ROUTE_HEADER: http::HeaderName = http::HeaderName::from_static("tabula-route");

/// Tells the guest its route, and takes the route off the path for an app that asked for
/// `strip_route` (`/api/users?x` is `/users?x` for an app at `/api`; `/api` itself is `/`).
fn tell_route<B>(req: &mut hyper::Request<B>, app: &App) {
    let route = app.route();
    req.headers_mut()
        .insert(ROUTE_HEADER.clone(), app.route_header().clone());
    if !app.config().strip_route || route == "/" {
        return;
    }
    let uri = req.uri();
    let Some(rest) = uri.path().strip_prefix(route) else {
        return;
    };
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return,
    }
    if let Ok(stripped) = http::Uri::from_parts(parts) {
        *req.uri_mut() = stripped;
    }
}
