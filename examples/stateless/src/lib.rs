//! Proof that no memory survives a request. The handler bumps a `static` counter and pushes to
//! a global `Vec`, then reports both. In a host that reused instances the numbers would climb;
//! in tabula every request starts from a fresh instance, so every answer is
//! `{"counter":1,"vec_len":1}`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tabula_sdk::{Request, Response, handler};

static COUNTER: AtomicU64 = AtomicU64::new(0);
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[handler]
fn stateless(req: Request) -> Response {
    let counter = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
    let vec_len = {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        seen.push(req.path().to_string());
        seen.len()
    };
    Response::text(format!("{{\"counter\":{counter},\"vec_len\":{vec_len}}}\n"))
        .with_header("content-type", "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Natively, one process keeps its statics: this is exactly what the host prevents.
    #[test]
    fn statics_persist_within_one_process() {
        let first = stateless(Request::get("/stateless"));
        let second = stateless(Request::get("/stateless"));
        assert_ne!(first.body_text(), second.body_text());
    }
}
