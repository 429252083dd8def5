//! The library in this process (see `harness::InProcess`): what needs no CLI, and what only a
//! test holding the store itself can check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tabula::listener::ServerConfig;
use tabula::storage::{self, Layout, Storage};

use crate::harness::{InProcess, client, get, request};
use crate::redis_server::RedisServer;

/// The layout of an app's keys is the contract with every replica and with operators who
/// look into Redis: `tabula:{APP:N}:kv:KEY`, in one of the app's shards (see
/// `storage::Layout::key`).
async fn kv_keys_land_in_their_apps_namespace(storage: Arc<dyn Storage>) {
    let server = InProcess::start(
        &["tests/guests/kvtool"],
        storage.clone(),
        ServerConfig::default(),
    );
    let client = client();
    let reply = request(&client, "PUT", &server.url("/kvtool?key=greeting"), "hi").await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let key = |name: &str| Layout::Spread.key("kvtool", &format!("kv:{name}"));
    assert_eq!(
        storage.get(&key("greeting")).await.unwrap(),
        Some(b"hi".to_vec())
    );
    // And what the store holds is what the guest reads.
    storage
        .set(&key("planted"), b"from the store", None, None)
        .await
        .unwrap();
    let reply = get(&client, &server.url("/kvtool?key=planted")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "from the store"));
}

#[tokio::test]
async fn kv_keys_land_in_their_apps_namespace_in_memory() {
    kv_keys_land_in_their_apps_namespace(storage::open("memory").await.unwrap()).await;
}

#[tokio::test]
async fn kv_keys_land_in_their_apps_namespace_in_redis() {
    let redis = RedisServer::start();
    kv_keys_land_in_their_apps_namespace(storage::open(&redis.url()).await.unwrap()).await;
}

/// `server::run` returns once its shutdown future resolves and the drain is over, and the
/// drain is bounded: a response that never ends is cut off at the drain timeout.
#[tokio::test]
async fn shutdown_drains_within_its_timeout_then_stops_listening() {
    let drain = Duration::from_secs(1);
    let mut server = InProcess::start(
        &["tests/guests/hostile"],
        storage::open("memory").await.unwrap(),
        ServerConfig {
            drain_timeout: drain,
            ..ServerConfig::default()
        },
    );
    let client = client();
    assert_eq!(
        get(&client, &server.url("/hostile?attack=ok")).await.status,
        200
    );
    // A guest that sends the head and part of its body, then spins.
    let req = hyper::Request::get(server.url("/hostile?attack=stream-hang"))
        .body(http_body_util::Full::default())
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first frame").unwrap();
    assert!(first.is_data());

    let started = Instant::now();
    server.shut_down();
    let url = server.url("/hostile?attack=ok");
    tokio::time::timeout(drain * 10, server.stopped())
        .await
        .expect("the server stopped within its drain timeout")
        .expect("the server stopped cleanly");
    let took = started.elapsed();
    assert!(
        took >= drain / 2,
        "it waited for the request in flight ({took:?})"
    );
    assert!(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>()
            .get(url.parse().unwrap())
            .await
            .is_err(),
        "the port is closed once the server has stopped"
    );
}

/// Every guest hears its route in `tabula-route` (a client's own is replaced), and an app
/// with `strip_route` sees its paths without the route: a component written for `/` works
/// anywhere.
#[tokio::test]
async fn guests_learn_their_route_and_may_have_it_stripped() {
    let storage = storage::open("memory").await.unwrap();
    let plain = InProcess::start(
        &["tests/guests/hostile"],
        storage.clone(),
        ServerConfig::default(),
    );
    let client = client();
    let spoofed = hyper::Request::get(plain.url("/hostile/deep/x?attack=echo-path"))
        .header("tabula-route", "/evil")
        .body(http_body_util::Full::default())
        .unwrap();
    let reply = crate::harness::send(&client, spoofed).await;
    assert_eq!(reply.body, "/hostile/deep/x?attack=echo-path\n/hostile");

    let stripped = InProcess::start_with(
        &["tests/guests/hostile"],
        storage,
        ServerConfig::default(),
        |spec| spec.settings.strip_route = true,
    );
    let reply = get(&client, &stripped.url("/hostile/deep/x?attack=echo-path")).await;
    assert_eq!(reply.body, "/deep/x?attack=echo-path\n/hostile");
    let reply = get(&client, &stripped.url("/hostile?attack=echo-path")).await;
    assert_eq!(reply.body, "/?attack=echo-path\n/hostile");
}
