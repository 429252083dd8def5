//! The response a handler returns, and [`IntoResponse`] for what may stand in for one.

use std::fmt;

use crate::Error;

/// An outgoing response: status, headers and a body held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `200` with a `text/plain` body.
    pub fn text(body: impl Into<String>) -> Response {
        Response::new(200)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// `200` with a `text/html` body.
    pub fn html(body: impl Into<String>) -> Response {
        Response::new(200)
            .with_header("content-type", "text/html; charset=utf-8")
            .with_body(body.into())
    }

    /// `200` with `value` as a JSON body; a value that cannot be serialised gives `500`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(200)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(e) => internal_error(&e),
        }
    }

    /// `404` with a short text body.
    pub fn not_found() -> Response {
        Response::text("not found\n").with_status(404)
    }

    /// `400` with `message` as the body.
    pub fn bad_request(message: impl Into<String>) -> Response {
        Response::text(message).with_status(400)
    }

    /// `303 See Other` to `location`: the answer to a form post.
    pub fn redirect(location: &str) -> Response {
        Response::new(303).with_header("location", location)
    }

    pub fn with_status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// Sets header `name`, replacing an earlier value of the same name.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text; panics if it is not UTF-8. Meant for tests.
    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("response body is not UTF-8")
    }
}

/// Anything a handler may return.
pub trait IntoResponse {
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

/// `Err` becomes the error's own response: see [`Error`].
impl<R: IntoResponse, E: Into<Error>> IntoResponse for Result<R, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(r) => r.into_response(),
            Err(e) => e.into().into_response(),
        }
    }
}

fn internal_error(e: &dyn fmt::Display) -> Response {
    Error::new(500, e.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_what_they_say() {
        let r = Response::text("hi")
            .with_status(201)
            .with_header("X-A", "1");
        assert_eq!(r.status(), 201);
        assert_eq!(r.header("x-a"), Some("1"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        let r = r.with_header("content-type", "text/csv");
        assert_eq!(r.headers().len(), 2);
        assert_eq!(Response::redirect("/x").header("location"), Some("/x"));
    }

    #[test]
    fn errors_become_500() {
        let r: Result<Response, std::io::Error> = Err(std::io::Error::other("boom"));
        let r = r.into_response();
        assert_eq!(r.status(), 500);
        assert!(
            !r.body_text().contains("boom"),
            "the error text must not leak to clients"
        );
    }
}
