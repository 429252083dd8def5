//! The guest contract's WIT and the Python and JavaScript SDKs, embedded in the binary (see
//! `build.rs`) so that `tabula build` needs nothing of this repository, written out once per
//! version into the user's cache, where the language toolchains read them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// Where tabula keeps what it may rebuild: `$XDG_CACHE_HOME/tabula`, else
/// `~/.cache/tabula`.
pub fn user_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|dir| dir.join("tabula"))
}

/// The embedded files, written out: a directory laid out as the repository is (`wit/`,
/// `guest-sdk/python/`, `guest-sdk/js/`), named after their digest, so a new tabula writes
/// a new one and builds never see a mix. Written to a scratch directory and renamed, so a
/// build that runs beside another never sees it half written.
pub fn unpacked() -> Result<PathBuf> {
    let mut digest = Sha256::new();
    for (path, bytes) in FILES {
        digest.update(path.as_bytes());
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(bytes);
    }
    let hex: String = digest.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cache = user_cache_dir()
        .context("neither XDG_CACHE_HOME nor HOME is set: tabula has nowhere to put its SDKs")?;
    let dir = cache.join(format!("sdk-{hex}"));
    if dir.is_dir() {
        return Ok(dir);
    }
    let scratch = cache.join(format!(".sdk-{hex}-{}", std::process::id()));
    write_all(&scratch)
        .with_context(|| format!("writing tabula's SDKs to {}", scratch.display()))?;
    if std::fs::rename(&scratch, &dir).is_err() {
        // Another build put it there first.
        std::fs::remove_dir_all(&scratch).ok();
    }
    Ok(dir)
}

fn write_all(dir: &Path) -> Result<()> {
    for (path, bytes) in FILES {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a file is in a directory"))?;
        std::fs::write(&file, bytes)?;
    }
    Ok(())
}
