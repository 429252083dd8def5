//! [`Namespace`]: one app's slice of the store, shared by every capability that keeps state
//! for the app (kv, sessions), and how that slice is laid out over a Redis Cluster.
//!
//! Isolation starts here: every key an app's requests touch is placed by the namespace,
//! under a prefix `tabula:{APP:N}:`. App names cannot contain `{`, `}` or `:`, so no key
//! string of one app can land in another's space. The braces are a Redis Cluster hash tag:
//! the keys under one prefix share a slot, so the operations that must be atomic together (a
//! write and its quota record, a listing and its index) run in one slot, on one node.
//!
//! ## Shards
//! An app's keys are spread over [`Layout::shards`] prefixes, its *shards*: a key's shard is
//! a fixed hash of its name (a session's, of its id), so every operation on one key (get,
//! set, compare-and-swap, increment, a session's fields) still runs in one slot, while one
//! app's keys land on every master. The tag of shard `s` is the first `APP:N` whose slot lies
//! in the `s`-th sixteenth of the 16,384 slots: masters own contiguous slot ranges, so on a
//! balanced cluster of up to 16 masters every master holds a shard of every app (a plain
//! `APP:s` leaves a master without any of an app's 16 shards for one app in 200 on 3
//! masters, and spreads the rest unevenly). The tags are a pure function of the app's name:
//! every replica places every key alike. [`Layout::SingleSlot`] is one shard: every key of
//! the app in one slot, for apps that want all their keys on one node.
//!
//! ## The quota across shards
//! Each shard keeps its own exact count (keys, and bytes: each key's name plus its value) in
//! a record in its own slot, updated by the same script as the write, so a counted write
//! costs what it cost with one slot: one script, one round trip. The app's usage is the sum
//! of its shards' records. The limit is kept exact by splitting it: shard `s` starts with
//! its share of the app's quota (the shares add up to the quota) and its record holds how much
//! room it has taken from or given to other shards since. A write that would go over its
//! shard's room reads every shard's standing and moves spare room to its shard, then tries
//! again ([`Namespace::make_room`]): so a write is refused only when the app as a whole is
//! at its quota, and the app's keys never exceed it. Room moves in two steps (taken from the
//! donor, then given): a replica that dies between them loses that room until the app's
//! records are reset, which errs on the side of refusing, never of going over.
//!
//! ## Keys from before the shards
//! Hosts before the shards kept every key of an app under `tabula:{APP}:` (one slot).
//! [`Namespace::migrate_legacy`] (`tabula store migrate APP`) moves them into the app's layout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use super::{
    HashLimits, HashWrite, Page, Quota, QuotaStanding, Storage, StorageError, StorageResult, Ttl,
};
use crate::metrics::StoreOperations;

/// How an app's keys are laid out over a Redis Cluster: `[kv] layout` in `tabula.toml`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Spread over 16 shards, so one app's keys (and load) land on every master.
    #[default]
    Spread,
    /// Every key in one slot, so on one node: listings and quota checks touch one record,
    /// at the price of one node's capacity for the app.
    SingleSlot,
}

impl Layout {
    /// How many shards the layout spreads an app over. Changing it moves every key: it is
    /// part of the data format.
    pub fn shards(self) -> usize {
        match self {
            Layout::Spread => 16,
            Layout::SingleSlot => 1,
        }
    }

    /// The store key of `suffix` (`kv:KEY`, `s:ID`) of app `app` in this layout: where
    /// operators (and tests) find a key when they look into the store.
    pub fn key(self, app: &str, suffix: &str) -> String {
        let shards = shard_prefixes(app, self.shards());
        format!("{}{suffix}", shards[shard_of(suffix, shards.len())])
    }

    /// Whether this is the default layout (manifests need not say it).
    pub fn is_default(&self) -> bool {
        *self == Layout::default()
    }
}

/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;

