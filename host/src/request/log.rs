//! Which request a log line is about, at no cost to the requests that log nothing.
//!
//! Every line logged while a request is served names it: its id, app, method and path, as
//! the fields of a `request` span (`request{id=… app=…}: …`). A tracing span made for every
//! request, and entered on every poll of the request's futures, was ~4% of a worker's CPU
//! on hello (perf), though most requests log nothing. Here a request carries a [`Label`]
//! instead, in a task-local that costs a pointer swap per poll, and the span is made from it
//! the first time something in the request logs ([`enter`]). The access line (`served`,
//! `--access-log`) writes the same fields itself, without a span, once the request is over:
//! when the last of its parts (the response body, the guest's task) lets go of its label. So
//! it can say that a response whose head went out as `200` was then aborted.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hyper::header::HeaderValue;
use tracing::Span;
use tracing::span::EnteredSpan;

tokio::task_local! {
    static CURRENT: Option<Arc<Label>>;
}

/// A request's identity in the log.
pub(crate) struct Label {
    pub(crate) id: HeaderValue,
    pub(crate) app: Arc<str>,
    pub(crate) method: http::Method,
    pub(crate) uri: http::Uri,
    span: OnceLock<Span>,
    /// The access line's, if the access log is on.
    access: Option<Access>,
}

/// What the access line says beyond the label.
struct Access {
    started: Instant,
    /// The status sent; 0 until then.
    status: AtomicU16,
    /// Why the response did not end as it should have, if it did not.
    aborted: OnceLock<&'static str>,
}

impl Label {
    /// A request's label; with `access_log` (when the request started), its access line is
    /// written when the request is over.
    pub(crate) fn new(
        id: HeaderValue,
        app: Arc<str>,
        method: http::Method,
        uri: http::Uri,
        access_log: Option<Instant>,
    ) -> Arc<Label> {
        Arc::new(Label {
            id,
            app,
            method,
            uri,
            span: OnceLock::new(),
            access: access_log.map(|started| Access {
                started,
                status: AtomicU16::new(0),
                aborted: OnceLock::new(),
            }),
        })
    }

    /// The response's head went out with `status`.
    pub(crate) fn answered(&self, status: u16) {
        if let Some(access) = &self.access {
            access.status.store(status, Ordering::Relaxed);
        }
    }

    /// The response did not end as it should have, for `why` (the first reason given stays).
    pub(crate) fn aborted(&self, why: &'static str) {
        if let Some(access) = &self.access {
            let _ = access.aborted.set(why);
        }
    }

    /// Enters this request's span: the lines logged while the guard lives name the request.
    pub(crate) fn enter(&self) -> EnteredSpan {
        self.span().clone().entered()
    }

    pub(crate) fn id(&self) -> &str {
        self.id.to_str().unwrap_or_default()
    }

    pub(crate) fn path(&self) -> &str {
        self.uri.path()
    }

    fn span(&self) -> &Span {
        self.span.get_or_init(|| {
            tracing::info_span!(
                "request",
                id = self.id(),
                app = &*self.app,
                method = %self.method,
                path = self.path()
            )
        })
    }

    /// Runs `future` as part of this request: what it logs names the request.
    pub(crate) fn scope<F: Future>(self: Arc<Self>, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(Some(self), future)
    }
}

/// Runs `future` (a task spawned for the current request) as part of the current request,
/// if there is one: what `tracing`'s `in_current_span` is to spans.
pub(crate) fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(current(), future)
}

impl Drop for Label {
    /// The access line, once nothing of the request is left.
    fn drop(&mut self) {
        let Some(access) = &self.access else {
            return;
        };
        let status = access.status.load(Ordering::Relaxed);
        if status == 0 {
            return;
        }
        tracing::info!(
            id = self.id(),
            app = &*self.app,
            method = %self.method,
            path = self.path(),
            status,
            elapsed_ms = access.started.elapsed().as_secs_f64() * 1e3,
            aborted = access.aborted.get().copied(),
            "served"
        );
    }
}

/// The current request's label, for a part of the request that outlives its task (the
/// response body).
pub(crate) fn current() -> Option<Arc<Label>> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// Enters the current request's span, made now if nothing in the request has logged yet, so
/// that the lines logged while the guard lives name the request. Outside a request it
/// enters nothing.
pub(crate) fn enter() -> Option<EnteredSpan> {
    CURRENT
        .try_with(|label| label.as_ref().map(|label| label.enter()))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> Arc<Label> {
        Label::new(
            HeaderValue::from_static("abc"),
            "hello".into(),
            http::Method::GET,
            http::Uri::from_static("/x?y=1"),
            None,
        )
    }

    #[tokio::test]
    async fn a_request_and_the_tasks_it_spawns_are_named_and_nothing_else() {
        assert!(enter().is_none(), "outside a request");
        let label = label();
        let (inside, spawned, made) = label
            .clone()
            .scope(async {
                let inside = enter().is_some();
                let made = label.span.get().is_some();
                let spawned = tokio::spawn(carry(async { enter().is_some() }));
                let bare = tokio::spawn(async { enter().is_none() });
                assert!(bare.await.unwrap(), "a task not carried is outside");
                (inside, spawned.await.unwrap(), made)
            })
            .await;
        assert!(inside && spawned && made);
        assert_eq!((label.id(), label.path()), ("abc", "/x"));
    }

    #[tokio::test]
    async fn the_span_is_made_only_when_the_request_logs() {
        let label = label();
        label.clone().scope(async {}).await;
        assert!(label.span.get().is_none());
    }
}
