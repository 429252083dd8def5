//! `tabula check`: whether a live fleet keeps the promise that nothing survives between
//! requests, and whether its replicas agree.
//!
//! It deploys the probe (`host/probe`, built into this binary by `build.rs`) through the admin
//! API under a name of its own, hits every URL given (replicas, or a load balancer) many times
//! at once, removes the probe, and reads the answers: each says how many requests its
//! instance had served, whether the file and the environment variable an earlier request
//! left were there, a random value and seed, the guest's clock, and the names of what the host
//! gave it. The admin API says which version of each app every replica runs.
//!
//! The probe is removed however the check ends: on an error, and on SIGINT or SIGTERM (a
//! deploy under way is let finish first, so that it cannot land after the removal). Only a
//! SIGKILL can leave it deployed; it is then listed by `tabula apps` as `tabula-check-…`.
//!
//! Against a host without tabula's admin API, `--write-probe` writes the probe out for the
//! operator to serve, and `--probe-url` checks it where it is served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::watch;

use super::client::AdminClient;

/// The probe component.
pub const PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.wasm"));

/// The first word of every probe answer.
const PROBE_MARK: &str = "tabula-check-probe";

/// How far the probe's clock may be from the checker's, beyond the request's own time.
const CLOCK_TOLERANCE: Duration = Duration::from_secs(2);

/// How long removing the probe may take before the check gives up and says how to do it.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// What to hit, and how hard.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Requests sent to each URL.
    pub requests: usize,
    /// Requests in flight at once to each URL.
    pub concurrency: usize,
}

/// How a check ended, when it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing survived between requests and the replicas agree.
    Clean,
    /// Something did, or they differ: the report says what.
    Findings,
    /// Stopped by SIGINT or SIGTERM, after removing the probe.
    Interrupted,
}

/// `tabula check --admin-url ADMIN URL...`: deploys the probe through `admin`, checks it at
/// each of `urls` (the probe's route appended), and removes it.
pub async fn fleet(
    admin: &AdminClient,
    urls: &[String],
    options: &CheckOptions,
) -> Result<Outcome> {
    let stop = stop_on_signals()?;
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).context("no randomness for the probe's name")?;
    let name = format!(
        "tabula-check-{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let route = format!("/{name}");
    eprintln!("tabula: deploying the probe as {name} at {route}");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("route", &route)
        .append_pair(
            "message",
            "tabula check's probe: removed when the check ends",
        )
        .append_pair("source", "tabula check")
        .finish();
    // Not raced against a signal: a deploy cut off could still land after the removal.
    let deployed = admin.upload(&name, &query, PROBE.to_vec(), &[]).await;
    let result = match deployed {
        Err(e) => Err(e.context("deploying the probe")),
        Ok(_) if *stop.borrow() => Ok(None),
        Ok(done) => {
            let targets: Vec<String> = urls
                .iter()
                .map(|url| format!("{}{route}", url.trim_end_matches('/')))
                .collect();
            let mut stopped = stop.clone();
            tokio::select! {
                answers = hit(&targets, options) => {
                    let mut report = Report::of(&answers);
                    report.not_ready(&done);
                    versions(admin)
                        .await
                        .context("reading which replica runs which version")
                        .map(|skew| {
                            report.versions(skew);
                            Some(report)
                        })
                }
                _ = stopped.wait_for(|stop| *stop) => Ok(None),
            }
        }
    };
    if *stop.borrow() {
        eprintln!("tabula: interrupted: removing the probe");
    }
    let removed = remove(admin, &name).await;
    let report = match (result, removed) {
        (Err(e), Err(removal)) => return Err(e.context(format!("{removal:#}"))),
        (Err(e), Ok(())) | (Ok(_), Err(e)) => return Err(e),
        (Ok(report), Ok(())) => report,
    };
    eprintln!("tabula: removed the probe {name}");
    Ok(match report {
        None => Outcome::Interrupted,
        Some(report) => report.print(),
    })
}

/// `tabula check --probe-url URL...`: checks the probe where the operator serves it (written
/// by `--write-probe`), on hosts without tabula's admin API. Deploys and removes nothing.
pub async fn served(urls: &[String], options: &CheckOptions) -> Result<Outcome> {
    let stop = stop_on_signals()?;
    let mut stopped = stop.clone();
    tokio::select! {
        answers = hit(urls, options) => Ok(Report::of(&answers).print()),
        _ = stopped.wait_for(|stop| *stop) => Ok(Outcome::Interrupted),
    }
}

