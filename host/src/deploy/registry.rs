//! The registry: deployed components and their versions, kept in the store every replica
//! shares, so deploying needs no other infrastructure.
//!
//! ```text
//! tabula:blob:{SHA256}:meta               {size, chunks}: written last, so a blob with meta is whole
//! tabula:blob:{SHA256}:N                  the bytes, in chunks; written only if absent
//! tabula:{registry}:apps                  the directory: every app's name and the route it
//!                                         holds, changed only by compare-and-swap
//! tabula:{registry}:app:NAME              the app's record: its active version and generation,
//!                                         changed only by compare-and-swap
//! tabula:{registry}:version:NAME:N        version N of the app: digest, size, time, message, ...
//! tabula:{registry}:seq:NAME              the app's last version number
//! tabula:{registry}:gen                   bumped by every change: what replicas poll
//! tabula:{registry}:blobs                 the blobs the registry may delete, each with its
//!                                         pins (uploads in progress) or its doom (being deleted)
//! tabula:artifact:{SHA256}...             a component's compiled artifacts (`artifacts.rs`),
//!                                         deleted with its blob
//! tabula:{registry}:replica-ids           the ids of the replicas that have joined: a hash,
//!                                         a field each, set by every fifth heartbeat
//! tabula:{registry}:replicas              the same as one JSON list, by hosts before the hash
//! tabula:{registry}:replica:ID            a replica's heartbeat (expires unless renewed)
//! tabula:{registry}:ui:SHA256             a dashboard login, by its cookie's hash (expires)
//! channel tabula:deploy                   "something changed": replicas also poll `gen`
//! ```
//!
//! Nothing here lists keys by pattern: the store is shared with every app's data, and a
//! `SCAN` walks all of it (with 2M tenant keys a deploy took 14.8 s instead of 0.32 s, and
//! slowed every app meanwhile). Apps are found through the directory, versions by number up
//! to `seq`, replicas through their list; each read is a handful of keys whatever else the
//! store holds. The directory also makes a route the property of one app: two deploys that
//! want one route race on one compare-and-swap, and the loser is told at once.
//!
//! Records share the `{registry}` hash tag, so on a Redis Cluster they live in one slot;
//! each blob has its own tag, so blobs spread over the nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AppSettings;
use crate::storage::{HashLimits, HashWrite, Storage};

/// Bytes per blob chunk: well under Redis's value limit and its latency comfort.
const CHUNK: usize = 512 << 10;

/// The channel replicas listen on.
pub const CHANNEL: &str = "tabula:deploy";

/// How long a heartbeat keeps a replica listed.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(5);

/// One uploaded version of an app. Never changed once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, ... per app.
    pub number: u64,
    /// The component's sha-256, hex.
    pub digest: String,
    /// The component's size in bytes.
    pub size: u64,
    /// When it was uploaded, in seconds since the Unix epoch.
    pub created: u64,
    /// What the uploader said about it.
    pub message: String,
    /// Where it came from (a project directory, a file name).
    pub source: String,
    /// The route it serves.
    pub route: String,
    /// What it asks for (limits, sessions), as a manifest would.
    pub settings: AppSettings,
    /// The digest of its assets bundle, mounted read-only at `/app`, if it has assets.
    #[serde(default)]
    pub assets: Option<String>,
}

impl Version {
    /// How users name it: `v3`.
    pub fn id(&self) -> String {
        format!("v{}", self.number)
    }

    /// Version `number` of an app at `/a`, with digest `d{number}`: what unit tests start from.
    #[cfg(test)]
    pub(crate) fn sample(number: u64) -> Version {
        Version {
            number,
            digest: format!("d{number}"),
            size: 1,
            created: 0,
            message: String::new(),
            source: String::new(),
            route: "/a".into(),
            settings: Default::default(),
            assets: None,
        }
    }
}

/// An app's record: which version is active. Changed only by compare-and-swap, each change
/// with a higher generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The app's name.
    pub name: String,
    /// Bumped by every change of this record.
    pub generation: u64,
    /// What every replica serves; `None` once the app is removed.
    pub active: Option<Version>,
    /// The version being rolled out: replicas get it ready before `active` points at it.
    pub pending: Option<Version>,
    /// A gradual rollout: a version that gets a share of the requests beside `active`.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// How the last canary ended, and why: what `tabula versions` and the dashboard show.
    #[serde(default)]
    pub last_canary: Option<CanaryEnd>,
    /// Canaries that ended without becoming active (the newest [`MAX_ROLLED_BACK`]): never
    /// a rollback's target, since they never served everyone.
    #[serde(default)]
    pub rolled_back: Vec<u64>,
}

/// Rolled-back canaries an app record remembers.
const MAX_ROLLED_BACK: usize = 64;

impl AppRecord {
    /// A record of app `name` with nothing in it yet.
    pub fn empty(name: &str) -> AppRecord {
        AppRecord {
            name: name.to_string(),
            generation: 0,
            active: None,
            pending: None,
            canary: None,
            last_canary: None,
            rolled_back: Vec::new(),
        }
    }

    /// The version a rollback from the active one returns to: the newest of `versions` older
    /// than it that was not a canary rolled back.
    pub fn rollback_target<'a>(&self, versions: &'a [Version]) -> Option<&'a Version> {
        let active = self.active.as_ref().map_or(u64::MAX, |v| v.number);
        versions
            .iter()
            .rev()
            .find(|v| v.number < active && !self.rolled_back.contains(&v.number))
    }

    /// Ends the canary, if there is one, recording why (`promoted` when its version became
    /// the active one).
    pub fn end_canary(&mut self, promoted: bool, reason: String) {
        if let Some(canary) = self.canary.take() {
            if !promoted {
                self.rolled_back.push(canary.version.number);
                let excess = self.rolled_back.len().saturating_sub(MAX_ROLLED_BACK);
                self.rolled_back.drain(..excess);
            }
            self.last_canary = Some(CanaryEnd {
                version: canary.version.number,
                percent: canary.percent,
                promoted,
                reason,
                at: now(),
            });
        }
    }
}

