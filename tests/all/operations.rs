//! Running it in production: hostile guests, limits, bad clients, request ids, metrics and
//! health, and shutdown under load.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::task::JoinSet;

use crate::harness::{Server, app_args, client, get, raw_exchange, rss, send};
use crate::redis_server::RedisServer;

fn serve(extra: &[&str], apps: &[&str]) -> Server {
    Server::start(
        ["serve", "--store", "memory"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .chain(app_args(apps)),
    )
}

#[tokio::test]
async fn hostile_guests_end_only_their_own_request_and_memory_returns() {
    let server = serve(
        &["--max-memory-mib", "64", "--request-timeout", "5"],
        &["trap", "plain", "hello"],
    );
    let c = client();
    let round = || async {
        for path in [
            "/trap/memory",
            "/trap/stack",
            "/trap/panic",
            "/plain/noresponse",
        ] {
            let started = Instant::now();
            let reply = get(&c, &server.url(path)).await;
            assert_eq!(reply.status, 500, "{path}: {}", reply.body);
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{path} took {:?}",
                started.elapsed()
            );
            assert_eq!(
                get(&c, &server.url("/hello")).await.status,
                200,
                "after {path}"
            );
        }
        let huge = get(&c, &server.url("/trap/huge?mib=16")).await;
        assert_eq!(
            (huge.status, huge.body.len()),
            (200, 16 << 20),
            "a 16 MiB response streams"
        );
    };
    round().await;
    let baseline = rss(server.pid());
    for _ in 0..4 {
        round().await;
    }
    let after = rss(server.pid());
    assert!(
        after <= baseline + (32 << 20),
        "RSS grew from {} MiB to {} MiB over four rounds of hostile guests",
        baseline >> 20,
        after >> 20
    );
    assert!(server.logged("guest failed"), "{}", server.log());
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let server = serve(&["--max-body-bytes", "1000"], &["trap"]);
    let c = client();
    let post = |len: usize| {
        hyper::Request::post(server.url("/trap/fine"))
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    assert_eq!(send(&c, post(1000)).await.status, 200, "at the limit");
    assert_eq!(
        send(&c, post(1001)).await.status,
        413,
        "declared over the limit"
    );
    // No Content-Length: the body is counted as it streams.
    let chunk = "x".repeat(2000);
    let request = format!(
        "POST /trap/fine HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (answer, _) = raw_exchange(&server, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn bad_clients_get_an_error_or_a_closed_connection() {
    let server = serve(&["--header-timeout", "1"], &["hello"]);
    let (answer, _) = raw_exchange(&server, b"THIS IS NOT HTTP\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "malformed: {answer:?}");

    let big = format!(
        "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "y".repeat(100 * 1024)
    );
    let (answer, _) = raw_exchange(&server, big.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized head: {answer:?}"
    );

    // Slowloris: half a request head, then silence.
    let (answer, waited) = raw_exchange(&server, b"GET /hello HTTP/1.1\r\nHost: t\r\n");
    assert!(
        waited < Duration::from_secs(4),
        "the slow client was held {waited:?}"
    );
    assert!(!answer.contains("200 OK"), "{answer:?}");

    assert_eq!(
        get(&client(), &server.url("/hello")).await.status,
        200,
        "still serving"
    );
}

/// Six requests at once to an app allowed two instances; each request takes `ms`. Returns
/// how many got 200 and how many 503 (with Retry-After).
async fn six_at_once(server: &Server, ms: u64) -> (usize, usize) {
    let c = client();
    let mut requests = JoinSet::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), server.url(&format!("/trap/sleep?ms={ms}")));
        requests.spawn(async move { get(&c, &url).await });
    }
    let (mut ok, mut busy) = (0, 0);
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        match reply.status {
            200 => ok += 1,
            503 => {
                assert_eq!(reply.headers["retry-after"], "1");
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    (ok, busy)
}

#[tokio::test]
async fn over_the_concurrency_limit_requests_queue_then_get_503() {
    // The queue outlasts the three waves of 400 ms: everyone is served, two at a time.
    let patient = serve(
        &["--max-concurrency", "2", "--queue-timeout", "5"],
        &["trap"],
    );
    let started = Instant::now();
    assert_eq!(six_at_once(&patient, 400).await, (6, 0));
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "not two at a time"
    );

    // The queue gives up long before the first two finish: four 503s.
    let impatient = serve(
        &["--max-concurrency", "2", "--queue-timeout", "0.2"],
        &["trap"],
    );
    assert_eq!(six_at_once(&impatient, 1500).await, (2, 4));
    assert!(impatient.logged("queue timeout"), "{}", impatient.log());
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_logged() {
    let server = serve(&["--access-log"], &["hello"]);
    let c = client();
    let req = hyper::Request::get(server.url("/hello"))
        .header("x-request-id", "client-chosen-42")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&c, req).await.headers["x-request-id"],
        "client-chosen-42"
    );
    let made = get(&c, &server.url("/hello")).await.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(made.len(), 16, "{made}");
    assert!(
        server.logged(&made) && server.logged("client-chosen-42"),
        "{}",
        server.log()
    );
    let req = hyper::Request::get(server.url("/hello"))
        .header("x-request-id", "bad id with spaces")
        .body(Full::default())
        .unwrap();
    assert_ne!(
        send(&c, req).await.headers["x-request-id"],
        "bad id with spaces"
    );
    assert!(
        server.logged(&format!(
            "served id=\"{made}\" app=\"hello\" method=GET path=\"/hello\" status=200"
        )),
        "{}",
        server.log()
    );
}

