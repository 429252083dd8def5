//! The session cookie: the host's alone. What a request's session calls decide the cookie
//! should become ([`CookieJar`]), the `Set-Cookie` the response gets from it, and the
//! filters that keep every app's session cookie away from guests in both directions.

use super::config::SessionConfig;

/// The prefix of every default session cookie name (`tabula_session_APP`).
const DEFAULT_COOKIE_PREFIX: &str = "tabula_session_";

/// Whether `name` is a session cookie of the host's: one of `names` (every app's), or any
/// name with the default prefix (an app on another route or host of the same site).
fn is_session_cookie(name: &str, names: &[String]) -> bool {
    name.starts_with(DEFAULT_COOKIE_PREFIX) || names.iter().any(|n| n == name)
}

/// Removes every session cookie from a request's `Cookie` headers before the guest sees them.
///
/// The host owns session cookies: a guest reads its session through `tabula:host/session`.
/// Without this, an app on a nested route (`/victim/admin`) received `/victim`'s raw session
/// id, since browsers send a cookie to every path below its own.
pub fn strip_cookies(headers: &mut http::HeaderMap, names: &[String]) {
    let cookie = http::header::COOKIE;
    // Bytes, not text: a cookie value may be any octet a browser sends, and none is lost.
    let pairs = |value: &http::HeaderValue| -> Vec<Vec<u8>> {
        value
            .as_bytes()
            .split(|b| *b == b';')
            .map(|pair| pair.trim_ascii().to_vec())
            .filter(|pair| !pair.is_empty())
            .collect()
    };
    let is_session = |pair: &[u8]| {
        let name = pair.split(|b| *b == b'=').next().unwrap_or(b"");
        std::str::from_utf8(name.trim_ascii()).is_ok_and(|name| is_session_cookie(name, names))
    };
    let all: Vec<Vec<u8>> = headers.get_all(&cookie).iter().flat_map(pairs).collect();
    if !all.iter().any(|pair| is_session(pair)) {
        return;
    }
    let kept: Vec<Vec<u8>> = all.into_iter().filter(|pair| !is_session(pair)).collect();
    headers.remove(&cookie);
    if !kept.is_empty()
        && let Ok(value) = http::HeaderValue::from_bytes(&kept.join(&b"; "[..]))
    {
        headers.insert(cookie, value);
    }
}

/// Drops a guest's `Set-Cookie` headers that would set any app's session cookie, and says so
/// in the log: otherwise one app could plant its own session id in another app's cookie and
/// have that app serve the planted session to the visitor.
pub fn refuse_guest_cookies(headers: &mut http::HeaderMap, names: &[String]) {
    let set_cookie = http::header::SET_COOKIE;
    let sets_session = |value: &http::HeaderValue| {
        let name = value.as_bytes().split(|b| *b == b'=').next().unwrap_or(b"");
        std::str::from_utf8(name).map_or(true, |name| is_session_cookie(name.trim(), names))
    };
    if !headers.get_all(&set_cookie).iter().any(sets_session) {
        return;
    }
    let _request = crate::request::log::enter();
    tracing::warn!(
        "the guest tried to set a session cookie, which only the host sets; the header was \
         dropped (use tabula:host/session)"
    );
    let kept: Vec<http::HeaderValue> = headers
        .get_all(&set_cookie)
        .iter()
        .filter(|value| !sets_session(value))
        .cloned()
        .collect();
    headers.remove(&set_cookie);
    for value in kept {
        headers.append(&set_cookie, value);
    }
}

/// What the response's `Set-Cookie` should say, decided by the session calls of a request.
#[derive(Debug, Default)]
pub struct CookieJar {
    change: Option<CookieChange>,
    /// Set once the response head has gone out; later changes can no longer reach it.
    sent: bool,
}

#[derive(Debug)]
pub(super) enum CookieChange {
    Set(String),
    Clear,
}

impl CookieJar {
    /// Adds the `Set-Cookie` the session's changes call for to a response's `headers`, if
    /// any; marks the jar sent.
    pub fn write_to(&mut self, headers: &mut http::HeaderMap, config: &SessionConfig) {
        self.sent = true;
        let cookie = match self.change.take() {
            None => return,
            Some(CookieChange::Set(id)) => config.set_cookie(&id, false),
            Some(CookieChange::Clear) => config.set_cookie("", true),
        };
        add_session_cookie(headers, &cookie);
    }

    pub(super) fn record(&mut self, change: CookieChange) {
        if self.sent {
            let _request = crate::request::log::enter();
            tracing::warn!(
                "the session changed after the response head was sent; the cookie was not \
                 updated (finish session calls before setting the response)"
            );
        }
        self.change = Some(change);
    }
}

/// Adds the session cookie, and keeps the response out of shared caches: a response that
/// carries a session id must never be served to anyone else.
fn add_session_cookie(headers: &mut http::HeaderMap, cookie: &str) {
    match http::HeaderValue::from_str(cookie) {
        Ok(value) => {
            headers.append(http::header::SET_COOKIE, value);
            headers.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
        }
        Err(e) => {
            let _request = crate::request::log::enter();
            tracing::warn!(error = %e, "could not encode the session cookie")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookies_never_reach_guests_nor_come_from_them() {
        let names = vec!["custom".to_string()];
        let mut headers = http::HeaderMap::new();
        headers.append(
            "cookie",
            "a=1; tabula_session_victim=x; custom=y".parse().unwrap(),
        );
        headers.append("cookie", "b=2".parse().unwrap());
        strip_cookies(&mut headers, &names);
        assert_eq!(headers.get_all("cookie").iter().count(), 1);
        assert_eq!(headers["cookie"], "a=1; b=2");

        let mut headers = http::HeaderMap::new();
        headers.append(
            "set-cookie",
            "tabula_session_victim=x; Path=/".parse().unwrap(),
        );
        headers.append("set-cookie", "theme=dark".parse().unwrap());
        headers.append("set-cookie", " custom=y".parse().unwrap());
        refuse_guest_cookies(&mut headers, &names);
        let left: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(left, ["theme=dark"]);
    }
}
