//! The visitor's session: values kept between one visitor's requests, behind a cookie the
//! host manages (a random 256-bit id, `HttpOnly`, `SameSite=Lax`, scoped to the app's route).
//!
//! Reading never creates a session; the first [`set`] does, and the host sends the cookie
//! with the response. Sessions expire after a period without use (sliding) and at the latest
//! after an absolute lifetime. Call [`regenerate`] after login, [`destroy`] at logout.
//! Finish session calls before the handler returns: the cookie goes out with the response.
//!
//! Natively (`cargo test`) the session is an in-memory stand-in per test thread, one visitor.

use std::fmt;

#[cfg(not(target_arch = "wasm32"))]
#[path = "session/native.rs"]
mod backend;
#[cfg(target_arch = "wasm32")]
#[path = "session/host.rs"]
mod backend;

/// Why a session call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The session would exceed the host's limit (`limit` bytes, names and values counted).
    TooLarge {
        limit: u32,
    },
    /// The store could not be reached; returned from a handler this becomes a 503.
    Unavailable(String),
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLarge { limit } => write!(f, "the session would exceed {limit} bytes"),
            Error::Unavailable(why) => write!(f, "the store is unavailable: {why}"),
            Error::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The value stored under `name`, if any.
pub fn get(name: &str) -> Result<Option<Vec<u8>>> {
    backend::get(name)
}

/// The value under `name` as text (invalid UTF-8 replaced).
pub fn get_string(name: &str) -> Result<Option<String>> {
    Ok(get(name)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Stores `value` under `name`, creating the session if there is none.
pub fn set(name: &str, value: impl AsRef<[u8]>) -> Result<()> {
    backend::set(name, value.as_ref())
}

pub fn remove(name: &str) -> Result<()> {
    backend::remove(name)
}

/// Removes every value but keeps the session.
pub fn clear() -> Result<()> {
    backend::clear()
}

/// Ends the session: data deleted, cookie cleared.
pub fn destroy() -> Result<()> {
    backend::destroy()
}

/// Moves the session to a fresh id, keeping its data; the old id stops working.
pub fn regenerate() -> Result<()> {
    backend::regenerate()
}

/// The session's id, or `None` while there is no session.
pub fn id() -> Result<Option<String>> {
    backend::id()
}