/// The slot Redis Cluster gives hash tag `tag` (CRC16/XMODEM modulo 16,384).
fn slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in tag {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// Which of `shards` a key suffix (`kv:NAME`, `s:ID`) belongs to: FNV-1a, fixed forever,
/// because it places data.
fn shard_of(suffix: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in suffix.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// The key prefix of each of `app`'s `shards` shards: shard `s`'s tag is the first `APP:N`
/// whose slot lies in the `s`-th of `shards` equal ranges of slots.
fn shard_prefixes(app: &str, shards: usize) -> Vec<String> {
    let width = u32::from(SLOTS).div_ceil(shards as u32);
    (0..shards as u32)
        .map(|s| {
            let n = (0u64..)
                .find(|n| u32::from(slot(format!("{app}:{n}").as_bytes())) / width == s)
                .expect("every range of slots is hit by some tag");
            format!("tabula:{{{app}:{n}}}:")
        })
        .collect()
}

/// Quotas above this are no limit: the stores' scripts count in doubles.
const UNLIMITED: u64 = 1 << 53;

struct Shard {
    prefix: String,
    quota: Quota,
}

/// One app's view of the store. Built once per app, shared by its requests.
pub struct Namespace {
    storage: Arc<dyn Storage>,
    operations: StoreOperations,
    app: String,
    shards: Vec<Shard>,
}

impl Namespace {
    /// The namespace of app `app`, whose name has been checked to be made of
    /// `[A-Za-z0-9_-]`, laid out as `layout`, with a quota of `max_keys` keys and `max_bytes`
    /// bytes (0 for either is no limit on it; the keys are counted either way, which is what
    /// keeps the listing index).
    pub fn new(
        storage: Arc<dyn Storage>,
        app: &str,
        layout: Layout,
        max_keys: u64,
        max_bytes: u64,
    ) -> Namespace {
        debug_assert!(!app.contains(['{', '}', ':']));
        let shards = layout.shards();
        let share = |max: u64, s: usize| -> u64 {
            let max = if max == 0 {
                UNLIMITED
            } else {
                max.min(UNLIMITED)
            };
            max / shards as u64 + u64::from((s as u64) < max % shards as u64)
        };
        let shards = shard_prefixes(app, shards)
            .into_iter()
            .enumerate()
            .map(|(s, prefix)| Shard {
                quota: Quota {
                    usage: format!("{prefix}q"),
                    max_keys: share(max_keys, s),
                    max_bytes: share(max_bytes, s),
                },
                prefix,
            })
            .collect();
        Namespace {
            storage,
            operations: StoreOperations::new(app),
            app: app.to_string(),
            shards,
        }
    }

    /// The store itself, for uncounted calls on keys from [`Namespace::key`].
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Counts one guest call of `api` (`kv` or `session`) by its outcome: `ok`,
    /// `unavailable` (the store did not answer) or `error` (anything the guest got wrong).
    pub fn record<T, E: StoreOutcome>(&self, api: &'static str, result: &Result<T, E>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) if matches!(e.storage_error(), Some(StorageError::Unavailable(_))) => {
                "unavailable"
            }
            Err(_) => "error",
        };
        self.operations.record(api, outcome);
    }

    fn shard(&self, suffix: &str) -> &Shard {
        &self.shards[shard_of(suffix, self.shards.len())]
    }

    /// The full store key for `suffix` inside this namespace.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.shard(suffix).prefix)
    }

    /// Whether `a` and `b` live in one shard (one slot), as a [`Namespace::rename`] needs.
    pub fn same_shard(&self, a: &str, b: &str) -> bool {
        let shards = self.shards.len();
        shard_of(a, shards) == shard_of(b, shards)
    }

    /// The keys of every shard, their prefix and quota record: what a test or the
    /// migration looks at.
    pub fn shard_prefixes(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| s.prefix.as_str())
    }

    /// The app's usage: keys and bytes, summed over its shards' records.
    pub async fn usage(&self) -> StorageResult<(u64, u64)> {
        let standings = self.standings().await?;
        Ok(standings
            .iter()
            .fold((0, 0), |(k, b), s| (k + s.keys, b + s.bytes)))
    }

    async fn standings(&self) -> StorageResult<Vec<QuotaStanding>> {
        join_all(
            self.shards
                .iter()
                .map(|s| self.storage.quota_move(&s.quota, 0, 0)),
        )
        .await
        .into_iter()
        .collect()
    }

    /// Runs the counted write `op` on `suffix`'s shard; refused for its shard's room, it
    /// moves spare room from the other shards and tries again, until it passes or the app as
    /// a whole has no room left.
    async fn counted<'a, T, F>(
        &'a self,
        suffix: &str,
        op: impl Fn(String, &'a Quota) -> F,
    ) -> StorageResult<T>
    where
        F: Future<Output = StorageResult<T>>,
    {
        let shard = self.shard(suffix);
        let key = format!("{}{suffix}", shard.prefix);
        // Half of every other shard's spare room first, so one busy shard does not empty the
        // others; then all of it.
        let mut takes = [false, true].into_iter();
        loop {
            match op(key.clone(), &shard.quota).await {
                Err(StorageError::QuotaExceeded) if self.shards.len() > 1 => {}
                done => return done,
            }
            let Some(take_all) = takes.next() else {
                return Err(StorageError::QuotaExceeded);
            };
            if !self.make_room(shard, take_all).await? {
                return Err(StorageError::QuotaExceeded);
            }
        }
    }

    /// Moves spare room from every other shard to `to`: half of each one's, or all of it.
    /// Whether any moved.
    async fn make_room(&self, to: &Shard, take_all: bool) -> StorageResult<bool> {
        let standings = self.standings().await?;
        let takes = self
            .shards
            .iter()
            .zip(&standings)
            .filter(|(s, _)| !std::ptr::eq(*s, to))
            .filter_map(|(s, st)| {
                let spare = |limit: u64, used: u64| {
                    let spare = limit.saturating_sub(used);
                    if take_all { spare } else { spare.div_ceil(2) }
                };
                let (keys, bytes) = (spare(st.max_keys, st.keys), spare(st.max_bytes, st.bytes));
                (keys > 0 || bytes > 0).then_some((s, keys, bytes))
            });
        let taken = join_all(takes.map(|(s, keys, bytes)| {
            self.storage
                .quota_move(&s.quota, -(keys as i64), -(bytes as i64))
        }))
        .await;
        let (mut keys, mut bytes) = (0i64, 0i64);
        let mut failed = None;
        for t in taken {
            match t {
                Ok(t) => {
                    keys -= t.moved_keys;
                    bytes -= t.moved_bytes;
                }
                Err(e) => failed = Some(e),
            }
        }
        if keys > 0 || bytes > 0 {
            self.storage.quota_move(&to.quota, keys, bytes).await?;
        }
        match failed {
            Some(e) if keys == 0 && bytes == 0 => Err(e),
            _ => Ok(keys > 0 || bytes > 0),
        }
    }

    /// The value at `suffix`.
    pub async fn get(&self, suffix: &str) -> StorageResult<Option<Vec<u8>>> {
        self.storage.get(&self.key(suffix)).await
    }

    /// The values at `suffixes`, in order: one call per shard the keys fall in (one `MGET`
    /// per slot on Redis), the shards at once, however the keys are spread.
    pub async fn get_many(&self, suffixes: &[String]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        let mut groups: Vec<(Vec<usize>, Vec<String>)> =
            vec![Default::default(); self.shards.len()];
        for (i, suffix) in suffixes.iter().enumerate() {
            let shard = shard_of(suffix, self.shards.len());
            groups[shard].0.push(i);
            groups[shard]
                .1
                .push(format!("{}{suffix}", self.shards[shard].prefix));
        }
        groups.retain(|(_, keys)| !keys.is_empty());
        let answers = join_all(groups.iter().map(|(_, keys)| self.storage.get_many(keys))).await;
        let mut values = vec![None; suffixes.len()];
        for ((places, _), answer) in groups.iter().zip(answers) {
            for (&i, value) in places.iter().zip(answer?) {
                values[i] = value;
            }
        }
        Ok(values)
    }

    /// Whether `suffix` is there.
    pub async fn exists(&self, suffix: &str) -> StorageResult<bool> {
        self.storage.exists(&self.key(suffix)).await
    }

    /// `suffix`'s expiry.
    pub async fn ttl(&self, suffix: &str) -> StorageResult<Ttl> {
        self.storage.ttl(&self.key(suffix)).await
    }

    /// [`Storage::set`], counted.
    pub async fn set(
        &self,
        suffix: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StorageResult<()> {
        self.counted(suffix, |key, q| async move {
            self.storage.set(&key, value, ttl, Some(q)).await
        })
        .await
    }

    /// [`Storage::delete`], counted.
    pub async fn delete(&self, suffix: &str) -> StorageResult<bool> {
        let shard = self.shard(suffix);
        self.storage
            .delete(&format!("{}{suffix}", shard.prefix), Some(&shard.quota))
            .await
    }

    /// [`Storage::increment`], counted.
    pub async fn increment(&self, suffix: &str, delta: i64) -> StorageResult<i64> {
        self.counted(suffix, |key, q| async move {
            self.storage.increment(&key, delta, Some(q)).await
        })
        .await
    }

    /// [`Storage::compare_and_swap`], counted.
    pub async fn compare_and_swap(
        &self,
        suffix: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<Duration>,
    ) -> StorageResult<bool> {
        self.counted(suffix, |key, q| async move {
            self.storage
                .compare_and_swap(&key, expected, new, ttl, Some(q))
                .await
        })
        .await
    }

    /// [`Storage::expire`], counted.
    pub async fn expire(&self, suffix: &str, ttl: Option<Duration>) -> StorageResult<bool> {
        let shard = self.shard(suffix);
        self.storage
            .expire(
                &format!("{}{suffix}", shard.prefix),
                ttl,
                Some(&shard.quota),
            )
            .await
    }

    /// One field of the hash at `suffix`.
    pub async fn hash_get(&self, suffix: &str, field: &str) -> StorageResult<Option<Vec<u8>>> {
        self.storage.hash_get(&self.key(suffix), field).await
    }

    /// [`Storage::hash_set`], counted.
    pub async fn hash_set(
        &self,
        suffix: &str,
        field: &str,
        value: &[u8],
        limits: HashLimits,
        ttl: Duration,
    ) -> StorageResult<HashWrite> {
        self.counted(suffix, |key, q| async move {
            self.storage
                .hash_set(&key, field, value, limits, ttl, Some(q))
                .await
        })
        .await
    }

    /// [`Storage::hash_delete`], counted.
    pub async fn hash_delete(&self, suffix: &str, field: &str) -> StorageResult<bool> {
        let shard = self.shard(suffix);
        self.storage
            .hash_delete(
                &format!("{}{suffix}", shard.prefix),
                field,
                Some(&shard.quota),
            )
            .await
    }

    /// [`Storage::rename`], counted: `from` and `to` must share a shard
    /// ([`Namespace::same_shard`]), so the move is one atomic step in one slot.
    pub async fn rename(&self, from: &str, to: &str) -> StorageResult<bool> {
        if !self.same_shard(from, to) {
            return Err(StorageError::Other(format!(
                "`{from}` and `{to}` are in different shards: a rename stays in one"
            )));
        }
        let shard = self.shard(from);
        self.storage
            .rename(
                &format!("{}{from}", shard.prefix),
                &format!("{}{to}", shard.prefix),
                Some(&shard.quota),
            )
            .await
    }

    /// Keys written through this namespace that start with `prefix` and sort after `after`,
    /// in key order, without the shard prefix; at most `limit`, and a cursor (the last key
    /// the page covers) when more may follow. Each shard is read from its own index (one
    /// call per shard, all at once): a listing never walks other apps' keys. A key name is a
    /// cursor that holds across masters and topology changes.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<(Vec<String>, Option<String>)> {
        let limit = limit.max(1);
        let shards = self.shards.len() as u32;
        // Each shard is asked for about twice its part of a page: a page ends where the
        // first shard that had more stopped, so asking for less makes short pages and asking
        // for all of `limit` from each makes 16 times the work.
        let each = (limit * 2).div_ceil(shards).clamp(1, limit);
        let pages = join_all(self.shards.iter().map(|s| {
            let (full_prefix, after) = (
                format!("{}{prefix}", s.prefix),
                after.map(|a| format!("{}{a}", s.prefix)),
            );
            async move {
                self.storage
                    .list_counted(&s.quota, &full_prefix, after.as_deref(), each)
                    .await
                    .map(|page| (s.prefix.len(), page))
            }
        }))
        .await;
        let mut keys = Vec::new();
        let mut bound: Option<String> = None;
        for page in pages {
            let (strip, Page { keys: some, cursor }) = page?;
            keys.extend(some.into_iter().map(|k| k[strip..].to_string()));
            if let Some(cursor) = cursor {
                let cursor = cursor[strip..].to_string();
                if bound.as_ref().is_none_or(|b| cursor < *b) {
                    bound = Some(cursor);
                }
            }
        }
        // Past `bound` some shard may hold keys not read yet: the page ends there.
        if let Some(bound) = &bound {
            keys.retain(|k| k <= bound);
        }
        keys.sort_unstable();
        if keys.len() > limit as usize {
            keys.truncate(limit as usize);
            return Ok((keys.clone(), keys.last().cloned()));
        }
        Ok((keys, bound))
    }

    /// Moves the kv keys and sessions a host before the shards wrote under `tabula:{APP}:`
    /// into this namespace, counted; a key already written here is kept and the old one dropped. Old
    /// keys expire as before (their expiry moves with them). Answers how many keys moved.
    /// Safe to run while the app serves and to run again: each key moves on its own.
    pub async fn migrate_legacy(&self) -> anyhow::Result<u64> {
        use anyhow::Context;
        let old = format!("tabula:{{{}}}:", self.app);
        let keys = super::list_all(&*self.storage, &old).await?;
        let mut moved = 0;
        for key in keys {
            let suffix = &key[old.len()..];
            let ttl = match self.storage.ttl(&key).await? {
                Ttl::Missing => continue,
                Ttl::Persistent => None,
                Ttl::ExpiresIn(left) => Some(left),
            };
            // Only an app's data: kv keys (`kv:`, buckets `b:`) and sessions (`s:`). The old
            // quota record and its index are not moved (the new records count the moved
            // keys), and nothing else under the tag is the app's: `tabula:{registry}:` is
            // the registry's own, whatever an app named `registry` once wrote there.
            if !["kv:", "b:", "s:"].iter().any(|p| suffix.starts_with(p)) {
                continue;
            }
            if suffix.starts_with("s:") {
                let fields = self.storage.hash_get_all(&key).await?;
                let limits = HashLimits {
                    max_bytes: u64::MAX,
                    max_fields: u32::MAX,
                };
                // A session without expiry never happens; a day keeps it from living forever.
                let ttl = ttl.unwrap_or(Duration::from_secs(86400));
                if !self.exists(suffix).await? {
                    for (field, value) in &fields {
                        self.hash_set(suffix, field, value, limits, ttl)
                            .await
                            .with_context(|| format!("moving session {key}"))?;
                    }
                }
            } else {
                let Some(value) = self.storage.get(&key).await? else {
                    continue;
                };
                self.compare_and_swap(suffix, None, &value, ttl)
                    .await
                    .with_context(|| format!("moving {key}"))?;
            }
            self.storage.delete(&key, None).await?;
            moved += 1;
        }
        for record in ["q", "q:expiry"] {
            self.storage.delete(&format!("{old}{record}"), None).await?;
        }
        Ok(moved)
    }

    /// Whether keys of the layout before the shards are left (its quota record is there
    /// whenever the app wrote with a quota, which is the default).
    pub async fn has_legacy_keys(&self) -> StorageResult<bool> {
        self.storage
            .exists(&format!("tabula:{{{}}}:q", self.app))
            .await
    }
}

