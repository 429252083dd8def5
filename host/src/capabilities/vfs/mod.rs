//! The per-request filesystem: `wasi:filesystem` served from memory, never from host files.
//!
//! A guest sees two preopened directories:
//! - `/tmp`: writable, empty when the request starts and gone when it ends, with a byte and a
//!   file-count quota (a write past them fails with `insufficient-space`, not a trap);
//! - `/app`: the app's assets, read at deploy time and shared by all its requests without
//!   copying; every write, create, rename or delete there fails with `read-only`.
//!
//! Paths are resolved inside their preopen: `..` cannot climb above it, absolute paths and
//! symlinks are refused. Files are byte vectors behind locks; nothing here blocks or does I/O.

mod assets;
mod bindings;
mod descriptor;
mod host;
mod tree;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use wasmtime::component::{HasData, Linker, ResourceTable};

use crate::budget::{Budget, Charge};
pub use assets::Assets;
use bindings::wasi::filesystem::{preopens, types};
use descriptor::Descriptor;
pub use tree::TmpQuota;
use tree::*;
use types::{DescriptorFlags, ErrorCode};

type FsResult<T> = wasmtime::Result<Result<T, ErrorCode>>;

/// A request's filesystem.
pub struct Vfs {
    /// Made when the guest first asks for its preopens: most requests never touch files.
    tmp: std::sync::OnceLock<Arc<Mount>>,
    quota: TmpQuota,
    app: Arc<Mount>,
    /// The request's budget, for what descriptors, listings and `/tmp` hold.
    budget: Arc<Budget>,
}

impl Vfs {
    /// A fresh, empty `/tmp` (within `quota`, its memory also counted against `budget`), and
    /// the app's shared assets at `/app`.
    pub fn new(assets: &Assets, quota: TmpQuota, budget: &Arc<Budget>) -> Vfs {
        Vfs {
            tmp: std::sync::OnceLock::new(),
            quota,
            app: assets.0.clone(),
            budget: budget.clone(),
        }
    }

    fn tmp(&self) -> &Arc<Mount> {
        self.tmp.get_or_init(|| {
            let mut tmp = Mount {
                root: None,
                space: Some(Space {
                    bytes: Budget::new(self.quota.max_bytes),
                    files: Budget::new(self.quota.max_files),
                    memory: self.budget.clone(),
                }),
                next_id: AtomicU64::new(1),
            };
            tmp.root = Some(tmp.new_dir(Entries::new(), Charge::none()));
            Arc::new(tmp)
        })
    }

    fn descriptor(
        &self,
        node: Node,
        mount: &Arc<Mount>,
        path: Vec<String>,
        flags: DescriptorFlags,
    ) -> Result<Descriptor, ErrorCode> {
        let bytes: usize = path.iter().map(|p| p.len() + 1).sum();
        let charge = self
            .budget
            .charge(bytes as u64 + OVERHEAD)
            .map_err(|_| ErrorCode::InsufficientMemory)?;
        Ok(Descriptor {
            node,
            mount: mount.clone(),
            path,
            flags,
            _charge: charge,
        })
    }
}

/// What the filesystem host functions borrow from a request's store.
pub struct VfsView<'a> {
    vfs: &'a Vfs,
    table: &'a mut ResourceTable,
}

impl<'a> VfsView<'a> {
    pub fn new(vfs: &'a Vfs, table: &'a mut ResourceTable) -> VfsView<'a> {
        VfsView { vfs, table }
    }
}

struct VfsData;

impl HasData for VfsData {
    type Data<'a> = VfsView<'a>;
}

/// Replaces wasmtime-wasi's `wasi:filesystem` (already in `linker`) with this one; `get`
/// hands out the view from the embedder's store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> VfsView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    types::add_to_linker::<T, VfsData>(linker, get)?;
    preopens::add_to_linker::<T, VfsData>(linker, get)?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn paths_cannot_escape_their_preopen() {
        assert_eq!(resolve(&[], "a/./b/../c").unwrap(), vec!["a", "c"]);
        assert!(resolve(&[], "..").is_err());
        assert!(resolve(&["a".into()], "../..").is_err());
        assert!(resolve(&[], "/etc/passwd").is_err());
        assert!(resolve(&[], "a/../../x").is_err());
    }
}
