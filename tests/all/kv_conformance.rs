//! One conformance suite for every storage backend: the embedded store, a real
//! `redis-server`, and a real three-master Redis Cluster run exactly the same checks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tabula::storage::{self, HashLimits, HashWrite, Quota, Storage, StorageError, Ttl};

use crate::redis_server::{RedisCluster, RedisServer};

/// Keys carry a hash tag, as app namespaces do, so one listing is one slot in a cluster.
fn k(name: &str) -> String {
    format!("tabula:{{conformance}}:{name}")
}

/// Every check, with the writes uncounted and then counted against a quota too large to
/// matter (the counted writes run through other code: a Lua script on Redis), and the
/// quota's own checks.
async fn suite(s: Arc<dyn Storage>) {
    s.ping().await.expect("ping");
    let roomy = Quota {
        usage: k("usage"),
        max_keys: 1 << 40,
        max_bytes: 1 << 40,
    };
    for quota in [None, Some(roomy)] {
        let q = quota.as_ref();
        basic_operations(&*s, q).await;
        binary_values(&*s, q).await;
        increments(&*s, q).await;
        expiry(&*s, q).await;
        compare_and_swap(&*s, q).await;
        compare_and_swap_under_contention(s.clone(), quota.clone()).await;
        paging_through_thousands_of_keys(&*s, q).await;
        hashes(&*s, q).await;
        rename(&*s, q).await;
        huge_expiries(&*s, q).await;
    }
    quotas(&*s).await;
    hashes_count_against_the_quota(&*s).await;
}

/// A namespace's quota of keys and bytes: writes over it change nothing and fail; deleting
/// or expiring keys makes room again.
async fn quotas(s: &dyn Storage) {
    let quota = Quota {
        usage: k("q:usage"),
        max_keys: 3,
        max_bytes: 100,
    };
    let q = Some(&quota);
    let key = |name: &str| k(&format!("q:{name}"));
    // Each key counts its name (`tabula:{conformance}:q:X`, 25 bytes) plus its value.
    for name in ["a", "b", "c"] {
        s.set(&key(name), b"1", None, q).await.unwrap();
    }
    assert_eq!(
        s.set(&key("d"), b"1", None, q).await,
        Err(StorageError::QuotaExceeded),
        "a fourth key"
    );
    assert_eq!(s.get(&key("d")).await.unwrap(), None, "nothing was written");
    assert_eq!(
        s.increment(&key("d"), 1, q).await,
        Err(StorageError::QuotaExceeded)
    );
    assert_eq!(
        s.compare_and_swap(&key("d"), None, b"1", None, q).await,
        Err(StorageError::QuotaExceeded)
    );
    assert!(!s.exists(&key("d")).await.unwrap());
    s.set(&key("a"), b"12345", None, q).await.unwrap();
    assert_eq!(
        s.set(&key("a"), &[b'x'; 40], None, q).await,
        Err(StorageError::QuotaExceeded),
        "over the bytes"
    );
    assert_eq!(
        s.get(&key("a")).await.unwrap().as_deref(),
        Some(&b"12345"[..]),
        "the refused write left the old value"
    );
    s.set(&key("a"), b"1", None, q).await.unwrap();
    assert!(s.delete(&key("c"), q).await.unwrap());
    s.set(&key("d"), b"1", Some(Duration::from_millis(200)), q)
        .await
        .unwrap();
    assert_eq!(
        s.set(&key("e"), b"1", None, q).await,
        Err(StorageError::QuotaExceeded)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.set(&key("e"), b"1", None, q)
        .await
        .expect("an expired key is given back");
    for name in ["a", "b", "e"] {
        s.delete(&key(name), q).await.unwrap();
    }
    s.set(&key("f"), b"1", None, q).await.unwrap();
    s.delete(&key("f"), q).await.unwrap();
}

async fn basic_operations(s: &dyn Storage, q: Option<&Quota>) {
    let key = k("basic");
    assert_eq!(
        s.get(&key).await.unwrap(),
        None,
        "missing key reads as None"
    );
    assert!(!s.exists(&key).await.unwrap());
    s.set(&key, b"one", None, q).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b"one"[..]));
    assert!(s.exists(&key).await.unwrap());
    s.set(&key, b"two", None, q).await.unwrap();
    assert_eq!(
        s.get(&key).await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "set overwrites"
    );
    assert!(
        s.delete(&key, q).await.unwrap(),
        "delete reports an existing key"
    );
    assert!(
        !s.delete(&key, q).await.unwrap(),
        "delete reports a missing key"
    );
    assert_eq!(s.get(&key).await.unwrap(), None);
}

