//! Data that spans a Redis Cluster (issue 27): on three masters, one app's kv keys and
//! sessions land on every master, its quota stays exact across the shards they are spread
//! over, an app that asks for `single-slot` keeps every key on one master, and data written
//! with the one-slot keys of old hosts is read again after `tabula store migrate`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tabula::storage::{self, HashLimits, Layout, Namespace, Storage};

use crate::harness::{Server, app_args, client, get, request, run_tabula, send};
use crate::redis_server::RedisCluster;

/// How many keys matching `pattern` each master holds.
fn per_master(cluster: &RedisCluster, pattern: &str) -> Vec<usize> {
    cluster
        .nodes()
        .iter()
        .map(|n| {
            n.command(&["--scan", "--pattern", pattern])
                .lines()
                .filter(|l| !l.is_empty())
                .count()
        })
        .collect()
}

/// Every key matching `pattern` on any master, with the node that holds it.
fn keys_on(cluster: &RedisCluster, pattern: &str) -> Vec<(usize, String)> {
    let mut keys = Vec::new();
    for (i, n) in cluster.nodes().iter().enumerate() {
        for key in n.command(&["--scan", "--pattern", pattern]).lines() {
            if !key.is_empty() {
                keys.push((i, key.to_string()));
            }
        }
    }
    keys
}

