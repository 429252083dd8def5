//! Gradual rollouts: `tabula deploy --canary` on two real replicas over a real Redis, real
//! guests, the real CLI. A share of the requests goes to the new version, a client keeps its
//! version, a failing canary goes back by itself, and `promote` reaches every replica.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::dashboard::admin_call;
use crate::deploy::{answer, deploy, replica, wasm};
use crate::harness::{ADMIN_TOKEN, HttpClient, admin_cli, admin_cli_with, client, send};
use crate::redis_server::RedisServer;

/// v1 of the split app: `hello`. v2: `stateless`, whose answers say `counter`.
const V1: &str = "Hello, world!\n";

/// `GET url` with `headers`.
async fn get_with(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = hyper::Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let reply = send(client, req.body(Full::<Bytes>::default()).unwrap()).await;
    (reply.status, reply.body)
}

/// Which version answered: 1 for hello, 2 for stateless.
fn version_of(status: u16, body: &str) -> u8 {
    assert_eq!(status, 200, "{body}");
    match body {
        V1 => 1,
        b if b.contains("counter") => 2,
        other => panic!("neither version answered: {other}"),
    }
}

/// A session id of the form the host gives (256 bits in hex), different for each `n`.
fn session_id(n: u64) -> String {
    (0..4)
        .map(|i| format!("{:016x}", (n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i))
        .collect()
}

#[tokio::test]
async fn a_canary_gets_its_share_clients_keep_their_version_and_promote_reaches_every_replica() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let b = replica(&redis.url(), false, &[]);
    deploy(&a, &wasm("hello"), "split", "/split");

    // The canary: the stateless example at 10% beside hello, at `route`.
    let canary_at = |route: &str| {
        admin_cli(
            &a,
            &[
                "deploy",
                &wasm("stateless"),
                "--name",
                "split",
                "--route",
                route,
                "--canary",
                "10",
            ],
        )
    };
    let run = canary_at("/split");
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("split v2 gets 10% of the requests on 2 replicas"),
        "{}",
        run.stdout
    );

    // 2,000 requests without a key, half to each replica: about 10% reach v2.
    let http = client();
    let mut v2 = 0;
    for n in 0..2000 {
        let server = if n % 2 == 0 { &a } else { &b };
        let (status, body) = get_with(&http, &server.url("/split"), &[]).await;
        if version_of(status, &body) == 2 {
            v2 += 1;
        }
    }
    assert!(
        (100..=300).contains(&v2),
        "v2 at 10% received {v2} of 2,000 requests, not 5-15%"
    );

    // A client with a session keeps its version on either replica, and so does one that
    // sends a version key; across many of them, about a tenth are on v2.
    let mut on_v2 = 0;
    let mut kept = Vec::new();
    for n in 0..60 {
        let cookie = format!("tabula_session_split={}", session_id(n));
        let key = format!("client-{n}");
        for headers in [
            [("cookie", cookie.as_str())],
            [("tabula-version-key", &key)],
        ] {
            let mut seen = Vec::new();
            for i in 0..6 {
                let server = if i % 2 == 0 { &a } else { &b };
                let (status, body) = get_with(&http, &server.url("/split"), &headers).await;
                seen.push(version_of(status, &body));
            }
            assert!(
                seen.iter().all(|v| *v == seen[0]),
                "a client with {headers:?} switched versions: {seen:?}"
            );
            on_v2 += usize::from(seen[0] == 2);
            kept.push((headers[0].0.to_string(), headers[0].1.to_string(), seen[0]));
        }
    }
    assert!(
        (2..=30).contains(&on_v2),
        "{on_v2} of 120 clients on v2 at 10%"
    );

    // A replica started during the canary applies the same split: every client gets the
    // version it had on the others.
    let c = replica(&redis.url(), false, &[]);
    for (name, value, version) in &kept {
        let (status, body) = get_with(&http, &c.url("/split"), &[(name, value)]).await;
        assert_eq!(
            version_of(status, &body),
            *version,
            "{name}: {value} on the late replica"
        );
    }
    let listed = admin_cli(&a, &["versions", "split"]);
    assert!(listed.ok, "{}", listed.stderr);
    assert!(
        listed
            .stdout
            .contains("canary: v2 gets 10% of the requests"),
        "{}",
        listed.stdout
    );
    assert_eq!(
        listed.stdout.matches("running v1, v2 at 10%").count(),
        3,
        "every replica, the late one too, splits:\n{}",
        listed.stdout
    );

    // `rollback` ends the canary: v1 only, everywhere.
    let back = admin_cli(&a, &["rollback", "split"]);
    assert!(back.ok, "{}\n{}", back.stdout, back.stderr);
    assert!(
        back.stdout.contains("split v1 is active"),
        "{}",
        back.stdout
    );
    for server in [&a, &b, &c] {
        for _ in 0..100 {
            assert_eq!(answer(server, "/split").await, (200, V1.into()));
        }
    }

    // A canary is served at the active version's route, from its keys and sessions: one on
    // another route is refused, and nothing changes.
    let elsewhere = canary_at("/elsewhere");
    assert!(!elsewhere.ok, "{}", elsewhere.stdout);
    assert!(
        elsewhere.stderr.contains(
            "must share v1 with its active version: route `/elsewhere` is not its `/split`"
        ),
        "{}",
        elsewhere.stderr
    );
    assert_eq!(answer(&a, "/split").await, (200, V1.into()));

    // A new canary, promoted by hand: v3 on every replica, for every client.
    let run = canary_at("/split");
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    // The dashboard shows the canary, its figures and each replica's split.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let state = admin_call(
        &a,
        "GET",
        "/ui/api/state",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(state.status, 200, "{}", state.body);
    let state: serde_json::Value = serde_json::from_str(&state.body).unwrap();
    let app = &state["apps"][0];
    assert_eq!(app["name"], "split", "{state}");
    assert_eq!(app["canary"]["version"], "v3", "{state}");
    assert_eq!(app["canary"]["percent"], 10, "{state}");
    assert!(
        app["canary"]["figures"]["canary"]["requests"].is_u64(),
        "{state}"
    );
    assert_eq!(app["last_canary"]["outcome"], "rolled back", "{state}");
    let splits: Vec<_> = state["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["canary"]["split"].as_str())
        .collect();
    assert_eq!(splits, [Some("v3 10%"); 3], "{state}");
    let promoted = admin_cli(&a, &["promote", "split"]);
    assert!(promoted.ok, "{}\n{}", promoted.stdout, promoted.stderr);
    assert!(
        promoted
            .stdout
            .contains("split v3 is active (3 replicas switched"),
        "{}",
        promoted.stdout
    );
    for server in [&a, &b, &c] {
        for _ in 0..100 {
            let (status, body) = answer(server, "/split").await;
            assert_eq!(version_of(status, &body), 2, "stateless everywhere");
        }
    }
    let listed = admin_cli(&a, &["versions", "split"]);
    assert!(listed.stdout.contains("*  v3"), "{}", listed.stdout);
    assert_eq!(
        listed.stdout.matches("running v3\n").count(),
        3,
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains("last canary: v3 promoted at 10%"),
        "{}",
        listed.stdout
    );
    let again = admin_cli(&a, &["promote", "split"]);
    assert!(!again.ok);
    assert!(
        again.stderr.contains("has no canary to promote"),
        "{}",
        again.stderr
    );
}

