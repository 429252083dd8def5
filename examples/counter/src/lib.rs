//! A visit counter: `POST /counter` (or `GET /counter`) adds one and answers the new count;
//! `GET /counter/value` only reads it. The count lives in the host's key-value store, so it
//! survives every fresh instance and is shared by every replica on the same Redis.
//! When the store is down the handler answers 503 (through `tabula_sdk::Error`).

use tabula_sdk::{Error, Request, Response, handler, kv};

const KEY: &str = "visits";

#[handler]
fn counter(req: Request) -> Result<Response, Error> {
    if req.path().ends_with("/value") {
        let value = kv::get(KEY)?.unwrap_or_else(|| b"0".to_vec());
        return Ok(Response::text(String::from_utf8_lossy(&value) + "\n"));
    }
    let visits = kv::increment(KEY, 1)?;
    Ok(Response::text(format!("{visits}\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_and_reads_back() {
        assert_eq!(
            counter(Request::get("/counter/value")).unwrap().body_text(),
            "0\n"
        );
        assert_eq!(
            counter(Request::post("/counter", "")).unwrap().body_text(),
            "1\n"
        );
        assert_eq!(
            counter(Request::post("/counter", "")).unwrap().body_text(),
            "2\n"
        );
        assert_eq!(
            counter(Request::get("/counter/value")).unwrap().body_text(),
            "2\n"
        );
    }
}