#[tokio::test]
async fn one_apps_sessions_and_kv_keys_land_on_every_master() {
    let cluster = RedisCluster::start();
    let server = Server::serve_with(&cluster.url(), &["kvtool"]);
    let client = client();
    for i in 0..40 {
        let url = server.url(&format!("/kvtool?key=k{i:02}"));
        assert_eq!(request(&client, "PUT", &url, "v").await.status, 204);
        // No cookie: every one of these makes a session of its own.
        let url = server.url("/kvtool?session=name");
        assert_eq!(request(&client, "PUT", &url, "v").await.status, 204);
    }
    // `{kvtool*}` matches the one-slot keys of old (`{kvtool}`) and the shards'.
    let kv = per_master(&cluster, "tabula:{kvtool*}:kv:*");
    let sessions = per_master(&cluster, "tabula:{kvtool*}:s:*");
    assert_eq!(kv.iter().sum::<usize>(), 40, "{kv:?}");
    assert_eq!(sessions.iter().sum::<usize>(), 40, "{sessions:?}");
    assert!(kv.iter().all(|&n| n > 0), "kv keys per master: {kv:?}");
    assert!(
        sessions.iter().all(|&n| n > 0),
        "sessions per master: {sessions:?}"
    );
    // One listing reads every master, in key order.
    let listed = get(&client, &server.url("/kvtool?list=k")).await;
    let expected: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
    assert_eq!(listed.body.lines().collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn a_single_slot_app_keeps_every_key_on_one_master() {
    let cluster = RedisCluster::start();
    let storage = storage::open(&cluster.url()).await.unwrap();
    let ns = Namespace::new(storage, "one", Layout::SingleSlot, 0, 0);
    let limits = HashLimits {
        max_bytes: 1000,
        max_fields: 10,
    };
    for i in 0..40 {
        ns.set(&format!("kv:k{i}"), b"v", None).await.unwrap();
        let session = format!("s:{i:064}");
        ns.hash_set(&session, "v:name", b"v", limits, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let counts = per_master(&cluster, "tabula:{one*");
    assert_eq!(
        counts.iter().filter(|&&n| n > 0).count(),
        1,
        "keys per master: {counts:?}"
    );
    assert_eq!(ns.usage().await.unwrap().0, 80);
}

#[tokio::test]
async fn the_quota_is_exact_across_shards() {
    let cluster = RedisCluster::start();
    let server = Server::start(
        ["serve", "--store", &cluster.url(), "--kv-max-keys", "20"]
            .into_iter()
            .map(String::from)
            .chain(app_args(&["kvtool"])),
    );
    let client = client();
    let put = async |key: &str| {
        let url = server.url(&format!("/kvtool?key={key}"));
        request(&client, "PUT", &url, "v").await.status
    };
    let mut stored = Vec::new();
    for i in 0..30 {
        match put(&format!("k{i}")).await {
            204 => stored.push(format!("k{i}")),
            507 => {}
            other => panic!("PUT k{i} answered {other}"),
        }
    }
    assert_eq!(stored.len(), 20, "exactly the quota is stored: {stored:?}");
    let kv = per_master(&cluster, "tabula:{kvtool*}:kv:*");
    assert!(
        kv.iter().filter(|&&n| n > 0).count() > 1,
        "the keys are spread: {kv:?}"
    );
    // The shards' records count exactly what is there.
    let counted: u64 = keys_on(&cluster, "tabula:{kvtool*}:q")
        .iter()
        .map(|(node, record)| {
            let keys = cluster.nodes()[*node].command(&["HGET", record, "#keys"]);
            keys.trim().parse::<u64>().unwrap_or(0)
        })
        .sum();
    assert_eq!(counted, 20);
    // Five deleted, wherever they were, make room for five, wherever they go.
    for key in &stored[..5] {
        let url = server.url(&format!("/kvtool?key={key}"));
        assert_eq!(request(&client, "DELETE", &url, "").await.body, "true");
    }
    let mut again = 0;
    for i in 0..10 {
        if put(&format!("n{i}")).await == 204 {
            again += 1;
        }
    }
    assert_eq!(again, 5);
}

/// Writes, the way hosts before the shards did (every key under `tabula:{kvtool}:`), a kv
/// key, a kv key with an expiry and a session holding `name` = `alice`; answers the
/// session's cookie. With `TABULA_OLD_BINARY` (a build from before the shards) it writes
/// them through that host; otherwise it writes the same key shapes straight to the store.
async fn write_old_layout(cluster: &RedisCluster) -> String {
    if let Ok(old) = std::env::var("TABULA_OLD_BINARY") {
        let args = ["serve".into(), "--store".into(), cluster.url()]
            .into_iter()
            .chain(app_args(&["kvtool"]));
        let server = Server::start_program(&old, args, &[]);
        let client = client();
        for (key, value) in [("old", "from before"), ("old-ttl&ttl_ms=600000", "brief")] {
            let url = server.url(&format!("/kvtool?key={key}"));
            assert_eq!(request(&client, "PUT", &url, value).await.status, 204);
        }
        let url = server.url("/kvtool?session=name");
        let reply = request(&client, "PUT", &url, "alice").await;
        assert_eq!(reply.status, 204);
        let cookie = reply.headers["set-cookie"].to_str().unwrap();
        return cookie.split(';').next().unwrap().to_string();
    }
    let store: Arc<dyn Storage> = storage::open(&cluster.url()).await.unwrap();
    let old = |suffix: &str| format!("tabula:{{kvtool}}:{suffix}");
    store
        .set(&old("kv:old"), b"from before", None, None)
        .await
        .unwrap();
    let ten_minutes = Duration::from_secs(600);
    store
        .set(&old("kv:old-ttl"), b"brief", Some(ten_minutes), None)
        .await
        .unwrap();
    let id = "ab".repeat(32);
    let limits = HashLimits {
        max_bytes: 1000,
        max_fields: 10,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    for (field, value) in [("m:created", now.as_bytes()), ("v:name", b"alice")] {
        store
            .hash_set(
                &old(&format!("s:{id}")),
                field,
                value,
                limits,
                ten_minutes,
                None,
            )
            .await
            .unwrap();
    }
    // Its quota record, which hosts kept whenever the app had a quota (by default).
    store
        .hash_set(&old("q"), "#keys", b"3", limits, ten_minutes, None)
        .await
        .unwrap();
    format!("tabula_session_kvtool={id}")
}

#[tokio::test]
async fn data_written_before_the_shards_is_read_after_migrating() {
    let cluster = RedisCluster::start();
    let cookie = write_old_layout(&cluster).await;
    let server = Server::serve_with(&cluster.url(), &["kvtool"]);
    let client = client();
    let url = server.url("/kvtool?key=old");
    assert_eq!(get(&client, &url).await.status, 404, "not moved yet");
    for _ in 0..100 {
        if server.logged("tabula store migrate kvtool") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server.logged("tabula store migrate kvtool"),
        "the host names the command: {}",
        server.log()
    );

    let migrate = ["store", "migrate", "kvtool", "--store", &cluster.url()];
    let (status, stderr) = run_tabula(&migrate);
    assert!(status.success(), "{stderr}");

    let reply = get(&client, &url).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "from before"));
    let url = server.url("/kvtool?key=old-ttl");
    assert_eq!(get(&client, &url).await.body, "brief");
    let session = hyper::Request::get(server.url("/kvtool?session=name"))
        .header("cookie", &cookie)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&client, session).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "alice"),
        "the session carries on"
    );
    let listed = get(&client, &server.url("/kvtool?list=old")).await;
    assert_eq!(listed.body, "old\nold-ttl");
    assert_eq!(
        keys_on(&cluster, "tabula:{kvtool}:*"),
        Vec::new(),
        "nothing is left in the old layout"
    );
    // The expiry moved with the key, and the moved keys are counted.
    let store = storage::open(&cluster.url()).await.unwrap();
    let ns = Namespace::new(store, "kvtool", Layout::Spread, 0, 0);
    assert!(matches!(
        ns.ttl("kv:old-ttl").await.unwrap(),
        storage::Ttl::ExpiresIn(_)
    ));
    assert_eq!(ns.usage().await.unwrap().0, 3);
    let (status, stderr) = run_tabula(&migrate);
    assert!(status.success(), "running it again is harmless: {stderr}");
}

