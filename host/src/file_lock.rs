//! An exclusive lock on a file, held while a closure runs: how processes that share a
//! directory (two `tabula up`, parallel tests, the worker processes of one `tabula serve`)
//! take turns at work whose result they then share.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Runs `f` holding an exclusive `flock` on `path` (created if missing). The lock goes with
/// the descriptor, so a process that dies holding it releases it.
pub(crate) fn with_lock<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock only acts on the descriptor, which `file` keeps open until we return.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    f()
}
