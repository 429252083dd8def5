//! Redis as the backing store: standalone (a multiplexed connection per worker thread that
//! reconnects by itself) or Redis Cluster (slot-aware routing, topology refresh on errors).
//!
//! Every call has a deadline, and connection trouble is reported as
//! [`StorageError::Unavailable`] straight away rather than queued, so a Redis that goes away
//! costs each request a quick 503 and never a hang; when it returns, the next calls succeed
//! without a restart.
//!
//! Cluster note: every call names keys of one slot (a key, its quota record, the record's
//! index: they share a hash tag, see [`super::Namespace`]), so each is one script on one
//! node. Guest listings read a quota record's name index, never `SCAN`; the `SCAN` listing is
//! left for one-off work and walks one node.

mod scripts;

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, FromRedisValue, RedisError, RedisFuture, Script, Value};

use super::{
    HashLimits, HashWrite, LONGEST_TTL, Page, Quota, QuotaStanding, Storage, StorageError,
    StorageResult, Ttl,
};
use scripts::*;

/// How long connecting may take before a call gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one call may take, end to end.
const CALL_TIMEOUT: Duration = Duration::from_millis(2000);

/// How a [`RedisStorage`] reaches Redis.
enum Connections {
    Single(Box<PerThread>),
    Cluster(ClusterConnection),
}

impl Connections {
    fn get(&self) -> StorageResult<Conn> {
        match self {
            Connections::Single(per_thread) => per_thread.get().map(Conn::Single).map_err(classify),
            Connections::Cluster(c) => Ok(Conn::Cluster(c.clone())),
        }
    }
}

/// A connection of either kind, so every command is written once.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A standalone Redis connection per thread. A worker thread runs its requests on its own
/// single-threaded runtime; a connection made there is driven there too, so a kv call does
/// not hop to another thread and back (two wake-ups across cores per call).
struct PerThread {
    /// Alive exactly as long as this storage: the thread-local cache holds it weakly, to tell
    /// this storage's connections apart from another one's and to drop them once it is gone.
    alive: Arc<()>,
    client: redis::Client,
    config: ConnectionManagerConfig,
}

thread_local! {
    static MANAGERS: std::cell::RefCell<Vec<(Weak<()>, ConnectionManager)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl PerThread {
    /// This thread's connection, made (lazily: it connects on first use, on this thread's
    /// runtime) the first time this thread asks. Connections of storages dropped since are
    /// closed here, on the thread that drives them.
    fn get(&self) -> redis::RedisResult<ConnectionManager> {
        MANAGERS.with_borrow_mut(|managers| {
            managers.retain(|(alive, _)| alive.strong_count() > 0);
            let mine = Arc::downgrade(&self.alive);
            if let Some((_, manager)) = managers.iter().find(|(alive, _)| alive.ptr_eq(&mine)) {
                return Ok(manager.clone());
            }
            let manager = self
                .client
                .get_connection_manager_lazy(self.config.clone())?;
            managers.push((mine, manager.clone()));
            Ok(manager)
        })
    }
}

/// A [`Storage`] on Redis.
pub struct RedisStorage {
    conn: Connections,
    /// A node to subscribe on: in a cluster, messages published on any node reach every
    /// node's subscribers.
    subscriber: redis::Client,
    description: String,
    scripts: Scripts,
}

/// The Lua scripts, loaded into Redis on first use (by digest: EVALSHA).
struct Scripts {
    cas: Script,
    counted: Script,
    hash_set: Script,
    hash_delete: Script,
    rename: Script,
    list: Script,
    quota_move: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            cas: Script::new(CAS_SCRIPT),
            counted: Script::new(&format!(
                "{COUNT_FUNCTIONS}{HASH_FUNCTIONS}{COUNTED_SCRIPT}"
            )),
            hash_set: Script::new(&format!("{HASH_FUNCTIONS}{HASH_SET}")),
            hash_delete: Script::new(&format!("{HASH_FUNCTIONS}{HASH_DELETE}")),
            rename: Script::new(RENAME_SCRIPT),
            list: Script::new(&format!("{COUNT_FUNCTIONS}{LIST_SCRIPT}")),
            quota_move: Script::new(&format!("{COUNT_FUNCTIONS}{QUOTA_MOVE}")),
        }
    }
}