/// A channel that turns true on SIGINT or SIGTERM: listening replaces the default of dying
/// there, so the probe can be removed first.
fn stop_on_signals() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        let _ = tx.send(true);
        // Later signals are taken too, so that a second Ctrl-C does not skip the removal.
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
    });
    Ok(rx)
}

/// Removes the probe from every replica, within [`REMOVE_TIMEOUT`].
async fn remove(admin: &AdminClient, name: &str) -> Result<()> {
    let how = format!("remove it with `tabula rm {name}`");
    match tokio::time::timeout(
        REMOVE_TIMEOUT,
        admin.json("DELETE", &format!("/v1/apps/{name}")),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        // Never deployed: the upload was refused.
        Ok(Err(e)) if format!("{e:#}").ends_with("(404 Not Found)") => Ok(()),
        Ok(Err(e)) => Err(e.context(format!("removing the probe failed: {how}"))),
        Err(_) => bail!(
            "removing the probe took longer than {} s: {how}",
            REMOVE_TIMEOUT.as_secs()
        ),
    }
}

/// For each app with a replica that runs another version than the active one: the app, the
/// active version, and each such replica with what it runs.
type Skew = Vec<(String, String, Vec<(String, String)>)>;

/// Which replicas run another version of an app than the fleet's active one. Apps with a
/// rollout under way are skipped: their replicas switch one by one.
async fn versions(admin: &AdminClient) -> Result<Skew> {
    let mut skew = Vec::new();
    for app in admin
        .json("GET", "/v1/apps")
        .await?
        .as_array()
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(active)) = (app["name"].as_str(), app["active"].as_str()) else {
            continue;
        };
        if app["pending"].is_string() {
            continue;
        }
        let detail = admin.json("GET", &format!("/v1/apps/{name}")).await?;
        let behind: Vec<(String, String)> = detail["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["running"].as_str() != Some(active))
            .map(|r| {
                let replica = format!(
                    "{} ({})",
                    r["id"].as_str().unwrap_or("?"),
                    r["address"].as_str().unwrap_or("?")
                );
                (
                    replica,
                    r["running"].as_str().unwrap_or("nothing").to_string(),
                )
            })
            .collect();
        if !behind.is_empty() {
            skew.push((name.to_string(), active.to_string(), behind));
        }
    }
    Ok(skew)
}

/// What the probe answered to one request.
struct Probed {
    fields: HashMap<String, String>,
    /// When the request was sent and its answer read, in ms since the epoch.
    window: (u64, u64),
}

impl Probed {
    fn field(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

/// One request's outcome.
enum Answer {
    /// The probe answered.
    Probe(Probed),
    /// Something else answered.
    Other(String),
    /// Nothing answered.
    Failed(String),
}

/// Sends `options.requests` GETs to each of `targets`, `options.concurrency` at a time to
/// each; returns the answers by target.
async fn hit(targets: &[String], options: &CheckOptions) -> Vec<(String, Vec<Answer>)> {
    eprintln!(
        "tabula: sending {} requests to each of {} URL{}, {} at a time",
        options.requests,
        targets.len(),
        if targets.len() == 1 { "" } else { "s" },
        options.concurrency
    );
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, target) in targets.iter().enumerate() {
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..options.concurrency.max(1) {
            let (client, target, next) = (client.clone(), target.clone(), next.clone());
            let requests = options.requests;
            tasks.spawn(async move {
                let mut answers = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    answers.push(ask(&client, &target).await);
                }
                (index, answers)
            });
        }
    }
    let mut by_target: Vec<(String, Vec<Answer>)> =
        targets.iter().map(|t| (t.clone(), Vec::new())).collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((index, answers)) = done {
            by_target[index].1.extend(answers);
        }
    }
    by_target
}

