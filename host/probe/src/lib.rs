//! The probe `tabula check` deploys (`host/src/deploy/check.rs` reads its answers). Every
//! request leaves traces where state could survive, and reports the traces it found:
//!
//! - `requests`: how many requests this instance has handled, kept in a static, i.e. in
//!   linear memory. A fresh instance always answers 1; an instance that is reused (its
//!   memory and globals kept) answers more.
//! - `tmp`: whether the file an earlier request wrote to `/tmp` is still there (`kept`), not
//!   (`fresh`), or there is no writable `/tmp` (`none`).
//! - `env`: whether the environment variable an earlier request set is still there.
//! - `random`, `seed`: a value from `wasi:random/random` and the `wasi:random/insecure-seed`.
//!   A host that seeds randomness the same for every instance answers the same values twice.
//! - `clock`: the wall clock in milliseconds, which the checker compares with its own.
//! - `ambient`: the names (never the values) of the environment variables and preopened
//!   directories the host gives: replicas configured alike give the same.
//!
//! One line, `key=value` pairs separated by spaces, `ambient` last.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// Requests this instance has handled.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// What each request writes to `/tmp` and looks for.
const TMP_MARK: &str = "/tmp/tabula-check-probe";
/// What each request sets in its environment and looks for.
const ENV_MARK: &str = "TABULA_CHECK_PROBE";

struct Probe;

impl wasi::exports::http::incoming_handler::Guest for Probe {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let requests = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        let tmp = match std::fs::metadata(TMP_MARK) {
            Ok(_) => "kept",
            Err(_) if std::fs::write(TMP_MARK, b"written by an earlier request").is_ok() => "fresh",
            Err(_) => "none",
        };
        let env = if std::env::var_os(ENV_MARK).is_some() {
            "kept"
        } else {
            // SAFETY: a component instance runs one thread; nothing reads the environment
            // while this writes it.
            unsafe { std::env::set_var(ENV_MARK, "set by an earlier request") };
            "fresh"
        };
        let random = wasi::random::random::get_random_u64();
        let (seed_high, seed_low) = wasi::random::insecure_seed::insecure_seed();
        let now = wasi::clocks::wall_clock::now();
        let clock = now.seconds * 1000 + u64::from(now.nanoseconds / 1_000_000);
        let mut ambient: Vec<String> = wasi::cli::environment::get_environment()
            .into_iter()
            .map(|(name, _)| format!("env:{name}"))
            .chain(
                wasi::filesystem::preopens::get_directories()
                    .into_iter()
                    .map(|(_, path)| format!("dir:{path}")),
            )
            .collect();
        ambient.sort();
        let text = format!(
            "tabula-check-probe requests={requests} tmp={tmp} env={env} random={random:016x} \
             seed={seed_high:016x}{seed_low:016x} clock={clock} ambient={}\n",
            ambient.join(",")
        );

        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .expect("a valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the response's body");
        ResponseOutparam::set(out, Ok(response));
        let mut stream = body.write().expect("the body's stream");
        stream.write_all(text.as_bytes()).expect("writing the body");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finishing the body");
    }
}

wasi::http::proxy::export!(Probe);