async fn binary_values(s: &dyn Storage, q: Option<&Quota>) {
    let key = k("binary");
    let value: Vec<u8> = (0..=255u8).chain([0, 0, 0xff, 0xfe]).collect();
    s.set(&key, &value, None, q).await.unwrap();
    assert_eq!(
        s.get(&key).await.unwrap(),
        Some(value),
        "bytes round-trip exactly"
    );
    s.set(&key, b"", None, q).await.unwrap();
    assert_eq!(
        s.get(&key).await.unwrap(),
        Some(vec![]),
        "an empty value is a value"
    );
    s.delete(&key, q).await.unwrap();
}

async fn increments(s: &dyn Storage, q: Option<&Quota>) {
    let key = k("counter");
    assert_eq!(
        s.increment(&key, 5, q).await.unwrap(),
        5,
        "missing counts as 0"
    );
    assert_eq!(s.increment(&key, -7, q).await.unwrap(), -2);
    assert_eq!(
        s.get(&key).await.unwrap().as_deref(),
        Some(&b"-2"[..]),
        "decimal text"
    );
    s.set(&key, b"41", None, q).await.unwrap();
    assert_eq!(
        s.increment(&key, 1, q).await.unwrap(),
        42,
        "counts on a set value"
    );
    s.set(&key, b"forty", None, q).await.unwrap();
    assert_eq!(
        s.increment(&key, 1, q).await,
        Err(StorageError::NotAnInteger)
    );
    s.set(&key, b"1", Some(Duration::from_secs(60)), q)
        .await
        .unwrap();
    s.increment(&key, 1, q).await.unwrap();
    assert!(
        matches!(s.ttl(&key).await.unwrap(), Ttl::ExpiresIn(_)),
        "increment keeps the expiry"
    );
    s.delete(&key, q).await.unwrap();
}