/// One answer of the load: when, from which version, and its status.
#[derive(Clone, Copy)]
struct Answered {
    at: Instant,
    canary: bool,
    status: u16,
}

#[tokio::test]
async fn a_canary_that_fails_half_its_requests_goes_back_by_itself_within_its_window() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let b = replica(&redis.url(), false, &[]);
    // v1 answers every path with a greeting; v2 (the trap guest) fails half of /trap/flaky.
    deploy(&a, &wasm("hello"), "trap", "/trap");

    // Load on both replicas for the whole test.
    let log: Arc<Mutex<Vec<Answered>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for server in [&a, &b] {
        for _ in 0..2 {
            let (url, log, stop) = (server.url("/trap/flaky"), log.clone(), stop.clone());
            load.spawn(async move {
                let http = client();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, body) = get_with(&http, &url, &[]).await;
                    let at = Instant::now();
                    let canary = body != V1;
                    log.lock().unwrap().push(Answered { at, canary, status });
                }
            });
        }
    }

    let window = 5;
    let (admin, file) = (a.admin.clone(), wasm("trap"));
    let deploying = tokio::task::spawn_blocking(move || {
        admin_cli_with(
            &admin,
            Some(ADMIN_TOKEN),
            &[
                "deploy",
                &file,
                "--name",
                "trap",
                "--route",
                "/trap",
                "--canary",
                "50,100",
                "--canary-interval",
                "60s",
                "--canary-window",
                &format!("{window}s"),
            ],
        )
    });
    // The rollback comes within seconds; a minute means it never came (the CLI then ends
    // with the replicas, when the test drops them).
    let deployed = tokio::time::timeout(Duration::from_secs(60), deploying)
        .await
        .expect("the failing canary was not rolled back within 60 s")
        .unwrap();
    let back_at = Instant::now();
    assert!(!deployed.ok, "the deploy reports the rollback as a failure");
    let said = &deployed.stderr;
    assert!(
        said.contains("the canary of trap v2 was rolled back at 50%")
            && said.contains("every replica (2) serves v1 again"),
        "{said}"
    );
    assert!(
        said.contains("v2's error rate over the last") && said.contains("more, over the 5"),
        "the deploy says why, with the figures: {said}"
    );

    // Only v1 from the moment the deploy returned: no request fails after the rollback.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let log = log.lock().unwrap().clone();
    let canary: Vec<&Answered> = log.iter().filter(|r| r.canary).collect();
    assert!(
        canary.iter().any(|r| r.status == 500),
        "the canary served and failed"
    );
    let (first, last) = (canary[0].at, canary[canary.len() - 1].at);
    assert!(
        last - first < Duration::from_secs(window),
        "rolled back {:?} after its first request, not within the {window} s window",
        last - first
    );
    let after: Vec<&Answered> = log.iter().filter(|r| r.at > back_at).collect();
    assert!(after.len() > 20, "load went on after the rollback");
    assert!(
        after.iter().all(|r| r.status == 200 && !r.canary),
        "every request after the rollback succeeded on v1"
    );

    // The reason stays in the registry, for `tabula versions` and the dashboard.
    let listed = admin_cli(&a, &["versions", "trap"]);
    assert!(
        listed.stdout.contains("last canary: v2 rolled back at 50%")
            && listed.stdout.contains("error rate"),
        "{}",
        listed.stdout
    );
    assert!(
        !listed.stdout.contains("canary: v2 gets"),
        "{}",
        listed.stdout
    );
    for server in [&a, &b] {
        assert_eq!(answer(server, "/trap/flaky").await, (200, V1.into()));
    }
}
