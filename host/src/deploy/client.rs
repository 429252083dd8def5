//! The CLI's side of the admin API: `tabula deploy`, `apps`, `versions`, `rollback`,
//! `promote`, `rm` (and `check`'s deploys, in `check.rs`).
//! Progress goes to stderr as it happens; results go to stdout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::capabilities::Assets;
use crate::config::{AppSettings, validate_name, validate_route};
use crate::project::{self, BuildOptions};

/// Where the admin API is, and the token for it.
pub struct AdminClient {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client of the admin API at `url`, authenticating with `token`.
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient> {
        let token = token.filter(|t| !t.is_empty()).context(
            "no admin token: set TABULA_ADMIN_TOKEN to the token the hosts were started with",
        )?;
        Ok(AdminClient {
            base: url.trim_end_matches('/').to_string(),
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.base);
        let mut req = hyper::Request::builder().method(method).uri(&url).header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", self.token),
        );
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let response = self
            .client
            .request(req.body(Full::new(body))?)
            .await
            .with_context(|| {
                format!("reaching the admin API at {} (is a host running with --admin-listen there? see --admin-url)", self.base)
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let why = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{why} ({status})")
    }

    pub(super) async fn json(&self, method: &str, path: &str) -> Result<Value> {
        let response = self.send(method, path, Bytes::new(), &[]).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }

    /// Uploads `component` as a new version of app `name` (`query`: its route, message,
    /// source, assets) and follows its deploy; returns the outcome.
    pub(super) async fn upload(
        &self,
        name: &str,
        query: &str,
        component: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<Value> {
        let response = self
            .send(
                "POST",
                &format!("/v1/apps/{name}/versions?{query}"),
                Bytes::from(component),
                headers,
            )
            .await?;
        eprintln!("tabula: uploaded and checked");
        self.follow(response).await
    }

    /// Follows a deploy's progress lines to stderr and returns its outcome.
    async fn follow(&self, response: hyper::Response<hyper::body::Incoming>) -> Result<Value> {
        let mut body = response.into_body();
        let mut pending = Vec::new();
        let mut outcome = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let event: Value = serde_json::from_slice(&line)?;
                match event["event"].as_str() {
                    Some("progress") => {
                        eprintln!("tabula: {}", event["message"].as_str().unwrap_or(""))
                    }
                    Some("error") => bail!(
                        "{}",
                        event["message"].as_str().unwrap_or("the deploy failed")
                    ),
                    _ => outcome = Some(event),
                }
            }
        }
        outcome.context("the admin API ended the deploy without an outcome; see `tabula versions`")
    }
}

/// What `tabula deploy` was asked to deploy.
pub struct DeployOptions {
    /// A project directory (built first) or a `.wasm` component.
    pub path: PathBuf,
    /// The app's name: the manifest's or the file's unless given.
    pub name: Option<String>,
    /// The app's route: the manifest's or `/NAME` unless given.
    pub route: Option<String>,
    /// Said about the version in `tabula versions`.
    pub message: String,
    /// A directory served read-only at `/app`: the manifest's `assets` unless given.
    pub assets: Option<PathBuf>,
    /// How projects are built.
    pub build: BuildOptions,
    /// Roll it out as a canary by this plan instead of switching every request at once.
    pub canary: Option<super::registry::CanaryPlan>,
}

/// `tabula deploy`.
pub async fn deploy(client: &AdminClient, options: DeployOptions) -> Result<()> {
    let path = options.path.display().to_string();
    let spec = project::build(std::slice::from_ref(&path), &options.build)?
        .into_iter()
        .next()
        .context("nothing to deploy")?;
    let name = options.name.unwrap_or(spec.name);
    let route = options.route.unwrap_or_else(|| {
        if spec.route == "/" && options.path.is_file() {
            format!("/{name}")
        } else {
            spec.route.clone()
        }
    });
    // Checked here too, before a long upload: a name that is not one cannot be put in the URL.
    validate_name(&name)?;
    validate_route(&route)?;
    let bytes =
        std::fs::read(&spec.wasm).with_context(|| format!("reading {}", spec.wasm.display()))?;
    // The host refuses it anyway, but only after the upload, and a client cut off mid-upload
    // sees a broken connection rather than the reason.
    let limits = client.json("GET", "/v1/limits").await?;
    if let Some(max) = limits["max_component_bytes"].as_u64()
        && bytes.len() as u64 > max
    {
        bail!(
            "the component is larger than this host accepts ({} bytes; the limit is {max} \
             bytes, the host's --max-component-mib)",
            bytes.len()
        );
    }
    eprintln!(
        "tabula: uploading {name} ({:.1} MB) to {}",
        bytes.len() as f64 / 1e6,
        client.base
    );
    let source = source_of(&options.path);
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("route", &route)
        .append_pair("message", &options.message)
        .append_pair("source", &source);
    if let Some(plan) = &options.canary {
        plan.check()?;
        let steps: Vec<String> = plan.steps.iter().map(u8::to_string).collect();
        query
            .append_pair("canary", &steps.join(","))
            .append_pair("canary_interval", &plan.interval_secs.to_string())
            .append_pair("canary_window", &plan.window_secs.to_string())
            .append_pair(
                "canary_max_error_excess",
                &plan.max_error_excess.to_string(),
            )
            .append_pair("canary_min_requests", &plan.min_requests.to_string());
    }
    if let Some(dir) = options.assets.or(spec.assets) {
        let bundle = Assets::bundle(&dir)
            .with_context(|| format!("bundling the assets in {}", dir.display()))?;
        eprintln!(
            "tabula: uploading the assets of {name} ({}, {:.1} MB)",
            dir.display(),
            bundle.len() as f64 / 1e6
        );
        let response = client
            .send("PUT", "/v1/assets", Bytes::from(bundle), &[])
            .await?;
        let body = response.into_body().collect().await?.to_bytes();
        let stored: Value = serde_json::from_slice(&body)?;
        let digest = stored["digest"]
            .as_str()
            .context("the host stored no assets")?;
        query.append_pair("assets", digest);
        if let Some(pin) = stored["pin"].as_str() {
            query.append_pair("assets_pin", pin);
        }
    }
    let query = query.finish();
    let settings = serde_json::to_string(&spec.settings as &AppSettings)?;
    let done = client
        .upload(&name, &query, bytes, &[("tabula-settings", settings)])
        .await?;
    report(&done);
    Ok(())
}

/// Who deployed what from where, as `USER@HOST:PATH`: what the deployer's machine says,
/// not an identity the host checked (everyone with the admin token is the same to it), but
/// what the dashboard and `tabula versions` show to tell deploys apart.
fn source_of(path: &Path) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "someone".into());
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    format!("{user}@{}:{}", super::registry::hostname(), path.display())
}

