//! A rollout: one version of one app made active on every replica, with progress reported
//! as it goes. The version is marked pending, every live replica gets it ready, the active
//! pointer flips once, and the replicas switch; a rollout replaced by another deploy of the
//! same app fails at once. A canary rollout, instead of the flip, gives the version a share
//! of the requests and follows it while the fleet's judge (`canary.rs`) moves it along.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::artifacts;
use super::registry::{AppRecord, Canary, CanaryPlan, Registry, Share, Version};

/// Fails when another deploy of app `name` has replaced `version` as the one being rolled
/// out: the losing side of two concurrent deploys is told at once, instead of waiting out
/// the deploy timeout for replicas that will never get its version ready.
async fn superseded(registry: &Registry, name: &str, version: &Version) -> Result<()> {
    let pending = registry
        .app(name)
        .await?
        .and_then(|(record, _)| record.pending);
    match pending {
        Some(pending) if pending.number == version.number => Ok(()),
        Some(other) => anyhow::bail!(
            "another deploy of `{name}` ({}) started meanwhile and replaced this one ({}); \
             nothing was switched",
            other.id(),
            version.id()
        ),
        None => anyhow::bail!(
            "`{name}` was switched or removed by someone else meanwhile; this deploy ({}) is \
             abandoned",
            version.id()
        ),
    }
}

/// Deploys `version` of app `name` to every replica, at once or, with a `plan`, as a canary
/// (see [`follow_canary`]), reporting as it goes: one JSON object per line. The rollout runs
/// on its own task, so a client that goes away does not leave it half done.
pub(super) fn roll_out(
    registry: Registry,
    timeout: Duration,
    keep: usize,
    name: String,
    version: Version,
    plan: Option<CanaryPlan>,
) -> Response {
    stream(name.clone(), move |progress| async move {
        let outcome = switch(&registry, timeout, &name, &version, plan, &progress).await;
        collect_later(registry, keep);
        outcome
    })
}

/// Reports, once every replica has followed a change that made `version` app `name`'s only
/// version (a promotion, or the end of a canary), which replicas did.
pub(super) fn settle(registry: Registry, name: String, version: Version) -> Response {
    stream(name.clone(), move |progress| async move {
        let started = Instant::now();
        let switched = serving_only(&registry, &name, &version, usize::MAX).await?;
        progress
            .say(format!(
                "replicas serving only {}: {}",
                version.id(),
                switched.len()
            ))
            .await;
        Ok(done(&name, &version, switched, Vec::new(), started))
    })
}

/// Progress lines of a rollout, for whoever follows it.
#[derive(Clone)]
pub(super) struct Progress(mpsc::Sender<serde_json::Value>);

impl Progress {
    async fn say(&self, message: String) {
        let _ = self
            .0
            .send(json!({ "event": "progress", "message": message }))
            .await;
    }
}

/// Runs `work` on its own task, and answers with its progress lines as they come, then its
/// outcome (or its error) as the last line.
fn stream<F, Fut>(name: String, work: F) -> Response
where
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: Future<Output = Result<serde_json::Value>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<serde_json::Value>(64);
    tokio::spawn(async move {
        let last = match work(Progress(tx.clone())).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(app = name, error = format!("{e:#}"), "deploy failed");
                json!({ "event": "error", "message": format!("{e:#}") })
            }
        };
        let _ = tx.send(last).await;
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).expect("JSON");
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .expect("a valid response")
}

/// A rollout's outcome line.
fn done(
    name: &str,
    version: &Version,
    switched: Vec<String>,
    not_ready: Vec<String>,
    started: Instant,
) -> serde_json::Value {
    json!({
        "event": "done",
        "app": name,
        "version": version.id(),
        "digest": version.digest,
        "switched": switched,
        "not_ready": not_ready,
        "seconds": started.elapsed().as_secs_f64(),
    })
}

