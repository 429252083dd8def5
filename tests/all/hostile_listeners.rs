//! Hostile clients of the side listeners, the admin API's and the operator's: connections
//! that never authenticate must not keep the port from callers that do, and an upload must
//! keep coming and fit the size limit. Every test here failed on 7fc4f70 (run them against
//! another build with `TABULA_TEST_BINARY`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use http_body_util::Full;

use crate::harness::{ADMIN_TOKEN, Server, client, send};

/// `tabula serve` on the embedded store with the admin API and `extra` flags; the header
/// and idle timeouts stay at their defaults (10 s and 60 s), so a test that gets through
/// within a few seconds did not get through by waiting for them.
fn admin_server(extra: &[&str]) -> Server {
    Server::start(
        [
            "serve",
            "--store",
            "memory",
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    )
}

/// More than the 64 connections a side listener keeps open.
const SQUATTERS: usize = 70;

/// Opens [`SQUATTERS`] connections to `base` that never make an authenticated request: a
/// third send nothing, a third half a request head, a third one whole request without a
/// token and then keep the connection open.
fn squat(base: &str, path: &str) -> Vec<TcpStream> {
    let addr = base.trim_start_matches("http://");
    (0..SQUATTERS)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).unwrap();
            let opener = match i % 3 {
                0 => String::new(),
                1 => format!("GET {path} HTTP/1.1\r\nHost: x\r\n"),
                _ => format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
            };
            stream.write_all(opener.as_bytes()).unwrap();
            stream
        })
        .collect()
}

/// `GET url` (with the admin token if `token`), which must answer within 3 s.
async fn prompt_get(url: &str, token: bool) -> u16 {
    let mut req = hyper::Request::get(url);
    if token {
        req = req.header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    }
    let req = req.body(Full::default()).unwrap();
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(3), send(&client(), req))
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within 3 s"));
    assert!(started.elapsed() < Duration::from_secs(3));
    reply.status
}

/// Idle and half-open connections without a token take no slot an authenticated call needs:
/// the admin API answers at once while 70 are open (it answered 0 of 3 calls in 30 s).
#[tokio::test]
async fn unauthenticated_connections_do_not_block_the_admin_api() {
    let server = admin_server(&[]);
    let _squatters = squat(&server.admin, "/v1/apps");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(
            prompt_get(&format!("{}/v1/apps", server.admin), true).await,
            200
        );
    }
}

/// The same for the operator listener: liveness probes get through while 70 connections
/// squat on it.
#[tokio::test]
async fn idle_connections_do_not_block_health_checks() {
    let server = admin_server(&[]);
    let _squatters = squat(&server.operator, "/healthz");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(
            prompt_get(&server.operator_url("/healthz"), false).await,
            200
        );
    }
}

/// An authenticated request head for `method path` with a body of `length` bytes.
fn upload_head(method: &str, path: &str, length: u64) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

/// Reads one HTTP/1 response from `stream`: until its head and its declared body are in,
/// the connection closes, or `within` has passed.
fn read_response(stream: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Some(left) = within.checked_sub(started.elapsed()) {
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// An authenticated upload that stalls, or trickles slower than --body-min-rate, gets 408
/// (it held its connection for as long as the client liked).
#[test]
fn slow_uploads_get_408() {
    let server = admin_server(&["--body-timeout", "1"]);
    let addr = server.admin.trim_start_matches("http://").to_string();
    // (bytes per write, pause between writes): a stall after a start, and a trickle of
    // 500 bytes a second against the default minimum of 1024.
    for (chunk, pause) in [
        (10, Duration::from_secs(60)),
        (100, Duration::from_millis(200)),
    ] {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .write_all(upload_head("POST", "/v1/apps/slow/versions", 100_000).as_bytes())
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if writer.write_all(&vec![0u8; chunk]).is_err() {
                    return;
                }
                std::thread::sleep(pause.min(Duration::from_secs(10)));
            }
        });
        let (answer, took) = read_response(&mut stream, Duration::from_secs(8));
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{chunk} bytes every {pause:?}: after {took:?} the host answered {answer:?}"
        );
        assert!(answer.contains("--body-timeout"), "{answer}");
        assert!(took < Duration::from_secs(5), "408 only after {took:?}");
        drop(stream);
        let _ = trickle.join();
    }
}

/// An upload that declares more than the host accepts is refused on its head, before a
/// byte of its body: a client that sends `Expect: 100-continue` (curl does) sends none.
#[test]
fn oversized_uploads_are_refused_before_their_body() {
    let server = admin_server(&[]);
    let addr = server.admin.trim_start_matches("http://").to_string();
    for (method, path) in [("POST", "/v1/apps/big/versions"), ("PUT", "/v1/assets")] {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .write_all(upload_head(method, path, 200 << 20).as_bytes())
            .unwrap();
        let (answer, took) = read_response(&mut stream, Duration::from_secs(5));
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{method} {path} declaring 200 MiB: after {took:?} the host answered {answer:?}"
        );
        assert!(answer.contains("--max-component-mib"), "{answer}");
        assert!(took < Duration::from_secs(2), "413 only after {took:?}");
    }
}
