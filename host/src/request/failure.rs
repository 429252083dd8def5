//! [`Failure`]: why a request got no response from its guest, and the one place each is
//! logged and turned into a status.

use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use tracing::{info, warn};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

use crate::listener::{ResponseBody, plain};

/// Why a request produced no guest response. The server turns each into a status code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The guest trapped, panicked, ran out of time, or returned without a response.
    Guest(anyhow::Error),
    /// The guest answered `response-outparam.set` with an error code instead of a response.
    GuestErrorCode(ErrorCode),
    /// The app is at its concurrency limit, or the instance pool is full.
    Busy(anyhow::Error),
    /// The request body is larger than the app accepts (the limit, in bytes).
    BodyTooLarge(u64),
    /// The request body stopped arriving, or arrived slower than the host's minimum rate.
    BodyTooSlow,
}

impl Failure {
    /// Logs the failure with its cause chain. Kept here so every caller logs the same way.
    pub(crate) fn log(&self) {
        let _request = crate::request::log::enter();
        match self {
            Failure::Guest(e) => warn!(error = format!("{e:#}"), "guest failed"),
            Failure::GuestErrorCode(code) => warn!(?code, "guest answered with an error code"),
            Failure::Busy(e) => warn!(error = format!("{e:#}"), "busy: request refused"),
            Failure::BodyTooLarge(limit) => {
                info!(limit, "request body over the app's limit: refused")
            }
            Failure::BodyTooSlow => info!("request body too slow: refused"),
        }
    }

    /// What a client sees when the guest gives no response. The details stay in the log.
    pub(crate) fn response(&self) -> Response<ResponseBody> {
        match self {
            Failure::Guest(_) | Failure::GuestErrorCode(_) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the handler failed; the server log has the details\n",
            ),
            Failure::Busy(_) => {
                let mut response = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests in flight; retry shortly\n",
                );
                response
                    .headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Failure::BodyTooLarge(_) => plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than this app accepts\n",
            ),
            Failure::BodyTooSlow => {
                let mut response = plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body arrived too slowly\n",
                );
                response
                    .headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
        }
    }
}