impl RedisStorage {
    /// Connects to a standalone Redis at `url` (`redis://` or `rediss://`). The connection is
    /// made lazily and remade in the background whenever it breaks, so the host starts (and
    /// keeps serving everything else) while Redis is down.
    pub async fn standalone(url: &str) -> Result<RedisStorage> {
        let client = redis::Client::open(url)
            .with_context(|| format!("`{url}` is not a valid Redis URL"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        // Checks the configuration once, up front; each thread then makes its own.
        client
            .get_connection_manager_lazy(config.clone())
            .context("setting up the Redis connection")?;
        Ok(RedisStorage {
            subscriber: client.clone(),
            conn: Connections::Single(Box::new(PerThread {
                alive: Arc::new(()),
                client,
                config,
            })),
            description: format!("Redis at {}", redact(url)),
            scripts: Scripts::new(),
        })
    }

    /// Connects to a Redis Cluster through any of its `nodes`.
    pub async fn cluster(nodes: &[String]) -> Result<RedisStorage> {
        let client = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(CALL_TIMEOUT)
            .retries(1)
            .build()
            .context("invalid Redis Cluster node list")?;
        let conn = tokio::time::timeout(CALL_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("connecting to the Redis Cluster at {}", nodes.join(", ")))?;
        let first = nodes.first().context("no Redis Cluster node given")?;
        Ok(RedisStorage {
            subscriber: redis::Client::open(first.as_str())
                .with_context(|| format!("`{first}` is not a valid Redis URL"))?,
            conn: Connections::Cluster(conn),
            description: format!(
                "Redis Cluster via {}",
                nodes
                    .iter()
                    .map(|n| redact(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            scripts: Scripts::new(),
        })
    }

    /// Runs `op` on `key` through [`COUNTED_SCRIPT`], counted against `quota`; `args` are
    /// the operation's own arguments, `to` a rename's target.
    async fn counted<T: FromRedisValue>(
        &self,
        quota: &Quota,
        key: &str,
        op: &str,
        args: &[&[u8]],
        to: Option<&str>,
    ) -> StorageResult<T> {
        let mut invocation = self.scripts.counted.key(key);
        invocation
            .key(&quota.usage)
            .key(expiry_key(quota))
            .key(names_key(quota));
        if let Some(to) = to {
            invocation.key(to);
        }
        invocation.arg(op).arg(quota.max_keys).arg(quota.max_bytes);
        for arg in args {
            invocation.arg(*arg);
        }
        self.invoke(&invocation).await
    }

    /// Runs a prepared script invocation within [`CALL_TIMEOUT`].
    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> StorageResult<T> {
        let mut conn = self.conn.get()?;
        deadline(invocation.invoke_async(&mut conn)).await
    }

    /// Runs `cmd` within [`CALL_TIMEOUT`].
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> StorageResult<T> {
        let mut conn = self.conn.get()?;
        deadline(cmd.query_async(&mut conn)).await
    }
}

/// Bounds a call by [`CALL_TIMEOUT`] and classifies its error.
async fn deadline<T>(call: impl Future<Output = Result<T, RedisError>>) -> StorageResult<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(StorageError::Unavailable(format!(
            "Redis did not answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

fn classify(e: RedisError) -> StorageError {
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_cluster_error()
        || e.is_unrecoverable_error()
    {
        StorageError::Unavailable(e.to_string())
    } else if e.to_string().contains("TABULA_QUOTA") {
        StorageError::QuotaExceeded
    } else if e.to_string().contains("not an integer") {
        StorageError::NotAnInteger
    } else {
        StorageError::Other(e.to_string())
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The sorted set of when `quota`'s counted keys expire.
fn expiry_key(quota: &Quota) -> String {
    format!("{}:expiry", quota.usage)
}

/// The index of the names of `quota`'s counted plain keys.
fn names_key(quota: &Quota) -> String {
    format!("{}:names", quota.usage)
}

/// The most keys one `SCAN` looks at (its `COUNT`), and the most `SCAN`s one listing call
/// makes: together they bound the work a guest's `list-keys` puts on Redis. With 2M other
/// keys in Redis, an unbounded COUNT blocked it for 880 ms.
const SCAN_COUNT: usize = 1000;
const SCAN_ROUNDS: usize = 16;

/// Escapes `*`, `?`, `[`, `]` and `\` so a key prefix matches itself in a `SCAN MATCH`.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An expiry as the scripts take it: milliseconds, or empty for none.
fn ttl_arg(ttl: Option<Duration>) -> String {
    ttl.map(|t| millis(t).to_string()).unwrap_or_default()
}

fn millis(ttl: Duration) -> u64 {
    // Redis rejects 0 as an expiry; the shortest it takes is 1 ms. LONGEST_TTL fits a u64.
    (ttl.min(LONGEST_TTL).as_millis() as u64).max(1)
}

#[async_trait::async_trait]
impl Storage for RedisStorage {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn ping(&self) -> StorageResult<()> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    async fn get(&self, key: &str) -> StorageResult<Option<Vec<u8>>> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    async fn get_many(&self, keys: &[String]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.query(redis::cmd("MGET").arg(keys)).await
    }

    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<()> {
        if let Some(quota) = quota {
            let ttl = ttl_arg(ttl);
            return self
                .counted::<i64>(quota, key, "set", &[value, ttl.as_bytes()], None)
                .await
                .map(drop);
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        self.query(&cmd).await
    }

    async fn delete(&self, key: &str, quota: Option<&Quota>) -> StorageResult<bool> {
        if let Some(quota) = quota {
            return self
                .counted::<u64>(quota, key, "del", &[], None)
                .await
                .map(|n| n > 0);
        }
        self.query::<u64>(redis::cmd("DEL").arg(key))
            .await
            .map(|n| n > 0)
    }

    async fn exists(&self, key: &str) -> StorageResult<bool> {
        self.query::<u64>(redis::cmd("EXISTS").arg(key))
            .await
            .map(|n| n > 0)
    }

    async fn increment(&self, key: &str, delta: i64, quota: Option<&Quota>) -> StorageResult<i64> {
        if let Some(quota) = quota {
            let delta = delta.to_string();
            return self
                .counted(quota, key, "incr", &[delta.as_bytes()], None)
                .await;
        }
        self.query(redis::cmd("INCRBY").arg(key).arg(delta)).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<bool> {
        if let Some(quota) = quota {
            let (has, ttl) = (if expected.is_some() { "1" } else { "0" }, ttl_arg(ttl));
            let args: [&[u8]; 4] = [
                has.as_bytes(),
                expected.unwrap_or_default(),
                new,
                ttl.as_bytes(),
            ];
            return self
                .counted::<i64>(quota, key, "cas", &args, None)
                .await
                .map(|n| n == 1);
        }
        let mut invocation = self.scripts.cas.key(key);
        invocation
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(new)
            .arg(ttl_arg(ttl));
        self.invoke::<i64>(&invocation).await.map(|n| n == 1)
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> StorageResult<Page> {
        let mut scan_cursor: u64 = match cursor {
            Some(c) => c
                .parse()
                .map_err(|_| StorageError::Other(format!("`{c}` is not a listing cursor")))?,
            None => 0,
        };
        let pattern = format!("{}*", glob_escape(prefix));
        let limit = limit.max(1) as usize;
        let mut keys: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // SCAN's COUNT is a hint and pages can come back empty: go on until the page is full,
        // the scan is complete, or this call has made its share of round trips. Each SCAN
        // looks at no more than SCAN_COUNT keys, so Redis (shared by every app) is never
        // held long by one call; a page cut short still carries its cursor.
        for _ in 0..SCAN_ROUNDS {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(scan_cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(limit.clamp(100, SCAN_COUNT));
            let (next, batch): (u64, Vec<String>) = match &self.conn {
                Connections::Single(_) => self.query(&cmd).await?,
                // SCAN names no key, so it goes to the node owning the namespace's slot.
                Connections::Cluster(c) => {
                    let route = Route::with_slot(Slot::for_key(prefix), SlotAddr::Master);
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    let value = deadline(c.clone().route_command(cmd, routing)).await?;
                    <(u64, Vec<String>)>::from_redis_value(value)
                        .map_err(|e| StorageError::Other(e.to_string()))?
                }
            };
            // SCAN may return a key twice; a set keeps this linear.
            for key in batch {
                if seen.insert(key.clone()) {
                    keys.push(key);
                }
            }
            scan_cursor = next;
            if scan_cursor == 0 || keys.len() >= limit {
                break;
            }
        }
        Ok(Page {
            keys,
            cursor: (scan_cursor != 0).then(|| scan_cursor.to_string()),
        })
    }

    async fn list_counted(
        &self,
        quota: &Quota,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Page> {
        // Names sort by bytes: everything starting with `prefix` lies between `prefix` and
        // `prefix` + 0xff, a byte no UTF-8 name holds. A cursor from elsewhere (a guest can
        // pass anything) is clamped to that range.
        let min = match after {
            Some(after) if after >= prefix => [&b"("[..], after.as_bytes()].concat(),
            _ => [&b"["[..], prefix.as_bytes()].concat(),
        };
        let max = [&b"["[..], prefix.as_bytes(), &b"\xff"[..]].concat();
        let mut invocation = self.scripts.list.key(names_key(quota));
        invocation
            .key(&quota.usage)
            .key(expiry_key(quota))
            .arg(min)
            .arg(max)
            .arg(limit.max(1));
        let (keys, last): (Vec<String>, String) = self.invoke(&invocation).await?;
        Ok(Page {
            keys,
            cursor: (!last.is_empty()).then_some(last),
        })
    }

    async fn quota_move(
        &self,
        quota: &Quota,
        keys: i64,
        bytes: i64,
    ) -> StorageResult<QuotaStanding> {
        let mut invocation = self.scripts.quota_move.key(&quota.usage);
        invocation
            .key(expiry_key(quota))
            .key(names_key(quota))
            .arg(quota.max_keys)
            .arg(quota.max_bytes)
            .arg(keys)
            .arg(bytes);
        let answer: Vec<i64> = self.invoke(&invocation).await?;
        let [keys, bytes, max_keys, max_bytes, moved_keys, moved_bytes] = answer[..] else {
            return Err(StorageError::Other(format!(
                "a quota record answered {answer:?}"
            )));
        };
        Ok(QuotaStanding {
            keys: keys.max(0) as u64,
            bytes: bytes.max(0) as u64,
            max_keys: max_keys.max(0) as u64,
            max_bytes: max_bytes.max(0) as u64,
            moved_keys,
            moved_bytes,
        })
    }

    async fn expire(
        &self,
        key: &str,
        ttl: Option<Duration>,
        quota: Option<&Quota>,
    ) -> StorageResult<bool> {
        if let Some(quota) = quota {
            let ttl = ttl_arg(ttl);
            return self
                .counted::<u64>(quota, key, "expire", &[ttl.as_bytes()], None)
                .await
                .map(|n| n == 1);
        }
        match ttl {
            Some(ttl) => self
                .query::<u64>(redis::cmd("PEXPIRE").arg(key).arg(millis(ttl)))
                .await
                .map(|n| n == 1),
            // PERSIST answers 0 both for a missing key and for one without expiry.
            None => {
                self.query::<u64>(redis::cmd("PERSIST").arg(key)).await?;
                self.exists(key).await
            }
        }
    }

    async fn ttl(&self, key: &str) -> StorageResult<Ttl> {
        let ms: i64 = self.query(redis::cmd("PTTL").arg(key)).await?;
        Ok(match ms {
            -2 => Ttl::Missing,
            -1 => Ttl::Persistent,
            ms => Ttl::ExpiresIn(Duration::from_millis(ms.max(0) as u64)),
        })
    }

    async fn hash_get(&self, key: &str, field: &str) -> StorageResult<Option<Vec<u8>>> {
        self.query(redis::cmd("HGET").arg(key).arg(field)).await
    }

    async fn hash_get_all(&self, key: &str) -> StorageResult<Vec<(String, Vec<u8>)>> {
        let all: Vec<(String, Vec<u8>)> = self.query(redis::cmd("HGETALL").arg(key)).await?;
        Ok(all.into_iter().filter(|(f, _)| f != "#bytes").collect())
    }

    async fn hash_set(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        limits: HashLimits,
        ttl: Duration,
        quota: Option<&Quota>,
    ) -> StorageResult<HashWrite> {
        let (max_bytes, max_fields, ttl) = (
            limits.max_bytes.to_string(),
            limits.max_fields.to_string(),
            millis(ttl).to_string(),
        );
        let args: [&[u8]; 5] = [
            field.as_bytes(),
            value,
            max_bytes.as_bytes(),
            max_fields.as_bytes(),
            ttl.as_bytes(),
        ];
        let answer: i64 = match quota {
            Some(quota) => self.counted(quota, key, "hset", &args, None).await?,
            None => {
                let mut invocation = self.scripts.hash_set.key(key);
                for arg in args {
                    invocation.arg(arg);
                }
                self.invoke(&invocation).await?
            }
        };
        Ok(match answer {
            -1 => HashWrite::TooLarge,
            -2 => HashWrite::TooManyFields,
            _ => HashWrite::Stored,
        })
    }

    async fn hash_delete(
        &self,
        key: &str,
        field: &str,
        quota: Option<&Quota>,
    ) -> StorageResult<bool> {
        let removed: i64 = match quota {
            Some(quota) => {
                self.counted(quota, key, "hdel", &[field.as_bytes()], None)
                    .await?
            }
            None => {
                let mut invocation = self.scripts.hash_delete.key(key);
                invocation.arg(field);
                self.invoke(&invocation).await?
            }
        };
        Ok(removed == 1)
    }

    async fn rename(&self, from: &str, to: &str, quota: Option<&Quota>) -> StorageResult<bool> {
        let moved: i64 = match quota {
            Some(quota) => self.counted(quota, from, "rename", &[], Some(to)).await?,
            None => {
                let mut invocation = self.scripts.rename.key(from);
                invocation.key(to);
                self.invoke(&invocation).await?
            }
        };
        Ok(moved == 1)
    }

    async fn publish(&self, channel: &str, message: &str) -> StorageResult<()> {
        self.query::<i64>(redis::cmd("PUBLISH").arg(channel).arg(message))
            .await
            .map(drop)
    }

    fn subscribe(&self, channel: &str) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (client, channel) = (self.subscriber.clone(), channel.to_string());
        tokio::spawn(async move {
            // Remade whenever it breaks (Redis restarted, the connection was killed), until
            // the receiver is dropped.
            while !tx.is_closed() {
                if let Err(e) = forward(&client, &channel, &tx).await {
                    tracing::debug!(error = %e, channel, "subscription broken; remaking it");
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }
}

/// Forwards `channel`'s messages to `tx` until the subscription or the receiver goes.
async fn forward(
    client: &redis::Client,
    channel: &str,
    tx: &tokio::sync::mpsc::Sender<String>,
) -> redis::RedisResult<()> {
    use futures_util::StreamExt;
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| RedisError::from((redis::ErrorKind::Io, "timed out subscribing")))??;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.on_message();
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => {
                    let Ok(text) = message.get_payload::<String>() else { continue };
                    if tx.send(text).await.is_err() {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            },
            () = tx.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MANAGERS, RedisStorage, glob_escape, redact};

    #[tokio::test]
    async fn a_dropped_storage_leaves_no_connection_behind() {
        let cached = || MANAGERS.with_borrow(|managers| managers.len());
        // Connections are made lazily: nothing needs to listen on this port.
        let first = RedisStorage::standalone("redis://127.0.0.1:1")
            .await
            .unwrap();
        first.conn.get().unwrap();
        first.conn.get().unwrap();
        assert_eq!(cached(), 1, "one connection per storage and thread");
        let second = RedisStorage::standalone("redis://127.0.0.1:1")
            .await
            .unwrap();
        second.conn.get().unwrap();
        assert_eq!(cached(), 2);
        drop(first);
        second.conn.get().unwrap();
        assert_eq!(cached(), 1, "the dropped storage's connection is closed");
    }

    #[test]
    fn prefixes_match_literally() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
