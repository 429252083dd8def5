//! A replica's side of deploys: the [`Agent`] keeps this process serving what the registry
//! says is active, next to the apps given on the command line.
//!
//! It hears of changes on the deploy channel and also polls the registry's generation every
//! second, so a lost message or a broken subscription only delays it. For every app it gets
//! a pending version ready (fetched, its digest checked, compiled or taken from the compile
//! cache or, when replicas share them, from the store) off the request path, and says so in its heartbeat; when the active pointer moves
//! it swaps the route table, so requests in flight finish on the version they started with and
//! the old version is freed after them. If the store is unreachable it keeps serving what it
//! has.
//!
//! An app with a canary is served in both versions at once, its requests split as the
//! registry says (see [`crate::request::router::Split`]); the agent adds each side's counts
//! to the registry every second, and one replica judges every canary (see [`super::canary`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::cache::{CompileCache, Compiled};
use super::canary;
use super::registry::{self, Count, Process, Registry, Share, Version};
use super::traffic;
use crate::app::App;
use crate::capabilities::Assets;
use crate::config::AppSpec;
use crate::request::router::{Router, Routes, Split, Tallies};
use crate::runtime::Runtime;

/// How often a replica checks the registry's generation, whatever it hears.
const POLL: Duration = Duration::from_secs(1);
/// How many heartbeats apart a replica's first process prunes the replica list (~30 s).
const PRUNE_EVERY: u64 = 30;
/// How many heartbeats apart a process puts itself on the replica list (the first one does):
/// back on it within ~5 s if a pruning took it off while its heartbeat had lapsed.
const LIST_EVERY: u64 = 5;

/// Keeps one process's route table in line with the registry.
pub struct Agent {
    host: Runtime,
    registry: Registry,
    routes: Routes,
    cache: Arc<CompileCache>,
    state: Mutex<State>,
    /// Wakes the heartbeat early, when there is news to report.
    news: Notify,
}

struct State {
    /// Apps given on the command line (`tabula up` rebuilds them in place).
    fixed: Vec<App>,
    /// Deployed apps served now: name -> (version, digest, app). The digest too, so that a
    /// registry rebuilt from scratch (a store that lost its data) numbering from 1 again is
    /// not taken for what is served.
    deployed: BTreeMap<String, (u64, String, App)>,
    /// Versions compiled and waiting for the switch; a canary's stays here too, so that its
    /// promotion switches at once.
    prepared: HashMap<(String, u64), App>,
    /// Apps split with a canary now, by name.
    canaries: BTreeMap<String, Serving>,
    /// What the heartbeat says.
    record: registry::Heartbeat,
}

/// A canary this replica serves beside an app's active version.
struct Serving {
    share: Share,
    digest: String,
    split: Split,
    /// The width of the buckets its counts go to (its plan's).
    bucket_secs: u64,
}

impl Agent {
    /// Serves `fixed` plus every active app of the registry through `routes`, and keeps doing
    /// so: loads what is active now before returning (a replica started after a deploy serves
    /// it from its first request), then follows changes in the background.
    pub async fn start(
        host: Runtime,
        registry: Registry,
        routes: Routes,
        fixed: Vec<App>,
        address: String,
        process: Process,
        cache: Arc<CompileCache>,
    ) -> Result<Arc<Agent>> {
        let record = registry::Heartbeat {
            id: process.id(),
            group: process.group,
            address,
            fixed: fixed
                .iter()
                .map(|app| (app.name().to_string(), app.route().to_string()))
                .collect(),
            ..registry::Heartbeat::default()
        };
        let agent = Arc::new(Agent {
            host,
            registry,
            routes,
            cache,
            state: Mutex::new(State {
                fixed,
                deployed: BTreeMap::new(),
                prepared: HashMap::new(),
                canaries: BTreeMap::new(),
                record,
            }),
            news: Notify::new(),
        });
        if let Err(e) = agent.sync().await {
            warn!(
                error = format!("{e:#}"),
                "could not load the deployed apps yet; retrying in the background"
            );
        }
        tokio::spawn(agent.clone().follow());
        tokio::spawn(agent.clone().beat(process.index));
        tokio::spawn(agent.clone().count());
        tokio::spawn(agent.clone().judge());
        Ok(agent)
    }

    /// The deployed apps this replica serves, by name and route.
    pub fn deployed(&self) -> Vec<(String, String)> {
        let state = self.lock();
        state
            .deployed
            .values()
            .map(|(_, _, app)| (app.name().to_string(), app.route().to_string()))
            .collect()
    }

