//! Apps using state through the real binary: namespaces, limits and wasi:keyvalue on every
//! backend; replicas sharing one Redis; Redis going away and coming back.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::harness::{Server, app_args, client, distinct_counts, get, guests, request};
use crate::redis_server::{RedisCluster, RedisServer};

/// The same `kvtool` component served as two apps, `a` and `b`, on `store`, with the
/// components written against each version of wasi:keyvalue.
fn two_apps(store: &str) -> Server {
    let kvtool = guests()["kvtool"].wasm.display().to_string();
    Server::start(
        [
            "serve".to_string(),
            "--store".into(),
            store.into(),
            format!("/a={kvtool}"),
            format!("/b={kvtool}"),
        ]
        .into_iter()
        .chain(app_args(&["wasikv", "kvdraft", "kvpublished"])),
    )
}

async fn namespaces_are_isolated(server: &Server) {
    let c = client();
    let a = |q: &str| server.url(&format!("/a?{q}"));
    let b = |q: &str| server.url(&format!("/b?{q}"));
    assert_eq!(request(&c, "PUT", &a("key=k"), "from a").await.status, 204);
    assert_eq!(get(&c, &a("key=k")).await.body, "from a");
    assert_eq!(
        get(&c, &b("key=k")).await.status,
        404,
        "b cannot read a's key"
    );
    assert_eq!(request(&c, "PUT", &b("key=k"), "from b").await.status, 204);
    assert_eq!(
        get(&c, &a("key=k")).await.body,
        "from a",
        "b's write did not touch a's key"
    );
    // Key strings that look like other namespaces stay inside the writer's own.
    for sneaky in ["tabula:{b}:kv:k", "}:kv:k", "../b/k", "*"] {
        let q = format!(
            "key={}",
            sneaky
                .replace('{', "%7B")
                .replace('}', "%7D")
                .replace('*', "%2A")
        );
        assert_eq!(request(&c, "PUT", &a(&q), "sneaky").await.status, 204);
    }
    assert_eq!(get(&c, &b("key=k")).await.body, "from b");
    assert_eq!(
        get(&c, &b("list=")).await.body,
        "k",
        "b lists only its own key"
    );
    let listed_a = get(&c, &a("list=")).await.body;
    assert_eq!(listed_a.lines().count(), 5, "{listed_a}");
    assert_eq!(request(&c, "DELETE", &b("key=k"), "").await.body, "true");
    assert_eq!(
        get(&c, &a("key=k")).await.body,
        "from a",
        "b's delete did not touch a"
    );
}

async fn limits_give_typed_errors(server: &Server) {
    let c = client();
    let at_limit = vec![b'v'; 1 << 20];
    let reply = request(&c, "PUT", &server.url("/a?key=big"), at_limit).await;
    assert_eq!(reply.status, 204, "a value of exactly 1 MiB is allowed");
    let over = vec![b'v'; (1 << 20) + 1];
    let reply = request(&c, "PUT", &server.url("/a?key=big"), over).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (413, "value over 1048576")
    );
    let long_key = "k".repeat(1025);
    let reply = request(&c, "PUT", &server.url(&format!("/a?key={long_key}")), "v").await;
    assert_eq!((reply.status, reply.body.as_str()), (414, "key over 1024"));
    assert_eq!(
        get(&c, &server.url("/a?key=big")).await.body.len(),
        1 << 20,
        "unchanged"
    );
}

