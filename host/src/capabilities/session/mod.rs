//! HTTP sessions: `tabula:host/session`, with the host owning the cookie.
//!
//! A session is a hash in the store at `s:ID` in its app's [`Namespace`]: one field per value
//! the handler sets (so concurrent requests changing different values never overwrite each
//! other) and one holding its creation time. The namespace places it in a shard by its id, so
//! an app's sessions are spread over the cluster's masters while each one stays in one slot. The id is 256 bits from the OS's CSPRNG, hex-encoded; a cookie
//! that is not exactly such an id is ignored without touching the store.
//!
//! Expiry follows the OWASP session guidance: an idle timeout that slides whenever the session
//! is used, capped by an absolute lifetime counted from creation. Both are enforced by the
//! store's own expiry (the key's TTL is never longer than what is left of either), and the
//! absolute cap is checked again on every load.
//!
//! What a deploy may ask is bounded: its lifetimes and size are capped by the host's
//! ([`SessionDefaults`]), and a session holds at most [`MAX_VALUES`] values. Every session is
//! a key in its app's storage quota, counted with its size (its id's key name plus its names
//! and values), so an app's sessions and kv keys share one bound, kept exact by the store for
//! every replica and given back when a session expires or is destroyed. One bound rather than
//! a count of its own, because what a session costs the shared store is what a kv key costs,
//! and it is cheap: a counted write is one script, whose bookkeeping reads and writes a few
//! fields and one sorted-set entry (log n), never the whole session. So a flood of cookieless
//! visitors to an app that writes its session on every visit (`counter-py` made 4,458
//! sessions in 10 s) fills that app's quota and no one else's; past it, new sessions are
//! refused with an error that says so, and the sessions already there are untouched.
//!
//! The session is resolved lazily, on the handler's first session call: requests that do not
//! use it cost nothing, and reading never creates one. What the cookie should become is recorded in a
//! [`CookieJar`] that the request path reads when the response head goes out; [`cookie`]
//! also keeps every session cookie away from guests.

mod bindings;
mod config;
mod cookie;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasData, Linker};

use crate::storage::{HashWrite, Namespace, StorageError};
use bindings::tabula::host::session as wit;
use config::ID_BYTES;
pub use config::{MAX_VALUES, SessionConfig, SessionDefaults, SessionSettings};
use cookie::CookieChange;
pub use cookie::{CookieJar, refuse_guest_cookies, strip_cookies};

/// Field names: guest values are `v:NAME`, the creation time (ms since the epoch) is
/// `m:created`, so no name a guest picks can overwrite the host's bookkeeping.
const CREATED: &str = "m:created";
const VALUE_PREFIX: &str = "v:";

fn new_id() -> SessionResult<String> {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| {
        SessionError::Storage(StorageError::Other(format!(
            "no randomness for a session id: {e}"
        )))
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug)]
enum State {
    /// Not looked up yet.
    Unresolved,
    /// No session: none was presented, or it was unknown, expired, or destroyed.
    Absent,
    Active {
        id: String,
        created_ms: u64,
    },
}

/// One request's session.
pub struct Session {
    config: Arc<SessionConfig>,
    namespace: Arc<Namespace>,
    presented: Option<String>,
    state: State,
    jar: Arc<Mutex<CookieJar>>,
}

#[derive(Debug)]
enum SessionError {
    TooLarge(u32),
    /// A new value past [`MAX_VALUES`].
    TooManyValues,
    Storage(StorageError),
}

crate::storage::carries_storage_error!(SessionError::Storage);

impl From<SessionError> for wit::Error {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::TooLarge(max) => wit::Error::TooLarge(max),
            SessionError::TooManyValues => wit::Error::Other(format!(
                "the session already holds {MAX_VALUES} values, the most it may: remove some \
                 before setting others"
            )),
            SessionError::Storage(StorageError::QuotaExceeded) => {
                let _request = crate::request::log::enter();
                tracing::warn!(
                    "session write refused: the app is at its storage quota, which its \
                     sessions count against"
                );
                wit::Error::Other(
                    "the app is at its storage quota, which its sessions count against \
                     (each session is a key, with its names and values): wait for sessions \
                     to expire, keep fewer kv keys, or ask the operator for a larger \
                     --kv-max-keys / --kv-max-bytes"
                        .into(),
                )
            }
            SessionError::Storage(StorageError::Unavailable(why)) => {
                let _request = crate::request::log::enter();
                tracing::warn!(error = %why, "session call failed: the store is unavailable");
                wit::Error::Unavailable(why)
            }
            SessionError::Storage(e) => wit::Error::Other(e.to_string()),
        }
    }
}

