//! The bodies of a request and of its response on their way through the host: the request
//! body within the app's size limit and the host's pace ([`GuestRequestBody`]), and the
//! guest's response body, which ends in an error if the guest failed halfway and stops the
//! guest if the client goes away ([`GuestResponseBody`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::failure::Failure;
use crate::budget::{Budget, Charge};
use crate::config::AppConfig;
use crate::request::log::Label;

/// The guest's task, aborted if dropped while still armed: when the client is gone before the
/// guest has finished its response.
pub(super) struct AbortOnDrop(pub(super) Option<tokio::task::JoinHandle<Result<(), Failure>>>);

impl AbortOnDrop {
    pub(super) async fn join(mut self) -> Result<Result<(), Failure>, tokio::task::JoinError> {
        self.0.take().expect("joined once").await
    }

    /// Lets the task run to its end on its own: the response is complete.
    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Why the guest stopped before finishing its response, if it did: set by the guest's task
/// before the guest's store is dropped, so before the response body can see its end.
#[derive(Default)]
pub(super) struct Unfinished(OnceLock<String>);

/// Records, when dropped armed, that the guest stopped before finishing its response: it
/// trapped, or ran out of time, or its task was aborted.
pub(super) struct UnfinishedMarker(Option<Arc<Unfinished>>);

impl UnfinishedMarker {
    pub(super) fn new(unfinished: Arc<Unfinished>) -> UnfinishedMarker {
        UnfinishedMarker(Some(unfinished))
    }

    /// The guest returned: whatever it left unfinished was aborted
    /// ([`super::instance::FreshInstance::abort_unfinished_bodies`]) and ends in an error.
    pub(super) fn returned(mut self) {
        self.0 = None;
    }

