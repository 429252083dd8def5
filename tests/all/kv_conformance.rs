//! One conformance suite for every storage backend: the embedded store, a real
//! `redis-server`, and a real three-master Redis Cluster run exactly the same checks, each
//! through three doors: the store's own calls on full keys, uncounted (what the registry
//! uses), and an app's [`Namespace`] in each [`Layout`] (what guests reach, counted).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tabula::storage::{
    self, HashLimits, HashWrite, Layout, Namespace, Storage, StorageError, StorageResult, Ttl,
};

use crate::redis_server::{RedisCluster, RedisServer};

/// Where the checks read and write: names are given bare and placed by the target.
#[derive(Clone)]
enum Target {
    /// The store itself: names under one hash tag, uncounted.
    Raw(Arc<dyn Storage>),
    /// An app's namespace in a layout, counted against its quota.
    App(Arc<Namespace>),
}

impl Target {
    /// The namespace of a fresh app named `app` in this target's layout, with a quota of
    /// `max_keys` and `max_bytes`: for the quota's checks.
    fn with_quota(&self, app: &str, max_keys: u64, max_bytes: u64) -> Option<Target> {
        let Target::App(ns) = self else { return None };
        let layout = if ns.shard_prefixes().count() > 1 {
            Layout::Spread
        } else {
            Layout::SingleSlot
        };
        let app = format!("{app}{}", layout.shards());
        Some(Target::App(Arc::new(Namespace::new(
            ns.storage().clone(),
            &app,
            layout,
            max_keys,
            max_bytes,
        ))))
    }

    fn key(&self, name: &str) -> String {
        match self {
            Target::Raw(_) => format!("tabula:{{conformance}}:{name}"),
            Target::App(ns) => ns.key(name),
        }
    }

    /// What a key of `name` holding `value_len` bytes counts in a quota.
    fn size(&self, name: &str, value_len: usize) -> usize {
        self.key(name).len() + value_len
    }

    /// A name beside `from` that a rename may move it to (one slot).
    fn rename_target(&self, from: &str, to: &str) -> String {
        match self {
            Target::Raw(_) => to.to_string(),
            Target::App(ns) => (0..)
                .map(|n| format!("{to}{n}"))
                .find(|to| ns.same_shard(from, to))
                .unwrap(),
        }
    }

    async fn get(&self, name: &str) -> StorageResult<Option<Vec<u8>>> {
        match self {
            Target::Raw(s) => s.get(&self.key(name)).await,
            Target::App(ns) => ns.get(name).await,
        }
    }

    async fn get_many(&self, names: &[String]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        match self {
            Target::Raw(s) => {
                let keys: Vec<String> = names.iter().map(|n| self.key(n)).collect();
                s.get_many(&keys).await
            }
            Target::App(ns) => ns.get_many(names).await,
        }
    }

    async fn exists(&self, name: &str) -> StorageResult<bool> {
        match self {
            Target::Raw(s) => s.exists(&self.key(name)).await,
            Target::App(ns) => ns.exists(name).await,
        }
    }

    async fn ttl(&self, name: &str) -> StorageResult<Ttl> {
        match self {
            Target::Raw(s) => s.ttl(&self.key(name)).await,
            Target::App(ns) => ns.ttl(name).await,
        }
    }

    async fn set(&self, name: &str, value: &[u8], ttl: Option<Duration>) -> StorageResult<()> {
        match self {
            Target::Raw(s) => s.set(&self.key(name), value, ttl, None).await,
            Target::App(ns) => ns.set(name, value, ttl).await,
        }
    }

    async fn delete(&self, name: &str) -> StorageResult<bool> {
        match self {
            Target::Raw(s) => s.delete(&self.key(name), None).await,
            Target::App(ns) => ns.delete(name).await,
        }
    }

    async fn increment(&self, name: &str, delta: i64) -> StorageResult<i64> {
        match self {
            Target::Raw(s) => s.increment(&self.key(name), delta, None).await,
            Target::App(ns) => ns.increment(name, delta).await,
        }
    }

    async fn compare_and_swap(
        &self,
        name: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<Duration>,
    ) -> StorageResult<bool> {
        match self {
            Target::Raw(s) => {
                s.compare_and_swap(&self.key(name), expected, new, ttl, None)
                    .await
            }
            Target::App(ns) => ns.compare_and_swap(name, expected, new, ttl).await,
        }
    }

