//! [`Error`]: what a handler returns when it cannot answer normally.

use std::fmt;

use crate::{IntoResponse, Response, kv, session};

/// A handler error with the status it should produce.
///
/// Any `std::error::Error` converts into it (so `?` works); its status is 500, except an
/// unavailable store ([`kv::Error::Unavailable`], [`session::Error::Unavailable`]), which is
/// 503 with `Retry-After`. The
/// message goes to stderr, which the host logs; a 5xx response says no more than its status,
/// so internals do not leak to clients, while a 4xx from [`Error::new`] carries its message.
#[derive(Debug)]
pub struct Error {
    status: u16,
    message: String,
}

impl Error {
    /// An error answered with `status` and, for 4xx statuses, `message` as the body.
    pub fn new(status: u16, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + 'static> From<E> for Error {
    fn from(e: E) -> Self {
        let any: &dyn std::any::Any = &e;
        let unavailable = matches!(any.downcast_ref(), Some(kv::Error::Unavailable(_)))
            || matches!(any.downcast_ref(), Some(session::Error::Unavailable(_)));
        let status = if unavailable { 503 } else { 500 };
        Error::new(status, e.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status >= 500 {
            eprintln!("handler error ({}): {}", self.status, self.message);
        }
        let body = match self.status {
            503 => "service unavailable; retry shortly\n".to_string(),
            s if s >= 500 => "internal server error\n".to_string(),
            _ => format!("{}\n", self.message),
        };
        let response = Response::text(body).with_status(self.status);
        if self.status == 503 {
            response.with_header("retry-after", "1")
        } else {
            response
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_cause() {
        let e: Error = kv::Error::Unavailable("down".into()).into();
        let r = e.into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        let e: Error = kv::Error::Other("x".into()).into();
        assert_eq!(e.status(), 500);
        let r = Error::new(400, "name is required").into_response();
        assert_eq!((r.status(), r.body_text()), (400, "name is required\n"));
    }
}