/// Calls per command summed over the masters since the last reset: `(script calls, all
/// commands)`, counting the commands scripts run.
fn calls(cluster: &RedisCluster) -> (u64, u64) {
    let (mut scripts, mut all) = (0, 0);
    for node in cluster.nodes() {
        for (name, n) in node.calls() {
            if name == "info" || name == "config|resetstat" {
                continue;
            }
            if name == "evalsha" || name == "eval" {
                scripts += n;
            }
            all += n;
        }
    }
    (scripts, all)
}

fn reset(cluster: &RedisCluster) {
    for node in cluster.nodes() {
        node.command(&["CONFIG", "RESETSTAT"]);
    }
}

/// What one kv write and one listing page cost Redis in each layout: a write is one script
/// (one round trip) in both; a page is one script per shard, sent at once.
#[tokio::test]
async fn what_a_write_and_a_listing_cost_in_each_layout() {
    let cluster = RedisCluster::start();
    let storage = storage::open(&cluster.url()).await.unwrap();
    for layout in [Layout::Spread, Layout::SingleSlot] {
        let app = format!("cost{}", layout.shards());
        let ns = Namespace::new(storage.clone(), &app, layout, 1_000_000, 256 << 20);
        // Loads the scripts on every master.
        for i in 0..64 {
            ns.set(&format!("kv:warm{i}"), b"v", None).await.unwrap();
            ns.list("kv:warm", None, 10).await.unwrap();
        }
        let per =
            |(scripts, all): (u64, u64), n: u64| (scripts as f64 / n as f64, all as f64 / n as f64);
        reset(&cluster);
        for i in 0..1000 {
            ns.set(&format!("kv:k{i:04}"), b"value", None)
                .await
                .unwrap();
        }
        let new_key = per(calls(&cluster), 1000);
        reset(&cluster);
        for i in 0..1000 {
            ns.set(&format!("kv:k{i:04}"), b"other", None)
                .await
                .unwrap();
        }
        let overwrite = per(calls(&cluster), 1000);
        reset(&cluster);
        for i in 0..1000 {
            ns.increment(&format!("kv:n{}", i % 10), 1).await.unwrap();
        }
        let increment = per(calls(&cluster), 1000);
        reset(&cluster);
        let (mut pages, mut cursor, mut listed) = (0u64, None, 0);
        loop {
            let (keys, next) = ns.list("kv:k", cursor.as_deref(), 100).await.unwrap();
            pages += 1;
            listed += keys.len();
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(listed, 1000);
        let page = per(calls(&cluster), pages);
        println!(
            "{layout:?}: new key {new_key:?}, overwrite {overwrite:?}, increment {increment:?} \
             (scripts, commands) per call; listing 1000 keys at 100 a page: {pages} pages, \
             {page:?} per page"
        );
        assert_eq!(new_key.0, 1.0, "a write is one script");
        assert_eq!(overwrite.0, 1.0);
        assert_eq!(
            page.0,
            layout.shards() as f64,
            "a page is a script per shard"
        );
    }
}