async fn ask(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Answer {
    let sent = now_ms();
    let request = match hyper::Request::get(url).body(Empty::new()) {
        Ok(request) => request,
        Err(e) => return Answer::Failed(format!("{url} is not a URL: {e}")),
    };
    let response =
        match tokio::time::timeout(Duration::from_secs(30), client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Answer::Failed(format!("{e}")),
            Err(_) => return Answer::Failed("no answer within 30 s".into()),
        };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(e) => return Answer::Failed(format!("reading the body: {e}")),
    };
    let window = (sent, now_ms());
    match body.trim_end().strip_prefix(PROBE_MARK) {
        Some(rest) if status.is_success() => Answer::Probe(Probed {
            fields: parse(rest),
            window,
        }),
        _ => Answer::Other(format!(
            "{status} {:?}",
            body.chars().take(80).collect::<String>()
        )),
    }
}

/// The probe's `key=value` pairs; `ambient` is the rest of the line.
fn parse(line: &str) -> HashMap<String, String> {
    let (pairs, ambient) = line.split_once(" ambient=").unwrap_or((line, ""));
    pairs
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("ambient".to_string(), ambient.to_string())])
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What each check found: `None` when it passed.
struct Report {
    requests: usize,
    checks: Vec<(&'static str, Option<String>)>,
}

impl Report {
    /// Reads the answers: what survived between requests, and where the answers differ.
    fn of(by_target: &[(String, Vec<Answer>)]) -> Report {
        let requests = by_target.iter().map(|(_, a)| a.len()).sum();
        let probes: Vec<(&str, &Probed)> = by_target
            .iter()
            .flat_map(|(target, answers)| {
                answers.iter().filter_map(move |a| match a {
                    Answer::Probe(probed) => Some((target.as_str(), probed)),
                    _ => None,
                })
            })
            .collect();
        let mut checks = Vec::new();

        // Every request answered by the probe: else a replica does not run what was deployed.
        let mut unanswered = Vec::new();
        for (target, answers) in by_target {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for answer in answers {
                match answer {
                    Answer::Probe(_) => {}
                    Answer::Other(what) => *kinds.entry(what.clone()).or_default() += 1,
                    Answer::Failed(why) => *kinds.entry(format!("failed: {why}")).or_default() += 1,
                }
            }
            if !kinds.is_empty() {
                let n: usize = kinds.values().sum();
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} × {k}")).collect();
                unanswered.push(format!(
                    "{target}: {n} of {} requests were not answered by the probe ({}): a replica \
                     behind it does not run the deployed version, or is failing",
                    answers.len(),
                    kinds.join("; ")
                ));
            }
        }
        checks.push(("every request reached the probe", lines(unanswered)));

        // Linear memory and globals: a fresh instance has served exactly one request.
        let mut reused = Vec::new();
        for (target, _) in by_target {
            let counts: Vec<u64> = probes
                .iter()
                .filter(|(t, _)| t == target)
                .map(|(_, p)| p.field("requests").parse().unwrap_or(0))
                .collect();
            let again = counts.iter().filter(|&&n| n != 1).count();
            if again > 0 {
                reused.push(format!(
                    "{target}: {again} of {} answers came from an instance that had served \
                     earlier requests (a counter in its linear memory reached {}): instances \
                     are reused, with their memory and globals",
                    counts.len(),
                    counts.iter().max().unwrap_or(&0)
                ));
            }
        }
        checks.push((
            "a fresh instance per request (linear memory, globals)",
            lines(reused),
        ));

        for (key, check, what) in [
            (
                "tmp",
                "a fresh /tmp per request",
                "found the file an earlier request wrote to /tmp",
            ),
            (
                "env",
                "a fresh environment per request",
                "found the environment variable an earlier request set",
            ),
        ] {
            let mut kept = Vec::new();
            for (target, _) in by_target {
                let seen: Vec<&str> = probes
                    .iter()
                    .filter(|(t, _)| t == target)
                    .map(|(_, p)| p.field(key))
                    .collect();
                let n = seen.iter().filter(|v| **v == "kept").count();
                if n > 0 {
                    kept.push(format!("{target}: {n} of {} answers {what}", seen.len()));
                }
            }
            checks.push((check, lines(kept)));
        }