/// How a gradual rollout goes: its steps and the checks each must pass. Chosen by the
/// deployer, kept with the canary, so whichever replica judges it applies the same checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryPlan {
    /// The shares of requests the new version gets, in percent, in order (`[10, 50, 100]`);
    /// reaching 100 promotes it. A plan whose last step is under 100 holds there until
    /// `tabula promote`.
    pub steps: Vec<u8>,
    /// Seconds each step lasts at least before the next, if its checks pass.
    pub interval_secs: u64,
    /// Seconds of requests each check looks back over.
    pub window_secs: u64,
    /// How many percentage points the canary's error rate may exceed the active version's
    /// over the window before the fleet goes back to the active version by itself.
    pub max_error_excess: f64,
    /// Requests the canary must have had in the window before it is judged: fewer say
    /// nothing either way, so a step does not advance on them either.
    pub min_requests: u64,
}

impl CanaryPlan {
    /// `--canary-interval`'s default: a minute per step, as Flagger's `analysis.interval`.
    pub const INTERVAL_SECS: u64 = 60;
    /// `--canary-window`'s default.
    pub const WINDOW_SECS: u64 = 30;
    /// `--canary-max-error-excess`'s default, in percentage points.
    pub const MAX_ERROR_EXCESS: f64 = 5.0;
    /// `--canary-min-requests`'s default.
    pub const MIN_REQUESTS: u64 = 20;

    /// `steps` with every other setting at its default: what unit tests start from.
    #[cfg(test)]
    pub(crate) fn sample(steps: &[u8]) -> CanaryPlan {
        CanaryPlan {
            steps: steps.to_vec(),
            interval_secs: Self::INTERVAL_SECS,
            window_secs: Self::WINDOW_SECS,
            max_error_excess: Self::MAX_ERROR_EXCESS,
            min_requests: Self::MIN_REQUESTS,
        }
    }

    /// Steps written as `10,50,100` (a `%` after each allowed).
    pub fn steps(text: &str) -> Result<Vec<u8>> {
        text.split(',')
            .map(|s| s.trim().trim_end_matches('%').parse::<u8>())
            .collect::<Result<Vec<u8>, _>>()
            .with_context(|| {
                format!("`{text}` is not a list of percentages, e.g. `10` or `10,50,100`")
            })
    }

    /// Refuses a plan that cannot run, saying what to change.
    pub fn check(&self) -> Result<()> {
        if self.steps.is_empty() {
            bail!("a canary needs at least one step, e.g. `--canary 10` or `--canary 10,50,100`");
        }
        if let Some(bad) = self.steps.iter().find(|s| !(1..=100).contains(*s)) {
            bail!("canary step {bad}% is not a share of requests from 1 to 100");
        }
        if self.steps.windows(2).any(|pair| pair[0] >= pair[1]) {
            bail!("canary steps must grow, e.g. `10,50,100`");
        }
        if self.interval_secs == 0 || self.window_secs == 0 {
            bail!("the canary interval and window must be at least a second");
        }
        if !(0.0..=100.0).contains(&self.max_error_excess) {
            bail!("the canary's max error excess is in percentage points, from 0 to 100");
        }
        Ok(())
    }

    /// The width of the buckets requests are counted in: a tenth of the window, so a check
    /// reads about ten of them per version.
    pub fn bucket_secs(&self) -> u64 {
        (self.window_secs / 10).max(1)
    }
}

/// A gradual rollout in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// The new version.
    pub version: Version,
    /// The share of requests it gets now, in percent.
    pub percent: u8,
    /// Its steps and checks.
    pub plan: CanaryPlan,
    /// When it started, in seconds since the Unix epoch.
    pub started: u64,
    /// When the current step started.
    pub since: u64,
}

impl Canary {
    /// `version` at the first step of `plan`, from now.
    pub fn start(version: Version, plan: CanaryPlan) -> Canary {
        let now = now();
        Canary {
            version,
            percent: plan.steps[0],
            plan,
            started: now,
            since: now,
        }
    }
}

/// How a canary ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryEnd {
    /// The canary's version number.
    pub version: u64,
    /// The share it had when it ended.
    pub percent: u8,
    /// Whether it became the active version (else the app went back to the active one).
    pub promoted: bool,
    /// Why, with the figures when the fleet decided by itself.
    pub reason: String,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
}

/// Requests of one version counted over a time, and those of them that failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Every request answered.
    pub total: u64,
    /// Those answered with a 5xx (traps and timeouts are 500s).
    pub errors: u64,
}

impl Count {
    /// The share that failed, in percent (0 for no requests).
    pub fn error_percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.total as f64
        }
    }
}

/// Which version of an app a replica gives a canary's share to, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The canary's version number.
    pub version: u64,
    /// Its share, in percent.
    pub percent: u8,
}

/// Process `index` (0 for a replica of one process) of replica `group`: a heartbeat's place.
/// Its id is fixed for the place, not drawn per process, so `/readyz` reads exactly its own
/// replica's heartbeats, and a worker the supervisor restarts takes over its slot's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub group: String,
    pub index: usize,
}

impl Process {
    /// The id its heartbeat carries.
    pub fn id(&self) -> String {
        format!("{}.{}", self.group, self.index)
    }
}

/// What a replica says about itself, renewed every second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// A unique id for this process.
    pub id: String,
    /// The replica it belongs to: one id shared by a supervisor's worker processes (or a
    /// single process's own), by which `/readyz` finds its processes.
    #[serde(default)]
    pub group: String,
    /// Where it serves.
    pub address: String,
    /// Apps it serves from paths given at start: deployed apps may not take their names
    /// or routes.
    pub fixed: Vec<(String, String)>,
    /// The version each deployed app is served at.
    pub running: BTreeMap<String, u64>,
    /// Versions compiled and ready to switch to, per app.
    pub ready: BTreeMap<String, Vec<u64>>,
    /// The canary each app's requests are split with, per app that has one.
    #[serde(default)]
    pub canary: BTreeMap<String, Share>,
    /// The registry generation it has caught up with.
    pub generation: u64,
    /// When it was sent, in milliseconds since the Unix epoch: the dashboard shows its age.
    #[serde(default)]
    pub at: u64,
    /// Each app's traffic on this process over the last minute, for the dashboard.
    #[serde(default)]
    pub traffic: BTreeMap<String, super::traffic::Traffic>,
}