async fn expiry(s: &dyn Storage, q: Option<&Quota>) {
    let key = k("ttl");
    s.set(&key, b"soon gone", Some(Duration::from_millis(300)), q)
        .await
        .unwrap();
    match s.ttl(&key).await.unwrap() {
        Ttl::ExpiresIn(left) => assert!(left <= Duration::from_millis(300), "{left:?}"),
        other => panic!("expected an expiry, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(s.get(&key).await.unwrap(), None, "the value expired");
    assert!(!s.exists(&key).await.unwrap());
    assert_eq!(s.ttl(&key).await.unwrap(), Ttl::Missing);

    assert!(
        !s.expire(&key, Some(Duration::from_secs(1)), q)
            .await
            .unwrap(),
        "missing key"
    );
    s.set(&key, b"v", None, q).await.unwrap();
    assert_eq!(s.ttl(&key).await.unwrap(), Ttl::Persistent);
    assert!(
        s.expire(&key, Some(Duration::from_millis(200)), q)
            .await
            .unwrap()
    );
    assert!(matches!(s.ttl(&key).await.unwrap(), Ttl::ExpiresIn(_)));
    assert!(
        s.expire(&key, None, q).await.unwrap(),
        "persist an existing key"
    );
    assert_eq!(s.ttl(&key).await.unwrap(), Ttl::Persistent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.exists(&key).await.unwrap(),
        "a persisted key does not expire"
    );

    s.set(&key, b"v", Some(Duration::from_millis(100)), q)
        .await
        .unwrap();
    s.set(&key, b"w", None, q).await.unwrap();
    assert_eq!(
        s.ttl(&key).await.unwrap(),
        Ttl::Persistent,
        "set replaces the expiry"
    );
    s.delete(&key, q).await.unwrap();
}

async fn compare_and_swap(s: &dyn Storage, q: Option<&Quota>) {
    let key = k("cas");
    assert!(
        s.compare_and_swap(&key, None, b"a", None, q).await.unwrap(),
        "create if absent"
    );
    assert!(
        !s.compare_and_swap(&key, None, b"b", None, q).await.unwrap(),
        "exists now"
    );
    assert!(
        !s.compare_and_swap(&key, Some(b"x"), b"b", None, q)
            .await
            .unwrap(),
        "wrong value"
    );
    assert_eq!(
        s.get(&key).await.unwrap().as_deref(),
        Some(&b"a"[..]),
        "unchanged"
    );
    assert!(
        s.compare_and_swap(&key, Some(b"a"), b"b", None, q)
            .await
            .unwrap()
    );
    assert_eq!(s.get(&key).await.unwrap().as_deref(), Some(&b"b"[..]));
    let ttl = Some(Duration::from_millis(200));
    assert!(
        s.compare_and_swap(&key, Some(b"b"), b"c", ttl, q)
            .await
            .unwrap()
    );
    assert!(
        matches!(s.ttl(&key).await.unwrap(), Ttl::ExpiresIn(_)),
        "CAS sets the expiry"
    );
    s.delete(&key, q).await.unwrap();
}

/// Many tasks add one at a time with read-then-CAS: no update may be lost.
async fn compare_and_swap_under_contention(s: Arc<dyn Storage>, quota: Option<Quota>) {
    let q = quota.as_ref();
    const TASKS: u64 = 16;
    const EACH: u64 = 25;
    let key = k("contended");
    s.set(&key, b"0", None, q).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (s, key, quota) = (s.clone(), key.clone(), quota.clone());
        tasks.spawn(async move {
            let q = quota.as_ref();
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let current = s.get(&key).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&current).unwrap().parse().unwrap();
                    let next = (n + 1).to_string();
                    if s.compare_and_swap(&key, Some(&current), next.as_bytes(), None, q)
                        .await
                        .unwrap()
                    {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        });
    }
    let mut conflicts = 0;
    while let Some(result) = tasks.join_next().await {
        conflicts += result.unwrap();
    }
    let total = String::from_utf8(s.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(
        total,
        (TASKS * EACH).to_string(),
        "no increment lost ({conflicts} retries)"
    );
    s.delete(&key, q).await.unwrap();
}

async fn paging_through_thousands_of_keys(s: &dyn Storage, q: Option<&Quota>) {
    const N: usize = 3000;
    let prefix = k("page:");
    let mut expected = BTreeSet::new();
    for i in 0..N {
        let key = format!("{prefix}{i:05}");
        s.set(&key, b"x", None, q).await.unwrap();
        expected.insert(key);
    }
    // Neighbours that must not be listed: a sibling prefix and a glob-looking one.
    s.set(&k("pagez"), b"x", None, q).await.unwrap();
    s.set(&k("pa*e:1"), b"x", None, q).await.unwrap();

    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s.list(&prefix, cursor.as_deref(), 100).await.unwrap();
        pages += 1;
        assert!(pages < 10 * N, "the listing does not end");
        for key in page.keys {
            assert!(key.starts_with(&prefix), "{key} is outside the prefix");
            seen.insert(key);
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), N, "every key is listed");
    assert_eq!(seen, expected);
    assert!(pages > 5, "{N} keys at 100 a page took only {pages} pages");

    // A page may come back short (even empty) with a cursor: follow it to the end.
    let star = k("pa*e:");
    let (mut keys, mut cursor) = (Vec::new(), None);
    loop {
        let page = s.list(&star, cursor.as_deref(), 100).await.unwrap();
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(
        keys,
        vec![k("pa*e:1")],
        "prefixes match literally, not as globs"
    );
}

/// Hash limits of `max_bytes` and room for any number of fields.
fn bytes_only(max_bytes: u64) -> HashLimits {
    HashLimits {
        max_bytes,
        max_fields: u32::MAX,
    }
}

async fn hashes(s: &dyn Storage, q: Option<&Quota>) {
    use HashWrite::{Stored, TooLarge, TooManyFields};
    let key = k("hash");
    let day = Duration::from_secs(86400);
    let limits = bytes_only(100);
    let set = async |field: &str, value: &[u8], limits| {
        s.hash_set(&key, field, value, limits, day, q)
            .await
            .unwrap()
    };
    assert_eq!(s.hash_get(&key, "f").await.unwrap(), None);
    assert_eq!(set("f", b"one", limits).await, Stored);
    assert_eq!(set("g", b"two", limits).await, Stored);
    assert_eq!(
        s.hash_get(&key, "f").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert!(
        matches!(s.ttl(&key).await.unwrap(), Ttl::ExpiresIn(_)),
        "hash_set sets the expiry"
    );
    // Names and values count: g(1)+two(3)=4, so f may take 100-4-1 = 95 bytes of value
    // (replacing f's value counts only the new one).
    assert_eq!(set("f", &[b'x'; 95], limits).await, Stored, "at the limit");
    assert_eq!(set("f", &[b'x'; 96], limits).await, TooLarge, "over it");
    assert_eq!(set("h", b"", limits).await, TooLarge, "a new field over it");
    assert_eq!(
        s.hash_get(&key, "f").await.unwrap().map(|v| v.len()),
        Some(95),
        "unchanged"
    );
    // The running total follows overwrites and removals exactly.
    assert_eq!(set("f", b"1", limits).await, Stored);
    assert_eq!(
        set("h", &[b'x'; 93], limits).await,
        Stored,
        "f 2 + g 4 + h 94"
    );
    assert_eq!(set("i", b"", limits).await, TooLarge);
    assert!(s.hash_delete(&key, "f", q).await.unwrap());
    assert!(!s.hash_delete(&key, "f", q).await.unwrap());
    assert_eq!(
        set("i", b"x", limits).await,
        Stored,
        "f's 2 bytes are free again"
    );
    assert_eq!(
        s.hash_get(&key, "g").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    // Fields are bounded on their own: g, h and i are three.
    let three = HashLimits {
        max_bytes: 1000,
        max_fields: 3,
    };
    assert_eq!(set("j", b"", three).await, TooManyFields);
    assert_eq!(s.hash_get(&key, "j").await.unwrap(), None, "not written");
    assert_eq!(
        set("g", b"2", three).await,
        Stored,
        "an existing field is no new one"
    );
    assert!(s.hash_delete(&key, "i", q).await.unwrap());
    assert_eq!(set("j", b"", three).await, Stored);
    assert!(s.get(&key).await.is_err(), "a hash is not bytes");
    for field in ["g", "h", "j"] {
        assert!(s.hash_delete(&key, field, q).await.unwrap());
    }
    assert!(
        !s.exists(&key).await.unwrap(),
        "the hash went with its last field"
    );

    let brief = k("brief-hash");
    assert_eq!(
        s.hash_set(&brief, "f", b"v", limits, Duration::from_millis(200), q)
            .await
            .unwrap(),
        Stored
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        s.hash_get(&brief, "f").await.unwrap(),
        None,
        "the hash expired"
    );
}

/// Hashes in a quota: each is one key of its name plus its fields' names and values; a write
/// over the quota changes nothing; deleting, expiring and renaming keep the count exact.
async fn hashes_count_against_the_quota(s: &dyn Storage) {
    let quota = Quota {
        usage: k("hq:usage"),
        max_keys: 2,
        max_bytes: 100,
    };
    let q = Some(&quota);
    // Each key's name, `tabula:{conformance}:hq:X`, is 25 bytes.
    let key = |name: &str| k(&format!("hq:{name}"));
    let day = Duration::from_secs(86400);
    let set = async |name: &str, field: &str, value: &[u8], ttl| {
        s.hash_set(&key(name), field, value, bytes_only(1000), ttl, q)
            .await
    };
    assert_eq!(set("a", "f", b"1", day).await, Ok(HashWrite::Stored));
    assert_eq!(set("b", "f", b"1", day).await, Ok(HashWrite::Stored));
    assert_eq!(
        set("c", "f", b"1", day).await,
        Err(StorageError::QuotaExceeded),
        "a third key"
    );
    assert!(!s.exists(&key("c")).await.unwrap(), "nothing was written");
    // a is 25+2 = 27 bytes, b 27: a may grow by 100-54 = 46 bytes, a field g of 45.
    assert_eq!(
        set("a", "g", &[b'x'; 46], day).await,
        Err(StorageError::QuotaExceeded),
        "over the bytes"
    );
    assert_eq!(s.hash_get(&key("a"), "g").await.unwrap(), None);
    assert_eq!(set("a", "g", &[b'x'; 45], day).await, Ok(HashWrite::Stored));
    assert!(s.hash_delete(&key("a"), "g", q).await.unwrap());
    assert_eq!(
        set("a", "g", &[b'x'; 45], day).await,
        Ok(HashWrite::Stored),
        "given back"
    );
    // A rename moves the count: still two keys.
    assert!(s.rename(&key("a"), &key("d"), q).await.unwrap());
    assert_eq!(
        set("c", "f", b"1", day).await,
        Err(StorageError::QuotaExceeded)
    );
    assert!(s.delete(&key("d"), q).await.unwrap());
    assert_eq!(
        set("c", "f", b"1", Duration::from_millis(200)).await,
        Ok(HashWrite::Stored)
    );
    assert_eq!(
        set("e", "f", b"1", day).await,
        Err(StorageError::QuotaExceeded)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        set("e", "f", b"1", day).await,
        Ok(HashWrite::Stored),
        "an expired hash is given back"
    );
    // Its last field removed, a hash is gone and so is its count.
    assert!(s.hash_delete(&key("e"), "f", q).await.unwrap());
    assert_eq!(set("f", "f", b"1", day).await, Ok(HashWrite::Stored));
    for name in ["b", "f"] {
        s.delete(&key(name), q).await.unwrap();
    }
}

/// An expiry longer than a store can hold (a deploy asked for `u64::MAX` seconds) is kept as
/// the longest it can, never a panic or a refusal.
async fn huge_expiries(s: &dyn Storage, q: Option<&Quota>) {
    let key = k("forever");
    let century = Duration::from_secs(100 * 365 * 86400);
    let long = |ttl| matches!(ttl, Ttl::ExpiresIn(left) if left > century);
    s.set(&key, b"v", Some(Duration::MAX), q).await.unwrap();
    assert!(long(s.ttl(&key).await.unwrap()));
    assert!(s.expire(&key, Some(Duration::MAX), q).await.unwrap());
    assert!(long(s.ttl(&key).await.unwrap()));
    assert!(
        s.compare_and_swap(&key, Some(b"v"), b"w", Some(Duration::MAX), q)
            .await
            .unwrap()
    );
    s.delete(&key, q).await.unwrap();
    let hash = k("forever-hash");
    assert_eq!(
        s.hash_set(&hash, "f", b"v", bytes_only(100), Duration::MAX, q)
            .await
            .unwrap(),
        HashWrite::Stored
    );
    assert!(long(s.ttl(&hash).await.unwrap()));
    s.delete(&hash, q).await.unwrap();
}

async fn rename(s: &dyn Storage, q: Option<&Quota>) {
    let (from, to) = (k("from"), k("to"));
    assert!(!s.rename(&from, &to, q).await.unwrap(), "nothing to move");
    s.set(&from, b"v", Some(Duration::from_secs(60)), q)
        .await
        .unwrap();
    assert!(s.rename(&from, &to, q).await.unwrap());
    assert_eq!(s.get(&from).await.unwrap(), None);
    assert_eq!(s.get(&to).await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(
        matches!(s.ttl(&to).await.unwrap(), Ttl::ExpiresIn(_)),
        "the expiry moves too"
    );
    s.delete(&to, q).await.unwrap();
}

#[tokio::test]
async fn memory_backend_conforms() {
    suite(storage::open("memory").await.unwrap()).await;
}

#[tokio::test]
async fn redis_backend_conforms() {
    let redis = RedisServer::start();
    suite(storage::open(&redis.url()).await.unwrap()).await;
}

#[tokio::test]
async fn redis_cluster_backend_conforms() {
    let cluster = RedisCluster::start();
    suite(storage::open(&cluster.url()).await.unwrap()).await;
}

#[tokio::test]
async fn an_unknown_store_is_refused_with_the_forms_we_take() {
    let err = storage::open("postgres://x").await.err().expect("refused");
    assert!(format!("{err:#}").contains("redis+cluster://"), "{err:#}");
}
