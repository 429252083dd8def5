//! What an app's sessions are: the host's defaults and caps ([`SessionDefaults`]), what a
//! manifest or deploy asks for ([`SessionSettings`]), and one app's resolved settings
//! ([`SessionConfig`]): its cookie, its lifetimes, its size.

use std::time::Duration;

use crate::storage::HashLimits;

/// Bytes of a session id: 256 bits from the OS's CSPRNG.
pub(super) const ID_BYTES: usize = 32;

/// The most values one session holds. Its bytes are bounded by `max_bytes`, but each value
/// also costs the store its own bookkeeping (some 50 bytes in a Redis hash), which a session
/// of ten thousand 1-byte values would multiply; a thousand is far more than a login, a cart
/// or a form's state needs.
pub const MAX_VALUES: u32 = 1024;

/// Session settings of one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The cookie's name.
    pub cookie_name: String,
    /// The cookie's `Path`: the app's route.
    pub path: String,
    /// Whether the cookie is marked `Secure` (sent over HTTPS only).
    pub secure: bool,
    /// How long an unused session lives.
    pub idle_timeout: Duration,
    /// How long any session lives, however busy.
    pub lifetime: Duration,
    /// Largest session, counting names and values.
    pub max_bytes: u32,
}

/// Host-wide defaults, which an app's manifest may lower, or raise up to the host's caps: a
/// deployer is a tenant, and a session it makes live a century or hold 4 GiB is kept by the
/// store every app shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDefaults {
    /// Whether cookies are marked `Secure`.
    pub secure: bool,
    /// How long an unused session lives.
    pub idle_timeout: Duration,
    /// How long any session lives, however busy.
    pub lifetime: Duration,
    /// The longest an app may set either: a cap of its own, so that an app may ask for
    /// "remember me" sessions longer than the default without every app getting them.
    pub max_lifetime: Duration,
    /// Largest session, counting names and values; also the cap.
    pub max_bytes: u32,
}

impl Default for SessionDefaults {
    fn default() -> Self {
        // OWASP's ranges for ordinary applications: 15-30 minutes idle, 4-8 hours absolute;
        // 30 days is the usual "remember me".
        SessionDefaults {
            secure: false,
            idle_timeout: Duration::from_secs(30 * 60),
            lifetime: Duration::from_secs(8 * 60 * 60),
            max_lifetime: Duration::from_secs(30 * 24 * 60 * 60),
            max_bytes: 64 * 1024,
        }
    }
}

/// What an app's manifest may say about sessions (`[session]` in `tabula.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// The cookie's name; `tabula_session_APP` by default.
    pub cookie_name: Option<String>,
    /// Whether the cookie is marked `Secure`.
    pub secure: Option<bool>,
    /// How long an unused session lives, in seconds.
    pub idle_timeout_secs: Option<u64>,
    /// How long any session lives, in seconds.
    pub lifetime_secs: Option<u64>,
    /// Largest session, in bytes.
    pub max_bytes: Option<u32>,
}

impl SessionConfig {
    /// The settings of app `app` served at `route`: what its `settings` ask for within the
    /// host's caps, else the host's `defaults`; with a line for each value a cap lowered.
    pub fn new(
        app: &str,
        route: &str,
        defaults: &SessionDefaults,
        settings: &SessionSettings,
    ) -> anyhow::Result<(SessionConfig, Vec<String>)> {
        let cookie_name = settings
            .cookie_name
            .clone()
            .unwrap_or_else(|| format!("tabula_session_{app}"));
        if cookie_name.is_empty()
            || !cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            anyhow::bail!("session cookie name {cookie_name:?} is not a valid cookie name");
        }
        if settings.idle_timeout_secs == Some(0) || settings.lifetime_secs == Some(0) {
            anyhow::bail!("session timeouts must be at least one second");
        }
        let mut capped = Vec::new();
        let mut within = |what: &str, asked: Option<u64>, default: u64, cap: u64| match asked {
            Some(asked) if asked > cap => {
                capped.push(format!(
                    "session {what} {asked} is over the host's cap, {cap}"
                ));
                cap
            }
            Some(asked) => asked,
            None => default,
        };
        let max_secs = defaults.max_lifetime.as_secs();
        let idle_timeout = within(
            "idle_timeout_secs",
            settings.idle_timeout_secs,
            defaults.idle_timeout.as_secs(),
            max_secs,
        );
        let lifetime = within(
            "lifetime_secs",
            settings.lifetime_secs,
            defaults.lifetime.as_secs(),
            max_secs,
        );
        let max_bytes = within(
            "max_bytes",
            settings.max_bytes.map(u64::from),
            defaults.max_bytes.into(),
            defaults.max_bytes.into(),
        );
        let config = SessionConfig {
            cookie_name,
            path: route.to_string(),
            secure: settings.secure.unwrap_or(defaults.secure),
            // A default is kept as it is: it may hold a fraction of a second.
            idle_timeout: if settings.idle_timeout_secs.is_some() {
                Duration::from_secs(idle_timeout)
            } else {
                defaults.idle_timeout
            },
            lifetime: if settings.lifetime_secs.is_some() {
                Duration::from_secs(lifetime)
            } else {
                defaults.lifetime
            },
            max_bytes: max_bytes as u32,
        };
        Ok((config, capped))
    }

    /// How large a session's hash may grow: its values and its creation time.
    pub(super) fn limits(&self) -> HashLimits {
        HashLimits {
            max_bytes: self.max_bytes.into(),
            max_fields: MAX_VALUES + 1,
        }
    }

    /// The session id carried by a request's `Cookie` headers, if it is well-formed.
    pub fn id_from_cookies<'a>(&self, cookies: impl Iterator<Item = &'a [u8]>) -> Option<String> {
        cookies
            .filter_map(|header| std::str::from_utf8(header).ok())
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value.trim_matches('"'))
            .find(|value| is_well_formed_id(value))
            .map(str::to_string)
    }

    pub(super) fn set_cookie(&self, value: &str, clear: bool) -> String {
        let mut cookie = format!(
            "{}={value}; Path={}; HttpOnly; SameSite=Lax",
            self.cookie_name, self.path
        );
        if clear {
            cookie.push_str("; Max-Age=0");
        }
        if self.secure {
            cookie.push_str("; Secure");
        }
        cookie
    }
}

pub(super) fn is_well_formed_id(value: &str) -> bool {
    value.len() == ID_BYTES * 2
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
