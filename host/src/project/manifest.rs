//! `tabula.toml`: the small manifest that makes a directory a handler project.
//!
//! ```toml
//! name = "hello"      # optional: defaults to the directory's name
//! lang = "rust"       # optional: "rust" (Cargo.toml), "python" (app.py) or "js" (app.js);
//!                     # defaults to what the directory holds
//! route = "/hello"    # optional: defaults to "/" + name
//! assets = "public"   # optional: a directory served read-only to the guest at /app
//! strip_route = true  # optional: the guest sees `/x` for `/hello/x` (it learns its route
//!                     # from the `tabula-route` header either way)
//!
//! [session]           # optional: each may lower the host's default, or raise it up to
//!                     # the host's cap (--session-max-lifetime, --session-max-bytes)
//! cookie_name = "sid"
//! secure = true
//! idle_timeout_secs = 900
//! lifetime_secs = 14400
//! max_bytes = 65536
//!
//! [variables]         # optional: what the guest reads through wasi:config/store
//! greeting = "hello"
//! api_key = { env = "ACME_API_KEY" }  # a secret: read from tabula's environment where
//!                                     # the app loads; never stored, sent or logged
//!
//! [kv]                # optional
//! layout = "single-slot"  # every key of the app in one Redis Cluster slot (the default,
//!                         # "spread", spreads them over every master): see
//!                         # docs/architecture.md
//!
//! [limits]            # optional: each may lower the host's limit, none may exceed it
//! memory_mib = 64
//! request_timeout_secs = 10
//! max_body_bytes = 1048576
//! max_concurrency = 50
//! tmp_max_bytes = 16777216
//! tmp_max_files = 100
//! kv_max_key_bytes = 512
//! kv_max_value_bytes = 65536
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::config::{
    AppSettings, KvSettings, LimitSettings, SessionSettings, VariableSettings, validate_name,
};

/// The manifest's file name.
pub const FILE_NAME: &str = "tabula.toml";

/// The language a project is written in, and so how it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// A cargo project using the tabula SDK (`Cargo.toml`).
    Rust,
    /// An `app.py`, built with componentize-py.
    Python,
    /// An `app.js`, built with componentize-js.
    Js,
}

impl Lang {
    /// The language of the project in `dir` whose manifest does not say: the one whose
    /// files are there.
    fn detect(dir: &Path) -> Lang {
        if dir.join("app.py").is_file() && !dir.join("Cargo.toml").is_file() {
            Lang::Python
        } else if dir.join("app.js").is_file() && !dir.join("Cargo.toml").is_file() {
            Lang::Js
        } else {
            Lang::Rust
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    lang: Option<Lang>,
    route: Option<String>,
    assets: Option<String>,
    #[serde(default)]
    strip_route: bool,
    #[serde(default)]
    session: SessionSettings,
    #[serde(default)]
    limits: LimitSettings,
    #[serde(default)]
    variables: VariableSettings,
    #[serde(default)]
    kv: KvSettings,
}

/// A project's manifest with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The app's name: the directory's unless given.
    pub name: String,
    /// The app's route: `/NAME` unless given.
    pub route: String,
    /// The assets directory, relative to the project.
    pub assets: Option<String>,
    /// What the project is written in: `lang`, else what its files say.
    pub lang: Lang,
    /// `[limits]` and `[session]`.
    pub settings: AppSettings,
}

impl Manifest {
    /// Reads `dir/tabula.toml`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let dir_name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "app".into());
        Manifest::parse(&text, &dir_name, || Lang::detect(dir))
            .with_context(|| format!("in {}", path.display()))
    }

    fn parse(text: &str, dir_name: &str, detect: impl FnOnce() -> Lang) -> Result<Manifest> {
        let raw: Raw = toml::from_str(text)?;
        let name = raw.name.unwrap_or_else(|| dir_name.to_string());
        validate_name(&name)?;
        let route = raw.route.unwrap_or_else(|| format!("/{name}"));
        Ok(Manifest {
            name,
            route,
            assets: raw.assets,
            lang: raw.lang.unwrap_or_else(detect),
            settings: AppSettings {
                strip_route: raw.strip_route,
                limits: raw.limits,
                session: raw.session,
                kv: raw.kv,
                variables: raw.variables,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Lang, Manifest};

    #[test]
    fn defaults_come_from_the_directory() {
        let m = Manifest::parse("", "hello", || Lang::Rust).unwrap();
        assert_eq!(m.name, "hello");
        assert_eq!(m.route, "/hello");
    }

    #[test]
    fn explicit_values_win_and_typos_are_refused() {
        let m = Manifest::parse(
            "name = \"x\"\nroute = \"/\"\n[session]\nsecure = true\n",
            "dir",
            || Lang::Rust,
        )
        .unwrap();
        assert_eq!((m.name.as_str(), m.route.as_str()), ("x", "/"));
        assert_eq!(m.settings.session.secure, Some(true));
        let err = Manifest::parse("rout = \"/\"", "dir", || Lang::Rust).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        assert!(Manifest::parse("name = \"a b\"", "dir", || Lang::Rust).is_err());
    }
}