/// The replicas that serve `version` of app `name` and no canary beside it, once `want` of
/// them do or 5 s have passed (those that were ready switch within moments).
async fn serving_only(
    registry: &Registry,
    name: &str,
    version: &Version,
    want: usize,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let replicas = registry.replicas().await?;
        let switched: Vec<String> = replicas
            .iter()
            .filter(|r| {
                r.running.get(name) == Some(&version.number) && !r.canary.contains_key(name)
            })
            .map(|r| r.id.clone())
            .collect();
        if switched.len() >= want.min(replicas.len()) || Instant::now() >= deadline {
            return Ok(switched);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The steps of a deploy: mark the version pending, wait for every live replica to have it
/// ready, then flip the active pointer once and wait for the replicas to switch, or start a
/// canary of it.
async fn switch(
    registry: &Registry,
    timeout: Duration,
    name: &str,
    version: &Version,
    plan: Option<CanaryPlan>,
    progress: &Progress,
) -> Result<serde_json::Value> {
    let say = |message: String| progress.say(message);
    let started = Instant::now();
    registry
        .update(name, |current| {
            let mut record = current.cloned().unwrap_or_else(|| AppRecord::empty(name));
            record.pending = Some(version.clone());
            Ok(record)
        })
        .await?;
    say(format!(
        "rolling out {name} {} to the replicas",
        version.id()
    ))
    .await;
    let has = |r: &super::registry::Heartbeat| {
        r.running.get(name) == Some(&version.number)
            || r.ready
                .get(name)
                .is_some_and(|ns| ns.contains(&version.number))
    };
    let deadline = started + timeout;
    let mut last = (usize::MAX, usize::MAX);
    let (ready, not_ready) = loop {
        superseded(registry, name, version).await?;
        let replicas = registry.replicas().await?;
        let (ready, not_ready): (Vec<_>, Vec<_>) = replicas.into_iter().partition(|r| has(r));
        let counts = (ready.len(), ready.len() + not_ready.len());
        if counts != last {
            say(format!("replicas ready {}/{}", counts.0, counts.1)).await;
            last = counts;
        }
        if not_ready.is_empty() || Instant::now() >= deadline {
            break (ready, not_ready);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let not_ready: Vec<String> = not_ready.into_iter().map(|r| r.id).collect();
    if !not_ready.is_empty() {
        say(format!(
            "not ready within {:?}: {}; they switch when they are",
            timeout,
            not_ready.join(", ")
        ))
        .await;
    }
    let canary = plan.is_some();
    registry
        .update(name, |current| {
            let mut record = current.cloned().unwrap_or_else(|| AppRecord::empty(name));
            if record.pending.as_ref().map(|v| v.number) != Some(version.number) {
                anyhow::bail!(
                    "another deploy of `{name}` started meanwhile; this one is abandoned"
                );
            }
            record.pending = None;
            record.end_canary(false, format!("replaced by the deploy of {}", version.id()));
            match &plan {
                Some(plan) => record.canary = Some(Canary::start(version.clone(), plan.clone())),
                None => record.active = Some(version.clone()),
            }
            Ok(record)
        })
        .await?;
    if canary {
        let ready: Vec<String> = ready.into_iter().map(|r| r.id).collect();
        return follow_canary(registry, name, version, &ready, progress, started).await;
    }
    say(format!("switched {name} to {}", version.id())).await;
    let switched = serving_only(registry, name, version, ready.len()).await?;
    say(format!(
        "replicas serving {}: {}/{}",
        version.id(),
        switched.len(),
        ready.len() + not_ready.len()
    ))
    .await;
    Ok(done(name, version, switched, not_ready, started))
}

/// Reports a canary of `version` as the fleet runs it: each share once every replica that
/// was `ready` (and is still alive) applies it, the figures once per window, and the end. It ends in a promotion (the
/// outcome), a rollback (an error that says why, with the figures), or, for a plan that
/// stops short of 100%, at its last step with the split in place (the outcome says so:
/// `tabula promote` or `tabula rollback` finish it). The fleet's judge decides, not this
/// task: if its client goes away, the canary goes on all the same.
async fn follow_canary(
    registry: &Registry,
    name: &str,
    version: &Version,
    ready: &[String],
    progress: &Progress,
    started: Instant,
) -> Result<serde_json::Value> {
    let mut applied = None;
    let mut figures_due = Instant::now();
    loop {
        if progress.0.is_closed() {
            return Ok(json!({}));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some((record, _)) = registry.app(name).await? else {
            anyhow::bail!("`{name}` was removed during its canary");
        };
        let active = record
            .active
            .clone()
            .context("the app has no active version")?;
        match &record.canary {
            Some(canary) if canary.version.number == version.number => {
                let share = Share {
                    version: version.number,
                    percent: canary.percent,
                };
                if applied != Some(share) {
                    let replicas = registry.replicas().await?;
                    let applying: Vec<String> = replicas
                        .iter()
                        .filter(|r| r.canary.get(name) == Some(&share))
                        .map(|r| r.id.clone())
                        .collect();
                    let waiting = replicas
                        .iter()
                        .any(|r| ready.contains(&r.id) && !applying.contains(&r.id));
                    if !waiting {
                        applied = Some(share);
                        progress
                            .say(format!(
                                "{} gets {}% of {name}'s requests on {} replica{}; the rest \
                                 go to {}",
                                version.id(),
                                canary.percent,
                                applying.len(),
                                if applying.len() == 1 { "" } else { "s" },
                                active.id()
                            ))
                            .await;
                        if canary.plan.steps.last() == Some(&canary.percent) {
                            let mut held = done(name, version, applying, Vec::new(), started);
                            held["canary"] = json!(canary.percent);
                            held["active"] = json!(active.id());
                            return Ok(held);
                        }
                    }
                }
                if Instant::now() >= figures_due {
                    figures_due = Instant::now() + Duration::from_secs(canary.plan.window_secs);
                    if let Some(f) = super::canary::figures(registry, &record).await? {
                        progress
                            .say(format!(
                                "last {} s: {} failed {} of {} requests ({:.1}%), {} {} of {} \
                                 ({:.1}%)",
                                f.seconds,
                                version.id(),
                                f.canary.errors,
                                f.canary.total,
                                f.canary.error_percent(),
                                active.id(),
                                f.active.errors,
                                f.active.total,
                                f.active.error_percent()
                            ))
                            .await;
                    }
                }
            }
            _ if active.number == version.number => {
                progress
                    .say(format!("{} promoted: every step passed", version.id()))
                    .await;
                let switched = serving_only(registry, name, version, usize::MAX).await?;
                return Ok(done(name, version, switched, Vec::new(), started));
            }
            _ => {
                let Some(end) = record
                    .last_canary
                    .as_ref()
                    .filter(|end| end.version == version.number)
                else {
                    anyhow::bail!(
                        "the canary of {name} {} was replaced by another deploy",
                        version.id()
                    );
                };
                let back = serving_only(registry, name, &active, usize::MAX).await?;
                anyhow::bail!(
                    "the canary of {name} {} was rolled back at {}%: every replica ({}) serves \
                     {} again. Why: {}",
                    version.id(),
                    end.percent,
                    back.len(),
                    active.id(),
                    end.reason
                );
            }
        }
    }
}

/// Deletes, in the background, the versions past the newest `keep` of each app and the
/// blobs no kept version names (see [`Registry::collect`]). A failure is logged: the next
/// deploy or removal collects again.
pub(super) fn collect_later(registry: Registry, keep: usize) {
    tokio::spawn(async move {
        let storage = registry.storage().clone();
        let artifacts = |digest: String| {
            let storage = storage.clone();
            async move { artifacts::delete(&*storage, &digest).await }
        };
        match registry.collect(keep, artifacts).await {
            Ok(c) if c.versions.is_empty() && c.blobs.is_empty() => {}
            Ok(c) => tracing::info!(
                versions = c.versions.join(", "),
                blobs = c.blobs.len(),
                "old versions and unused blobs deleted"
            ),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "could not delete old versions"),
        }
    });
}