    /// The guest failed, for `reason`.
    pub(super) fn failed(mut self, reason: String) {
        if let Some(unfinished) = self.0.take() {
            let _ = unfinished.0.set(reason);
        }
    }
}

impl Drop for UnfinishedMarker {
    fn drop(&mut self) {
        if let Some(unfinished) = &self.0 {
            let _ = unfinished
                .0
                .set("the guest was stopped: its deadline passed".to_string());
        }
    }
}

/// The guest's response body, as the client gets it.
///
/// wasmtime ends the body cleanly when the guest's store goes away, even if the guest trapped
/// or ran out of time halfway: a client (or a cache) would take a cut-short body for a whole
/// one. Here such an end is an error instead, as is a body the guest returned without
/// finishing, or dropped: HTTP/1 closes the connection without the last chunk and HTTP/2
/// resets the stream. Either is logged as a warning and marks the access line `aborted`.
/// Dropping the body unfinished (the client went away) aborts the guest; a body is finished
/// at its end, at its declared length, or, for HEAD, 204 and 304, at once.
pub(super) struct GuestResponseBody {
    pub(super) inner: HyperOutgoingBody,
    pub(super) task: AbortOnDrop,
    /// Set before the guest's store is dropped when the guest did not finish.
    pub(super) unfinished: Arc<Unfinished>,
    /// The bytes still to come of a body with a declared length: at 0 the client has it all.
    pub(super) declared: Option<u64>,
    /// The request's, for the log.
    pub(super) label: Option<Arc<Label>>,
}

impl GuestResponseBody {
    /// Ends the body in an error, and says so in the log.
    fn cut_short(&mut self, reason: &str) -> anyhow::Error {
        let _request = self.label.as_ref().map(|label| {
            label.aborted("the guest did not finish the body");
            label.enter()
        });
        tracing::warn!(
            reason,
            "response body cut short: the guest did not finish it, so the client gets an \
             error (HTTP/1: the connection closes without the last chunk; HTTP/2: the stream \
             is reset)"
        );
        self.task.disarm();
        anyhow!("the guest did not finish its response body; the body is cut short")
    }
}

impl Body for GuestResponseBody {
    type Data = Bytes;
    type Error = anyhow::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, anyhow::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match frame {
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                let complete = match &mut self.declared {
                    Some(left) => {
                        *left = left.saturating_sub(len);
                        *left == 0
                    }
                    None => frame.is_trailers(),
                };
                if complete {
                    self.task.disarm();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            // wasmtime's error for an aborted body says nothing a log reader could use.
            Some(Err(_)) => {
                let reason = self.unfinished.0.get().cloned().unwrap_or_else(|| {
                    "the guest returned, or dropped its body, without `outgoing-body.finish`"
                        .to_string()
                });
                Poll::Ready(Some(Err(self.cut_short(&reason))))
            }
            None => match self.unfinished.0.get().cloned() {
                Some(reason) => Poll::Ready(Some(Err(self.cut_short(&reason)))),
                None => {
                    self.task.disarm();
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuestResponseBody {
    /// A body dropped before its end: the client went away (the guest is aborted with it).
    fn drop(&mut self) {
        if self.task.0.is_some()
            && let Some(label) = &self.label
        {
            label.aborted("the client went away");
        }
    }
}

/// How a request body went, for the status when the guest answers anyway.
#[derive(Default)]
pub(super) struct BodyVerdict(AtomicU8);

impl BodyVerdict {
    const FINE: u8 = 0;
    const TOO_LARGE: u8 = 1;
    const TOO_SLOW: u8 = 2;

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, verdict: u8) {
        self.0.store(verdict, Ordering::Relaxed);
    }

    /// What the request fails with, given the app's body `limit`, if the body was refused.
    pub(super) fn failure(&self, limit: u64) -> Option<Failure> {
        match self.get() {
            BodyVerdict::TOO_LARGE => Some(Failure::BodyTooLarge(limit)),
            BodyVerdict::TOO_SLOW => Some(Failure::BodyTooSlow),
            _ => None,
        }
    }

    /// What the guest's read fails with, given the app's body `limit`, if the body was
    /// refused.
    fn error(&self, limit: u64) -> Option<wasmtime_wasi_http::Error> {
        match self.get() {
            BodyVerdict::TOO_LARGE => {
                Some(wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit)))
            }
            BodyVerdict::TOO_SLOW => Some(wasmtime_wasi_http::Error::ConnectionReadTimeout),
            _ => None,
        }
    }
}

/// A message's declared `Content-Length`, if it has a valid one.
pub(super) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// The most of a request body read before the request takes an instance.
const PREBUFFER: usize = 64 << 10;

/// A request body as the guest reads it: what arrived before the instance was made, then the
/// rest as it streams. It fails once more than the app's limit has come through, or when the
/// client is too slow, counting only the time spent waiting for it (not the guest's own): no
/// single wait may exceed `body_timeout`, and all the waits together may not exceed
/// `body_timeout` plus a second per `body_min_rate` bytes received (as Apache's
/// `mod_reqtimeout` does), so a client trickling a byte every few seconds, or pausing after
/// a fast start, cannot hold an instance for the whole request timeout.
pub(super) struct GuestRequestBody<B> {
    inner: B,
    /// Read ahead by [`GuestRequestBody::prebuffer`], handed out first, and what holding it
    /// takes from the process's prebuffer budget until then.
    buffered: Option<Bytes>,
    buffered_charge: Charge,
    trailers: Option<http::HeaderMap>,
    /// An error met while prebuffering, handed out after the data that came before it.
    error: Option<wasmtime_wasi_http::Error>,
    ended: bool,
    remaining: u64,
    limit: u64,
    received: u64,
    /// Time spent waiting for the client so far, and since when it is being waited for now.
    waited: Duration,
    waiting_since: Option<Instant>,
    grace: Duration,
    min_rate: u64,
    /// Armed only while the body is waited for, so a body that arrives at once costs no
    /// timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) verdict: Arc<BodyVerdict>,
}

impl<B> GuestRequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    pub(super) fn new(inner: B, config: &AppConfig, verdict: Arc<BodyVerdict>) -> Self {
        GuestRequestBody {
            ended: inner.is_end_stream(),
            inner,
            buffered: None,
            buffered_charge: Charge::none(),
            trailers: None,
            error: None,
            remaining: config.max_body_bytes,
            limit: config.max_body_bytes,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            grace: config.request.body_timeout,
            min_rate: config.request.body_min_rate.max(1),
            timer: None,
            verdict,
        }
    }

    /// When the current wait for the client, begun at `since`, runs out.
    fn deadline(&self, since: Instant) -> Instant {
        let earned = Duration::try_from_secs_f64(self.received as f64 / self.min_rate as f64)
            .unwrap_or(Duration::MAX);
        let allowance = self.grace.saturating_add(earned);
        let left = self.grace.min(allowance.saturating_sub(self.waited));
        since
            .checked_add(left)
            .unwrap_or_else(|| since + Duration::from_secs(365 * 24 * 3600))
    }

    /// Reads the body until it ends or [`PREBUFFER`] bytes have come, holding them against
    /// `budget` (shared by the process, so many streams prebuffering at once cannot add up
    /// without bound: past it, bodies stream without a read-ahead). A failure is handed to
    /// the guest after the data that came before it.
    pub(super) async fn prebuffer(&mut self, budget: &Arc<Budget>) {
        if self.ended {
            return;
        }
        let mut data = bytes::BytesMut::new();
        let mut charge = budget.empty_charge();
        while data.len() < PREBUFFER && !self.ended {
            match std::future::poll_fn(|cx| self.poll_inner(cx)).await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        data.extend_from_slice(&chunk);
                        if charge.resize(data.len() as u64).is_err() {
                            break;
                        }
                    }
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.ended = true;
                    }
                },
                Some(Err(e)) => {
                    self.error = Some(e);
                    self.ended = true;
                }
                None => self.ended = true,
            }
        }
        self.buffered = Some(data.freeze());
        self.buffered_charge = charge;
    }

    /// Ends the body with `verdict`, and hands the guest its error.
    fn refuse(
        &mut self,
        verdict: u8,
    ) -> Poll<Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>> {
        self.verdict.set(verdict);
        self.ended = true;
        Poll::Ready(self.verdict.error(self.limit).map(Err))
    }

    /// The next frame from the client, within the size limit and the pace.
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>> {
        if self.ended {
            return Poll::Ready(self.verdict.error(self.limit).map(Err));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = self.waiting_since.take() {
                    self.waited += since.elapsed();
                }
                frame
            }
            Poll::Pending => {
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                let deadline = tokio::time::Instant::from_std(self.deadline(since));
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                return self.refuse(BodyVerdict::TOO_SLOW);
            }
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.ended = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            None => {
                self.ended = true;
                return Poll::Ready(None);
            }
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                return self.refuse(BodyVerdict::TOO_LARGE);
            }
            self.remaining -= len;
            self.received += len;
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl<B> Body for GuestRequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.buffered.take() {
            self.buffered_charge = Charge::none();
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if let Some(error) = self.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        self.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            && self.buffered.as_ref().is_none_or(Bytes::is_empty)
            && self.trailers.is_none()
            && self.error.is_none()
            && self.verdict.get() == BodyVerdict::FINE
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.buffered, &self.trailers, self.ended) {
            (None, None, false) => self.inner.size_hint(),
            (None, None, true) if self.error.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