type SessionResult<T> = Result<T, SessionError>;

impl Session {
    /// The session of a request that presented `presented` (an id from its cookie, if any).
    pub fn new(
        config: Arc<SessionConfig>,
        namespace: Arc<Namespace>,
        presented: Option<String>,
    ) -> Session {
        Session {
            config,
            namespace,
            presented,
            state: State::Unresolved,
            jar: Arc::default(),
        }
    }

    /// The jar that the request path reads when the response head goes out.
    pub fn jar(&self) -> Arc<Mutex<CookieJar>> {
        self.jar.clone()
    }

    fn key(&self, id: &str) -> String {
        format!("s:{id}")
    }

    fn record(&self, change: CookieChange) {
        self.jar
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(change);
    }

    /// How long the session may still live from now: the idle timeout, capped by what is left
    /// of its lifetime. `None` once the lifetime is over.
    fn remaining(&self, created_ms: u64) -> Option<Duration> {
        let age = Duration::from_millis(now_ms().saturating_sub(created_ms));
        let left = self
            .config
            .lifetime
            .checked_sub(age)
            .filter(|d| !d.is_zero())?;
        Some(left.min(self.config.idle_timeout))
    }

    /// Looks the presented session up once per request, sliding its expiry when it is live.
    async fn resolve(&mut self) -> SessionResult<()> {
        if !matches!(self.state, State::Unresolved) {
            return Ok(());
        }
        self.state = State::Absent;
        let Some(id) = self.presented.clone() else {
            return Ok(());
        };
        let key = self.key(&id);
        let created = self.namespace.hash_get(&key, CREATED).await?;
        let created_ms = created
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok());
        let Some(created_ms) = created_ms else {
            return Ok(());
        };
        match self.remaining(created_ms) {
            // Uncounted: the quota's record of when the session expires may then be early,
            // which costs one look at the key when it comes due (see `storage::redis`).
            Some(left) => {
                let storage = self.namespace.storage();
                storage
                    .expire(&self.namespace.key(&key), Some(left), None)
                    .await?;
                self.state = State::Active { id, created_ms };
            }
            // Past its absolute lifetime: gone, however recently it was used.
            None => {
                self.namespace.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// The active session, creating one (with a fresh id, never the presented one) if needed.
    async fn active_or_create(&mut self) -> SessionResult<(String, u64)> {
        self.resolve().await?;
        if let State::Active { id, created_ms } = &self.state {
            return Ok((id.clone(), *created_ms));
        }
        let id = new_id()?;
        let created_ms = now_ms();
        let ttl = self.config.idle_timeout.min(self.config.lifetime);
        self.write(&id, CREATED, created_ms.to_string().as_bytes(), ttl)
            .await?;
        self.state = State::Active {
            id: id.clone(),
            created_ms,
        };
        self.record(CookieChange::Set(id.clone()));
        Ok((id, created_ms))
    }

    async fn get(&mut self, name: &str) -> SessionResult<Option<Vec<u8>>> {
        self.resolve().await?;
        let State::Active { id, .. } = &self.state else {
            return Ok(None);
        };
        let field = format!("{VALUE_PREFIX}{name}");
        Ok(self.namespace.hash_get(&self.key(id), &field).await?)
    }

    /// Sets one field of session `id`, counted in the app's quota, with the expiry `ttl`.
    async fn write(&self, id: &str, field: &str, value: &[u8], ttl: Duration) -> SessionResult<()> {
        let written = self
            .namespace
            .hash_set(&self.key(id), field, value, self.config.limits(), ttl)
            .await?;
        match written {
            HashWrite::Stored => Ok(()),
            HashWrite::TooLarge => Err(SessionError::TooLarge(self.config.max_bytes)),
            HashWrite::TooManyFields => Err(SessionError::TooManyValues),
        }
    }

    async fn set(&mut self, name: &str, value: &[u8]) -> SessionResult<()> {
        let (id, created_ms) = self.active_or_create().await?;
        let ttl = self
            .remaining(created_ms)
            .unwrap_or(Duration::from_millis(1));
        self.write(&id, &format!("{VALUE_PREFIX}{name}"), value, ttl)
            .await
    }

    async fn remove(&mut self, name: &str) -> SessionResult<()> {
        self.resolve().await?;
        if let State::Active { id, .. } = &self.state {
            let field = format!("{VALUE_PREFIX}{name}");
            self.namespace.hash_delete(&self.key(id), &field).await?;
        }
        Ok(())
    }

    async fn clear(&mut self) -> SessionResult<()> {
        self.resolve().await?;
        if let State::Active { id, created_ms } = &self.state {
            let ttl = self
                .remaining(*created_ms)
                .unwrap_or(Duration::from_millis(1));
            self.namespace.delete(&self.key(id)).await?;
            self.write(id, CREATED, created_ms.to_string().as_bytes(), ttl)
                .await?;
        }
        Ok(())
    }

    async fn destroy(&mut self) -> SessionResult<()> {
        self.resolve().await?;
        if let State::Active { id, .. } = &self.state {
            self.namespace.delete(&self.key(id)).await?;
        }
        let had_cookie = self.presented.is_some() || matches!(self.state, State::Active { .. });
        self.state = State::Absent;
        if had_cookie {
            self.record(CookieChange::Clear);
        }
        Ok(())
    }

    async fn regenerate(&mut self) -> SessionResult<()> {
        self.resolve().await?;
        let State::Active { id, created_ms } = &self.state else {
            return Ok(());
        };
        let created_ms = *created_ms;
        // The new id is drawn in the old one's shard, so the move is one atomic rename in one
        // slot (16 draws on average; the id keeps 252 bits no one can guess).
        let fresh = loop {
            let fresh = new_id()?;
            if self.namespace.same_shard(&self.key(id), &self.key(&fresh)) {
                break fresh;
            }
        };
        let moved = self
            .namespace
            .rename(&self.key(id), &self.key(&fresh))
            .await?;
        if moved {
            self.state = State::Active {
                id: fresh.clone(),
                created_ms,
            };
            self.record(CookieChange::Set(fresh));
        } else {
            // It expired between our calls: nothing to carry over.
            self.state = State::Absent;
        }
        Ok(())
    }

    async fn id(&mut self) -> SessionResult<Option<String>> {
        self.resolve().await?;
        Ok(match &self.state {
            State::Active { id, .. } => Some(id.clone()),
            _ => None,
        })
    }
}

/// What the session host functions borrow from a request's store: its session.
pub struct SessionView<'a>(&'a mut Session);

impl<'a> SessionView<'a> {
    /// The view of `session`.
    pub fn new(session: &'a mut Session) -> SessionView<'a> {
        SessionView(session)
    }
}

struct SessionData;

impl HasData for SessionData {
    type Data<'a> = SessionView<'a>;
}

/// Adds `tabula:host/session`; `get` hands out the view from the embedder's store data,
/// which this module never names.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> SessionView<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, SessionData>(linker, get)
}

impl Session {
    /// The guest's answer, counted in the metrics.
    fn answer<T>(&self, result: SessionResult<T>) -> wasmtime::Result<Result<T, wit::Error>> {
        self.namespace.record("session", &result);
        Ok(result.map_err(wit::Error::from))
    }
}

impl wit::Host for SessionView<'_> {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<Option<Vec<u8>>, wit::Error>> {
        let result = self.0.get(&name).await;
        self.0.answer(result)
    }

    async fn set(
        &mut self,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit::Error>> {
        let result = self.0.set(&name, &value).await;
        self.0.answer(result)
    }

    async fn remove(&mut self, name: String) -> wasmtime::Result<Result<(), wit::Error>> {
        let result = self.0.remove(&name).await;
        self.0.answer(result)
    }

    async fn clear(&mut self) -> wasmtime::Result<Result<(), wit::Error>> {
        let result = self.0.clear().await;
        self.0.answer(result)
    }

    async fn destroy(&mut self) -> wasmtime::Result<Result<(), wit::Error>> {
        let result = self.0.destroy().await;
        self.0.answer(result)
    }

    async fn regenerate(&mut self) -> wasmtime::Result<Result<(), wit::Error>> {
        let result = self.0.regenerate().await;
        self.0.answer(result)
    }

    async fn id(&mut self) -> wasmtime::Result<Result<Option<String>, wit::Error>> {
        let result = self.0.id().await;
        self.0.answer(result)
    }
}

