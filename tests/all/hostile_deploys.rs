//! A deployer is a tenant: hostile deploys against real replicas on a real Redis. Assets
//! bundles that would exhaust a replica, routes that would inject cookie attributes or sit
//! under another app's, two deploys racing for one route, a registry that must not scan a
//! store full of tenant data.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::deploy::{answer, deploy, replica, replica_with_env, wasm};
use crate::harness::{ADMIN_TOKEN, Reply, Server, admin_cli, admin_cli_with, client, send};
use crate::redis_server::RedisServer;

/// An assets bundle holding `paths`, each an empty file.
fn bundle(paths: impl IntoIterator<Item = String>) -> Vec<u8> {
    let mut bundle = b"tabula-assets 1\n".to_vec();
    for path in paths {
        bundle.extend_from_slice(&(path.len() as u32).to_le_bytes());
        bundle.extend_from_slice(path.as_bytes());
        bundle.extend_from_slice(&0u64.to_le_bytes());
    }
    bundle
}

/// An authenticated admin call.
async fn admin_call(server: &Server, method: &str, path: &str, body: Vec<u8>) -> Reply {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.admin))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(&client(), req).await
}

/// Uploads hello's component as app `name` at `route` (already URL-encoded), as an attacker
/// would: straight to the admin API, with no client-side checks.
async fn upload(server: &Server, name: &str, route: &str) -> Reply {
    let component = std::fs::read(wasm("hello")).unwrap();
    let path = format!("/v1/apps/{name}/versions?route={route}");
    admin_call(server, "POST", &path, component).await
}

/// Failed on 7fc4f70: the 3,000-deep bundle overflowed the control thread's stack and aborted
/// the host; 1M empty files were taken (+215 MiB on every replica).
#[tokio::test]
async fn assets_bundles_are_bounded_in_depth_and_files() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);

    let deep = vec!["d"; 3000].join("/");
    let reply = admin_call(&a, "PUT", "/v1/assets", bundle([deep])).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body.contains("deeper than 32 levels"),
        "{}",
        reply.body
    );

    let many = (0..10_001).map(|n| format!("f{n}"));
    let reply = admin_call(&a, "PUT", "/v1/assets", bundle(many)).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body.contains("more than 10000 files"),
        "{}",
        reply.body
    );

    let twice = ["a".to_string(), "a".to_string()];
    let reply = admin_call(&a, "PUT", "/v1/assets", bundle(twice)).await;
    assert_eq!(reply.status, 422, "{}", reply.body);

    // Within the bounds, it is stored; and the host is alive to say so.
    let fine = (0..100).map(|n| format!("{}/f{n}", vec!["d"; 31].join("/")));
    let reply = admin_call(&a, "PUT", "/v1/assets", bundle(fine)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let health = crate::harness::get(&client(), &a.operator_url("/healthz")).await;
    assert_eq!(health.status, 200, "the host is alive");
}

/// Failed on 7fc4f70: every one of these routes and names was accepted, and the first was
/// pasted into the session cookie's attributes.
#[tokio::test]
async fn routes_and_names_follow_a_grammar() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let long_route = format!("/{}", "r".repeat(8192));
    for route in [
        "/shop%3BDomain%3Dexample.com%3BSameSite%3DNone%3BMax-Age%3D315360000",
        "/caf%C3%A9",
        "/sp%20ace",
        "/a/../b",
        "//double",
        "/a%0D%0ASet-Cookie:%20x=y",
        long_route.as_str(),
    ] {
        let reply = upload(&a, "shop", route).await;
        assert_eq!(reply.status, 400, "{route}: {}", reply.body);
        assert!(
            reply.body.contains("e.g. `/hello`"),
            "{route}: {}",
            reply.body
        );
    }
    let long_name = "n".repeat(8192);
    let reply = upload(&a, &long_name, "/fine").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.len() < 500, "the refusal does not echo 8 KiB");

    // The CLI refuses before uploading, with the same words.
    let run = admin_cli(
        &a,
        &["deploy", &wasm("hello"), "--name", "x", "--route", "/a;b"],
    );
    assert!(
        !run.ok && run.stderr.contains("e.g. `/hello`"),
        "{}",
        run.stderr
    );
    // A fine route still deploys, and its cookie path is the route alone.
    deploy(&a, &wasm("hello"), "shop", "/shop");
    assert_eq!(answer(&a, "/shop").await.0, 200);
}

