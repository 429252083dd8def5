//! Deploying to running hosts: the real binary as replicas on a real Redis (and Cluster), the
//! real CLI, real HTTP.

use std::time::{Duration, Instant};

use crate::harness::{
    ADMIN_TOKEN, Server, admin_cli, admin_cli_with, client, get, guests, request, root,
};
use crate::redis_server::{RedisCluster, RedisServer};

/// `tabula serve --store STORE` with no app of its own, and the admin API if `admin`.
pub fn replica(store: &str, admin: bool, extra: &[&str]) -> Server {
    replica_with_env(store, admin, extra, &[])
}

/// Like [`replica`], with `env` in its environment.
pub fn replica_with_env(store: &str, admin: bool, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut args: Vec<String> = ["serve", "--store", store]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if admin {
        args.extend(["--admin-listen".into(), "127.0.0.1:0".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start_with_env(args, env)
}

/// A built guest's component file.
pub fn wasm(name: &str) -> String {
    guests()[name].wasm.display().to_string()
}

/// Deploys `file` as app `name` at `route`, and checks that the CLI said so.
pub fn deploy(admin: &Server, file: &str, name: &str, route: &str) {
    let run = admin_cli(admin, &["deploy", file, "--name", name, "--route", route]);
    assert!(run.ok, "deploy failed:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("is active"), "{}", run.stdout);
}

/// What `path` answers on `server`: status and body.
pub async fn answer(server: &Server, path: &str) -> (u16, String) {
    let reply = get(&client(), &server.url(path)).await;
    (reply.status, reply.body)
}

const HELLO: &str = "Hello, world!\n";

async fn deploys_reach_every_replica(store: &str) {
    let a = replica(store, true, &[]);
    let b = replica(store, false, &[]);
    assert_eq!(answer(&b, "/hello").await.0, 404, "nothing deployed yet");

    deploy(&a, &wasm("hello"), "hello", "/hello");
    // The deploy returns once every live replica has switched: B serves it now.
    assert_eq!(answer(&a, "/hello").await, (200, HELLO.into()));
    assert_eq!(answer(&b, "/hello").await, (200, HELLO.into()));
    // A replica started afterwards loads every active app before it serves.
    let c = replica(store, false, &[]);
    assert_eq!(answer(&c, "/hello").await, (200, HELLO.into()));

    // A second version: another component under the same app.
    deploy(&a, &wasm("stateless"), "hello", "/hello");
    for server in [&a, &b, &c] {
        let (status, body) = answer(server, "/hello").await;
        assert_eq!(status, 200);
        assert!(body.contains("counter"), "v2 everywhere: {body}");
    }
    let listed = admin_cli(&a, &["versions", "hello"]);
    assert!(listed.ok, "{}", listed.stderr);
    assert!(listed.stdout.contains("*  v2"), "{}", listed.stdout);
    assert_eq!(
        listed.stdout.matches("running v2").count(),
        3,
        "{}",
        listed.stdout
    );

    let back = admin_cli(&a, &["rollback", "hello"]);
    assert!(back.ok, "{}", back.stderr);
    assert!(
        back.stdout.contains("hello v1 is active"),
        "{}",
        back.stdout
    );
    for server in [&a, &b, &c] {
        assert_eq!(answer(server, "/hello").await, (200, HELLO.into()));
    }
    let forward = admin_cli(&a, &["rollback", "hello", "v2"]);
    assert!(forward.ok, "{}", forward.stderr);
    assert!(answer(&c, "/hello").await.1.contains("counter"));

    let removed = admin_cli(&a, &["rm", "hello"]);
    assert!(removed.ok, "{}", removed.stderr);
    for server in [&a, &b, &c] {
        let deadline = Instant::now() + Duration::from_secs(2);
        while answer(server, "/hello").await.0 != 404 {
            assert!(
                Instant::now() < deadline,
                "the app is gone from every replica"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let apps = admin_cli(&a, &["apps"]);
    assert!(!apps.stdout.contains("hello"), "{}", apps.stdout);
}

#[tokio::test]
async fn deploys_rollbacks_and_removals_reach_every_replica_on_redis() {
    let redis = RedisServer::start();
    deploys_reach_every_replica(&redis.url()).await;
}

#[tokio::test]
async fn deploys_rollbacks_and_removals_reach_every_replica_on_a_cluster() {
    let cluster = RedisCluster::start();
    deploys_reach_every_replica(&cluster.url()).await;
}

#[tokio::test]
async fn a_project_deploys_after_being_built_and_tabula_new_makes_one() {
    let dir = std::env::temp_dir().join(format!("tabula-new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new(&*crate::harness::TABULA)
        .current_dir(&dir)
        .args(["new", "demo"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let a = replica("memory", true, &[]);
    let project = dir.join("demo").display().to_string();
    let target = root().join("target/guests").display().to_string();
    let run = admin_cli(
        &a,
        &["deploy", &project, "--target-dir", &target, "-m", "first"],
    );
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    for step in [
        "building demo",
        "uploading demo",
        "replicas ready 1/1",
        "switched demo to v1",
    ] {
        assert!(
            run.stderr.contains(step),
            "progress `{step}` missing:\n{}",
            run.stderr
        );
    }
    assert_eq!(
        answer(&a, "/demo?name=Ada").await,
        (200, "Hello, Ada! Visit 1.\n".into())
    );
    let listed = admin_cli(&a, &["versions", "demo"]);
    assert!(listed.stdout.contains("first"), "{}", listed.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_deploys_are_refused_with_a_reason_and_change_nothing() {
    let mut args = vec!["--max-component-mib", "5"];
    let hello = format!("/hello={}", wasm("hello"));
    args.push(&hello);
    let a = replica("memory", true, &args);
    deploy(&a, &wasm("counter"), "good", "/good");

    let dir = std::env::temp_dir().join(format!("tabula-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let garbage = file("garbage.wasm", b"this is not wasm at all");
    let core = file("core.wasm", b"\0asm\x01\0\0\0");
    let empty_component = file("empty.wasm", b"\0asm\x0d\0\x01\0");
    let huge = file("huge.wasm", &vec![0u8; 6 << 20]);
    let counter = wasm("counter");
    let forbidden = wasm("forbidden");
    let wasi_03 = wasm("wasip3");
    let cases: &[(&str, Vec<&str>, &str)] = &[
        (
            "garbage",
            vec![&garbage, "--name", "x"],
            "compiling the component",
        ),
        (
            "a core module",
            vec![&core, "--name", "x"],
            "core WebAssembly module",
        ),
        (
            "no HTTP export",
            vec![&empty_component, "--name", "x"],
            "does not export `wasi:http/incoming-handler",
        ),
        (
            "a WASI 0.3 component",
            vec![&wasi_03, "--name", "x"],
            "this is a WASI 0.3 component",
        ),
        (
            "a forbidden import",
            vec![&forbidden, "--name", "x"],
            "imports interfaces tabula does not provide",
        ),
        (
            "too large",
            vec![&huge, "--name", "x"],
            "larger than this host accepts",
        ),
        (
            "a deployed app's route",
            vec![&counter, "--name", "x", "--route", "/good"],
            "route `/good` is app `good`'s",
        ),
        (
            "a fixed app's route",
            vec![&counter, "--name", "x", "--route", "/hello"],
            "from its command line",
        ),
        (
            "a fixed app's name",
            vec![&counter, "--name", "hello", "--route", "/y"],
            "from its command line",
        ),
        (
            "a bad name",
            vec![&counter, "--name", "a b"],
            "must be 1 to 64 letters",
        ),
        (
            "a bad route",
            vec![&counter, "--name", "x", "--route", "nope"],
            "e.g. `/hello`",
        ),
    ];
    for (what, args, reason) in cases {
        let mut full = vec!["deploy"];
        full.extend(args.iter());
        let run = admin_cli(&a, &full);
        assert!(!run.ok, "{what} was accepted:\n{}", run.stdout);
        assert!(
            run.stderr.contains(reason),
            "{what}: expected `{reason}` in:\n{}",
            run.stderr
        );
    }
    let no_token = admin_cli_with(&a.admin, None, &["deploy", &counter, "--name", "x"]);
    assert!(
        !no_token.ok && no_token.stderr.contains("no admin token"),
        "{}",
        no_token.stderr
    );
    let wrong = admin_cli_with(
        &a.admin,
        Some("not-the-token-at-all"),
        &["deploy", &counter, "--name", "x"],
    );
    assert!(
        !wrong.ok && wrong.stderr.contains("wrong admin token"),
        "{}",
        wrong.stderr
    );
    // And straight over HTTP: every call needs the token.
    let client = client();
    let reply = get(&client, &format!("{}/v1/apps", a.admin)).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = request(&client, "DELETE", &format!("{}/v1/apps/good", a.admin), "").await;
    assert_eq!(reply.status, 401);

    // Nothing changed.
    let apps = admin_cli(&a, &["apps"]);
    assert!(apps.ok);
    let names: Vec<&str> = apps
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["good"], "{}", apps.stdout);
    assert!(
        admin_cli(&a, &["versions", "good"])
            .stdout
            .contains("*  v1")
    );
    assert_eq!(answer(&a, "/good").await.0, 200);
    assert_eq!(answer(&a, "/hello").await, (200, HELLO.into()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_admin_listener_needs_a_token() {
    let output = std::process::Command::new(&*crate::harness::TABULA)
        .args([
            "serve",
            "--store",
            "memory",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("TABULA_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs TABULA_ADMIN_TOKEN"), "{stderr}");
}

/// Which of the two test versions answered: `H` hello, `S` stateless, `?` anything else.
fn kind(status: u16, body: &str) -> char {
    match (status, body) {
        (200, HELLO) => 'H',
        (200, b) if b.contains("counter") => 'S',
        _ => '?',
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploys_under_load_fail_no_request_and_never_go_back() {
    let redis = RedisServer::start();
    let a = std::sync::Arc::new(replica(&redis.url(), true, &[]));
    let b = std::sync::Arc::new(replica(&redis.url(), false, &[]));
    deploy(&a, &wasm("hello"), "flip", "/flip");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for server in [a.clone(), b.clone()] {
        // Three loops of concurrent load and one whose answers are in order.
        for sequential in [false, false, false, true] {
            let (server, stop) = (server.clone(), stop.clone());
            load.spawn(async move {
                let client = client();
                let (mut kinds, mut failed, mut sent) = (String::new(), Vec::new(), 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = get(&client, &server.url("/flip")).await;
                    sent += 1;
                    let k = kind(reply.status, &reply.body);
                    if k == '?' {
                        failed.push(format!("{} {}", reply.status, reply.body));
                    }
                    if sequential && !kinds.ends_with(k) {
                        kinds.push(k);
                    }
                }
                (server.base.clone(), sequential, kinds, failed, sent)
            });
        }
    }
    let admin = a.clone();
    tokio::task::spawn_blocking(move || {
        for round in 1..=10 {
            let file = if round % 2 == 1 {
                wasm("stateless")
            } else {
                wasm("hello")
            };
            deploy(&admin, &file, "flip", "/flip");
            std::thread::sleep(Duration::from_millis(150));
        }
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    while let Some(result) = load.join_next().await {
        let (server, sequential, kinds, failed, sent) = result.unwrap();
        total += sent;
        assert!(
            failed.is_empty(),
            "{server}: {} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        if sequential {
            // Ten switches, each seen at most once: a replica that went back to the old
            // version would show more changes than there were deploys.
            assert!(kinds.len() <= 11, "{server} went back and forth: {kinds}");
            assert!(
                kinds.starts_with('H') && kinds.ends_with('H'),
                "{server}: {kinds}"
            );
            assert!(kinds.len() >= 3, "{server} saw the switches: {kinds}");
        }
    }
    assert!(total > 1000, "the load kept going ({total} requests)");
    let versions = admin_cli(&a, &["versions", "flip"]);
    assert!(versions.stdout.contains("*  v11"), "{}", versions.stdout);
}

#[tokio::test]
async fn a_store_outage_fails_the_deploy_and_every_replica_keeps_serving() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let b = replica(&redis.url(), false, &[]);
    deploy(&a, &wasm("hello"), "app", "/app");

    redis.pause();
    let run = admin_cli(
        &a,
        &[
            "deploy",
            &wasm("stateless"),
            "--name",
            "app",
            "--route",
            "/app",
        ],
    );
    assert!(
        !run.ok,
        "a deploy with the store down succeeded:\n{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("the store is unavailable"),
        "{}",
        run.stderr
    );
    for server in [&a, &b] {
        assert_eq!(
            answer(server, "/app").await,
            (200, HELLO.into()),
            "still serving v1"
        );
    }
    redis.unpause();

    // A replica that lost its subscription still hears of the next deploy, by polling.
    let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_ne!(killed.trim(), "0", "there were subscriptions to cut");
    deploy(&a, &wasm("stateless"), "app", "/app");
    for server in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(2);
        while kind(
            answer(server, "/app").await.0,
            &answer(server, "/app").await.1,
        ) != 'S'
        {
            assert!(Instant::now() < deadline, "{} converged", server.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let versions = admin_cli(&a, &["versions", "app"]);
    assert!(
        versions.stdout.contains("*  v2"),
        "only the deploy that succeeded counts:\n{}",
        versions.stdout
    );
}

#[tokio::test]
async fn a_restarted_replica_loads_from_its_compile_cache_and_recompiles_a_bad_entry() {
    let redis = RedisServer::start();
    let cache = std::env::temp_dir().join(format!("tabula-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let cache_arg = cache.display().to_string();
    let mut a = replica(&redis.url(), true, &["--cache-dir", &cache_arg]);
    deploy(&a, &wasm("hello"), "hello", "/hello");
    // Compiled once, by the upload's check, and cached for this process's replica too.
    assert!(a.logged("cached=true"), "{}", a.log());
    // Entries are kept in a directory of the cache's own.
    let compiled = cache.join("compiled");
    let mut entries: Vec<String> = std::fs::read_dir(&compiled)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .extension()
                .unwrap()
                .to_string_lossy()
                .into()
        })
        .collect();
    entries.sort();
    // The lock is what processes sharing the cache take turns compiling under.
    assert_eq!(
        entries,
        ["cwasm", "lock", "record"],
        "one compiled component, the record of what it is, and its lock"
    );
    a.terminate();

    let mut again = replica(&redis.url(), false, &["--cache-dir", &cache_arg]);
    assert_eq!(answer(&again, "/hello").await, (200, HELLO.into()));
    assert!(again.logged("cached=true"), "{}", again.log());
    again.terminate();

    for entry in std::fs::read_dir(&compiled).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            std::fs::write(&path, b"not what was compiled").unwrap();
        }
    }
    let third = replica(&redis.url(), false, &["--cache-dir", &cache_arg]);
    assert_eq!(answer(&third, "/hello").await, (200, HELLO.into()));
    assert!(third.logged("damaged; compiling again"), "{}", third.log());
    let _ = std::fs::remove_dir_all(&cache);
}

#[tokio::test]
async fn tabula_up_rebuilds_an_edited_project_in_place_and_survives_a_broken_build() {
    let dir = std::env::temp_dir().join(format!("tabula-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let made = std::process::Command::new(&*crate::harness::TABULA)
        .current_dir(&dir)
        .args(["new", "live"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let project = dir.join("live");
    let target = root().join("target/guests").display().to_string();
    let server = Server::start(
        [
            "up",
            &project.display().to_string(),
            "--target-dir",
            &target,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    assert_eq!(
        answer(&server, "/live").await,
        (200, "Hello, world! Visit 1.\n".into())
    );

    let source = project.join("src/lib.rs");
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, text.replace("Hello, {name}!", "Howdy, {name}!")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = answer(&server, "/live").await;
        assert_eq!(status, 200, "served throughout the rebuild: {body}");
        if body.starts_with("Howdy") {
            // The kv state lives on: the store is the only memory, and it is the same.
            assert!(body.contains("Visit"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit was not picked up:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.logged("live reloaded"), "{}", server.log());

    std::fs::write(&source, "this does not compile").unwrap();
    assert!(
        server.logged("the build failed; still serving the previous one") || {
            // The failed build is reported once cargo is done; give it the time a build takes.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !server.log().contains("the build failed") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            server
                .log()
                .contains("the build failed; still serving the previous one")
        },
        "{}",
        server.log()
    );
    assert!(answer(&server, "/live").await.1.starts_with("Howdy"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_project_deploys_with_its_assets_and_a_bad_bundle_is_refused() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let b = replica(&redis.url(), false, &[]);
    let target = root().join("target/guests").display().to_string();
    let run = admin_cli(&a, &["deploy", "examples/site", "--target-dir", &target]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("uploading the assets of site"),
        "{}",
        run.stderr
    );
    let index = std::fs::read_to_string(root().join("examples/site/public/index.html")).unwrap();
    for server in [&a, &b] {
        assert_eq!(
            answer(server, "/site/index.html").await,
            (200, index.clone())
        );
    }
    // A bundle naming a path outside its mount never reaches the store.
    let mut bundle = b"tabula-assets 1\n".to_vec();
    let path = b"../escape";
    bundle.extend_from_slice(&(path.len() as u32).to_le_bytes());
    bundle.extend_from_slice(path);
    bundle.extend_from_slice(&2u64.to_le_bytes());
    bundle.extend_from_slice(b"hi");
    let req = hyper::Request::put(format!("{}/v1/assets", a.admin))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(bundle)))
        .unwrap();
    let reply = crate::harness::send(&client(), req).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(reply.body.contains("outside its mount"), "{}", reply.body);
}

#[tokio::test]
async fn a_replica_not_ready_in_time_is_named_and_switches_when_it_is() {
    let redis = RedisServer::start();
    // A deploy timeout no compile can meet: the other replica is late by construction.
    let a = replica(&redis.url(), true, &["--deploy-timeout", "0.001"]);
    let b = replica(&redis.url(), false, &[]);
    let run = admin_cli(
        &a,
        &[
            "deploy",
            &wasm("hello"),
            "--name",
            "late",
            "--route",
            "/late",
        ],
    );
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("not ready within"), "{}", run.stderr);
    assert!(run.stdout.contains("not ready in time"), "{}", run.stdout);
    let deadline = Instant::now() + Duration::from_secs(5);
    for server in [&a, &b] {
        while answer(server, "/late").await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "{} switched once ready",
                server.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every string and hash value in `redis`, one per line: what the store holds.
fn everything_stored(redis: &RedisServer) -> String {
    let keys = redis.command(&["--scan"]);
    let mut all = String::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        all += &match redis.command(&["TYPE", key]).trim() {
            "string" => redis.command(&["GET", key]),
            "hash" => redis.command(&["HGETALL", key]),
            _ => String::new(),
        };
    }
    all
}

/// A deploy's variables reach every replica; a secret travels as the name of the replicas'
/// environment variable, so its value is in no store, no log, no CLI output.
#[tokio::test]
async fn a_deploy_carries_variables_and_only_a_reference_to_its_secret() {
    const SECRET: &str = "d3ploy-s3cret-91ab";
    let redis = RedisServer::start();
    let env = [("TABULA_SECRET_TEST_DEPLOY_TOKEN", SECRET)];
    let a = replica_with_env(&redis.url(), true, &[], &env);
    let b = replica_with_env(&redis.url(), false, &[], &env);
    let run = admin_cli(
        &a,
        &[
            "deploy",
            &wasm("wasiconfig"),
            "--name",
            "cfg",
            "--route",
            "/wasiconfig",
            "--var",
            "plain=v1",
            "--secret",
            "token=TABULA_SECRET_TEST_DEPLOY_TOKEN",
        ],
    );
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    for server in [&a, &b] {
        assert_eq!(
            answer(server, "/wasiconfig").await,
            (200, format!("plain=v1\ntoken={SECRET}\n"))
        );
    }
    let versions = admin_cli(&a, &["versions", "cfg"]);
    let stored = everything_stored(&redis);
    assert!(
        stored.contains("TABULA_SECRET_TEST_DEPLOY_TOKEN"),
        "the reference is kept"
    );
    for (what, text) in [
        ("the store", stored),
        ("replica a's log", a.log()),
        ("replica b's log", b.log()),
        (
            "the CLI",
            format!(
                "{}{}{}{}",
                run.stdout, run.stderr, versions.stdout, versions.stderr
            ),
        ),
    ] {
        assert!(!text.contains(SECRET), "the secret is in {what}:\n{text}");
    }

    // A replica whose environment lacks the secret cannot load the app, and says why; the
    // others keep serving it.
    let c = replica(&redis.url(), false, &[]);
    assert_eq!(answer(&c, "/wasiconfig").await.0, 404);
    assert!(c.logged("TABULA_SECRET_TEST_DEPLOY_TOKEN"), "{}", c.log());
    assert_eq!(answer(&b, "/wasiconfig").await.0, 200);
}

/// What `/readyz` answers on `server`: status and body.
async fn readiness(server: &Server) -> (u16, String) {
    let reply = get(&client(), &server.operator_url("/readyz")).await;
    (reply.status, reply.body)
}

/// Failed on fa8e11d: a replica that could not load a deployed app answered `/readyz` 200, so
/// a rolling update or an autoscaler would send it requests for an app it does not serve.
#[tokio::test]
async fn a_replica_is_ready_only_once_it_serves_every_active_app() {
    let redis = RedisServer::start();
    let env = [("TABULA_SECRET_READY", "r3ady")];
    let a = replica_with_env(&redis.url(), true, &[], &env);
    let run = admin_cli(
        &a,
        &[
            "deploy",
            &wasm("wasiconfig"),
            "--name",
            "cfg",
            "--route",
            "/wasiconfig",
            "--secret",
            "token=TABULA_SECRET_READY",
        ],
    );
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(readiness(&a).await.0, 200);
    // B lacks the secret, so it cannot load cfg v1: it must not say it is ready.
    // (Until its first heartbeat, it says it has not joined; unready either way.)
    let b = replica(&redis.url(), false, &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = readiness(&b).await;
        assert_eq!(status, 503, "{body}");
        if body.contains("has not loaded cfg v1") {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer(&b, "/wasiconfig").await.0, 404);
    // A version B can load: B switches to it, and then it is ready.
    deploy(&a, &wasm("hello"), "cfg", "/wasiconfig");
    let deadline = Instant::now() + Duration::from_secs(10);
    while readiness(&b).await.0 != 200 {
        assert!(Instant::now() < deadline, "{:?}", readiness(&b).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer(&b, "/wasiconfig").await, (200, HELLO.into()));
}

/// Issue 27: a replica joining a fleet said ready while its workers were still compiling the
/// fleet's apps, and requests to them hung. `/readyz` must stay 503 until every worker process
/// serves every active app: at its first 200, requests on fresh connections (which the kernel
/// spreads over the workers' listening sockets) all reach their app.
#[tokio::test]
async fn a_joining_replica_is_ready_only_once_every_worker_serves_every_app() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    let apps = ["hello", "counter", "cart", "greeter", "report", "stateless"];
    let mut expected = Vec::new();
    for app in apps {
        deploy(&a, &wasm(app), app, &format!("/{app}"));
        // What a replica that serves the app answers (report says 404 itself: no report yet).
        expected.push(get(&client(), &a.url(&format!("/{app}"))).await.status);
    }
    let b = replica(&redis.url(), false, &["--processes", "2"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut unready = Vec::new();
    loop {
        let reply = get(&client(), &b.operator_url("/readyz")).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        unready.push(reply.body);
        assert!(Instant::now() < deadline, "never ready:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !unready.is_empty(),
        "the joining replica was ready at once: nothing was checked"
    );
    for round in 0..10 {
        for (app, &status) in apps.iter().zip(&expected) {
            let reply = get(&client(), &b.url(&format!("/{app}"))).await;
            assert_eq!(
                reply.status,
                status,
                "round {round}: /{app} right after /readyz said 200 (it said {:?} before):\n{}",
                unready.last(),
                b.log()
            );
        }
    }
    eprintln!(
        "readyz answered 503 {} times, the last: {:?}",
        unready.len(),
        unready.last()
    );
}

/// Failed on 575bdbb: each `/readyz` read the heartbeat of every process of the fleet, so
/// with 300 processes every probe of every replica made 300 reads on the registry's one
/// slot. A probe reads its own replica's heartbeats, in one call, however large the fleet.
#[tokio::test]
async fn a_readiness_probe_reads_its_own_heartbeats_not_the_fleets() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &["--processes", "2"]);
    deploy(&a, &wasm("hello"), "hello", "/hello");
    let deadline = Instant::now() + Duration::from_secs(30);
    while readiness(&a).await.0 != 200 {
        assert!(Instant::now() < deadline, "{:?}", readiness(&a).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 300 more processes in the fleet, alive for the test: copies of one of A's heartbeats
    // under other replicas' ids, on the replica list.
    let list_key = "tabula:{registry}:replica-ids";
    let own = redis.command(&["HKEYS", list_key]);
    let own = own
        .lines()
        .find(|id| !id.starts_with('#'))
        .expect("A is listed");
    let beat = redis.command(&["GET", &format!("tabula:{{registry}}:replica:{own}")]);
    let mut beat: serde_json::Value = serde_json::from_str(&beat).expect("a heartbeat");
    for n in 0..300 {
        let (group, id) = (format!("other-{n}"), format!("other-{n}.0"));
        beat["group"] = group.into();
        beat["id"] = id.clone().into();
        let key = format!("tabula:{{registry}}:replica:{id}");
        redis.command(&["SET", &key, &beat.to_string(), "EX", "600"]);
        redis.command(&["HSET", list_key, &id, ""]);
    }
    redis.command(&["CONFIG", "RESETSTAT"]);
    for _ in 0..20 {
        assert_eq!(readiness(&a).await.0, 200);
    }
    let calls = redis.calls();
    let reads: u64 = ["get", "mget"].iter().filter_map(|c| calls.get(*c)).sum();
    eprintln!("20 probes in a fleet of 302 processes: {calls:?}");
    // Reading the fleet's heartbeats would be 20 x 302 = 6,040 reads. What is allowed: each
    // probe's own (its processes' heartbeats, the app directory and records), A's own
    // heartbeats and polling meanwhile, and at most one pruning of the list (302).
    assert!(reads < 1000, "20 probes made {reads} reads: {calls:?}");
}

/// The whole blobs in the store.
fn stored_blobs(redis: &RedisServer) -> usize {
    redis
        .command(&["--scan", "--pattern", "tabula:blob:*:meta"])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

/// Waits until `redis` holds `want` whole blobs (collections run after a deploy answers).
async fn blobs_become(redis: &RedisServer, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_blobs(redis) != want {
        assert!(
            Instant::now() < deadline,
            "{} blobs stored, {want} expected",
            stored_blobs(redis)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Failed on 49b043d: every version and every blob was kept forever (30 deploys of an 18 MB
/// app grew Redis by 659 MiB), and `tabula rm` left the blobs too.
#[tokio::test]
async fn the_registry_keeps_the_newest_versions_and_deletes_what_none_names() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &["--keep-versions", "2"]);
    let dir = std::env::temp_dir().join(format!("tabula-keep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (hello, assets) = (wasm("hello"), dir.display().to_string());
    for n in 1..=6 {
        // A distinct assets bundle each time: a new blob per version.
        std::fs::write(dir.join("build.txt"), format!("build {n}")).unwrap();
        let args = ["deploy", &hello, "--name", "kept", "--route", "/kept"];
        let run = admin_cli(&a, &[&args[..], &["--assets", &assets]].concat());
        assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    }
    // v6 (active) and v5 (the newest two, and where a rollback goes): one component and
    // their two bundles.
    blobs_become(&redis, 3).await;
    let listed = admin_cli(&a, &["versions", "kept"]).stdout;
    for gone in ["v1", "v2", "v3", "v4"] {
        assert!(!listed.contains(&format!(" {gone} ")), "{listed}");
    }
    assert!(listed.contains("v5") && listed.contains("v6"), "{listed}");
    let back = admin_cli(&a, &["rollback", "kept"]);
    assert!(
        back.ok && back.stdout.contains("kept v5 is active"),
        "{}",
        back.stdout
    );
    assert_eq!(answer(&a, "/kept").await, (200, HELLO.into()));
    blobs_become(&redis, 3).await;
    // Removing the app leaves nothing of it behind.
    assert!(admin_cli(&a, &["rm", "kept"]).ok);
    blobs_become(&redis, 0).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two apps deploy the same two bundles in turn with `--keep-versions 1`, so each deploy
/// frees a bundle the other app may be uploading at that moment: a collection must never
/// delete a blob that a deploy in flight, the active version or a rollback target names.
#[tokio::test]
async fn deploys_that_upload_a_bundle_while_it_is_collected_keep_it() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &["--keep-versions", "1"]);
    let dir = std::env::temp_dir().join(format!("tabula-race-{}", std::process::id()));
    let bundles: Vec<String> = ["one", "two"]
        .iter()
        .map(|name| {
            let bundle = dir.join(name);
            std::fs::create_dir_all(&bundle).unwrap();
            std::fs::write(bundle.join("index.html"), format!("bundle {name}")).unwrap();
            bundle.display().to_string()
        })
        .collect();
    let site = wasm("site");
    const ROUNDS: usize = 8;
    std::thread::scope(|s| {
        for (offset, app) in ["left", "right"].into_iter().enumerate() {
            let (a, site, bundles) = (&a, &site, &bundles);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let route = format!("/{app}");
                    let assets = &bundles[(round + offset) % 2];
                    let args = ["deploy", site, "--name", app, "--route", &route];
                    let run = admin_cli(a, &[&args[..], &["--assets", assets]].concat());
                    assert!(
                        run.ok,
                        "{app} round {round}:\n{}\n{}",
                        run.stdout, run.stderr
                    );
                }
            });
        }
    });
    // Each app's last round and the round before it (its rollback target) name the two
    // bundles, and both still answer.
    for (offset, app) in ["left", "right"].into_iter().enumerate() {
        let last = format!("bundle {}", ["one", "two"][(ROUNDS - 1 + offset) % 2]);
        let before = format!("bundle {}", ["one", "two"][(ROUNDS + offset) % 2]);
        let page = format!("/{app}/index.html");
        assert_eq!(answer(&a, &page).await, (200, last));
        let back = admin_cli(&a, &["rollback", app]);
        assert!(back.ok, "{}\n{}", back.stdout, back.stderr);
        assert_eq!(answer(&a, &page).await, (200, before));
    }
    // The component and the two bundles, nothing more.
    blobs_become(&redis, 3).await;
    let _ = std::fs::remove_dir_all(&dir);
}