    async fn expire(&self, name: &str, ttl: Option<Duration>) -> StorageResult<bool> {
        match self {
            Target::Raw(s) => s.expire(&self.key(name), ttl, None).await,
            Target::App(ns) => ns.expire(name, ttl).await,
        }
    }

    /// One page of names starting with `prefix`, given back bare.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> StorageResult<(Vec<String>, Option<String>)> {
        match self {
            Target::Raw(s) => {
                let strip = self.key("").len();
                let page = s.list(&self.key(prefix), cursor, limit).await?;
                let keys = page.keys.iter().map(|k| k[strip..].to_string()).collect();
                Ok((keys, page.cursor))
            }
            Target::App(ns) => ns.list(prefix, cursor, limit).await,
        }
    }

    async fn hash_get(&self, name: &str, field: &str) -> StorageResult<Option<Vec<u8>>> {
        match self {
            Target::Raw(s) => s.hash_get(&self.key(name), field).await,
            Target::App(ns) => ns.hash_get(name, field).await,
        }
    }

    async fn hash_set(
        &self,
        name: &str,
        field: &str,
        value: &[u8],
        limits: HashLimits,
        ttl: Duration,
    ) -> StorageResult<HashWrite> {
        match self {
            Target::Raw(s) => {
                s.hash_set(&self.key(name), field, value, limits, ttl, None)
                    .await
            }
            Target::App(ns) => ns.hash_set(name, field, value, limits, ttl).await,
        }
    }

    async fn hash_delete(&self, name: &str, field: &str) -> StorageResult<bool> {
        match self {
            Target::Raw(s) => s.hash_delete(&self.key(name), field, None).await,
            Target::App(ns) => ns.hash_delete(name, field).await,
        }
    }

    async fn rename(&self, from: &str, to: &str) -> StorageResult<bool> {
        match self {
            Target::Raw(s) => s.rename(&self.key(from), &self.key(to), None).await,
            Target::App(ns) => ns.rename(from, to).await,
        }
    }
}

/// Every check, through the store's own uncounted calls and through an app's namespace in
/// each layout (counted against a quota too large to matter: on Redis the counted writes run
/// through other code, Lua scripts); then the quota's own checks, in each layout.
async fn suite(s: Arc<dyn Storage>) {
    s.ping().await.expect("ping");
    let app = |layout| {
        Target::App(Arc::new(Namespace::new(
            s.clone(),
            "conformance",
            layout,
            1 << 40,
            1 << 40,
        )))
    };
    for t in [
        Target::Raw(s.clone()),
        app(Layout::Spread),
        app(Layout::SingleSlot),
    ] {
        basic_operations(&t).await;
        batch_reads(&t).await;
        binary_values(&t).await;
        increments(&t).await;
        expiry(&t).await;
        compare_and_swap(&t).await;
        compare_and_swap_under_contention(t.clone()).await;
        paging_through_thousands_of_keys(&t).await;
        hashes(&t).await;
        rename(&t).await;
        huge_expiries(&t).await;
        quotas(&t).await;
        hashes_count_against_the_quota(&t).await;
    }
}