/// Every app the registry knows and the route each holds: the index listings read instead
/// of scanning, and what makes a route belong to one app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Directory {
    /// App name -> its route.
    routes: BTreeMap<String, String>,
}

/// Why a route cannot be had. Callers branch on it: the admin API answers 409.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTaken {
    /// The app holding it.
    pub app: String,
    /// Its route: the one asked for, or one above or below it.
    pub route: String,
}

impl std::fmt::Display for RouteTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route `{}` is app `{}`'s", self.route, self.app)
    }
}

impl std::error::Error for RouteTaken {}

/// How long a blob an upload stored stays pinned when the upload does not say it is done
/// with it (an assets bundle waits for the component that names it).
const PIN_TTL: Duration = Duration::from_secs(15 * 60);

/// A blob's place in [`Registry::collect`]'s book: pinned by the uploads that are about to
/// reference it, or doomed once a collection decided to delete it. A pin and a doom are both
/// made by compare-and-swap on the one book, so a blob is never deleted under an upload that
/// pinned it: either the pin comes first and the collection skips the blob, or the doom comes
/// first and the upload waits until the blob is gone, then stores it again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct BlobEntry {
    /// Pin id -> when it lapses, in seconds since the epoch.
    pins: BTreeMap<String, u64>,
    doomed: bool,
    /// When it was doomed, in seconds since the epoch: a doom older than [`DOOM_GRACE`] is
    /// one a collection left unfinished (its host died, the store failed), and the next
    /// collection finishes it rather than leave the blob's digest refused to uploads forever.
    #[serde(default)]
    doomed_at: u64,
}

/// How long a collection may take to delete the blobs it doomed before another one takes
/// the work over.
const DOOM_GRACE: u64 = 10 * 60;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct BlobBook {
    blobs: BTreeMap<String, BlobEntry>,
}

/// An upload's hold on a blob, released with [`Registry::unpin`] once a version names it.
#[derive(Debug, Clone)]
pub struct Pin {
    digest: String,
    id: String,
}

impl Pin {
    /// The pin `id` on blob `digest`, as an upload passed it back.
    pub fn new(digest: String, id: String) -> Pin {
        Pin { digest, id }
    }

    /// Its id, for the uploader to pass back.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What a collection kept and deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Version records deleted, as `app vN`.
    pub versions: Vec<String>,
    /// Blobs deleted, by digest.
    pub blobs: Vec<String>,
}

/// The replicas that joined, as hosts before [`REPLICA_IDS`] kept them: one JSON value that
/// every heartbeat read (300 processes read 3.6 MB/s of it from one master). Still read, so
/// that a fleet in the middle of an upgrade lists its old replicas too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LegacyReplicaList {
    ids: BTreeSet<String>,
}

/// The registry on a store.
#[derive(Clone)]
pub struct Registry {
    storage: Arc<dyn Storage>,
}

fn app_key(name: &str) -> String {
    format!("tabula:{{registry}}:app:{name}")
}

fn version_prefix(name: &str) -> String {
    format!("tabula:{{registry}}:version:{name}:")
}

fn seq_key(name: &str) -> String {
    format!("tabula:{{registry}}:seq:{name}")
}

/// Requests of version `number` of app `name` in the bucket starting at `bucket` (seconds
/// since the epoch): `KEY:t` counts them all, `KEY:e` the failed ones.
/// Where the heartbeat of the process with id `id` lives.
fn replica_key(id: &str) -> String {
    format!("tabula:{{registry}}:replica:{id}")
}

fn tally_key(name: &str, number: u64, bucket: u64) -> String {
    format!("tabula:{{registry}}:tally:{name}:{number}:{bucket}")
}

const GENERATION: &str = "tabula:{registry}:gen";
const DIRECTORY: &str = "tabula:{registry}:apps";
const APP_PREFIX: &str = "tabula:{registry}:app:";
const REPLICA_IDS: &str = "tabula:{registry}:replica-ids";
const LEGACY_REPLICAS: &str = "tabula:{registry}:replicas";
/// How long the replica ids outlive the last heartbeat that renewed them.
const REPLICA_IDS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Bounds on the replica ids: 100,000 processes of up to 100 bytes of id.
const REPLICA_IDS_LIMITS: HashLimits = HashLimits {
    max_bytes: 10 << 20,
    max_fields: 100_000,
};
const BLOBS: &str = "tabula:{registry}:blobs";
const JUDGE: &str = "tabula:{registry}:judge";

/// The hex sha-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The [`digest`] of the file at `path`, read a block at a time rather than held whole.
pub fn file_digest(path: &std::path::Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// `bytes` in lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> u64 {
    now_millis() / 1000
}

/// This machine's name: in replica ids, and in what a deploy says of who made it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The time in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes and their digest, computed once: what is checked on upload and what is stored are
/// then named by the same hash without hashing twice.
#[derive(Clone)]
pub struct Blob {
    bytes: bytes::Bytes,
    digest: String,
}

impl Blob {
    /// `bytes`, with their digest.
    pub fn new(bytes: bytes::Bytes) -> Blob {
        let digest = digest(&bytes);
        Blob { bytes, digest }
    }

    /// The hex sha-256 of the bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The key of blob `digest`'s meta record: a blob is whole while it is there.
pub(crate) fn blob_meta_key(digest: &str) -> String {
    format!("tabula:blob:{{{digest}}}:meta")
}

#[derive(Serialize, Deserialize)]
struct BlobMeta {
    size: u64,
    chunks: u64,
}

impl Registry {
    /// The registry kept in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Registry {
        Registry { storage }
    }

