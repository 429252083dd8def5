//! The request a handler receives, fully read: method, path, query, headers and body.

use std::fmt;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
            Method::Other(m) => m,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An incoming request. The body has been read in full before the handler runs.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    path: String,
    query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    /// A request for `uri` (a path with an optional `?query`). Used by the host glue and by
    /// native tests of handlers.
    pub fn new(method: Method, uri: &str) -> Request {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        Request {
            method,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            query: query.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET uri`.
    pub fn get(uri: &str) -> Request {
        Request::new(Method::Get, uri)
    }

    /// `POST uri` with `body`.
    pub fn post(uri: &str, body: impl Into<Vec<u8>>) -> Request {
        Request::new(Method::Post, uri).with_body(body)
    }

    /// Adds a header (names are matched case-insensitively).
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path, without the query string, exactly as the client sent it (not decoded).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string, without the `?`.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The query string decoded into name/value pairs, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        decode_pairs(self.query.as_bytes())
    }

    /// The first value of the query parameter `name`, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        first(decode_pairs(self.query.as_bytes()), name)
    }

    /// The first value of header `name` (case-insensitive) if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every header, names in lowercase, in the order received.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether the request may carry a body, so whether the glue reads one. A GET or HEAD
    /// request has one only when it says so (RFC 9110 gives their content no meaning); that
    /// spares the usual request the host calls of opening, reading and closing an empty body.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn declares_body(&self) -> bool {
        !matches!(self.method, Method::Get | Method::Head)
            || self.header("transfer-encoding").is_some()
            || self
                .header("content-length")
                .is_some_and(|len| len.trim() != "0")
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// An `application/x-www-form-urlencoded` body decoded into name/value pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        decode_pairs(&self.body)
    }

    /// The first value of form field `name`.
    pub fn form_value(&self, name: &str) -> Option<String> {
        first(self.form(), name)
    }

    /// The body parsed as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

fn decode_pairs(input: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(input).into_owned().collect()
}

fn first(pairs: Vec<(String, String)>, name: &str) -> Option<String> {
    pairs.into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodies_that_can_exist_are_read() {
        assert!(!Request::get("/").declares_body());
        assert!(!Request::new(Method::Head, "/").declares_body());
        assert!(
            !Request::get("/")
                .with_header("Content-Length", "0")
                .declares_body()
        );
        assert!(
            Request::get("/")
                .with_header("Content-Length", "5")
                .declares_body()
        );
        assert!(
            Request::get("/")
                .with_header("Transfer-Encoding", "chunked")
                .declares_body()
        );
        assert!(Request::post("/", "").declares_body());
        assert!(Request::new(Method::Delete, "/").declares_body());
    }

    #[test]
    fn query_and_form_are_decoded() {
        let req = Request::post("/a/b?name=Ada+L%C3%B6w&x=1&x=2", "item=tea%26cake&qty=2")
            .with_header("Content-Type", "application/x-www-form-urlencoded");
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.query_param("name").as_deref(), Some("Ada Löw"));
        assert_eq!(req.query_param("x").as_deref(), Some("1"));
        assert_eq!(req.query_pairs().len(), 3);
        assert_eq!(req.form_value("item").as_deref(), Some("tea&cake"));
        assert_eq!(
            req.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(req.query_param("missing"), None);
    }

    #[test]
    fn empty_path_is_root() {
        assert_eq!(Request::get("?a=1").path(), "/");
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_body() {
        #[derive(serde::Deserialize)]
        struct In {
            n: u32,
        }
        let req = Request::post("/", r#"{"n": 7}"#);
        assert_eq!(req.json::<In>().unwrap().n, 7);
        assert!(Request::post("/", "nope").json::<In>().is_err());
    }
}
