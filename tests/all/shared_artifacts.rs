//! Compiled components shared through the store: real replicas on a real Redis, with and
//! without the fleet's artifact key, and artifacts forged or altered with redis-cli.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::deploy::{answer, deploy, replica, wasm};
use crate::harness::{Server, admin_cli, client, get};
use crate::redis_server::RedisServer;

const HELLO: &str = "Hello, world!\n";

/// A key file of the fleet's, in a directory of the test's own.
struct KeyFile {
    dir: PathBuf,
}

impl KeyFile {
    fn new(tag: &str) -> KeyFile {
        let dir = std::env::temp_dir().join(format!("tabula-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // As `openssl rand -base64 48 > key` writes it: with a trailing newline.
        std::fs::write(dir.join("key"), format!("{}\n", "k3y-".repeat(12))).unwrap();
        KeyFile { dir }
    }

    fn path(&self) -> String {
        self.dir.join("key").display().to_string()
    }

    /// A directory for a replica's own compile cache.
    fn cache(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The hex sha-256 of the file at `path`: a component's digest.
fn digest_of(path: &str) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn record_key(digest: &str) -> String {
    format!("tabula:artifact:{{{digest}}}")
}

/// The artifact record of component `digest`, parsed (`null` when there is none).
fn record(redis: &RedisServer, digest: &str) -> serde_json::Value {
    let raw = redis.command(&["GET", &record_key(digest)]);
    serde_json::from_str(raw.trim()).unwrap_or(serde_json::Value::Null)
}

/// The one engine's upload the record of `digest` lists: (fingerprint, upload).
fn upload(redis: &RedisServer, digest: &str) -> (String, serde_json::Value) {
    let record = record(redis, digest);
    let engines = record
        .as_object()
        .unwrap_or_else(|| panic!("no artifact record for {digest}: {record}"));
    assert_eq!(engines.len(), 1, "{record}");
    let (engine, upload) = engines.iter().next().unwrap();
    (engine.clone(), upload.clone())
}

/// Every artifact key in the store (records and chunks).
fn artifact_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .command(&["--scan", "--pattern", "tabula:artifact:*"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// The lines of `server`'s log that say a deployed version is ready, once there is one.
fn ready_lines(server: &Server) -> Vec<String> {
    assert!(server.logged("version ready"), "{}", server.log());
    server
        .log()
        .lines()
        .filter(|l| l.contains("version ready"))
        .map(String::from)
        .collect()
}

/// A replica with the fleet's key, and `extra` flags.
fn keyed_replica(redis: &RedisServer, key: &KeyFile, admin: bool, extra: &[&str]) -> Server {
    let path = key.path();
    replica(
        &redis.url(),
        admin,
        &[&["--artifact-key-file", path.as_str()], extra].concat(),
    )
}

/// The proof a joining replica did not compile: its one "version ready" line says the
/// component came from the store.
async fn joins_from_the_store(server: &Server) {
    assert_eq!(answer(server, "/hello").await, (200, HELLO.into()));
    let ready = ready_lines(server);
    assert_eq!(ready.len(), 1, "{}", server.log());
    assert!(
        ready[0].contains("cached=false") && ready[0].contains("shared=true"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn a_joining_replica_loads_what_another_compiled_and_compiles_nothing() {
    let redis = RedisServer::start();
    let key = KeyFile::new("artifacts-join");
    let a = keyed_replica(&redis, &key, true, &[]);
    let hello = wasm("hello");
    deploy(&a, &hello, "hello", "/hello");
    // The deploy returns once A is ready, and A stores the artifact before it says so.
    assert!(a.logged("compiled artifact stored"), "{}", a.log());
    let digest = digest_of(&hello);
    let (_, stored) = upload(&redis, &digest);
    assert!(stored["size"].as_u64().unwrap() > 0, "{stored}");

    // B joins with no compile cache, C with an empty one: both take A's artifact.
    let b = keyed_replica(&redis, &key, false, &[]);
    joins_from_the_store(&b).await;
    let cache = key.cache("cache-c");
    let mut c = keyed_replica(&redis, &key, false, &["--cache-dir", &cache]);
    joins_from_the_store(&c).await;
    // C kept it in its compile cache: restarted, it loads it from there.
    c.terminate();
    let c = keyed_replica(&redis, &key, false, &["--cache-dir", &cache]);
    assert_eq!(answer(&c, "/hello").await, (200, HELLO.into()));
    assert!(ready_lines(&c)[0].contains("cached=true"), "{}", c.log());
    // Nobody stored it again: the one upload A made is the one there.
    assert_eq!(upload(&redis, &digest).1, stored);
}

#[tokio::test]
async fn every_worker_process_of_a_joining_replica_takes_the_artifact_and_none_compiles() {
    let redis = RedisServer::start();
    let key = KeyFile::new("artifacts-workers");
    let a = keyed_replica(&redis, &key, true, &[]);
    deploy(&a, &wasm("hello"), "hello", "/hello");
    assert!(a.logged("compiled artifact stored"), "{}", a.log());
    let cache = key.cache("cache-b");
    let b = keyed_replica(
        &redis,
        &key,
        false,
        &["--processes", "2", "--cache-dir", &cache],
    );
    // Ready once both workers serve hello.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&client(), &b.operator_url("/readyz")).await.status != 200 {
        assert!(Instant::now() < deadline, "{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One worker fetched it from the store while the other waited, then loaded the entry
    // the first one wrote to their shared compile cache.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready_lines(&b).len() < 2 {
        assert!(Instant::now() < deadline, "{}", b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = ready_lines(&b);
    let count = |what: &str| ready.iter().filter(|l| l.contains(what)).count();
    assert_eq!(ready.len(), 2, "{}", b.log());
    assert_eq!(count("shared=true"), 1, "{}", b.log());
    assert_eq!(count("cached=true"), 1, "{}", b.log());
    assert_eq!(answer(&b, "/hello").await, (200, HELLO.into()));
}

/// Deploys hello with a key on A, spoils its artifact with `spoil`, then checks that a
/// joining replica refuses it, compiles, serves, and stores a good one that the next
/// replica takes; once with no compile cache, once with one.
async fn a_spoiled_artifact_is_refused(tag: &str, spoil: impl Fn(&RedisServer, &str, &str)) {
    let redis = RedisServer::start();
    let key = KeyFile::new(tag);
    let a = keyed_replica(&redis, &key, true, &[]);
    let hello = wasm("hello");
    deploy(&a, &hello, "hello", "/hello");
    let digest = digest_of(&hello);
    let (engine, _) = upload(&redis, &digest);

    for cache in [None, Some(key.cache("cache-b"))] {
        spoil(&redis, &digest, &engine);
        let spoiled = upload(&redis, &digest).1;
        let extra: Vec<&str> = match &cache {
            Some(dir) => vec!["--cache-dir", dir],
            None => vec![],
        };
        let b = keyed_replica(&redis, &key, false, &extra);
        assert_eq!(answer(&b, "/hello").await, (200, HELLO.into()));
        assert!(
            b.logged("refused a compiled artifact from the store"),
            "{}",
            b.log()
        );
        let ready = ready_lines(&b);
        assert!(
            ready.len() == 1 && ready[0].contains("shared=false"),
            "{}",
            b.log()
        );
        // B compiled it and put a good artifact in place of the spoiled one.
        assert!(b.logged("compiled artifact stored"), "{}", b.log());
        assert_ne!(upload(&redis, &digest).1, spoiled);
        let c = keyed_replica(&redis, &key, false, &[]);
        joins_from_the_store(&c).await;
        assert!(!c.log().contains("refused"), "{}", c.log());
    }
}

#[tokio::test]
async fn a_forged_artifact_is_refused_and_compiled_again() {
    // Written by someone who can write to Redis but has no key: code of their choosing
    // under a MAC they had to guess.
    a_spoiled_artifact_is_refused("artifacts-forged", |redis, digest, engine| {
        let code = "\u{7f}ELF not a compiled component".repeat(100);
        redis.command(&[
            "SET",
            &format!("tabula:artifact:{{{digest}}}:forged:0"),
            &code,
        ]);
        let record = serde_json::json!({
            engine: {"id": "forged", "size": code.len(), "chunks": 1, "mac": "00".repeat(32)}
        });
        redis.command(&["SET", &record_key(digest), &record.to_string()]);
    })
    .await;
}

#[tokio::test]
async fn an_altered_artifact_is_refused_and_compiled_again() {
    // The real artifact, its record untouched, one bit of its code flipped: wasmtime itself
    // would load it (it checks the engine, not the code), and run what the bit now says.
    a_spoiled_artifact_is_refused("artifacts-altered", |redis, digest, _| {
        let (_, upload) = upload(redis, digest);
        let chunk = format!(
            "tabula:artifact:{{{digest}}}:{}:0",
            upload["id"].as_str().unwrap()
        );
        // A bit in the middle of the first chunk, past the headers.
        let len: u64 = redis.command(&["STRLEN", &chunk]).trim().parse().unwrap();
        let bit = (8 * (len / 2)).to_string();
        let was: u8 = redis
            .command(&["GETBIT", &chunk, &bit])
            .trim()
            .parse()
            .unwrap();
        redis.command(&["SETBIT", &chunk, &bit, &(1 - was).to_string()]);
    })
    .await;
}

#[tokio::test]
async fn without_a_key_nothing_is_shared() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), true, &[]);
    deploy(&a, &wasm("hello"), "hello", "/hello");
    let b = replica(&redis.url(), false, &[]);
    assert_eq!(answer(&b, "/hello").await, (200, HELLO.into()));
    assert!(ready_lines(&b)[0].contains("shared=false"), "{}", b.log());
    assert_eq!(artifact_keys(&redis), Vec::<String>::new());
}

#[tokio::test]
async fn a_key_shorter_than_32_bytes_is_refused_at_start() {
    let key = KeyFile::new("artifacts-short");
    std::fs::write(key.path(), "short-key\n").unwrap();
    let (status, stderr) = crate::harness::run_tabula(&[
        "serve",
        "--store",
        "memory",
        "--artifact-key-file",
        &key.path(),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("needs 32 or more"), "{stderr}");
    assert!(
        !stderr.contains("short-key"),
        "the key is in the message: {stderr}"
    );
}

/// `wasm` with a custom section saying `label`: a distinct component (digest) that runs
/// the same.
fn variant(wasm: &str, label: &str, dir: &std::path::Path) -> String {
    let mut bytes = std::fs::read(wasm).unwrap();
    let name = b"artifact-test";
    let body: Vec<u8> = [&[name.len() as u8][..], name, label.as_bytes()].concat();
    bytes.extend([0, body.len() as u8]);
    bytes.extend(body);
    let path = dir.join(format!("{label}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn artifacts_go_when_retention_deletes_their_component() {
    let redis = RedisServer::start();
    let key = KeyFile::new("artifacts-retention");
    let a = keyed_replica(&redis, &key, true, &["--keep-versions", "1"]);
    let builds: Vec<String> = (1..=4)
        .map(|n| variant(&wasm("hello"), &format!("build-{n}"), &key.dir))
        .collect();
    for build in &builds {
        deploy(&a, build, "kept", "/kept");
    }
    // Kept: v4 (active) and v3 (where a rollback goes); v1 and v2 are collected, and
    // their artifacts with them, chunks and all.
    let digests: Vec<String> = builds.iter().map(|b| digest_of(b)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = artifact_keys(&redis);
        let gone = digests[..2]
            .iter()
            .all(|d| !keys.iter().any(|k| k.contains(d.as_str())));
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "{keys:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for kept in &digests[2..] {
        upload(&redis, kept);
    }
    // Removing the app takes the rest.
    assert!(admin_cli(&a, &["rm", "kept"]).ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !artifact_keys(&redis).is_empty() {
        assert!(Instant::now() < deadline, "{:#?}", artifact_keys(&redis));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
