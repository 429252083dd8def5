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
    use super::assets::MAX_ASSET_DEPTH;
    use super::*;
    use types::{HostDescriptor, OpenFlags, PathFlags};
    use wasmtime::component::Resource;

    /// A bundle of `files`, as a deploy carries them.
    fn bundle(files: &[(&str, &[u8])]) -> Vec<u8> {
        // A directory of its own per call: the tests of this module run at once.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tabula-vfs-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, bytes) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let bundle = Assets::bundle(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        bundle
    }

    /// A fresh descriptor for the same open file or directory as `d`.
    fn again(d: &Resource<Descriptor>) -> Resource<Descriptor> {
        Resource::new_borrow(d.rep())
    }

    #[test]
    fn tmp_is_writable_within_its_quota_and_assets_are_read_only() {
        let assets = Assets::from_bundle(&bundle(&[("a/b.txt", b"hi")])).unwrap();
        let quota = TmpQuota {
            max_bytes: 10,
            max_files: 2,
        };
        let vfs = Vfs::new(&assets, quota, &Budget::new(1 << 20));
        let mut table = ResourceTable::new();
        let mut view = VfsView::new(&vfs, &mut table);
        let dirs = preopens::Host::get_directories(&mut view).unwrap();
        let names: Vec<&str> = dirs.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["/tmp", "/app"]);
        let (tmp, app) = (&dirs[0].0, &dirs[1].0);
        let rw = DescriptorFlags::READ | DescriptorFlags::WRITE;
        let mut open = |dir: &Resource<Descriptor>, path: &str, create: bool| {
            let oflags = if create {
                OpenFlags::CREATE
            } else {
                OpenFlags::empty()
            };
            let flags = if create { rw } else { DescriptorFlags::READ };
            view.open_at(again(dir), PathFlags::empty(), path.into(), oflags, flags)
                .unwrap()
        };
        let file = open(tmp, "f", true).unwrap();
        let read_only = open(app, "new", true).unwrap_err();
        let asset = open(app, "a/b.txt", false).unwrap();
        assert_eq!(read_only, ErrorCode::ReadOnly);
        let escape = open(tmp, "../app/a/b.txt", false).unwrap_err();
        assert_eq!(escape, ErrorCode::NotPermitted);
        assert_eq!(
            view.write(again(&file), b"0123456789".to_vec(), 0).unwrap(),
            Ok(10)
        );
        assert_eq!(
            view.write(again(&file), b"x".to_vec(), 10).unwrap(),
            Err(ErrorCode::InsufficientSpace),
            "the byte quota"
        );
        assert_eq!(
            view.read(again(&file), 100, 0).unwrap().unwrap().0,
            b"0123456789"
        );
        assert_eq!(view.read(again(&asset), 100, 0).unwrap().unwrap().0, b"hi");
        assert_eq!(
            view.write(again(&asset), b"x".to_vec(), 0).unwrap(),
            Err(ErrorCode::ReadOnly)
        );
    }

    #[test]
    fn a_request_starts_with_an_empty_tmp() {
        let assets = Assets::empty();
        let budget = Budget::new(1 << 20);
        for _ in 0..2 {
            let vfs = Vfs::new(&assets, TmpQuota::default(), &budget);
            let mut table = ResourceTable::new();
            let mut view = VfsView::new(&vfs, &mut table);
            let dirs = preopens::Host::get_directories(&mut view).unwrap();
            let flags = DescriptorFlags::READ | DescriptorFlags::WRITE;
            let created = view
                .open_at(
                    again(&dirs[0].0),
                    PathFlags::empty(),
                    "left-behind".into(),
                    OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                    flags,
                )
                .unwrap();
            assert!(created.is_ok(), "the file from the last request is gone");
        }
    }

    #[test]
    fn bundles_are_bounded() {
        let deep = format!("{}/f", vec!["d"; MAX_ASSET_DEPTH].join("/"));
        let mut raw = b"tabula-assets 1\n".to_vec();
        raw.extend_from_slice(&(deep.len() as u32).to_le_bytes());
        raw.extend_from_slice(deep.as_bytes());
        raw.extend_from_slice(&0u64.to_le_bytes());
        let e = Assets::from_bundle(&raw).unwrap_err().to_string();
        assert!(e.contains("deeper than"), "{e}");
        let fine = format!("{}/f", vec!["d"; MAX_ASSET_DEPTH - 1].join("/"));
        let files: Vec<(&str, &[u8])> = vec![(fine.as_str(), b"x")];
        Assets::from_bundle(&bundle(&files)).unwrap();
    }

    #[test]
    fn paths_cannot_escape_their_preopen() {
        assert_eq!(resolve(&[], "a/./b/../c").unwrap(), vec!["a", "c"]);
        assert!(resolve(&[], "..").is_err());
        assert!(resolve(&["a".into()], "../..").is_err());
        assert!(resolve(&[], "/etc/passwd").is_err());
        assert!(resolve(&[], "a/../../x").is_err());
    }
}
