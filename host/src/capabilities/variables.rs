//! An app's variables: its own settings, served as `wasi:config/store` (twelve-factor III:
//! config varies per deploy and lives outside the code).
//!
//! A guest gets nothing of the host's environment, so this is the one way settings reach it.
//! They come from the app's `tabula.toml` (`[variables]`), from `--var`/`--secret` on the
//! command line, or with a deploy. A value is either given, or is a *secret*: a reference to
//! an environment variable of the host, read where the app loads. A secret's value is never
//! stored in the registry, never sent with a deploy, never in a log line or a metric: only
//! its reference travels, and [`Variables`]' `Debug` shows the reference, not the value.
//!
//! A deployer is a tenant, and the replica's environment also holds what no tenant may read:
//! `TABULA_ADMIN_TOKEN`, the store's URL with its password, cloud credentials. So a secret
//! may name only a variable the operator set aside for apps ([`SecretPolicy`]).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Linker, Lower};

/// The versions of `wasi:config/store` served. They differ only in their version string:
/// `0.2.0-draft` is the published tag (and tabula's SDKs), `0.2.0-draft-2024-09-27` what
/// Spin's SDKs import, `0.2.0-rc.1` what wasmtime's own `wasi-config` and test programs do.
pub const VERSIONS: &[&str] = &["0.2.0-draft", "0.2.0-draft-2024-09-27", "0.2.0-rc.1"];

/// The interface under its first name, which wasmCloud 1.x components import: the same
/// functions and types as `store` (its error variant was then named `config-error`, and
/// component types match by structure, not name), so the same host functions serve it.
const RUNTIME: &str = "wasi:config/runtime@0.2.0-draft";

/// The longest variable name, in bytes.
const MAX_NAME_BYTES: usize = 256;

/// One variable as settings give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VariableSetting {
    /// A value: `greeting = "hello"`.
    Value(String),
    /// A secret: `api_key = { env = "ACME_API_KEY" }`, the value of the host's environment
    /// variable `env` where the app loads.
    Secret {
        /// The host's environment variable holding the value.
        env: String,
    },
}

/// An app's variables as its settings give them, by name.
pub type VariableSettings = BTreeMap<String, VariableSetting>;

/// Names are what `wasi:config` keys and environment-style settings have in common:
/// `[A-Za-z0-9_.-]`, up to 256 bytes.
pub fn validate_variable_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        bail!(
            "`{name}` is not a valid variable name: use 1 to {MAX_NAME_BYTES} of \
             A-Z a-z 0-9 _ . -"
        );
    }
    Ok(())
}

/// The prefix a secret's environment variable must have unless the operator says otherwise.
pub const DEFAULT_SECRET_PREFIX: &str = "TABULA_SECRET_";

/// Which of the host's environment variables a secret may name: those that start with the
/// operator's prefix (`--secret-prefix`, [`DEFAULT_SECRET_PREFIX`] by default), and never
/// one of tabula's own settings (`TABULA_*` outside `TABULA_SECRET_*`), whatever the
/// prefix. An empty prefix allows every other variable: for a host whose environment holds
/// nothing its apps may not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPolicy {
    prefix: String,
}

impl Default for SecretPolicy {
    fn default() -> Self {
        SecretPolicy::new(DEFAULT_SECRET_PREFIX)
    }
}

impl SecretPolicy {
    /// Secrets may name the variables that start with `prefix`.
    pub fn new(prefix: &str) -> SecretPolicy {
        SecretPolicy {
            prefix: prefix.to_string(),
        }
    }

    /// Whether variable `name` may be a secret read from `env`; the error names the rule and
    /// the flag that sets it.
    fn check(&self, name: &str, env: &str) -> Result<()> {
        let own_setting = env.starts_with("TABULA_") && !env.starts_with(DEFAULT_SECRET_PREFIX);
        if env.starts_with(&self.prefix) && !own_setting {
            return Ok(());
        }
        let rule = if own_setting {
            format!("`{env}` is one of tabula's own settings, which no app may read")
        } else {
            format!(
                "`{env}` does not start with `{}`, the prefix this host allows",
                self.prefix
            )
        };
        bail!(
            "variable `{name}` is a secret read from the environment variable `{env}`, which \
             this host does not hand to apps: {rule}. Set the value in a variable that starts \
             with `{}` where tabula runs, and name that one (the host's operator sets the \
             prefix with --secret-prefix or TABULA_SECRET_PREFIX)",
            self.prefix
        )
    }
}