    /// The store it lives in, shared with what sits beside it there (compiled artifacts).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Where the registry lives, for logs.
    pub fn describe(&self) -> String {
        self.storage.describe()
    }

    /// Stores `blob` under its digest, unless a whole blob is already there, pinned so that
    /// no collection deletes it before a version names it. Chunks first and the meta record
    /// last, each only if absent: a blob is never changed, and one cut short by a failure is
    /// finished by the next upload.
    pub async fn put_blob(&self, blob: &Blob) -> Result<Pin> {
        let (bytes, digest) = (blob.bytes(), blob.digest());
        let pin = self.pin(digest).await?;
        let meta_key = blob_meta_key(digest);
        if self.storage.exists(&meta_key).await? {
            return Ok(pin);
        }
        let chunks = bytes.chunks(CHUNK).collect::<Vec<_>>();
        for (n, chunk) in chunks.iter().enumerate() {
            let key = format!("tabula:blob:{{{digest}}}:{n}");
            self.storage
                .compare_and_swap(&key, None, chunk, None, None)
                .await?;
        }
        let meta = serde_json::to_vec(&BlobMeta {
            size: bytes.len() as u64,
            chunks: chunks.len() as u64,
        })?;
        self.storage
            .compare_and_swap(&meta_key, None, &meta, None, None)
            .await?;
        Ok(pin)
    }

