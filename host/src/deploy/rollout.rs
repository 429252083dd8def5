//! A rollout: one version of one app made active on every replica, with progress reported
//! as it goes. The version is marked pending, every live replica gets it ready, the active
//! pointer flips once, and the replicas switch; a rollout replaced by another deploy of the
//! same app fails at once.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::registry::{AppRecord, Registry, Version};

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

/// Deploys `version` of app `name` to every replica, reporting as it goes: one JSON object
/// per line. The rollout runs on its own task, so a client that goes away does not leave it
/// half done.
pub(super) fn roll_out(
    registry: Registry,
    timeout: Duration,
    keep: usize,
    name: String,
    version: Version,
) -> Response {
    let (tx, rx) = mpsc::channel::<serde_json::Value>(64);
    tokio::spawn(async move {
        let outcome = switch(&registry, timeout, &name, &version, &tx).await;
        let last = match outcome {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(app = name, error = format!("{e:#}"), "deploy failed");
                json!({ "event": "error", "message": format!("{e:#}") })
            }
        };
        let _ = tx.send(last).await;
        collect_later(registry, keep);
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

/// The steps of a deploy: mark the version pending, wait for every live replica to have it
/// ready, flip the active pointer once, wait for the replicas to switch.
async fn switch(
    registry: &Registry,
    timeout: Duration,
    name: &str,
    version: &Version,
    progress: &mpsc::Sender<serde_json::Value>,
) -> Result<serde_json::Value> {
    let say = |message: String| {
        let progress = progress.clone();
        async move {
            let _ = progress
                .send(json!({ "event": "progress", "message": message }))
                .await;
        }
    };
    let started = Instant::now();
    registry
        .update(name, |current| {
            Ok(AppRecord {
                name: name.to_string(),
                generation: 0,
                active: current.and_then(|r| r.active.clone()),
                pending: Some(version.clone()),
            })
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
    registry
        .update(name, |current| {
            let mut record = current.cloned().unwrap_or_else(|| AppRecord {
                name: name.to_string(),
                generation: 0,
                active: None,
                pending: None,
            });
            if record.pending.as_ref().map(|v| v.number) != Some(version.number) {
                anyhow::bail!(
                    "another deploy of `{name}` started meanwhile; this one is abandoned"
                );
            }
            record.active = Some(version.clone());
            record.pending = None;
            Ok(record)
        })
        .await?;
    say(format!("switched {name} to {}", version.id())).await;
    // The replicas that were ready switch within moments; wait a little to report them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let switched = loop {
        let replicas = registry.replicas().await?;
        let switched: Vec<String> = replicas
            .iter()
            .filter(|r| r.running.get(name) == Some(&version.number))
            .map(|r| r.id.clone())
            .collect();
        if switched.len() >= ready.len() || Instant::now() >= deadline {
            break switched;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    say(format!(
        "replicas serving {}: {}/{}",
        version.id(),
        switched.len(),
        ready.len() + not_ready.len()
    ))
    .await;
    Ok(json!({
        "event": "done",
        "app": name,
        "version": version.id(),
        "digest": version.digest,
        "switched": switched,
        "not_ready": not_ready,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// Deletes, in the background, the versions past the newest `keep` of each app and the
/// blobs no kept version names (see [`Registry::collect`]). A failure is logged: the next
/// deploy or removal collects again.
pub(super) fn collect_later(registry: Registry, keep: usize) {
    tokio::spawn(async move {
        match registry.collect(keep).await {
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