/// `serve` logs no line per request unless asked (`--access-log`), but what a request logs
/// (here a guest's output and a failure) still names it.
#[tokio::test]
async fn without_the_access_log_what_a_request_logs_still_names_it() {
    let server = serve(&[], &["hello", "hostile"]);
    let c = client();
    assert_eq!(get(&c, &server.url("/hello")).await.status, 200);
    let printed = get(&c, &server.url("/hostile?attack=split-lines")).await;
    assert_eq!(printed.status, 200, "{}", printed.body);
    let id = printed.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let req = hyper::Request::get(server.url("/hostile?attack=status-101"))
        .header("x-request-id", "failing-request-7")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 500);
    let named =
        |id: &str| format!("request{{id=\"{id}\" app=\"hostile\" method=GET path=\"/hostile\"}}");
    assert!(
        server.logged(&format!("{}: guest: part one, part two", named(&id))),
        "{}",
        server.log()
    );
    assert!(
        server.logged(&format!(
            "{}: tabula::request::failure: guest failed",
            named("failing-request-7")
        )),
        "{}",
        server.log()
    );
    assert!(!server.log().contains(" served "), "{}", server.log());
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let mut redis = RedisServer::start();
    let server = Server::serve_with(&redis.url(), &["hello", "counter"]);
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &server.url("/hello")).await.status, 200);
    }
    assert_eq!(get(&c, &server.url("/counter")).await.status, 200);
    assert_eq!(get(&c, &server.operator_url("/healthz")).await.status, 200);
    assert_eq!(get(&c, &server.operator_url("/readyz")).await.status, 200);

    redis.stop();
    assert_eq!(get(&c, &server.url("/counter")).await.status, 503);
    assert_eq!(
        get(&c, &server.operator_url("/readyz")).await.status,
        503,
        "not ready without the store"
    );
    assert_eq!(
        get(&c, &server.operator_url("/healthz")).await.status,
        200,
        "but alive"
    );

    let metrics = get(&c, &server.operator_url("/metrics")).await.body;
    for line in [
        r#"tabula_requests_total{app="hello",status="200"} 3"#,
        r#"tabula_requests_total{app="counter",status="503"} 1"#,
        r#"tabula_store_operations_total{app="counter",api="kv",outcome="ok"} 1"#,
        r#"tabula_store_operations_total{app="counter",api="kv",outcome="unavailable"} 1"#,
        r#"tabula_live_instances{app="hello"} 0"#,
    ] {
        assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
    }
    assert!(
        metrics.contains("tabula_instantiation_seconds_bucket{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tabula_request_duration_seconds_count{app=\"hello\"} 3"),
        "{metrics}"
    );
}

#[test]
fn sigterm_during_load_loses_no_accepted_request() {
    let mut server = serve(&[], &["trap"]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).unwrap();
                stream
                    .write_all(
                        b"GET /trap/sleep?ms=800 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    )
                    .unwrap();
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                answer
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    for client in clients {
        let answer = client.join().unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "a request in flight was lost: {answer:?}"
        );
    }
    assert!(TcpStream::connect(&addr).is_err(), "no longer accepting");
}