/// The shortest line of a secret that has several which a guest's log lines hide on its
/// own: shorter lines (a PEM's `=` padding, a blank line) say little and would blank the same
/// text wherever a guest logs it.
const MIN_SECRET_LINE: usize = 4;

/// An app's variables, resolved: what its guests read. Built once when the app loads.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Variables {
    values: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, Eq)]
struct Value {
    value: String,
    /// For a secret, the environment variable it came from (what `Debug` shows instead).
    secret_env: Option<String>,
}

impl Variables {
    /// Resolves `settings`, reading each secret from the host's environment where `policy`
    /// allows it. A secret whose variable is not set, or not allowed, is an error that names
    /// it, so an app never starts without it (and a deploy that names one fails).
    pub fn resolve(settings: &VariableSettings, policy: &SecretPolicy) -> Result<Variables> {
        let mut values = BTreeMap::new();
        for (name, setting) in settings {
            validate_variable_name(name)?;
            let value = match setting {
                VariableSetting::Value(value) => Value {
                    value: value.clone(),
                    secret_env: None,
                },
                VariableSetting::Secret { env } => {
                    match policy.check(name, env).map(|()| std::env::var(env))? {
                        Ok(value) => Value {
                            value,
                            secret_env: Some(env.clone()),
                        },
                        Err(_) => bail!(
                            "variable `{name}` is a secret read from the environment variable \
                         `{env}`, which is not set (or not UTF-8) where tabula runs: set it \
                         for tabula, or give the value in the app's [variables]"
                        ),
                    }
                }
            };
            values.insert(name.clone(), value);
        }
        Ok(Variables { values })
    }

    fn get(&self, name: &str) -> Option<String> {
        self.values.get(name).map(|v| v.value.clone())
    }

    fn all(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .map(|(name, v)| (name.clone(), v.value.clone()))
            .collect()
    }

    /// What a guest's log lines must hide, longest first: each secret's value and each of
    /// its lines (split at `\r` and `\n`), since a guest that prints a secret of several
    /// lines (a PEM key) prints it line by line, and the log cuts it there. Of a secret with
    /// several lines, those shorter than `MIN_SECRET_LINE` bytes are left out.
    pub fn secrets(&self) -> Vec<String> {
        let mut hidden = Vec::new();
        for v in self.values.values().filter(|v| v.secret_env.is_some()) {
            let lines: Vec<&str> = v
                .value
                .split(['\r', '\n'])
                .filter(|line| !line.is_empty())
                .collect();
            let several = lines.len() > 1;
            hidden.extend(
                std::iter::once(v.value.as_str())
                    .chain(
                        lines
                            .into_iter()
                            .filter(|line| !several || line.len() >= MIN_SECRET_LINE),
                    )
                    .filter(|text| !text.is_empty())
                    .map(String::from),
            );
        }
        hidden.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        hidden.dedup();
        hidden
    }
}

impl fmt::Debug for Variables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, v) in &self.values {
            match &v.secret_env {
                Some(env) => map.entry(name, &format_args!("<secret from ${env}>")),
                None => map.entry(name, &v.value),
            };
        }
        map.finish()
    }
}

/// `wasi:config/store`'s `error`. Tabula's variables are resolved before the app loads, so
/// a lookup cannot fail; the type is here for the functions' signature.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum ConfigError {
    #[component(name = "upstream")]
    #[allow(dead_code)]
    Upstream(String),
    #[component(name = "io")]
    #[allow(dead_code)]
    Io(String),
}

type ConfigResult<T> = wasmtime::Result<(Result<T, ConfigError>,)>;