async fn ttl_expires_through_the_guest(server: &Server) {
    let c = client();
    let reply = request(&c, "PUT", &server.url("/a?key=brief&ttl_ms=200"), "v").await;
    assert_eq!(reply.status, 204);
    assert_eq!(get(&c, &server.url("/a?key=brief")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get(&c, &server.url("/a?key=brief")).await.status, 404);
}

/// A component written for another runtime's wasi:keyvalue runs unmodified.
async fn wasi_keyvalue_runs(server: &Server) {
    let c = client();
    let reply = get(&c, &server.url("/wasikv/default/exercise")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body,
        "get a=Some(Ok(\"1\"))\n\
         exists a=true b=false\n\
         get_many=[(\"a\", Some([49])), (\"b\", Some([50])), (\"zz\", None)]\n\
         keys=[\"a\", \"b\", \"c\"]\n\
         swap failed, now Some(Ok(\"changed\"))\n\
         retried: a=Some(Ok(\"mine\"))\n\
         after delete: []\n"
    );
    assert_eq!(get(&c, &server.url("/wasikv/one/count")).await.body, "1\n");
    assert_eq!(get(&c, &server.url("/wasikv/one/count")).await.body, "2\n");
    assert_eq!(
        get(&c, &server.url("/wasikv/two/count")).await.body,
        "1\n",
        "buckets are apart"
    );
}

/// Components built from the published WIT of each wasi:keyvalue version (0.2.0-draft, and
/// 0.2.0-draft2 with its `get-many` shape, which differs from the one above) see the same
/// store, the same way, and one bucket whichever version opened it.
async fn every_wasi_keyvalue_version_runs(server: &Server) {
    let c = client();
    let common_start = "get a=1\nexists a=true b=false\nget_many a=1 b=2 none\nkeys a b c\n\
                        increment n=7\n";
    let end = "after delete: []\n";
    for bucket in ["default", "other"] {
        let draft = get(&c, &server.url(&format!("/kvdraft/{bucket}/exercise"))).await;
        assert_eq!(
            (draft.status, draft.body.as_str()),
            (200, &*format!("{common_start}{end}"))
        );
        let published = get(&c, &server.url(&format!("/kvpublished/{bucket}/exercise"))).await;
        assert_eq!(
            (published.status, published.body.as_str()),
            (
                200,
                &*format!("{common_start}swap failed, now changed\nretried: a=mine\n{end}")
            )
        );
        let across = get(&c, &server.url(&format!("/kvpublished/{bucket}/across"))).await;
        assert_eq!(
            across.body, "draft saw from draft2; draft2 saw from draft\n",
            "one bucket for both versions"
        );
    }
    // Listing pages through each version's cursor (a u64 in 0.2.0-draft) reaches every key
    // once, over more than one page (about 1000 keys each; Redis' SCAN may give more).
    for app in ["kvdraft", "kvpublished"] {
        let paged = get(&c, &server.url(&format!("/{app}/pages/page?n=2500"))).await;
        assert_eq!(paged.status, 200, "{}", paged.body);
        let pages: usize = paged
            .body
            .strip_prefix("listed 2500 distinct keys in ")
            .and_then(|rest| rest.strip_suffix(" pages\n"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{app}: {}", paged.body));
        assert!(pages >= 2, "{app}: 2500 keys in {pages} page");
    }
    let bogus = get(&c, &server.url("/kvdraft/default/bogus-cursor?n=1")).await;
    assert_eq!(bogus.status, 500);
    assert!(
        bogus
            .body
            .contains("is not a listing cursor of this request"),
        "{}",
        bogus.body
    );
}

/// Each app has its own storage quota: past it a write fails with an error that says so,
/// the other app is not affected, and deleting makes room.
async fn quotas_bound_each_app(store: &str) {
    let kvtool = guests()["kvtool"].wasm.display().to_string();
    let server = Server::start([
        "serve".to_string(),
        "--store".into(),
        store.into(),
        "--kv-max-keys".into(),
        "3".into(),
        format!("/qa={kvtool}"),
        format!("/qb={kvtool}"),
    ]);
    let c = client();
    let put = |app: &str, key: &str| {
        let url = server.url(&format!("/{app}?key={key}"));
        let c = c.clone();
        async move { request(&c, "PUT", &url, "v").await }
    };
    for key in ["k1", "k2", "k3"] {
        assert_eq!(put("qa", key).await.status, 204);
    }
    let over = put("qa", "k4").await;
    assert_eq!(over.status, 507, "{}", over.body);
    assert!(
        over.body.contains("storage quota exceeded"),
        "{}",
        over.body
    );
    assert_eq!(put("qa", "k1").await.status, 204, "overwriting adds no key");
    assert_eq!(put("qb", "k4").await.status, 204, "qb has its own quota");
    let url = server.url("/qa?key=k1");
    assert_eq!(request(&c, "DELETE", &url, "").await.body, "true");
    assert_eq!(put("qa", "k4").await.status, 204, "deleting made room");
}

async fn state_suite(store: &str) {
    let server = two_apps(store);
    namespaces_are_isolated(&server).await;
    limits_give_typed_errors(&server).await;
    ttl_expires_through_the_guest(&server).await;
    wasi_keyvalue_runs(&server).await;
    every_wasi_keyvalue_version_runs(&server).await;
    quotas_bound_each_app(store).await;
}

#[tokio::test]
async fn apps_keep_state_on_the_embedded_store() {
    state_suite("memory").await;
}

#[tokio::test]
async fn apps_keep_state_on_redis() {
    let redis = RedisServer::start();
    state_suite(&redis.url()).await;
}

#[tokio::test]
async fn apps_keep_state_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    state_suite(&cluster.url()).await;
}

/// Two replicas on one Redis, hit concurrently: every increment lands exactly once.
#[tokio::test]
async fn two_replicas_sharing_redis_count_exactly() {
    const N: usize = 400;
    let redis = RedisServer::start();
    let replicas = [
        Server::serve_with(&redis.url(), &["counter"]),
        Server::serve_with(&redis.url(), &["counter"]),
    ];
    let c = client();
    let mut requests = JoinSet::new();
    for i in 0..N {
        let (c, url) = (c.clone(), replicas[i % 2].url("/counter"));
        requests.spawn(async move { request(&c, "POST", &url, "").await });
    }
    assert_eq!(
        distinct_counts(requests).await,
        (1..=N).collect::<Vec<_>>(),
        "each increment saw a distinct count"
    );
    for replica in &replicas {
        assert_eq!(
            get(&c, &replica.url("/counter/value")).await.body,
            format!("{N}\n")
        );
    }
}

/// Redis goes away: kv calls fail fast with 503, other apps keep serving, and when Redis
/// returns the host recovers by itself.
#[tokio::test]
async fn redis_outage_gives_503_and_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let server = Server::serve_with(&redis.url(), &["counter", "hello"]);
    let c = client();
    assert_eq!(
        request(&c, "POST", &server.url("/counter"), "").await.body,
        "1\n"
    );

    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let reply = request(&c, "POST", &server.url("/counter"), "").await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.headers["retry-after"], "1");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(
            get(&c, &server.url("/hello")).await.status,
            200,
            "hello keeps serving"
        );
    }
    assert!(
        server.logged("the store is unavailable"),
        "{}",
        server.log()
    );

    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = request(&c, "POST", &server.url("/counter"), "").await;
        if reply.status == 200 {
            // The restarted Redis kept nothing (no persistence in the test), so it counts anew.
            assert_eq!(reply.body, "1\n");
            break;
        }
        assert_eq!(reply.status, 503);
        assert!(
            Instant::now() < deadline,
            "no recovery within 15 s of Redis returning"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `tabula up` is for development: the embedded store, and a line per request in its log.
#[tokio::test]
async fn up_uses_the_embedded_store_by_default() {
    let server = Server::start(["up".to_string()].into_iter().chain(app_args(&["counter"])));
    let c = client();
    assert_eq!(
        request(&c, "POST", &server.url("/counter"), "").await.body,
        "1\n"
    );
    assert_eq!(
        request(&c, "POST", &server.url("/counter"), "").await.body,
        "2\n"
    );
    assert!(
        server.logged("the embedded in-memory store"),
        "{}",
        server.log()
    );
    assert!(
        server.logged("served id=") && server.logged("app=\"counter\" method=POST"),
        "{}",
        server.log()
    );
}