        // Randomness seeded the same: a 64-bit random value seen twice is no coincidence.
        let mut repeated = Vec::new();
        // The insecure seed is fixed for an instance's life, so a reused instance repeats it.
        for (key, source, why) in [
            (
                "random",
                "wasi:random/random",
                "instances are seeded the same",
            ),
            (
                "seed",
                "wasi:random/insecure-seed",
                "requests shared an instance, or instances are seeded the same",
            ),
        ] {
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (_, p) in &probes {
                *seen.entry(p.field(key)).or_default() += 1;
            }
            let twice: Vec<(&&str, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
            if let Some((value, n)) = twice.iter().max_by_key(|(_, n)| **n) {
                repeated.push(format!(
                    "{source} gave the same value to more than one request ({} values repeated; \
                     {value} came {n} times): {why}",
                    twice.len()
                ));
            }
        }
        checks.push(("randomness differs per request", lines(repeated)));

        // Clocks: a replica's clock off from this machine's skews expiries and logs.
        let tolerance = CLOCK_TOLERANCE.as_millis() as u64;
        let mut skewed: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
        for (target, p) in &probes {
            let (sent, received) = p.window;
            let clock: u64 = p.field("clock").parse().unwrap_or(0);
            let off = if clock + tolerance < sent {
                clock as i64 - sent as i64
            } else if clock > received + tolerance {
                clock as i64 - received as i64
            } else {
                continue;
            };
            let entry = skewed.entry(target).or_default();
            entry.0 += 1;
            if off.abs() > entry.1.abs() {
                entry.1 = off;
            }
        }
        let skewed = skewed
            .iter()
            .map(|(target, (n, off))| {
                format!(
                    "{target}: {n} answers had a clock off from this machine's by up to {:.1} s",
                    *off as f64 / 1000.0
                )
            })
            .collect();
        checks.push(("clocks agree", lines(skewed)));

        // What the host gives a guest: the same on every replica.
        let mut ambient: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, p) in &probes {
            *ambient.entry(p.field("ambient")).or_default() += 1;
        }
        let differ = if ambient.len() > 1 {
            let kinds: Vec<String> = ambient
                .iter()
                .map(|(names, n)| {
                    let names = if names.is_empty() { "nothing" } else { names };
                    format!("{n} answers were given {names}")
                })
                .collect();
            Some(format!(
                "replicas give guests different environments or directories: {}",
                kinds.join("; ")
            ))
        } else {
            None
        };
        checks.push(("every replica gives a guest the same environment", differ));

        Report { requests, checks }
    }

    /// The replicas the probe's deploy did not reach in time.
    fn not_ready(&mut self, done: &Value) {
        let late = done["not_ready"]
            .as_array()
            .filter(|late| !late.is_empty())
            .map(|late| {
                format!(
                    "replicas that did not get the probe ready within the deploy timeout: {}",
                    late.iter()
                        .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        self.checks.push(("every replica loaded the probe", late));
    }

    /// The replicas that run another version of an app than the active one.
    fn versions(&mut self, skew: Skew) {
        let behind = skew
            .into_iter()
            .flat_map(|(app, active, replicas)| {
                replicas.into_iter().map(move |(replica, running)| {
                    format!(
                        "{app}: replica {replica} runs {running}; the active version is {active}"
                    )
                })
            })
            .collect();
        self.checks.push((
            "every replica runs each app's active version",
            lines(behind),
        ));
    }

    /// Prints the report to stdout and says what it amounts to.
    fn print(&self) -> Outcome {
        let found = self.checks.iter().filter(|(_, f)| f.is_some()).count();
        println!("tabula check: {} requests", self.requests);
        for (check, finding) in &self.checks {
            match finding {
                None => println!("  ok       {check}"),
                Some(finding) => {
                    println!("  FINDING  {check}");
                    for line in finding.lines() {
                        println!("           {line}");
                    }
                }
            }
        }
        if found == 0 {
            println!("clean: nothing survived between requests, and the replicas agree");
            Outcome::Clean
        } else {
            println!(
                "{found} finding{}: state survives between requests or the replicas differ \
                 (see docs/operating.md, \"Checking a fleet\")",
                if found == 1 { "" } else { "s" }
            );
            Outcome::Findings
        }
    }
}

/// Findings as one text, a line each; `None` for none.
fn lines(findings: Vec<String>) -> Option<String> {
    (!findings.is_empty()).then(|| findings.join("\n"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_answers_parse_with_ambient_last() {
        let fields = super::parse(
            " requests=2 tmp=kept env=fresh random=00ff seed=01 clock=5 ambient=dir:/tmp,env:A B",
        );
        assert_eq!(fields["requests"], "2");
        assert_eq!(fields["tmp"], "kept");
        assert_eq!(fields["ambient"], "dir:/tmp,env:A B");
    }
}
