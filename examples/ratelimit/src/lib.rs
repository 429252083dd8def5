//! A fixed-window rate limiter on TTLs: each `?user=` may make 5 requests per 2-second window;
//! the sixth gets `429 Too Many Requests` with `Retry-After`. The window is a key that the
//! store expires by itself, so no cleanup job exists and any replica enforces the same limit.

use std::time::Duration;

use tabula_sdk::{Error, Request, Response, handler, kv};

const LIMIT: i64 = 5;
const WINDOW: Duration = Duration::from_secs(2);

#[handler]
fn ratelimit(req: Request) -> Result<Response, Error> {
    let user = req
        .query_param("user")
        .ok_or_else(|| Error::new(400, "pass ?user=NAME"))?;
    let key = format!("window:{user}");
    let used = kv::increment(&key, 1)?;
    // The first request opens the window. Checking for a missing expiry as well repairs a
    // window whose opener died between the two calls.
    if used == 1 || kv::ttl(&key)? == kv::Expiry::Persistent {
        kv::expire(&key, Some(WINDOW))?;
    }
    if used > LIMIT {
        let retry = match kv::ttl(&key)? {
            kv::Expiry::In(left) => left.as_secs() + 1,
            _ => 1,
        };
        return Ok(Response::text(format!("slow down, {user}\n"))
            .with_status(429)
            .with_header("retry-after", &retry.to_string()));
    }
    Ok(Response::text(format!(
        "ok: {used} of {LIMIT} in this window\n"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_request_in_a_window_is_refused() {
        let req = || ratelimit(Request::get("/ratelimit?user=ada")).unwrap();
        for n in 1..=LIMIT {
            assert_eq!(
                req().body_text(),
                format!("ok: {n} of {LIMIT} in this window\n")
            );
        }
        let refused = req();
        assert_eq!(refused.status(), 429);
        assert!(refused.header("retry-after").is_some());
        assert_eq!(
            ratelimit(Request::get("/ratelimit")).unwrap_err().status(),
            400
        );
    }
}