/// Adds `wasi:config/store` in every version of [`VERSIONS`], and [`RUNTIME`], to the
/// linker, answering from the variables `get` finds in the store's data.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &Variables,
) -> wasmtime::Result<()> {
    let stores = VERSIONS.iter().map(|v| format!("wasi:config/store@{v}"));
    for name in stores.chain([RUNTIME.to_string()]) {
        let mut store = linker.instance(&name)?;
        store.func_wrap(
            "get",
            move |mut cx: StoreContextMut<'_, T>, (name,): (String,)| -> ConfigResult<_> {
                Ok((Ok(get(cx.data_mut()).get(&name)),))
            },
        )?;
        store.func_wrap(
            "get-all",
            move |mut cx: StoreContextMut<'_, T>, (): ()| -> ConfigResult<_> {
                Ok((Ok(get(cx.data_mut()).all()),))
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_the_environment_and_stay_out_of_debug() {
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::set_var("TABULA_SECRET_TEST_7f3a", "hunter2-value") };
        let settings: VariableSettings =
            toml::from_str("greeting = \"hi\"\ntoken = { env = \"TABULA_SECRET_TEST_7f3a\" }\n")
                .unwrap();
        let policy = SecretPolicy::default();
        let vars = Variables::resolve(&settings, &policy).unwrap();
        assert_eq!(vars.get("greeting").as_deref(), Some("hi"));
        assert_eq!(vars.get("token").as_deref(), Some("hunter2-value"));
        assert_eq!(vars.secrets(), ["hunter2-value"]);
        let shown = format!("{vars:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("TABULA_SECRET_TEST_7f3a"), "{shown}");

        let missing: VariableSettings =
            toml::from_str("token = { env = \"TABULA_SECRET_UNSET_91c2\" }").unwrap();
        let err = Variables::resolve(&missing, &policy)
            .unwrap_err()
            .to_string();
        assert!(err.contains("TABULA_SECRET_UNSET_91c2"), "{err}");
        let bad_name = [("a b".into(), VariableSetting::Value("x".into()))].into();
        assert!(Variables::resolve(&bad_name, &policy).is_err());
    }

    fn secret(env: &str) -> VariableSettings {
        [(
            "token".to_string(),
            VariableSetting::Secret { env: env.into() },
        )]
        .into()
    }

    #[test]
    fn a_secret_names_only_what_the_operator_allows() {
        // SAFETY: no other test reads or writes these variables.
        unsafe {
            std::env::set_var("TABULA_SECRET_OK_5d1e", "fine");
            std::env::set_var("ACME_TOKEN_5d1e", "acme");
        }
        let default = SecretPolicy::default();
        assert!(Variables::resolve(&secret("TABULA_SECRET_OK_5d1e"), &default).is_ok());
        for env in [
            "ACME_TOKEN_5d1e",
            "TABULA_ADMIN_TOKEN",
            "TABULA_STORE",
            "HOME",
        ] {
            let err = Variables::resolve(&secret(env), &default)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(env) && err.contains("--secret-prefix"),
                "{err}"
            );
        }
        let acme = SecretPolicy::new("ACME_");
        assert!(Variables::resolve(&secret("ACME_TOKEN_5d1e"), &acme).is_ok());
        // tabula's own settings stay out of reach whatever the prefix.
        for prefix in ["TABULA_", ""] {
            let err = Variables::resolve(&secret("TABULA_ADMIN_TOKEN"), &SecretPolicy::new(prefix))
                .unwrap_err()
                .to_string();
            assert!(err.contains("tabula's own settings"), "{err}");
        }
        assert!(Variables::resolve(&secret("ACME_TOKEN_5d1e"), &SecretPolicy::new("")).is_ok());
    }

    #[test]
    fn a_secret_of_several_lines_is_hidden_line_by_line() {
        let pem = "-----BEGIN KEY-----\r\nMIIEvQIBADANBg\nkqhkiG9w0\n==\n-----END KEY-----\n";
        let vars = Variables {
            values: [(
                "key".to_string(),
                Value {
                    value: pem.into(),
                    secret_env: Some("TABULA_SECRET_KEY".into()),
                },
            )]
            .into(),
        };
        assert_eq!(
            vars.secrets(),
            [
                pem,
                "-----BEGIN KEY-----",
                "-----END KEY-----",
                "MIIEvQIBADANBg",
                "kqhkiG9w0"
            ]
        );
    }
}