    /// Pins the blob `digest` (stored or about to be) for [`PIN_TTL`], waiting while a
    /// collection deletes it. Whether it is stored is for the caller to check after.
    pub async fn pin(&self, digest: &str) -> Result<Pin> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).context("no randomness for a pin")?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let done = self
                .edit_book(|book| {
                    let entry = book.blobs.entry(digest.to_string()).or_default();
                    if entry.doomed {
                        return None;
                    }
                    entry.pins.insert(id.clone(), now() + PIN_TTL.as_secs());
                    Some(())
                })
                .await?;
            if done.is_some() {
                return Ok(Pin {
                    digest: digest.to_string(),
                    id,
                });
            }
            if std::time::Instant::now() > deadline {
                bail!("blob {digest} is being deleted and was not gone within 30 s; try again");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Releases `pin`: a version names its blob now, or the upload gave up.
    pub async fn unpin(&self, pin: &Pin) -> Result<()> {
        self.edit_book(|book| {
            let entry = book.blobs.get_mut(&pin.digest)?;
            entry.pins.remove(&pin.id).map(|_| ())
        })
        .await?;
        Ok(())
    }

    /// Changes the blob book by compare-and-swap; `change` answers `None` to write nothing.
    async fn edit_book<T>(
        &self,
        mut change: impl FnMut(&mut BlobBook) -> Option<T>,
    ) -> Result<Option<T>> {
        for _ in 0..50 {
            let stored = self.storage.get(BLOBS).await?;
            let mut book: BlobBook = match &stored {
                Some(bytes) => serde_json::from_slice(bytes).context("the registry's blob book")?,
                None => BlobBook::default(),
            };
            let Some(answer) = change(&mut book) else {
                return Ok(None);
            };
            let new = serde_json::to_vec(&book)?;
            if self
                .storage
                .compare_and_swap(BLOBS, stored.as_deref(), &new, None, None)
                .await?
            {
                return Ok(Some(answer));
            }
        }
        bail!("the registry's blob book is being changed by others at the same time; try again")
    }

    /// Keeps the newest `keep` versions of every app, and always the active one, the one
    /// being rolled out and the one a rollback returns to; deletes the other version records,
    /// then every blob of the book that no kept version names and no upload has pinned, and
    /// what `also` deletes for it (the compiled artifacts shared for it: `artifacts.rs` sits
    /// above the registry, so the caller brings it).
    /// Blobs stored before the book existed are not in it and stay.
    pub async fn collect<F: Future<Output = Result<()>>>(
        &self,
        keep: usize,
        also: impl Fn(String) -> F,
    ) -> Result<Collected> {
        let mut collected = Collected::default();
        let mut named = std::collections::BTreeSet::new();
        for app in self.apps().await? {
            let versions = self.versions(&app.name).await?;
            let active = app.active.as_ref().map(|v| v.number);
            let pending = app.pending.as_ref().map(|v| v.number);
            let canary = app.canary.as_ref().map(|c| c.version.number);
            let rollback = app.rollback_target(&versions).map(|v| v.number);
            let newest: Vec<u64> = versions.iter().rev().take(keep).map(|v| v.number).collect();
            for version in versions {
                let n = Some(version.number);
                if newest.contains(&version.number)
                    || n == active
                    || n == pending
                    || n == canary
                    || n == rollback
                {
                    named.insert(version.digest.clone());
                    named.extend(version.assets.clone());
                    continue;
                }
                let key = format!("{}{}", version_prefix(&app.name), version.number);
                self.storage.delete(&key, None).await?;
                collected
                    .versions
                    .push(format!("{} {}", app.name, version.id()));
            }
        }
        let now = now();
        let doomed = self
            .edit_book(|book| {
                let mut doomed = Vec::new();
                for (digest, entry) in &mut book.blobs {
                    entry.pins.retain(|_, lapses| *lapses > now);
                    let unfinished = entry.doomed && entry.doomed_at + DOOM_GRACE < now;
                    let unused = !entry.doomed && entry.pins.is_empty() && !named.contains(digest);
                    if unfinished || unused {
                        entry.doomed = true;
                        entry.doomed_at = now;
                        doomed.push(digest.clone());
                    }
                }
                (!doomed.is_empty()).then_some(doomed)
            })
            .await?
            .unwrap_or_default();
        // An upload may have pinned, named and unpinned a blob between the read of the
        // versions above and the doom. Uploads that pin from now on wait for the doom, so
        // reading the versions again closes that gap: what a version names now is spared.
        let named = if doomed.is_empty() {
            named
        } else {
            self.named_blobs().await?
        };
        let (spared, doomed): (Vec<String>, Vec<String>) =
            doomed.into_iter().partition(|d| named.contains(d));
        if !spared.is_empty() {
            self.edit_book(|book| {
                for digest in &spared {
                    if let Some(entry) = book.blobs.get_mut(digest) {
                        entry.doomed = false;
                    }
                }
                Some(())
            })
            .await?;
        }
        for digest in doomed {
            self.delete_blob(&digest).await?;
            // After the blob: an artifact stored meanwhile is taken back by its uploader.
            also(digest.clone()).await?;
            self.edit_book(|book| book.blobs.remove(&digest).map(|_| ()))
                .await?;
            collected.blobs.push(digest);
        }
        Ok(collected)
    }

    /// Every blob a stored version names: its component and its assets.
    async fn named_blobs(&self) -> Result<std::collections::BTreeSet<String>> {
        let mut named = std::collections::BTreeSet::new();
        for app in self.apps().await? {
            for version in self.versions(&app.name).await? {
                named.insert(version.digest);
                named.extend(version.assets);
            }
        }
        Ok(named)
    }

    /// Deletes the blob `digest`: its meta record first, so that it is no longer whole, then
    /// its chunks.
    async fn delete_blob(&self, digest: &str) -> Result<()> {
        let meta_key = blob_meta_key(digest);
        let chunks = match self.storage.get(&meta_key).await? {
            Some(meta) => serde_json::from_slice::<BlobMeta>(&meta)?.chunks,
            None => 0,
        };
        self.storage.delete(&meta_key, None).await?;
        for n in 0..chunks {
            self.storage
                .delete(&format!("tabula:blob:{{{digest}}}:{n}"), None)
                .await?;
        }
        Ok(())
    }

    /// The blob stored under `digest`, checked against it.
    pub async fn get_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let meta = self
            .storage
            .get(&blob_meta_key(digest))
            .await?
            .with_context(|| format!("no component with digest {digest} in the store"))?;
        let meta: BlobMeta = serde_json::from_slice(&meta).context("a blob's meta record")?;
        let mut bytes = Vec::with_capacity(meta.size as usize);
        for n in 0..meta.chunks {
            let chunk = self
                .storage
                .get(&format!("tabula:blob:{{{digest}}}:{n}"))
                .await?
                .with_context(|| format!("chunk {n} of component {digest} is missing"))?;
            bytes.extend_from_slice(&chunk);
        }
        let found = self::digest(&bytes);
        if found != digest {
            bail!("component {digest} read back with digest {found}: the store's copy is damaged");
        }
        Ok(bytes)
    }

    /// Adds `draft` as the next version of app `name` (its component already stored), with
    /// its number and time filled in, and returns it.
    pub async fn add_version(&self, name: &str, draft: Version) -> Result<Version> {
        let number = self.storage.increment(&seq_key(name), 1, None).await? as u64;
        let version = Version {
            number,
            created: now(),
            ..draft
        };
        let key = format!("{}{number}", version_prefix(name));
        self.storage
            .set(&key, &serde_json::to_vec(&version)?, None, None)
            .await?;
        Ok(version)
    }

    /// Every version of app `name`, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<Version>> {
        let mut versions = Vec::new();
        for number in 1..=self.last_version(name).await? {
            versions.extend(self.version(name, number).await?);
        }
        Ok(versions)
    }

    /// The number of app `name`'s newest version (0 for none): versions are numbered from 1
    /// without gaps, so they are read by number rather than found by a scan.
    async fn last_version(&self, name: &str) -> Result<u64> {
        Ok(match self.storage.get(&seq_key(name)).await? {
            Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
            None => 0,
        })
    }

    /// Version `number` of app `name`.
    pub async fn version(&self, name: &str, number: u64) -> Result<Option<Version>> {
        let key = format!("{}{number}", version_prefix(name));
        match self.storage.get(&key).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every key under `prefix`, all pages: a scan of the whole store, made only once, to
    /// index a registry written before the directory existed.
    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(crate::storage::list_all(&*self.storage, prefix).await?)
    }

    /// App `name`'s record, and its bytes as stored (for a compare-and-swap).
    pub async fn app(&self, name: &str) -> Result<Option<(AppRecord, Vec<u8>)>> {
        match self.storage.get(&app_key(name)).await? {
            Some(bytes) => Ok(Some((serde_json::from_slice(&bytes)?, bytes))),
            None => Ok(None),
        }
    }

    /// Every app's record, removed ones included (their `active` is `None`).
    pub async fn apps(&self) -> Result<Vec<AppRecord>> {
        let (directory, _) = self.directory().await?;
        let mut apps = Vec::new();
        for name in directory.routes.keys() {
            if let Some((record, _)) = self.app(name).await? {
                apps.push(record);
            }
        }
        Ok(apps)
    }

    /// The directory, and its bytes as stored. A registry from before the directory gets
    /// one built from its app records and stored: the one scan it ever needs.
    async fn directory(&self) -> Result<(Directory, Vec<u8>)> {
        loop {
            if let Some(bytes) = self.storage.get(DIRECTORY).await? {
                let directory =
                    serde_json::from_slice(&bytes).context("the registry's app directory")?;
                return Ok((directory, bytes));
            }
            let built = serde_json::to_vec(&self.directory_from_records().await?)?;
            self.storage
                .compare_and_swap(DIRECTORY, None, &built, None, None)
                .await?;
        }
    }

    /// A directory of the apps whose records a scan finds.
    async fn directory_from_records(&self) -> Result<Directory> {
        let mut directory = Directory::default();
        for key in self.keys(APP_PREFIX).await? {
            if let Some(bytes) = self.storage.get(&key).await? {
                let record: AppRecord = serde_json::from_slice(&bytes)?;
                let route = record.active.as_ref().or(record.pending.as_ref());
                if let Some(version) = route {
                    directory
                        .routes
                        .insert(record.name.clone(), version.route.clone());
                }
            }
        }
        Ok(directory)
    }

    /// Gives `route` to app `name`, in one compare-and-swap on the directory, unless another
    /// app holds it, or, unless `nested` is allowed, a route above or below it (`/shop/admin`
    /// under `/shop` would receive the cookies of `/shop`'s visitors). The app keeps the
    /// route until it is removed ([`Registry::release_route`]) or given another.
    pub async fn claim_route(&self, name: &str, route: &str, nested: bool) -> Result<()> {
        let clashes = |held: &str| crate::config::route_clash(held, route, nested).is_some();
        for _ in 0..20 {
            let (mut directory, stored) = self.directory().await?;
            for (app, held) in &directory.routes {
                if app != name && clashes(held) {
                    return Err(RouteTaken {
                        app: app.clone(),
                        route: held.clone(),
                    }
                    .into());
                }
            }
            if directory.routes.get(name).map(String::as_str) == Some(route) {
                return Ok(());
            }
            directory.routes.insert(name.to_string(), route.to_string());
            let swapped = self
                .storage
                .compare_and_swap(
                    DIRECTORY,
                    Some(&stored),
                    &serde_json::to_vec(&directory)?,
                    None,
                    None,
                )
                .await?;
            if swapped {
                return Ok(());
            }
        }
        bail!("the registry's app directory is being changed by others at the same time; try again")
    }

    /// Takes app `name` out of the directory, freeing its route; whether it was there.
    pub async fn release_route(&self, name: &str) -> Result<bool> {
        for _ in 0..20 {
            let (mut directory, stored) = self.directory().await?;
            if directory.routes.remove(name).is_none() {
                return Ok(false);
            }
            let new = serde_json::to_vec(&directory)?;
            if self
                .storage
                .compare_and_swap(DIRECTORY, Some(&stored), &new, None, None)
                .await?
            {
                self.changed().await?;
                return Ok(true);
            }
        }
        bail!("the registry's app directory is being changed by others at the same time; try again")
    }

    /// Changes app `name`'s record with `change`, by compare-and-swap (retried when another
    /// change came first), bumps the generation and tells the replicas. Returns the new
    /// record; `change` may refuse by failing.
    pub async fn update(
        &self,
        name: &str,
        change: impl Fn(Option<&AppRecord>) -> Result<AppRecord>,
    ) -> Result<AppRecord> {
        for _ in 0..20 {
            let current = self.app(name).await?;
            let mut next = change(current.as_ref().map(|(record, _)| record))?;
            next.generation = current.as_ref().map_or(0, |(r, _)| r.generation) + 1;
            let expected = current.as_ref().map(|(_, bytes)| bytes.as_slice());
            let swapped = self
                .storage
                .compare_and_swap(
                    &app_key(name),
                    expected,
                    &serde_json::to_vec(&next)?,
                    None,
                    None,
                )
                .await?;
            if swapped {
                self.changed().await?;
                return Ok(next);
            }
        }
        bail!("app `{name}` is being changed by someone else at the same time; try again")
    }

    /// Removes every version record of app `name`; the next [`Registry::collect`] deletes the
    /// blobs no other app's kept versions name.
    /// The app's route is freed apart from this ([`Registry::release_route`]).
    pub async fn remove_versions(&self, name: &str) -> Result<()> {
        for number in 1..=self.last_version(name).await? {
            self.storage
                .delete(&format!("{}{number}", version_prefix(name)), None)
                .await?;
        }
        Ok(())
    }

    /// Bumps the generation and says so on the channel.
    async fn changed(&self) -> Result<()> {
        let generation = self.storage.increment(GENERATION, 1, None).await?;
        // Best effort: replicas poll the generation too.
        if let Err(e) = self.storage.publish(CHANNEL, &generation.to_string()).await {
            tracing::warn!(error = %e, "could not announce a deploy; replicas will poll");
        }
        Ok(())
    }

    /// The registry's generation: replicas compare it with the one they have seen.
    pub async fn generation(&self) -> Result<u64> {
        Ok(match self.storage.get(GENERATION).await? {
            Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
            None => 0,
        })
    }

    /// Renews `replica`'s heartbeat: one write that reads nothing, whatever the size of the
    /// fleet. With `list`, also puts it on the list of replicas (it joined, or was taken off
    /// while its heartbeat had lapsed): a script, so not on every heartbeat.
    pub async fn heartbeat(&self, replica: &Heartbeat, list: bool) -> Result<()> {
        let key = replica_key(&replica.id);
        self.storage
            .set(
                &key,
                &serde_json::to_vec(replica)?,
                Some(HEARTBEAT_TTL),
                None,
            )
            .await?;
        if !list {
            return Ok(());
        }
        let listed = self
            .storage
            .hash_set(
                REPLICA_IDS,
                &replica.id,
                b"",
                REPLICA_IDS_LIMITS,
                REPLICA_IDS_TTL,
                None,
            )
            .await?;
        match listed {
            HashWrite::Stored => Ok(()),
            HashWrite::TooLarge | HashWrite::TooManyFields => bail!(
                "the registry's list of replicas is full ({} processes): a fleet this large is \
                 beyond what one registry serves",
                REPLICA_IDS_LIMITS.max_fields
            ),
        }
    }

    /// Takes `replica` off the list (it is stopping).
    pub async fn leave(&self, replica: &Heartbeat) -> Result<()> {
        let key = replica_key(&replica.id);
        self.storage.delete(&key, None).await?;
        self.storage
            .hash_delete(REPLICA_IDS, &replica.id, None)
            .await?;
        Ok(())
    }

    /// The replicas alive now, by id, their heartbeats read in one call. Those whose
    /// heartbeat has expired are taken off the list.
    pub async fn replicas(&self) -> Result<Vec<Heartbeat>> {
        let listed: BTreeSet<String> = self
            .storage
            .hash_get_all(REPLICA_IDS)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let legacy = match self.storage.get(LEGACY_REPLICAS).await? {
            Some(bytes) => {
                serde_json::from_slice::<LegacyReplicaList>(&bytes)
                    .context("the registry's replica list of earlier hosts")?
                    .ids
            }
            None => BTreeSet::new(),
        };
        let ids: Vec<&String> = listed.union(&legacy).collect();
        let keys: Vec<String> = ids.iter().map(|id| replica_key(id)).collect();
        let mut replicas = Vec::new();
        let mut legacy_alive = false;
        for (id, beat) in ids.into_iter().zip(self.storage.get_many(&keys).await?) {
            match beat {
                Some(bytes) => {
                    legacy_alive |= legacy.contains(id);
                    replicas.push(serde_json::from_slice::<Heartbeat>(&bytes)?);
                }
                None if listed.contains(id) => {
                    self.storage.hash_delete(REPLICA_IDS, id, None).await?;
                }
                None => {}
            }
        }
        // Earlier hosts keep their own list; once none of them is alive, it goes.
        if !legacy.is_empty() && !legacy_alive {
            self.storage.delete(LEGACY_REPLICAS, None).await?;
        }
        Ok(replicas)
    }

    /// Why the `processes` processes of replica `group` do not all serve what the registry
    /// says is active yet (a process still compiling, or one that has not joined), or `None`
    /// when they do: what `/readyz` asks before it lets a load balancer send traffic.
    pub async fn lagging(&self, group: &str, processes: usize) -> Result<Option<String>> {
        // Its own processes' heartbeats only, one read: a probe costs the same however many
        // replicas the fleet has (reading every heartbeat made each probe O(fleet)).
        let keys: Vec<String> = (0..processes)
            .map(|index| {
                let process = Process {
                    group: group.to_string(),
                    index,
                };
                replica_key(&process.id())
            })
            .collect();
        let mut beats = Vec::with_capacity(processes);
        for bytes in self.storage.get_many(&keys).await?.into_iter().flatten() {
            beats.push(serde_json::from_slice::<Heartbeat>(&bytes)?);
        }
        if beats.len() < processes {
            return Ok(Some(format!(
                "{} of {processes} processes have joined",
                beats.len()
            )));
        }
        for app in self.apps().await? {
            let Some(active) = &app.active else { continue };
            if let Some(beat) = beats
                .iter()
                .find(|b| b.running.get(&app.name) != Some(&active.number))
            {
                return Ok(Some(format!(
                    "process {} has not loaded {} {} yet",
                    beat.id,
                    app.name,
                    active.id()
                )));
            }
        }
        Ok(None)
    }

    /// Adds `count` to version `number` of app `name`'s requests in the bucket of width
    /// `width` seconds that holds now. The counts expire once no window can reach them: a
    /// count is created at 0 with its expiry in one write (compare-and-swap on a missing
    /// key), then incremented, which keeps the expiry, so a replica that dies between the
    /// two leaves nothing that lives forever.
    pub async fn tally(&self, name: &str, number: u64, width: u64, count: Count) -> Result<()> {
        let key = tally_key(name, number, now() / width * width);
        let keep = Some(Duration::from_secs(width * 20 + 60));
        for (suffix, n) in [("t", count.total), ("e", count.errors)] {
            if n == 0 {
                continue;
            }
            let key = format!("{key}:{suffix}");
            self.storage
                .compare_and_swap(&key, None, b"0", keep, None)
                .await?;
            self.storage.increment(&key, n as i64, None).await?;
        }
        Ok(())
    }

    /// Version `number` of app `name`'s requests counted (by [`Registry::tally`], buckets of
    /// `width` seconds) from `from` to now, in seconds since the epoch.
    pub async fn tallied(&self, name: &str, number: u64, width: u64, from: u64) -> Result<Count> {
        let mut count = Count::default();
        let read = |key: String| async move {
            Ok::<u64, anyhow::Error>(match self.storage.get(&key).await? {
                Some(bytes) => String::from_utf8_lossy(&bytes).parse().unwrap_or(0),
                None => 0,
            })
        };
        let mut bucket = from / width * width;
        while bucket <= now() {
            let key = tally_key(name, number, bucket);
            count.total += read(format!("{key}:t")).await?;
            count.errors += read(format!("{key}:e")).await?;
            bucket += width;
        }
        Ok(count)
    }

    /// Whether replica `id` is the one that judges the fleet's canaries: it takes the role
    /// when no live replica holds it and keeps it by renewing it before `ttl` lapses, so a
    /// replica that dies hands it on within `ttl`.
    pub async fn judge(&self, id: &str, ttl: Duration) -> Result<bool> {
        let held = self.storage.get(JUDGE).await?;
        match held.as_deref() {
            Some(holder) if holder != id.as_bytes() => Ok(false),
            held => Ok(self
                .storage
                .compare_and_swap(JUDGE, held, id.as_bytes(), Some(ttl), None)
                .await?),
        }
    }

    /// Keeps `record` as the dashboard login whose cookie hashes to `key` for `ttl`: in the
    /// store rather than in one admin process, so a login holds behind a load balancer and
    /// across restarts; by hash, so a copy of the store holds no usable cookie.
    pub async fn put_login(&self, key: &str, record: &[u8], ttl: Duration) -> Result<()> {
        let key = format!("tabula:{{registry}}:ui:{key}");
        Ok(self.storage.set(&key, record, Some(ttl), None).await?)
    }

    /// The dashboard login whose cookie hashes to `key`, unless it expired or logged out.
    pub async fn login(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .storage
            .get(&format!("tabula:{{registry}}:ui:{key}"))
            .await?)
    }

    /// Ends the dashboard login whose cookie hashes to `key`.
    pub async fn end_login(&self, key: &str) -> Result<()> {
        let key = format!("tabula:{{registry}}:ui:{key}");
        self.storage.delete(&key, None).await?;
        Ok(())
    }

    /// Messages on the deploy channel.
    pub fn subscribe(&self) -> tokio::sync::mpsc::Receiver<String> {
        self.storage.subscribe(CHANNEL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry on the embedded store holding one blob of `bytes`, doomed at `doomed_at`
    /// (seconds since the epoch), as a collection that doomed it then leaves it.
    async fn with_doomed_blob(bytes: &'static [u8], doomed_at: u64) -> (Registry, Blob) {
        let registry = Registry::new(crate::storage::open("memory").await.unwrap());
        let blob = Blob::new(bytes::Bytes::from_static(bytes));
        let pin = registry.put_blob(&blob).await.unwrap();
        registry.unpin(&pin).await.unwrap();
        registry
            .edit_book(|book| {
                let entry = book.blobs.get_mut(blob.digest())?;
                entry.doomed = true;
                entry.doomed_at = doomed_at;
                Some(())
            })
            .await
            .unwrap()
            .unwrap();
        (registry, blob)
    }

    /// A tally's counts add up, and each has its expiry from the write that created it.
    #[tokio::test]
    async fn tallies_add_up_and_expire() {
        let storage = crate::storage::open("memory").await.unwrap();
        let registry = Registry::new(storage.clone());
        for (total, errors) in [(5, 1), (3, 0)] {
            let count = Count { total, errors };
            registry.tally("a", 2, 600, count).await.unwrap();
        }
        let counted = registry.tallied("a", 2, 600, now() - 3).await.unwrap();
        assert_eq!((counted.total, counted.errors), (8, 1));
        for suffix in ["t", "e"] {
            let key = format!("{}:{suffix}", tally_key("a", 2, now() / 600 * 600));
            assert!(
                matches!(
                    storage.ttl(&key).await.unwrap(),
                    crate::storage::Ttl::ExpiresIn(_)
                ),
                "{key} never expires"
            );
        }
    }

    /// The replica list: a heartbeat lists its process, leaving or a lapsed heartbeat takes
    /// it off; replicas of hosts before the hash, on their JSON list, are listed beside them
    /// until none is alive, and then their list goes.
    #[tokio::test]
    async fn replicas_join_leave_lapse_and_earlier_hosts_are_listed_until_gone() {
        let storage = crate::storage::open("memory").await.unwrap();
        let registry = Registry::new(storage.clone());
        let beat = |id: &str| Heartbeat {
            id: id.into(),
            ..Heartbeat::default()
        };
        let ids = |replicas: Vec<Heartbeat>| -> Vec<String> {
            replicas.into_iter().map(|h| h.id).collect()
        };
        for id in ["a.0", "a.1", "b.0"] {
            registry.heartbeat(&beat(id), true).await.unwrap();
        }
        registry.leave(&beat("a.1")).await.unwrap();
        let old = serde_json::to_vec(&LegacyReplicaList {
            ids: ["old".to_string()].into(),
        })
        .unwrap();
        storage
            .set(LEGACY_REPLICAS, &old, None, None)
            .await
            .unwrap();
        let old_beat = serde_json::to_vec(&beat("old")).unwrap();
        let old_key = replica_key("old");
        storage.set(&old_key, &old_beat, None, None).await.unwrap();
        let listed = ids(registry.replicas().await.unwrap());
        assert_eq!(listed, ["a.0", "b.0", "old"]);
        // b's heartbeat lapses, and the old host stops.
        storage.delete(&replica_key("b.0"), None).await.unwrap();
        storage.delete(&old_key, None).await.unwrap();
        assert_eq!(ids(registry.replicas().await.unwrap()), ["a.0"]);
        let left = storage.hash_get_all(REPLICA_IDS).await.unwrap();
        assert_eq!(left.len(), 1, "b is off the list: {left:?}");
        assert_eq!(storage.get(LEGACY_REPLICAS).await.unwrap(), None);
        // A heartbeat that lists its process puts one taken off back on; others do not.
        registry.heartbeat(&beat("b.0"), false).await.unwrap();
        assert_eq!(ids(registry.replicas().await.unwrap()), ["a.0"]);
        registry.heartbeat(&beat("b.0"), true).await.unwrap();
        assert_eq!(ids(registry.replicas().await.unwrap()), ["a.0", "b.0"]);
    }

    /// A collection that died between dooming a blob and deleting it left the doom behind
    /// for good, and every later upload of the same bytes (`tabula check`'s probe, an old
    /// build deployed again) waited 30 s and failed. The next collection finishes it.
    #[tokio::test]
    async fn a_doom_left_unfinished_is_finished_by_the_next_collection() {
        let (registry, blob) = with_doomed_blob(b"a component, say", now() - DOOM_GRACE - 1).await;
        let digest = blob.digest().to_string();
        let collected = registry.collect(10, |_| async { Ok(()) }).await.unwrap();
        assert_eq!(collected.blobs, std::slice::from_ref(&digest));
        // The bytes can be uploaded again, at once.
        let started = std::time::Instant::now();
        let pin = registry.put_blob(&blob).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        registry.unpin(&pin).await.unwrap();
        assert_eq!(registry.get_blob(&digest).await.unwrap(), blob.bytes());
    }

    /// A doom younger than the grace belongs to a collection still deleting: left to it.
    #[tokio::test]
    async fn a_doom_in_progress_is_left_to_its_collection() {
        let (registry, _) = with_doomed_blob(b"another component", now()).await;
        let collected = registry.collect(10, |_| async { Ok(()) }).await.unwrap();
        assert!(collected.blobs.is_empty(), "{:?}", collected.blobs);
    }

    /// A canary the fleet rolled back never served everyone: a rollback from the version
    /// after it goes past it, to the last one that did.
    #[test]
    fn a_rollback_skips_canaries_that_were_rolled_back() {
        let version = Version::sample;
        let versions: Vec<Version> = (1..=3).map(version).collect();
        let plan = CanaryPlan::sample(&[10]);
        let mut record = AppRecord::empty("a");
        record.active = Some(version(1));
        record.canary = Some(Canary::start(version(2), plan.clone()));
        record.end_canary(false, "failed".into());
        record.active = Some(version(3));
        assert_eq!(record.rollback_target(&versions).map(|v| v.number), Some(1));
        // A promoted canary is a version like any other.
        record.canary = Some(Canary::start(version(3), plan));
        record.end_canary(true, "promoted".into());
        assert_eq!(record.rolled_back, [2]);
    }
}