    /// Serves `app` in place of the fixed app of the same name (a rebuild by `tabula up`):
    /// requests in flight finish on the build they started with.
    pub fn replace_fixed(&self, app: App) {
        let mut state = self.lock();
        match state.fixed.iter_mut().find(|old| old.name() == app.name()) {
            Some(old) => *old = app,
            None => state.fixed.push(app),
        }
        let router = self.router(&state);
        self.routes.replace(router);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Catches up whenever the registry's generation moves.
    async fn follow(self: Arc<Self>) {
        let mut messages = self.registry.subscribe();
        let mut listening = true;
        let mut seen = self.lock().record.generation;
        loop {
            tokio::select! {
                message = messages.recv(), if listening => listening = message.is_some(),
                () = tokio::time::sleep(POLL) => {}
            }
            match self.registry.generation().await {
                Ok(generation) if generation == seen => {}
                Ok(generation) => match self.sync().await {
                    Ok(()) => seen = generation,
                    Err(e) => warn!(
                        error = format!("{e:#}"),
                        "could not follow a deploy; retrying"
                    ),
                },
                Err(e) => warn!(
                    error = format!("{e:#}"),
                    "the registry does not answer; serving what is loaded"
                ),
            }
        }
    }

    /// Renews the heartbeat every second, and at once when there is news, with the last
    /// minute's traffic. The first process of each replica also takes lapsed replicas off the
    /// registry's list every [`PRUNE_EVERY`] heartbeats: a replica killed without leaving
    /// would otherwise stay on it until someone lists the replicas (a deploy, the dashboard).
    async fn beat(self: Arc<Self>, index: usize) {
        let mut window = traffic::Window::default();
        for beat in 0u64.. {
            let mut record = self.lock().record.clone();
            record.traffic = window.sample();
            record.at = registry::now_millis();
            let list = beat % LIST_EVERY == 0;
            if let Err(e) = self.registry.heartbeat(&record, list).await {
                warn!(
                    error = format!("{e:#}"),
                    "could not renew this replica's heartbeat"
                );
            }
            if index == 0
                && beat % PRUNE_EVERY == PRUNE_EVERY - 1
                && let Err(e) = self.registry.replicas().await
            {
                warn!(error = format!("{e:#}"), "could not prune the replica list");
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.news.notified() => {}
            }
        }
    }

    /// Adds every second what each canary's split counted to the registry.
    async fn count(self: Arc<Self>) {
        loop {
            tokio::time::sleep(POLL).await;
            let counts: Vec<(String, u64, u64, Count)> = {
                let state = self.lock();
                let mut counts = Vec::new();
                for (name, serving) in &state.canaries {
                    let Some((active, _, _)) = state.deployed.get(name) else {
                        continue;
                    };
                    let tallies = &serving.split.tallies;
                    let sides = [
                        (*active, &tallies.active),
                        (serving.share.version, &tallies.canary),
                    ];
                    for (number, tally) in sides {
                        let (total, errors) = tally.take();
                        let count = Count { total, errors };
                        counts.push((name.clone(), number, serving.bucket_secs, count));
                    }
                }
                counts
            };
            for (name, number, width, count) in counts {
                if count.total == 0 {
                    continue;
                }
                if let Err(e) = self.registry.tally(&name, number, width, count).await {
                    warn!(
                        app = name,
                        error = format!("{e:#}"),
                        "could not report a canary's requests; they are not counted"
                    );
                }
            }
        }
    }

    /// Judges the fleet's canaries every second while this replica holds the role (see
    /// [`canary::judge`]); only while this replica serves a canary, so an idle fleet asks
    /// the store nothing for it.
    async fn judge(self: Arc<Self>) {
        let id = self.lock().record.id.clone();
        loop {
            tokio::time::sleep(POLL).await;
            if self.lock().canaries.is_empty() {
                continue;
            }
            if let Err(e) = canary::judge(&self.registry, &id).await {
                warn!(error = format!("{e:#}"), "could not judge the canaries");
            }
        }
    }

    /// Takes this replica off the registry's list (it is stopping).
    pub async fn leave(&self) {
        let record = self.lock().record.clone();
        let _ = self.registry.leave(&record).await;
    }

    /// Brings this replica in line with the registry: prepares pending versions, switches
    /// to active ones, drops removed apps.
    async fn sync(&self) -> Result<()> {
        let generation = self.registry.generation().await?;
        let records = self.registry.apps().await?;
        let mut changed = false;
        let mut wanted = BTreeSet::new();
        for record in &records {
            if let Some(pending) = &record.pending {
                wanted.insert((record.name.clone(), pending.number));
                if let Err(e) = self.prepare(&record.name, pending).await {
                    error!(
                        app = record.name,
                        version = pending.id(),
                        error = format!("{e:#}"),
                        "could not get a version ready"
                    );
                }
            }
            changed |= self.follow_canary(&record.name, record, &mut wanted).await;
            let serving = self
                .lock()
                .deployed
                .get(&record.name)
                .map(|(n, d, _)| (*n, d.clone()));
            match &record.active {
                Some(active) if serving != Some((active.number, active.digest.clone())) => {
                    wanted.insert((record.name.clone(), active.number));
                    match self.prepare(&record.name, active).await {
                        Ok(()) => {
                            let mut state = self.lock();
                            let app = state
                                .prepared
                                .remove(&(record.name.clone(), active.number))
                                .expect("prepared above");
                            state.deployed.insert(
                                record.name.clone(),
                                (active.number, active.digest.clone(), app),
                            );
                            changed = true;
                            info!(
                                app = record.name,
                                version = active.id(),
                                "switching to a deployed version"
                            );
                        }
                        Err(e) => error!(
                            app = record.name,
                            version = active.id(),
                            error = format!("{e:#}"),
                            "could not load the active version; still serving the one before"
                        ),
                    }
                }
                Some(_) => {}
                None => {
                    if self.lock().deployed.remove(&record.name).is_some() {
                        changed = true;
                        info!(app = record.name, "app removed");
                    }
                }
            }
        }
        let mut state = self.lock();
        state.prepared.retain(|key, _| wanted.contains(key));
        // An app the registry no longer lists at all (removed, its route freed) goes too.
        let listed: BTreeSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
        let before = state.deployed.len() + state.canaries.len();
        state.deployed.retain(|name, _| {
            let keep = listed.contains(name.as_str());
            if !keep {
                info!(app = name, "app removed");
            }
            keep
        });
        state
            .canaries
            .retain(|name, _| listed.contains(name.as_str()));
        changed |= state.deployed.len() + state.canaries.len() != before;
        if changed {
            let router = self.router(&state);
            self.routes.replace(router);
        }
        state.record.generation = generation;
        let running: BTreeMap<String, u64> = state
            .deployed
            .iter()
            .map(|(name, (number, _, _))| (name.clone(), *number))
            .collect();
        count_switches(&state.record.running, &running);
        state.record.running = running;
        let mut ready: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (name, number) in state.prepared.keys() {
            ready.entry(name.clone()).or_default().push(*number);
        }
        state.record.ready = ready;
        state.record.canary = state
            .canaries
            .iter()
            .map(|(name, serving)| (name.clone(), serving.share))
            .collect();
        drop(state);
        self.news.notify_one();
        Ok(())
    }

    /// Splits app `name`'s requests with the canary `record` names, loading it first, or
    /// stops splitting them when it names none; whether the route table must change.
    async fn follow_canary(
        &self,
        name: &str,
        record: &registry::AppRecord,
        wanted: &mut BTreeSet<(String, u64)>,
    ) -> bool {
        let Some(canary) = &record.canary else {
            let ended = self.lock().canaries.remove(name).is_some();
            if ended {
                info!(app = name, "canary ended");
            }
            return ended;
        };
        let version = &canary.version;
        wanted.insert((name.to_string(), version.number));
        if let Err(e) = self.prepare(name, version).await {
            error!(
                app = name,
                version = version.id(),
                error = format!("{e:#}"),
                "could not load a canary; its share stays on the active version here"
            );
            return false;
        }
        let share = Share {
            version: version.number,
            percent: canary.percent,
        };
        let mut state = self.lock();
        let now = state.canaries.get(name);
        if now.is_some_and(|s| s.share == share && s.digest == version.digest) {
            return false;
        }
        let Some(app) = state.prepared.get(&(name.to_string(), version.number)) else {
            return false;
        };
        // The counts go on across a change of share; a new version starts its own.
        let tallies = match now {
            Some(s) if s.share.version == share.version => s.split.tallies.clone(),
            _ => Arc::new(Tallies::default()),
        };
        let serving = Serving {
            share,
            digest: version.digest.clone(),
            split: Split {
                canary: app.clone(),
                version: version.number,
                percent: canary.percent,
                tallies,
            },
            bucket_secs: canary.plan.bucket_secs(),
        };
        state.canaries.insert(name.to_string(), serving);
        info!(
            app = name,
            version = version.id(),
            percent = canary.percent,
            "splitting requests with a canary"
        );
        true
    }

    /// Gets `version` of app `name` compiled and ready, unless it is already.
    async fn prepare(&self, name: &str, version: &Version) -> Result<()> {
        {
            let state = self.lock();
            let key = (name.to_string(), version.number);
            if state.prepared.contains_key(&key)
                || state
                    .deployed
                    .get(name)
                    .is_some_and(|(n, d, _)| *n == version.number && *d == version.digest)
            {
                return Ok(());
            }
        }
        let bytes = self.registry.get_blob(&version.digest).await?;
        let spec = AppSpec {
            name: name.to_string(),
            route: version.route.clone(),
            wasm: PathBuf::from(format!("registry:{}", version.digest)),
            settings: version.settings.clone(),
            assets: None,
        };
        let assets = match &version.assets {
            Some(digest) => Assets::from_bundle(&self.registry.get_blob(digest).await?)?,
            None => Assets::empty(),
        };
        let (host, cache, digest) = (
            self.host.clone(),
            self.cache.clone(),
            version.digest.clone(),
        );
        // Compiling takes a core for a while (and the store is read and written while other
        // processes of this replica wait): off the request path, on the blocking pool.
        let (component, how) =
            tokio::task::spawn_blocking(move || cache.deployed(&host, &digest, &bytes)).await??;
        let app = App::with_assets(&self.host, &spec, component, assets)?;
        info!(
            app = name,
            version = version.id(),
            cached = how == Compiled::Cached,
            shared = how == Compiled::Shared,
            "version ready"
        );
        self.lock()
            .prepared
            .insert((name.to_string(), version.number), app);
        self.news.notify_one();
        Ok(())
    }

    /// The route table: the fixed apps, then every deployed app that does not clash with
    /// one already in. Clashes are refused at deploy time; this covers a replica started
    /// later with a fixed app of the same name or route, and versions stored before routes
    /// were checked as they are now. One app that does not fit never takes the others down.
    fn router(&self, state: &State) -> Router {
        let mut apps = state.fixed.clone();
        let fixed = apps.len();
        let mut splits: Vec<Option<Split>> = vec![None; fixed];
        for (name, (_, _, app)) in &state.deployed {
            if let Err(e) = crate::config::validate_route(app.route()) {
                error!(
                    app = name,
                    error = format!("{e:#}"),
                    "not serving a deployed app"
                );
                continue;
            }
            let clash = apps
                .iter()
                .position(|other| other.name() == app.name() || other.route() == app.route());
            match clash {
                Some(at) => error!(
                    app = name,
                    with = &**apps[at].name(),
                    "a deployed app clashes with {} app of the same name or route; not serving it",
                    if at < fixed { "a fixed" } else { "a deployed" }
                ),
                None => {
                    apps.push(app.clone());
                    splits.push(state.canaries.get(name).map(|s| s.split.clone()));
                }
            }
        }
        Router::with_splits(apps.into_iter().zip(splits)).unwrap_or_else(|e| {
            error!(
                error = format!("{e:#}"),
                "the deployed apps do not fit the route table; serving the fixed apps only"
            );
            Router::new(state.fixed.clone()).expect("the fixed apps were routed at start")
        })
    }
}

/// Says in the metrics which version of each app this process serves, and counts the
/// switches from `before` to `after`.
fn count_switches(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) {
    let metrics = crate::metrics::get();
    let label = |app: &str, number: u64| crate::metrics::VersionLabels {
        app: app.to_string(),
        version: format!("v{number}"),
    };
    for (app, number) in before {
        if after.get(app) != Some(number) {
            metrics.serving.remove(&label(app, *number));
        }
    }
    for (app, number) in after {
        if before.get(app) != Some(number) {
            metrics.serving.get_or_create(&label(app, *number)).set(1);
            metrics
                .version_switches
                .get_or_create(&crate::metrics::AppLabel { app: app.clone() })
                .inc();
        }
    }
}

/// A new id for a replica: the host's name and 64 random bits.
pub(crate) fn new_id() -> Result<String> {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).context("no randomness for a replica id")?;
    Ok(format!(
        "{}-{}",
        registry::hostname(),
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}