/// Failed on 7fc4f70: `/hello/admin` was accepted under another app's `/hello`.
#[tokio::test]
async fn routes_of_different_apps_do_not_nest_unless_the_operator_allows_it() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    deploy(&a, &wasm("hello"), "outer", "/hello");
    for (name, route) in [("inner", "/hello/admin"), ("root", "/")] {
        let reply = upload(&a, name, route).await;
        assert_eq!(reply.status, 409, "{route}: {}", reply.body);
        assert!(
            reply.body.contains("may not nest") && reply.body.contains("--allow-nested-routes"),
            "{}",
            reply.body
        );
    }
    // The app itself may move below its own route, and `/helloworld` is not below `/hello`.
    deploy(&a, &wasm("hello"), "outer", "/hello/v2");
    deploy(&a, &wasm("hello"), "beside", "/helloworld");

    let b = replica(&redis.url(), true, &["--allow-nested-routes"]);
    let run = admin_cli(
        &b,
        &[
            "deploy",
            &wasm("hello"),
            "--name",
            "inner",
            "--route",
            "/hello/v2/admin",
        ],
    );
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    // The exact route stays one app's, allowed nesting or not.
    let reply = upload(&b, "thief", "/hello/v2").await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    // Removing an app frees its route.
    assert!(admin_cli(&a, &["rm", "outer"]).ok);
    deploy(&b, &wasm("hello"), "next", "/hello/v2");
}

/// Failed on 7fc4f70: both deploys reported "active", `tabula apps` listed both, and every
/// replica served the one whose name sorts first.
#[tokio::test]
async fn two_apps_racing_for_one_route_leave_one_owner() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    for round in 0..3 {
        let route = format!("/race{round}");
        let (one, two) = tokio::join!(upload(&a, "left", &route), upload(&a, "right", &route));
        let won: Vec<u16> = [one.status, two.status]
            .into_iter()
            .filter(|s| *s == 200)
            .collect();
        assert_eq!(won.len(), 1, "one owner: {} / {}", one.body, two.body);
        let lost = if one.status == 200 { &two } else { &one };
        assert_eq!(lost.status, 409, "{}", lost.body);
        let apps = admin_cli(&a, &["apps"]);
        assert_eq!(apps.stdout.matches(&route).count(), 1, "{}", apps.stdout);
        let winner = if one.status == 200 { "left" } else { "right" };
        assert!(admin_cli(&a, &["rm", winner]).ok);
    }
}

/// Failed on 7fc4f70: the losing deploy polled for the whole deploy timeout (here 60 s)
/// before it gave up.
#[tokio::test]
async fn the_losing_side_of_two_deploys_of_one_app_is_told_at_once() {
    let redis = RedisServer::start();
    // Replica b lacks the secret the first version names, so it never gets that one ready:
    // without the second deploy, the first would wait out its timeout.
    let secret = [("TABULA_SECRET_RACE", "s3cret-race-value")];
    let a = replica_with_env(&redis.url(), true, &["--deploy-timeout", "60"], &secret);
    let _b = replica(&redis.url(), false, &[]);
    let (hello, admin) = (wasm("hello"), a.admin.clone());
    let first = std::thread::spawn(move || {
        let args = ["deploy", &hello, "--name", "race", "--route", "/race"];
        let secret = ["--secret", "tok=TABULA_SECRET_RACE"];
        admin_cli_with(&admin, Some(ADMIN_TOKEN), &[&args[..], &secret].concat())
    });
    // Wait until the first is being rolled out, then deploy a version b can load.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !admin_cli(&a, &["apps"]).stdout.contains("v1") {
        assert!(Instant::now() < deadline, "the first deploy never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    deploy(&a, &wasm("hello"), "race", "/race");
    let second_done = Instant::now();
    let run = first.join().unwrap();
    let waited = second_done.elapsed();
    assert!(!run.ok, "{}", run.stdout);
    assert!(run.stderr.contains("replaced this one"), "{}", run.stderr);
    assert!(
        waited < Duration::from_secs(10),
        "the loser learned it {waited:?} after the winner finished"
    );
}

/// Failed on 7fc4f70: every listing was a SCAN over the whole store (with 2M tenant keys a
/// deploy took 14.8 s); a registry written before the directory still lists its apps.
#[tokio::test]
async fn the_registry_never_scans_the_store() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let _b = replica(&redis.url(), false, &[]);
    deploy(&a, &wasm("hello"), "first", "/first");
    redis.command(&["DEBUG", "POPULATE", "200000", "tenant"]);
    redis.command(&["CONFIG", "RESETSTAT"]);
    deploy(&a, &wasm("hello"), "second", "/second");
    for args in [
        &["apps"][..],
        &["versions", "second"],
        &["rollback", "first", "v1"],
        &["rm", "second"],
    ] {
        let run = admin_cli(&a, args);
        assert!(run.ok, "{args:?}: {}", run.stderr);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        redis.calls().get("scan").copied().unwrap_or(0),
        0,
        "no listing scans the store"
    );

    // A registry from before the directory: found once by a scan, then indexed.
    redis.command(&["DEL", "tabula:{registry}:apps"]);
    let apps = admin_cli(&a, &["apps"]);
    assert!(apps.stdout.contains("/first"), "{}", apps.stdout);
    assert!(
        redis
            .command(&["EXISTS", "tabula:{registry}:apps"])
            .contains('1')
    );
}