#[cfg(test)]
mod tests {
    use super::config::is_well_formed_id;
    use super::*;

    fn config() -> SessionConfig {
        SessionConfig::new(
            "cart",
            "/cart",
            &SessionDefaults::default(),
            &SessionSettings::default(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn apps_may_ask_for_less_or_more_but_never_past_the_caps() {
        let host = SessionDefaults::default();
        let ask =
            |settings: SessionSettings| SessionConfig::new("a", "/a", &host, &settings).unwrap();
        let (plain, capped) = ask(SessionSettings::default());
        assert_eq!(
            (plain.idle_timeout, plain.lifetime, plain.max_bytes),
            (host.idle_timeout, host.lifetime, host.max_bytes)
        );
        assert!(capped.is_empty());

        let week = 7 * 24 * 60 * 60;
        let (remember_me, capped) = ask(SessionSettings {
            lifetime_secs: Some(week),
            idle_timeout_secs: Some(60),
            max_bytes: Some(1024),
            ..SessionSettings::default()
        });
        assert_eq!(
            remember_me.lifetime,
            Duration::from_secs(week),
            "up to the cap"
        );
        assert_eq!(remember_me.idle_timeout, Duration::from_secs(60), "lower");
        assert_eq!(remember_me.max_bytes, 1024);
        assert!(capped.is_empty());

        let (greedy, capped) = ask(SessionSettings {
            lifetime_secs: Some(u64::MAX),
            idle_timeout_secs: Some(u64::MAX),
            max_bytes: Some(u32::MAX),
            ..SessionSettings::default()
        });
        assert_eq!(
            (greedy.idle_timeout, greedy.lifetime, greedy.max_bytes),
            (host.max_lifetime, host.max_lifetime, host.max_bytes)
        );
        assert_eq!(capped.len(), 3, "{capped:?}");
        assert!(
            capped[1].starts_with("session lifetime_secs 18446744073709551615 is over"),
            "{capped:?}"
        );
        let zero = SessionSettings {
            lifetime_secs: Some(0),
            ..SessionSettings::default()
        };
        assert!(SessionConfig::new("a", "/a", &host, &zero).is_err());
    }

    #[test]
    fn only_well_formed_ids_are_taken_from_cookies() {
        let c = config();
        let id = "ab".repeat(32);
        let header = format!("other=1; tabula_session_cart={id}; x=y");
        assert_eq!(
            c.id_from_cookies([header.as_bytes()].into_iter()),
            Some(id.clone())
        );
        for bad in [
            &id[..63],
            &format!("{id}0"),
            &id.to_uppercase(),
            "../etc",
            "",
        ] {
            let header = format!("tabula_session_cart={bad}");
            assert_eq!(
                c.id_from_cookies([header.as_bytes()].into_iter()),
                None,
                "{bad}"
            );
        }
        let other_app = format!("tabula_session_shop={id}");
        assert_eq!(c.id_from_cookies([other_app.as_bytes()].into_iter()), None);
    }

    #[test]
    fn ids_are_fresh_and_full_length() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert!(is_well_formed_id(&a) && is_well_formed_id(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn cookies_carry_the_attributes() {
        let mut c = config();
        assert_eq!(
            c.set_cookie("id", false),
            "tabula_session_cart=id; Path=/cart; HttpOnly; SameSite=Lax"
        );
        c.secure = true;
        assert_eq!(
            c.set_cookie("", true),
            "tabula_session_cart=; Path=/cart; HttpOnly; SameSite=Lax; Max-Age=0; Secure"
        );
    }
}