/// A namespace's quota of keys and bytes: writes over it change nothing and fail; deleting
/// or expiring keys makes room again. Spread over shards, the quota is the app's as a whole:
/// three keys pass wherever they land, and the fourth is refused.
async fn quotas(t: &Target) {
    let Some(t) = t.with_quota("quotas", 3, 120) else {
        return;
    };
    let key = |name: &str| format!("q:{name}");
    for name in ["a", "b", "c"] {
        t.set(&key(name), b"1", None).await.unwrap();
    }
    assert_eq!(
        t.set(&key("d"), b"1", None).await,
        Err(StorageError::QuotaExceeded),
        "a fourth key"
    );
    assert_eq!(t.get(&key("d")).await.unwrap(), None, "nothing was written");
    assert_eq!(
        t.increment(&key("d"), 1).await,
        Err(StorageError::QuotaExceeded)
    );
    assert_eq!(
        t.compare_and_swap(&key("d"), None, b"1", None).await,
        Err(StorageError::QuotaExceeded)
    );
    assert!(!t.exists(&key("d")).await.unwrap());
    t.set(&key("a"), b"12345", None).await.unwrap();
    // Each key counts its name plus its value: `a` may grow to what b and c leave.
    let room = 120 - t.size(&key("b"), 1) - t.size(&key("c"), 1) - t.size(&key("a"), 0);
    assert_eq!(
        t.set(&key("a"), &vec![b'x'; room + 1], None).await,
        Err(StorageError::QuotaExceeded),
        "over the bytes"
    );
    assert_eq!(
        t.get(&key("a")).await.unwrap().as_deref(),
        Some(&b"12345"[..]),
        "the refused write left the old value"
    );
    t.set(&key("a"), &vec![b'x'; room], None)
        .await
        .expect("up to the bytes");
    t.set(&key("a"), b"1", None).await.unwrap();
    assert!(t.delete(&key("c")).await.unwrap());
    t.set(&key("d"), b"1", Some(Duration::from_millis(200)))
        .await
        .unwrap();
    assert_eq!(
        t.set(&key("e"), b"1", None).await,
        Err(StorageError::QuotaExceeded)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    t.set(&key("e"), b"1", None)
        .await
        .expect("an expired key is given back");
    for name in ["a", "b", "e"] {
        t.delete(&key(name)).await.unwrap();
    }
    t.set(&key("f"), b"1", None).await.unwrap();
    t.delete(&key("f")).await.unwrap();
}

async fn basic_operations(t: &Target) {
    let key = "basic";
    assert_eq!(t.get(key).await.unwrap(), None, "missing key reads as None");
    assert!(!t.exists(key).await.unwrap());
    t.set(key, b"one", None).await.unwrap();
    assert_eq!(t.get(key).await.unwrap().as_deref(), Some(&b"one"[..]));
    assert!(t.exists(key).await.unwrap());
    t.set(key, b"two", None).await.unwrap();
    assert_eq!(
        t.get(key).await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "set overwrites"
    );
    assert!(
        t.delete(key).await.unwrap(),
        "delete reports an existing key"
    );
    assert!(
        !t.delete(key).await.unwrap(),
        "delete reports a missing key"
    );
    assert_eq!(t.get(key).await.unwrap(), None);
}

/// A batch read answers every key in the order asked, missing ones as None and a key asked
/// twice twice, however the keys fall over shards (and so over masters in a Cluster).
async fn batch_reads(t: &Target) {
    assert_eq!(
        t.get_many(&[]).await.unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
    let names: Vec<String> = (0..40).map(|i| format!("batch{i}")).collect();
    for (i, name) in names
        .iter()
        .enumerate()
        .filter(|(i, _)| !i.is_multiple_of(3))
    {
        t.set(name, format!("v{i}").as_bytes(), None).await.unwrap();
    }
    let mut asked: Vec<String> = names.iter().rev().cloned().collect();
    asked.push("batch1".into());
    let expected: Vec<Option<Vec<u8>>> = asked
        .iter()
        .map(|name| {
            let i: usize = name["batch".len()..].parse().unwrap();
            (!i.is_multiple_of(3)).then(|| format!("v{i}").into_bytes())
        })
        .collect();
    assert_eq!(t.get_many(&asked).await.unwrap(), expected);
    if let Target::App(ns) = t {
        let shards: BTreeSet<String> = names
            .iter()
            .map(|n| ns.key(n).split("}").next().unwrap().to_string())
            .collect();
        let spread = ns.shard_prefixes().count() > 1;
        assert_eq!(
            shards.len() > 1,
            spread,
            "the batch spans shards: {shards:?}"
        );
    }
    for name in &names {
        t.delete(name).await.unwrap();
    }
}

async fn binary_values(t: &Target) {
    let key = "binary";
    let value: Vec<u8> = (0..=255u8).chain([0, 0, 0xff, 0xfe]).collect();
    t.set(key, &value, None).await.unwrap();
    assert_eq!(
        t.get(key).await.unwrap(),
        Some(value),
        "bytes round-trip exactly"
    );
    t.set(key, b"", None).await.unwrap();
    assert_eq!(
        t.get(key).await.unwrap(),
        Some(vec![]),
        "an empty value is a value"
    );
    t.delete(key).await.unwrap();
}

async fn increments(t: &Target) {
    let key = "counter";
    assert_eq!(t.increment(key, 5).await.unwrap(), 5, "missing counts as 0");
    assert_eq!(t.increment(key, -7).await.unwrap(), -2);
    assert_eq!(
        t.get(key).await.unwrap().as_deref(),
        Some(&b"-2"[..]),
        "decimal text"
    );
    t.set(key, b"41", None).await.unwrap();
    assert_eq!(
        t.increment(key, 1).await.unwrap(),
        42,
        "counts on a set value"
    );
    t.set(key, b"forty", None).await.unwrap();
    assert_eq!(t.increment(key, 1).await, Err(StorageError::NotAnInteger));
    t.set(key, b"1", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    t.increment(key, 1).await.unwrap();
    assert!(
        matches!(t.ttl(key).await.unwrap(), Ttl::ExpiresIn(_)),
        "increment keeps the expiry"
    );
    t.delete(key).await.unwrap();
}

async fn expiry(t: &Target) {
    let key = "ttl";
    t.set(key, b"soon gone", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    match t.ttl(key).await.unwrap() {
        Ttl::ExpiresIn(left) => assert!(left <= Duration::from_millis(300), "{left:?}"),
        other => panic!("expected an expiry, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(t.get(key).await.unwrap(), None, "the value expired");
    assert!(!t.exists(key).await.unwrap());
    assert_eq!(t.ttl(key).await.unwrap(), Ttl::Missing);

    assert!(
        !t.expire(key, Some(Duration::from_secs(1))).await.unwrap(),
        "missing key"
    );
    t.set(key, b"v", None).await.unwrap();
    assert_eq!(t.ttl(key).await.unwrap(), Ttl::Persistent);
    assert!(
        t.expire(key, Some(Duration::from_millis(200)))
            .await
            .unwrap()
    );
    assert!(matches!(t.ttl(key).await.unwrap(), Ttl::ExpiresIn(_)));
    assert!(
        t.expire(key, None).await.unwrap(),
        "persist an existing key"
    );
    assert_eq!(t.ttl(key).await.unwrap(), Ttl::Persistent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        t.exists(key).await.unwrap(),
        "a persisted key does not expire"
    );

    t.set(key, b"v", Some(Duration::from_millis(100)))
        .await
        .unwrap();
    t.set(key, b"w", None).await.unwrap();
    assert_eq!(
        t.ttl(key).await.unwrap(),
        Ttl::Persistent,
        "set replaces the expiry"
    );
    t.delete(key).await.unwrap();
}

async fn compare_and_swap(t: &Target) {
    let key = "cas";
    assert!(
        t.compare_and_swap(key, None, b"a", None).await.unwrap(),
        "create if absent"
    );
    assert!(
        !t.compare_and_swap(key, None, b"b", None).await.unwrap(),
        "exists now"
    );
    assert!(
        !t.compare_and_swap(key, Some(b"x"), b"b", None)
            .await
            .unwrap(),
        "wrong value"
    );
    assert_eq!(
        t.get(key).await.unwrap().as_deref(),
        Some(&b"a"[..]),
        "unchanged"
    );
    assert!(
        t.compare_and_swap(key, Some(b"a"), b"b", None)
            .await
            .unwrap()
    );
    assert_eq!(t.get(key).await.unwrap().as_deref(), Some(&b"b"[..]));
    let ttl = Some(Duration::from_millis(200));
    assert!(
        t.compare_and_swap(key, Some(b"b"), b"c", ttl)
            .await
            .unwrap()
    );
    assert!(
        matches!(t.ttl(key).await.unwrap(), Ttl::ExpiresIn(_)),
        "CAS sets the expiry"
    );
    t.delete(key).await.unwrap();
}

/// Many tasks add one at a time with read-then-CAS: no update may be lost.
async fn compare_and_swap_under_contention(t: Target) {
    const TASKS: u64 = 16;
    const EACH: u64 = 25;
    let key = "contended";
    t.set(key, b"0", None).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let t = t.clone();
        tasks.spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let current = t.get(key).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&current).unwrap().parse().unwrap();
                    let next = (n + 1).to_string();
                    if t.compare_and_swap(key, Some(&current), next.as_bytes(), None)
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
    let total = String::from_utf8(t.get(key).await.unwrap().unwrap()).unwrap();
    assert_eq!(
        total,
        (TASKS * EACH).to_string(),
        "no increment lost ({conflicts} retries)"
    );
    t.delete(key).await.unwrap();
}

async fn paging_through_thousands_of_keys(t: &Target) {
    const N: usize = 3000;
    let prefix = "page:";
    let mut expected = BTreeSet::new();
    for i in 0..N {
        let key = format!("{prefix}{i:05}");
        t.set(&key, b"x", None).await.unwrap();
        expected.insert(key);
    }
    // Neighbours that must not be listed: a sibling prefix and a glob-looking one.
    t.set("pagez", b"x", None).await.unwrap();
    t.set("pa*e:1", b"x", None).await.unwrap();

    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let (keys, next) = t.list(prefix, cursor.as_deref(), 100).await.unwrap();
        pages += 1;
        assert!(pages < 10 * N, "the listing does not end");
        // An app's listing keeps to its limit (the store's own, a `SCAN`, takes it as a hint).
        if let Target::App(_) = t {
            assert!(keys.len() <= 100, "a page of {}", keys.len());
        }
        for key in keys {
            assert!(key.starts_with(prefix), "{key} is outside the prefix");
            seen.insert(key);
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), N, "every key is listed");
    assert_eq!(seen, expected);
    assert!(pages > 5, "{N} keys at 100 a page took only {pages} pages");

    // A page may come back short (even empty) with a cursor: follow it to the end.
    let star = "pa*e:";
    let (mut keys, mut cursor) = (Vec::new(), None);
    loop {
        let (some, next) = t.list(star, cursor.as_deref(), 100).await.unwrap();
        keys.extend(some);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(
        keys,
        vec!["pa*e:1"],
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

async fn hashes(t: &Target) {
    use HashWrite::{Stored, TooLarge, TooManyFields};
    let key = "hash";
    let day = Duration::from_secs(86400);
    let limits = bytes_only(100);
    let set = async |field: &str, value: &[u8], limits| {
        t.hash_set(key, field, value, limits, day).await.unwrap()
    };
    assert_eq!(t.hash_get(key, "f").await.unwrap(), None);
    assert_eq!(set("f", b"one", limits).await, Stored);
    assert_eq!(set("g", b"two", limits).await, Stored);
    assert_eq!(
        t.hash_get(key, "f").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert!(
        matches!(t.ttl(key).await.unwrap(), Ttl::ExpiresIn(_)),
        "hash_set sets the expiry"
    );
    // Names and values count: g(1)+two(3)=4, so f may take 100-4-1 = 95 bytes of value
    // (replacing f's value counts only the new one).
    assert_eq!(set("f", &[b'x'; 95], limits).await, Stored, "at the limit");
    assert_eq!(set("f", &[b'x'; 96], limits).await, TooLarge, "over it");
    assert_eq!(set("h", b"", limits).await, TooLarge, "a new field over it");
    assert_eq!(
        t.hash_get(key, "f").await.unwrap().map(|v| v.len()),
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
    assert!(t.hash_delete(key, "f").await.unwrap());
    assert!(!t.hash_delete(key, "f").await.unwrap());
    assert_eq!(
        set("i", b"x", limits).await,
        Stored,
        "f's 2 bytes are free again"
    );
    assert_eq!(
        t.hash_get(key, "g").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    // Fields are bounded on their own: g, h and i are three.
    let three = HashLimits {
        max_bytes: 1000,
        max_fields: 3,
    };
    assert_eq!(set("j", b"", three).await, TooManyFields);
    assert_eq!(t.hash_get(key, "j").await.unwrap(), None, "not written");
    assert_eq!(
        set("g", b"2", three).await,
        Stored,
        "an existing field is no new one"
    );
    assert!(t.hash_delete(key, "i").await.unwrap());
    assert_eq!(set("j", b"", three).await, Stored);
    assert!(t.get(key).await.is_err(), "a hash is not bytes");
    for field in ["g", "h", "j"] {
        assert!(t.hash_delete(key, field).await.unwrap());
    }
    assert!(
        !t.exists(key).await.unwrap(),
        "the hash went with its last field"
    );

    let brief = "brief-hash";
    assert_eq!(
        t.hash_set(brief, "f", b"v", limits, Duration::from_millis(200))
            .await
            .unwrap(),
        Stored
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        t.hash_get(brief, "f").await.unwrap(),
        None,
        "the hash expired"
    );
}

/// Hashes in a quota: each is one key of its name plus its fields' names and values; a write
/// over the quota changes nothing; deleting, expiring and renaming keep the count exact.
async fn hashes_count_against_the_quota(t: &Target) {
    let Some(t) = t.with_quota("hq", 2, 100) else {
        return;
    };
    let key = |name: &str| format!("hq:{name}");
    let day = Duration::from_secs(86400);
    let set = async |name: &str, field: &str, value: &[u8], ttl| {
        t.hash_set(&key(name), field, value, bytes_only(1000), ttl)
            .await
    };
    assert_eq!(set("a", "f", b"1", day).await, Ok(HashWrite::Stored));
    assert_eq!(set("b", "f", b"1", day).await, Ok(HashWrite::Stored));
    assert_eq!(
        set("c", "f", b"1", day).await,
        Err(StorageError::QuotaExceeded),
        "a third key"
    );
    assert!(!t.exists(&key("c")).await.unwrap(), "nothing was written");
    // Each counts its name plus its fields' (f1, 2 bytes): a may grow by what b leaves, a
    // field g (1 byte) of one byte less.
    let room = 100 - t.size(&key("a"), 2) - t.size(&key("b"), 2);
    assert_eq!(
        set("a", "g", &vec![b'x'; room], day).await,
        Err(StorageError::QuotaExceeded),
        "over the bytes"
    );
    assert_eq!(t.hash_get(&key("a"), "g").await.unwrap(), None);
    assert_eq!(
        set("a", "g", &vec![b'x'; room - 1], day).await,
        Ok(HashWrite::Stored)
    );
    assert!(t.hash_delete(&key("a"), "g").await.unwrap());
    assert_eq!(
        set("a", "g", &vec![b'x'; room - 1], day).await,
        Ok(HashWrite::Stored),
        "given back"
    );
    // A rename moves the count: still two keys.
    let d = t.rename_target(&key("a"), &key("d"));
    assert!(t.rename(&key("a"), &d).await.unwrap());
    assert_eq!(
        set("c", "f", b"1", day).await,
        Err(StorageError::QuotaExceeded)
    );
    assert!(t.delete(&d).await.unwrap());
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
    assert!(t.hash_delete(&key("e"), "f").await.unwrap());
    assert_eq!(set("f", "f", b"1", day).await, Ok(HashWrite::Stored));
    for name in ["b", "f"] {
        t.delete(&key(name)).await.unwrap();
    }
}

/// An expiry longer than a store can hold (a deploy asked for `u64::MAX` seconds) is kept as
/// the longest it can, never a panic or a refusal.
async fn huge_expiries(t: &Target) {
    let key = "forever";
    let century = Duration::from_secs(100 * 365 * 86400);
    let long = |ttl| matches!(ttl, Ttl::ExpiresIn(left) if left > century);
    t.set(key, b"v", Some(Duration::MAX)).await.unwrap();
    assert!(long(t.ttl(key).await.unwrap()));
    assert!(t.expire(key, Some(Duration::MAX)).await.unwrap());
    assert!(long(t.ttl(key).await.unwrap()));
    assert!(
        t.compare_and_swap(key, Some(b"v"), b"w", Some(Duration::MAX))
            .await
            .unwrap()
    );
    t.delete(key).await.unwrap();
    let hash = "forever-hash";
    assert_eq!(
        t.hash_set(hash, "f", b"v", bytes_only(100), Duration::MAX)
            .await
            .unwrap(),
        HashWrite::Stored
    );
    assert!(long(t.ttl(hash).await.unwrap()));
    t.delete(hash).await.unwrap();
}

async fn rename(t: &Target) {
    let (from, to) = ("from", t.rename_target("from", "to"));
    assert!(!t.rename(from, &to).await.unwrap(), "nothing to move");
    t.set(from, b"v", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(t.rename(from, &to).await.unwrap());
    assert_eq!(t.get(from).await.unwrap(), None);
    assert_eq!(t.get(&to).await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(
        matches!(t.ttl(&to).await.unwrap(), Ttl::ExpiresIn(_)),
        "the expiry moves too"
    );
    t.delete(&to).await.unwrap();
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
