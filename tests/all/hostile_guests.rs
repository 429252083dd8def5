//! Hostile guests and clients, second round (issue 25): a response body the guest does not
//! finish must never look complete, and a large request header must cost a JavaScript app
//! little. Each test here failed on the build before its fix.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::harness::{HttpClient, Server, app_args, client, h2_client, root};

/// The first line of `server`'s log that contains every one of `needles`, once it is there.
fn log_line(server: &Server, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.log();
        if let Some(line) = log
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
        {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GETs `path` with request id `id`: `Ok` with the body if the response ended cleanly, `Err`
/// if the request or its body ended in an error.
async fn fetch(c: &HttpClient, server: &Server, path: &str, id: &str) -> Result<Bytes, String> {
    let req = hyper::Request::get(server.url(path))
        .header("x-request-id", id)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("an answer within 10 s")
        .map_err(|e| format!("request: {e}"))?;
    assert_eq!(response.status(), 200, "{path}");
    tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the body ends within 10 s")
        .map(|body| body.to_bytes())
        .map_err(|e| format!("body: {e}"))
}

/// A guest that returns without finishing its body (leaking its handles, or dropping the
/// body), or that traps once its head is out, gives the client an error instead of a clean
/// end (HTTP/1: no last chunk, the connection closed; HTTP/2: the stream reset), a warning
/// in the log, and an access line that says the response was aborted. A finished body still
/// ends cleanly, on a connection that stays usable.
#[tokio::test]
async fn unfinished_bodies_end_in_an_error_and_the_log_says_so() {
    let server = Server::start(
        ["serve", "--store", "memory", "--access-log"]
            .map(String::from)
            .into_iter()
            .chain(app_args(&["hostile"])),
    );
    for (protocol, c) in [("h1", client()), ("h2", h2_client())] {
        for attack in ["stream-unfinished", "stream-dropped", "head-trap"] {
            let id = format!("{attack}-{protocol}");
            let path = format!("/hostile?attack={attack}");
            let ended = fetch(&c, &server, &path, &id).await;
            assert!(
                ended.is_err(),
                "{id}: a body the guest did not finish looked complete ({} bytes)",
                ended.unwrap().len()
            );
            let served = log_line(&server, &[&format!("served id=\"{id}\"")]);
            assert!(
                served.contains("status=200") && served.contains("aborted="),
                "{id}: the access line does not say the response was aborted: {served}"
            );
            log_line(
                &server,
                &[&format!("request{{id=\"{id}\""), "WARN", "body cut short"],
            );
        }
        let id = format!("ok-{protocol}");
        assert_eq!(
            fetch(&c, &server, "/hostile?attack=ok", &id).await.unwrap(),
            "ok",
            "{protocol}: the client is still usable"
        );
        let served = log_line(&server, &[&format!("served id=\"{id}\"")]);
        assert!(!served.contains("aborted"), "{served}");
    }
}

/// The CPU time `pid` has used so far (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// A 60 KB request header (every byte value a header may hold) reaches a JavaScript app
/// whole and comes back whole in a response header, at a small CPU cost per request: the
/// SDK built the header's string a byte at a time, 230 ms of CPU per request, so a handful
/// of anonymous clients could starve the host.
#[tokio::test]
async fn a_large_header_reaches_a_javascript_app_whole_and_cheaply() {
    let js = crate::polyglot::build(&root().join("tests/guests/hostile/js"));
    let server = Server::start(
        ["serve", "--store", "memory", &format!("/hostile-js={js}")].map(String::from),
    );
    // Every byte a header value may hold; `Headers` trims a space at either end.
    let printable = (b'!'..=b'~')
        .chain([b' '])
        .chain(0x80..=0xff)
        .collect::<Vec<u8>>();
    let value: Vec<u8> = printable.iter().copied().cycle().take(60_000).collect();
    let value = hyper::header::HeaderValue::from_bytes(&value).unwrap();
    let c = client();
    let ask = || {
        let req = hyper::Request::get(server.url("/hostile-js"))
            .header("x-big", value.clone())
            .body(Full::<Bytes>::default())
            .unwrap();
        crate::harness::send(&c, req)
    };
    let reply = ask().await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "60000\n"));
    assert!(
        reply.headers["x-echo"] == value,
        "the echoed header differs"
    );

    const REQUESTS: u32 = 10;
    let (cpu, wall) = (cpu_time(server.pid()), Instant::now());
    for _ in 0..REQUESTS {
        assert_eq!(ask().await.status, 200);
    }
    let per_request = (cpu_time(server.pid()) - cpu) / REQUESTS;
    println!(
        "60 KB header to a JavaScript app: {per_request:?} of CPU, {:?} of wall time per request",
        wall.elapsed() / REQUESTS
    );
    assert!(
        per_request < Duration::from_millis(50),
        "a 60 KB header cost {per_request:?} of CPU per request"
    );
}