/// A capability's error, as the metrics see it: whether the store caused it.
pub trait StoreOutcome {
    /// The store's error behind this one, if the store caused it.
    fn storage_error(&self) -> Option<&StorageError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // The example of the Redis Cluster specification.
        assert_eq!(slot(b"123456789"), 0x31C3);
        for tag in ["a", "cart:0", "counter:15", "x y"] {
            let ours = redis::cluster_routing::Slot::new(slot(tag.as_bytes()));
            let theirs = redis::cluster_routing::Slot::for_key(format!("p{{{tag}}}s"));
            assert_eq!(ours, Some(theirs), "{tag}");
        }
    }

    #[test]
    fn every_shard_owns_its_sixteenth_of_the_slots() {
        for app in ["cart", "counter", "a", "some-long_app-name-0123456789"] {
            let prefixes = shard_prefixes(app, 16);
            for (s, prefix) in prefixes.iter().enumerate() {
                let tag = &prefix[prefix.find('{').unwrap() + 1..prefix.find('}').unwrap()];
                assert_eq!(slot(tag.as_bytes()) as usize / 1024, s, "{prefix}");
            }
        }
        assert_eq!(shard_prefixes("cart", 1).len(), 1);
    }

    #[test]
    fn shares_add_up_to_the_quota() {
        let storage = Arc::new(super::super::memory::MemoryStorage::new());
        let ns = Namespace::new(storage, "a", Layout::Spread, 20, 1000);
        let keys: u64 = ns.shards.iter().map(|s| s.quota.max_keys).sum();
        let bytes: u64 = ns.shards.iter().map(|s| s.quota.max_bytes).sum();
        assert_eq!((keys, bytes), (20, 1000));
    }

    /// `tabula store migrate registry` once moved the registry's own records (they share
    /// the old tag `{registry}`) into an app's namespace and deleted them.
    #[tokio::test]
    async fn migrating_moves_only_an_apps_data() {
        let storage = crate::storage::open("memory").await.unwrap();
        for key in ["tabula:{registry}:gen", "tabula:{registry}:kv:left"] {
            storage.set(key, b"1", None, None).await.unwrap();
        }
        let ns = Namespace::new(storage.clone(), "registry", Layout::Spread, 0, 0);
        assert_eq!(ns.migrate_legacy().await.unwrap(), 1);
        assert_eq!(ns.get("kv:left").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(storage.exists("tabula:{registry}:gen").await.unwrap());
        assert!(!storage.exists("tabula:{registry}:kv:left").await.unwrap());
    }
}
