//! `tabula:host/session` through the component's imports.

use super::{Error, Result};
use crate::bindings::tabula::host::session as wit;

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::TooLarge(limit) => Error::TooLarge { limit },
            wit::Error::Unavailable(why) => Error::Unavailable(why),
            wit::Error::Other(why) => Error::Other(why),
        }
    }
}

pub fn get(name: &str) -> Result<Option<Vec<u8>>> {
    Ok(wit::get(name)?)
}

pub fn set(name: &str, value: &[u8]) -> Result<()> {
    Ok(wit::set(name, value)?)
}

pub fn remove(name: &str) -> Result<()> {
    Ok(wit::remove(name)?)
}

pub fn clear() -> Result<()> {
    Ok(wit::clear()?)
}

pub fn destroy() -> Result<()> {
    Ok(wit::destroy()?)
}

pub fn regenerate() -> Result<()> {
    Ok(wit::regenerate()?)
}

pub fn id() -> Result<Option<String>> {
    Ok(wit::id()?)
}