fn report(done: &Value) {
    let switched = done["switched"].as_array().map_or(0, Vec::len);
    let app = done["app"].as_str().unwrap_or("");
    if let Some(percent) = done["canary"].as_u64() {
        println!(
            "{app} {} gets {percent}% of the requests on {switched} replica{}, the rest stay \
             on {}; `tabula promote {app}` finishes the rollout, `tabula rollback {app}` ends it",
            done["version"].as_str().unwrap_or(""),
            if switched == 1 { "" } else { "s" },
            done["active"].as_str().unwrap_or("the active version"),
        );
        return;
    }
    println!(
        "{} {} is active ({} replica{} switched, {:.2} s; digest {})",
        app,
        done["version"].as_str().unwrap_or(""),
        switched,
        if switched == 1 { "" } else { "s" },
        done["seconds"].as_f64().unwrap_or(0.0),
        done["digest"].as_str().unwrap_or("")
    );
    if let Some(late) = done["not_ready"].as_array().filter(|l| !l.is_empty()) {
        println!("not ready in time (they switch when they are): {late:?}");
    }
}

/// `tabula apps`.
pub async fn apps(client: &AdminClient) -> Result<()> {
    let apps = client.json("GET", "/v1/apps").await?;
    println!("{:<20} {:<24} {:<8} PENDING", "NAME", "ROUTE", "ACTIVE");
    for app in apps.as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<24} {:<8} {}",
            app["name"].as_str().unwrap_or(""),
            app["route"].as_str().unwrap_or("-"),
            app["active"].as_str().unwrap_or("-"),
            app["pending"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// `tabula versions NAME`.
pub async fn versions(client: &AdminClient, name: &str) -> Result<()> {
    validate_name(name)?;
    let app = client.json("GET", &format!("/v1/apps/{name}")).await?;
    let active = app["app"]["active"].as_str().unwrap_or("");
    println!(
        "{:<3}{:<6} {:<14} {:>10}  {:<18} MESSAGE",
        "", "ID", "DIGEST", "BYTES", "CREATED"
    );
    for v in app["versions"].as_array().into_iter().flatten() {
        let id = v["id"].as_str().unwrap_or("");
        println!(
            "{:<3}{:<6} {:<14} {:>10}  {:<18} {}",
            if id == active { "*" } else { "" },
            id,
            v["digest"].as_str().and_then(|d| d.get(..12)).unwrap_or(""),
            v["size"].as_u64().unwrap_or(0),
            utc(v["created"].as_u64().unwrap_or(0)),
            v["message"].as_str().unwrap_or("")
        );
    }
    let canary = &app["app"]["canary"];
    if let Some(version) = canary["version"].as_str() {
        println!(
            "canary: {version} gets {}% of the requests (steps {}, every {} s; rolled back \
             when its error rate over {} s exceeds {}'s by more than {} points)",
            canary["percent"],
            canary["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(","),
            canary["interval_secs"],
            canary["window_secs"],
            if active.is_empty() {
                "the active version"
            } else {
                active
            },
            canary["max_error_excess"],
        );
    }
    let last = &app["app"]["last_canary"];
    if let Some(version) = last["version"].as_str() {
        println!(
            "last canary: {version} {} at {}% on {}: {}",
            last["outcome"].as_str().unwrap_or(""),
            last["percent"],
            utc(last["at"].as_u64().unwrap_or(0)),
            last["reason"].as_str().unwrap_or("")
        );
    }
    println!("replicas:");
    for r in app["replicas"].as_array().into_iter().flatten() {
        let split = match r["canary"]["version"].as_str() {
            Some(v) => format!(", {v} at {}%", r["canary"]["percent"]),
            None => String::new(),
        };
        println!(
            "  {:<32} {:<22} running {}{split}",
            r["id"].as_str().unwrap_or(""),
            r["address"].as_str().unwrap_or(""),
            r["running"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM` UTC (the days-to-civil algorithm of
/// Howard Hinnant's date library).
fn utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// `tabula rollback NAME [VERSION]`.
pub async fn rollback(client: &AdminClient, name: &str, version: Option<&str>) -> Result<()> {
    validate_name(name)?;
    let body = serde_json::json!({ "version": version });
    let response = client
        .send(
            "POST",
            &format!("/v1/apps/{name}/activate"),
            Bytes::from(serde_json::to_vec(&body)?),
            &[("content-type", "application/json".into())],
        )
        .await?;
    let done = client.follow(response).await?;
    report(&done);
    Ok(())
}

/// `tabula promote NAME`.
pub async fn promote(client: &AdminClient, name: &str) -> Result<()> {
    validate_name(name)?;
    let response = client
        .send(
            "POST",
            &format!("/v1/apps/{name}/promote"),
            Bytes::new(),
            &[],
        )
        .await?;
    let done = client.follow(response).await?;
    report(&done);
    Ok(())
}

/// `tabula rm NAME`.
pub async fn remove(client: &AdminClient, name: &str) -> Result<()> {
    validate_name(name)?;
    client.json("DELETE", &format!("/v1/apps/{name}")).await?;
    println!("{name} removed from every replica");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(1_795_720_727), "2026-11-26 19:18");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00");
    }
}
