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

mod bindings;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use bytes::Bytes;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi_io::streams::{
    DynInputStream, DynOutputStream, InputStream, OutputStream, StreamError,
};

use crate::budget::{Budget, Charge, OverBudget};
use bindings::wasi::filesystem::{preopens, types};
use types::{
    DescriptorFlags, DescriptorStat, DescriptorType, DirectoryEntry, ErrorCode, Filesize,
    OpenFlags, PathFlags,
};

type FsResult<T> = wasmtime::Result<Result<T, ErrorCode>>;

/// Longest name of one file or directory, as POSIX's usual `NAME_MAX`.
const NAME_MAX: usize = 255;
/// Longest path a guest may name or a descriptor may sit at, as POSIX's usual `PATH_MAX`.
/// It bounds the work of walking a path (a tree can still grow deeper through renames, which
/// is why trees are freed without recursion).
const PATH_MAX: usize = 4096;
/// Bytes charged for each directory entry, descriptor or listed entry beyond its name: the
/// map node, the `Node` and the table entry that hold it.
const OVERHEAD: u64 = 64;

/// A directory's entries by name.
type Entries = BTreeMap<String, Entry>;

/// A name in a directory, and the charge for keeping it there.
#[derive(Debug)]
struct Entry {
    node: Node,
    _name: Charge,
}

/// A file or directory. Clones share the same node.
#[derive(Clone, Debug)]
enum Node {
    File(Arc<File>),
    Dir(Arc<Dir>),
}

/// A file's bytes, charged by their capacity for as long as the file exists: while it is in
/// a directory or while any descriptor or stream still holds it, so neither truncating nor
/// unlinking an open file frees budget that is still in use.
#[derive(Debug)]
struct File {
    id: u64,
    data: RwLock<FileData>,
    _counted: Charge,
}

#[derive(Debug)]
struct FileData {
    bytes: Vec<u8>,
    /// The length, against the `/tmp` quota.
    length: Charge,
    /// The capacity, against the request's budget.
    memory: Charge,
}

#[derive(Debug)]
struct Dir {
    id: u64,
    entries: RwLock<Entries>,
    _counted: Charge,
}

/// Frees a tree without recursion: a `/tmp` as deep as its limits allow would otherwise
/// overflow the worker thread's stack when the request ends.
impl Drop for Dir {
    fn drop(&mut self) {
        let entries = std::mem::take(self.entries.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut pending: Vec<Entry> = entries.into_values().collect();
        while let Some(entry) = pending.pop() {
            if let Node::Dir(dir) = entry.node
                && let Some(mut dir) = Arc::into_inner(dir)
            {
                let entries = dir.entries.get_mut().unwrap_or_else(|e| e.into_inner());
                pending.extend(std::mem::take(entries).into_values());
            }
        }
    }
}

impl Node {
    fn kind(&self) -> DescriptorType {
        match self {
            Node::File(_) => DescriptorType::RegularFile,
            Node::Dir(_) => DescriptorType::Directory,
        }
    }

    /// The node's number within its mount: a counter, not an address, so nothing of the
    /// host's memory layout reaches the guest.
    fn id(&self) -> u64 {
        match self {
            Node::File(f) => f.id,
            Node::Dir(d) => d.id,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Node::File(f) => f.data.read().map_or(0, |f| f.bytes.len() as u64),
            Node::Dir(d) => d.entries.read().map_or(0, |d| d.len() as u64),
        }
    }
}

/// Most files an app's assets may hold. Every replica keeps a node per file in memory for as
/// long as the version is loaded, so a deployer must not be able to make that unbounded (a
/// bundle of a million empty files cost 215 MiB on every replica).
pub const MAX_ASSET_FILES: usize = 10_000;
/// Deepest an asset's path may be, in names: the tree is built (and a bundle walked) by
/// recursion, and a path 3,000 directories deep overflowed the control thread's stack.
pub const MAX_ASSET_DEPTH: usize = 32;

/// The first bytes of an assets bundle, and its version.
const BUNDLE_MAGIC: &[u8] = b"tabula-assets 1\n";

/// The app's read-only assets, loaded once per deploy.
#[derive(Clone, Debug)]
pub struct Assets(Arc<Mount>);

impl Assets {
    /// No files.
    pub fn empty() -> Assets {
        Assets::load_with(|_| Ok(Entries::new())).expect("an empty tree")
    }

    /// Reads the directory `dir` (recursively) into memory, through the same bundle a deploy
    /// sends, so that local assets and deployed ones obey the same bounds and look the same
    /// (empty directories are left out). Symlinks are not followed.
    pub fn load(dir: &Path) -> anyhow::Result<Assets> {
        Assets::from_bundle(&Assets::bundle(dir)?)
    }

    /// The files of `dir` (recursively; symlinks not followed) as one deterministic byte
    /// string: how assets travel to the store with a deploy. Empty directories are left out.
    pub fn bundle(dir: &Path) -> anyhow::Result<Vec<u8>> {
        fn walk(
            dir: &Path,
            prefix: &str,
            depth: usize,
            out: &mut Vec<(String, Vec<u8>)>,
        ) -> anyhow::Result<()> {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = format!("{prefix}{name}");
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    anyhow::ensure!(
                        depth + 1 < MAX_ASSET_DEPTH,
                        "assets: {} is nested deeper than {MAX_ASSET_DEPTH} levels, the most \
                         an app's assets may be",
                        entry.path().display()
                    );
                    walk(&entry.path(), &format!("{path}/"), depth + 1, out)?;
                } else if kind.is_file() {
                    anyhow::ensure!(
                        out.len() < MAX_ASSET_FILES,
                        "assets: more than {MAX_ASSET_FILES} files (the most an app's assets \
                         may have) by {}",
                        entry.path().display()
                    );
                    out.push((path, std::fs::read(entry.path())?));
                }
            }
            Ok(())
        }
        let mut files = Vec::new();
        walk(dir, "", 0, &mut files)?;
        let mut bundle = BUNDLE_MAGIC.to_vec();
        for (path, bytes) in files {
            bundle.extend_from_slice(&(path.len() as u32).to_le_bytes());
            bundle.extend_from_slice(path.as_bytes());
            bundle.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            bundle.extend_from_slice(&bytes);
        }
        Ok(bundle)
    }

    /// The assets in a [`Assets::bundle`], each path checked to stay inside the mount.
    pub fn from_bundle(bundle: &[u8]) -> anyhow::Result<Assets> {
        #[derive(Default)]
        struct Tree(BTreeMap<String, Result<Vec<u8>, Tree>>);
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> anyhow::Result<&'a [u8]> {
            anyhow::ensure!(rest.len() >= n, "the assets bundle is cut short");
            let (head, tail) = rest.split_at(n);
            *rest = tail;
            Ok(head)
        }
        fn build(tree: Tree, mount: &Mount) -> Entries {
            tree.0
                .into_iter()
                .map(|(name, node)| {
                    let node = match node {
                        Ok(bytes) => mount.new_file(
                            FileData {
                                bytes,
                                length: Charge::none(),
                                memory: Charge::none(),
                            },
                            Charge::none(),
                        ),
                        Err(dir) => mount.new_dir(build(dir, mount), Charge::none()),
                    };
                    let entry = Entry {
                        node,
                        _name: Charge::none(),
                    };
                    (name, entry)
                })
                .collect()
        }
        let mut rest = bundle
            .strip_prefix(BUNDLE_MAGIC)
            .context("not an assets bundle")?;
        let mut root = Tree::default();
        let mut files = 0;
        while !rest.is_empty() {
            let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into()?) as usize;
            let path = std::str::from_utf8(take(&mut rest, len)?)?.to_string();
            let len = u64::from_le_bytes(take(&mut rest, 8)?.try_into()?) as usize;
            let bytes = take(&mut rest, len)?.to_vec();
            files += 1;
            anyhow::ensure!(
                files <= MAX_ASSET_FILES,
                "the assets bundle holds more than {MAX_ASSET_FILES} files, the most an app's \
                 assets may have"
            );
            let parts: Vec<&str> = path.split('/').collect();
            anyhow::ensure!(
                parts
                    .iter()
                    .all(|p| !p.is_empty() && *p != "." && *p != ".." && p.len() <= NAME_MAX),
                "the assets bundle names a path outside its mount: {path:?}"
            );
            anyhow::ensure!(
                parts.len() <= MAX_ASSET_DEPTH && path.len() <= PATH_MAX,
                "the assets bundle names a path deeper than {MAX_ASSET_DEPTH} levels or longer \
                 than {PATH_MAX} bytes: {:?}",
                path.chars().take(80).collect::<String>()
            );
            let (file, dirs) = parts.split_last().expect("split yields one part at least");
            let mut dir = &mut root;
            for part in dirs {
                let node = dir
                    .0
                    .entry(part.to_string())
                    .or_insert_with(|| Err(Tree::default()));
                dir = match node {
                    Err(tree) => tree,
                    Ok(_) => anyhow::bail!("the assets bundle has {part:?} as file and directory"),
                };
            }
            anyhow::ensure!(
                dir.0.insert(file.to_string(), Ok(bytes)).is_none(),
                "the assets bundle names {path:?} twice"
            );
        }
        Assets::load_with(|mount| Ok(build(root, mount)))
    }

    /// The read-only mount every request of the app shares: built once, cloned per request.
    /// Its nodes are numbered from 2^40 so that they never share a number with `/tmp`'s.
    fn load_with(fill: impl FnOnce(&Mount) -> anyhow::Result<Entries>) -> anyhow::Result<Assets> {
        let mut mount = Mount {
            root: None,
            space: None,
            next_id: AtomicU64::new(1 << 40),
        };
        let root = mount.new_dir(fill(&mount)?, Charge::none());
        mount.root = Some(root);
        Ok(Assets(Arc::new(mount)))
    }
}

/// Limits on a request's `/tmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmpQuota {
    /// File contents, in bytes.
    pub max_bytes: u64,
    /// Files and directories.
    pub max_files: u64,
}

impl Default for TmpQuota {
    fn default() -> Self {
        TmpQuota {
            max_bytes: 64 << 20,
            max_files: 1000,
        }
    }
}

/// One mounted tree: its root, and for a writable one (`/tmp`) what it may hold.
#[derive(Debug)]
struct Mount {
    /// Always `Some` once built; a mount numbers its own root.
    root: Option<Node>,
    /// `None` for the read-only assets.
    space: Option<Space>,
    next_id: AtomicU64,
}

/// What a writable mount charges: file contents (by length) and files against its quotas,
/// and the memory behind them (contents by capacity, and names) against the request's
/// budget.
#[derive(Debug)]
struct Space {
    bytes: Arc<Budget>,
    files: Arc<Budget>,
    memory: Arc<Budget>,
}

/// A quota refused a charge: the guest sees no space left.
impl From<OverBudget> for ErrorCode {
    fn from(_: OverBudget) -> ErrorCode {
        ErrorCode::InsufficientSpace
    }
}

impl Mount {
    fn root(&self) -> &Node {
        self.root.as_ref().expect("a mount has a root")
    }

    fn writable(&self) -> bool {
        self.space.is_some()
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn new_dir(&self, entries: Entries, counted: Charge) -> Node {
        Node::Dir(Arc::new(Dir {
            id: self.next_id(),
            entries: RwLock::new(entries),
            _counted: counted,
        }))
    }

    fn new_file(&self, data: FileData, counted: Charge) -> Node {
        Node::File(Arc::new(File {
            id: self.next_id(),
            data: RwLock::new(data),
            _counted: counted,
        }))
    }

    fn space(&self) -> Result<&Space, ErrorCode> {
        self.space.as_ref().ok_or(ErrorCode::ReadOnly)
    }

    /// A new, empty node under `name`: charged one file, and the name's bytes.
    fn create(&self, name: &str, dir: bool) -> Result<Entry, ErrorCode> {
        let space = self.space()?;
        let counted = space.files.charge(1)?;
        let name = Mount::name_charge(space, name)?;
        let node = if dir {
            self.new_dir(Entries::new(), counted)
        } else {
            let data = FileData {
                bytes: Vec::new(),
                length: space.bytes.empty_charge(),
                memory: space.memory.empty_charge(),
            };
            self.new_file(data, counted)
        };
        Ok(Entry { node, _name: name })
    }

    /// The charge for keeping an existing node under a new name.
    fn rename_charge(&self, name: &str) -> Result<Charge, ErrorCode> {
        Mount::name_charge(self.space()?, name)
    }

    /// A name's bytes, against the request's budget.
    fn name_charge(space: &Space, name: &str) -> Result<Charge, ErrorCode> {
        space
            .memory
            .charge(name.len() as u64 + OVERHEAD)
            .map_err(|_| ErrorCode::InsufficientMemory)
    }
}

impl FileData {
    /// Makes the file `len` bytes long (zero-filled when it grows). The length counts
    /// against the `/tmp` quota, the memory behind it against the request's budget: growth
    /// doubles the capacity while the budget allows (appends stay linear), then grows
    /// exactly, and shrinking to under half gives the memory back to the allocator and the
    /// budget, so truncating really frees.
    fn set_len(&mut self, len: usize) -> Result<(), ErrorCode> {
        self.length.resize(len as u64)?;
        if len > self.bytes.capacity() {
            let doubled = self.bytes.capacity().saturating_mul(2).max(len);
            let capacity = if self.memory.resize(doubled as u64).is_ok() {
                doubled
            } else if self.memory.resize(len as u64).is_ok() {
                len
            } else {
                let _ = self.length.resize(self.bytes.len() as u64);
                return Err(ErrorCode::InsufficientMemory);
            };
            self.bytes.reserve_exact(capacity - self.bytes.len());
        }
        self.bytes.resize(len, 0);
        if len < self.bytes.capacity() / 2 {
            self.bytes.shrink_to_fit();
        }
        let _ = self.memory.resize(self.bytes.capacity() as u64);
        Ok(())
    }
}

/// What a guest holds open: a node, where it is, and what it may do.
#[derive(Debug)]
pub struct Descriptor {
    node: Node,
    mount: Arc<Mount>,
    /// Path from the mount's root, for resolving `..`.
    path: Vec<String>,
    flags: DescriptorFlags,
    _charge: Charge,
}

/// A snapshot of a directory's entries, handed out one by one.
#[derive(Debug)]
pub struct DirStream {
    entries: std::vec::IntoIter<DirectoryEntry>,
    _charge: Charge,
}

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

/// Splits `path` into the components to walk from `base`, refusing escapes, names longer
/// than [`NAME_MAX`] and paths longer than [`PATH_MAX`].
fn resolve(base: &[String], path: &str) -> Result<Vec<String>, ErrorCode> {
    if path.starts_with('/') {
        return Err(ErrorCode::NotPermitted);
    }
    if path.len() > PATH_MAX {
        return Err(ErrorCode::NameTooLong);
    }
    let mut parts = base.to_vec();
    let mut len: usize = parts.iter().map(|p| p.len() + 1).sum();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                let gone = parts.pop().ok_or(ErrorCode::NotPermitted)?;
                len -= gone.len() + 1;
            }
            name if name.len() > NAME_MAX => return Err(ErrorCode::NameTooLong),
            name => {
                len += name.len() + 1;
                if len > PATH_MAX {
                    return Err(ErrorCode::NameTooLong);
                }
                parts.push(name.to_string());
            }
        }
    }
    Ok(parts)
}

fn walk(root: &Node, parts: &[String]) -> Result<Node, ErrorCode> {
    let mut node = root.clone();
    for part in parts {
        let next = match &node {
            Node::Dir(d) => d
                .entries
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(part)
                .map(|entry| entry.node.clone()),
            Node::File(_) => return Err(ErrorCode::NotDirectory),
        };
        node = next.ok_or(ErrorCode::NoEntry)?;
    }
    Ok(node)
}

impl Descriptor {
    fn locate(&self, path: &str) -> Result<(Vec<String>, Node), ErrorCode> {
        let parts = resolve(&self.path, path)?;
        let node = walk(self.mount.root(), &parts)?;
        Ok((parts, node))
    }

    /// The directory that would hold `path`, and the last component's name.
    fn parent_of(&self, path: &str) -> Result<(Arc<Dir>, String), ErrorCode> {
        let mut parts = resolve(&self.path, path)?;
        let name = parts.pop().ok_or(ErrorCode::Invalid)?;
        match walk(self.mount.root(), &parts)? {
            Node::Dir(d) => Ok((d, name)),
            Node::File(_) => Err(ErrorCode::NotDirectory),
        }
    }

    fn writable(&self) -> Result<(), ErrorCode> {
        if self.mount.writable() {
            Ok(())
        } else {
            Err(ErrorCode::ReadOnly)
        }
    }

    fn file(&self) -> Result<&Arc<File>, ErrorCode> {
        match &self.node {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(ErrorCode::IsDirectory),
        }
    }

    fn stat_of(node: &Node) -> DescriptorStat {
        DescriptorStat {
            type_: node.kind(),
            link_count: 1,
            size: node.size(),
            data_access_timestamp: None,
            data_modification_timestamp: None,
            status_change_timestamp: None,
        }
    }
}

/// Writes `data` at `offset`, growing the file (and charging the mount's quota) as needed.
fn write_at(mount: &Mount, file: &File, offset: u64, data: &[u8]) -> Result<(), ErrorCode> {
    if !mount.writable() {
        return Err(ErrorCode::ReadOnly);
    }
    let mut file = file.data.write().unwrap_or_else(|e| e.into_inner());
    let offset = usize::try_from(offset).map_err(|_| ErrorCode::FileTooLarge)?;
    let end = offset
        .checked_add(data.len())
        .ok_or(ErrorCode::FileTooLarge)?;
    if end > file.bytes.len() {
        file.set_len(end)?;
    }
    file.bytes[offset..end].copy_from_slice(data);
    Ok(())
}

/// A filesystem error carried by a stream error, so `filesystem-error-code` can recover it
/// (and std reports e.g. `StorageFull` rather than a generic I/O error).
#[derive(Debug)]
struct StreamCode(ErrorCode);

impl std::fmt::Display for StreamCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "filesystem error: {:?}", self.0)
    }
}

impl std::error::Error for StreamCode {}

impl types::Host for VfsView<'_> {
    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime_wasi_io::streams::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        Ok(self
            .table
            .get(&err)?
            .downcast_ref::<StreamCode>()
            .map(|c| c.0))
    }
}

impl preopens::Host for VfsView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let mut dirs = Vec::with_capacity(2);
        for (mount, name) in [(self.vfs.tmp(), "/tmp"), (&self.vfs.app, "/app")] {
            let flags = if mount.writable() {
                DescriptorFlags::READ | DescriptorFlags::WRITE | DescriptorFlags::MUTATE_DIRECTORY
            } else {
                DescriptorFlags::READ
            };
            let d = self
                .vfs
                .descriptor(mount.root().clone(), mount, Vec::new(), flags)
                .map_err(|code| {
                    wasmtime::Error::msg(format!("no budget for the preopens: {code:?}"))
                })?;
            dirs.push((self.table.push(d)?, name.to_string()));
        }
        Ok(dirs)
    }
}

impl types::HostDescriptor for VfsView<'_> {
    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        let d = self.table.get(&fd)?;
        let file = match d.file() {
            Ok(f) => f.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let stream: DynInputStream = Box::new(FileReader { file, offset });
        Ok(Ok(self.table.push(stream)?))
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.writer(fd, Some(offset))
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.writer(fd, None)
    }

    fn advise(
        &mut self,
        _fd: Resource<Descriptor>,
        _offset: Filesize,
        _len: Filesize,
        _advice: types::Advice,
    ) -> FsResult<()> {
        Ok(Ok(()))
    }

    fn sync_data(&mut self, _fd: Resource<Descriptor>) -> FsResult<()> {
        Ok(Ok(()))
    }

    fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<DescriptorFlags> {
        Ok(Ok(self.table.get(&fd)?.flags))
    }

    fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<DescriptorType> {
        Ok(Ok(self.table.get(&fd)?.node.kind()))
    }

    fn set_size(&mut self, fd: Resource<Descriptor>, size: Filesize) -> FsResult<()> {
        let d = self.table.get(&fd)?;
        Ok((|| {
            d.writable()?;
            let mut file = d.file()?.data.write().unwrap_or_else(|e| e.into_inner());
            let size = usize::try_from(size).map_err(|_| ErrorCode::FileTooLarge)?;
            file.set_len(size)
        })())
    }

    fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        _a: types::NewTimestamp,
        _m: types::NewTimestamp,
    ) -> FsResult<()> {
        Ok(self.table.get(&fd)?.writable())
    }

    fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: Filesize,
        offset: Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        let d = self.table.get(&fd)?;
        Ok(d.file().map(|f| {
            let file = &f.data.read().unwrap_or_else(|e| e.into_inner()).bytes;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(file.len());
            let end = start
                .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
                .min(file.len());
            (file[start..end].to_vec(), end >= file.len())
        }))
    }

    fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buffer: Vec<u8>,
        offset: Filesize,
    ) -> FsResult<Filesize> {
        let d = self.table.get(&fd)?;
        Ok(d.file()
            .and_then(|f| write_at(&d.mount, f, offset, &buffer))
            .map(|()| buffer.len() as u64))
    }

    fn read_directory(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DirStream>> {
        let d = self.table.get(&fd)?;
        let Node::Dir(dir) = &d.node else {
            return Ok(Err(ErrorCode::NotDirectory));
        };
        // The snapshot is charged: a guest that keeps many listings open holds their names.
        let entries = dir.entries.read().unwrap_or_else(|e| e.into_inner());
        let bytes: usize = entries
            .keys()
            .map(|name| name.len() + OVERHEAD as usize)
            .sum();
        let Ok(charge) = self.vfs.budget.charge(bytes as u64 + OVERHEAD) else {
            return Ok(Err(ErrorCode::InsufficientMemory));
        };
        let stream = DirStream {
            entries: entries
                .iter()
                .map(|(name, entry)| DirectoryEntry {
                    type_: entry.node.kind(),
                    name: name.clone(),
                })
                .collect::<Vec<_>>()
                .into_iter(),
            _charge: charge,
        };
        drop(entries);
        Ok(Ok(self.table.push(stream)?))
    }

    fn sync(&mut self, _fd: Resource<Descriptor>) -> FsResult<()> {
        Ok(Ok(()))
    }

    fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let d = self.table.get(&fd)?;
        Ok((|| {
            d.writable()?;
            let (parent, name) = d.parent_of(&path)?;
            let mut parent = parent.entries.write().unwrap_or_else(|e| e.into_inner());
            if parent.contains_key(&name) {
                return Err(ErrorCode::Exist);
            }
            let entry = d.mount.create(&name, true)?;
            parent.insert(name, entry);
            Ok(())
        })())
    }

    fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<DescriptorStat> {
        Ok(Ok(Descriptor::stat_of(&self.table.get(&fd)?.node)))
    }

    fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        _flags: PathFlags,
        path: String,
    ) -> FsResult<DescriptorStat> {
        let d = self.table.get(&fd)?;
        Ok(d.locate(&path).map(|(_, node)| Descriptor::stat_of(&node)))
    }

    fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        _flags: PathFlags,
        path: String,
        _a: types::NewTimestamp,
        _m: types::NewTimestamp,
    ) -> FsResult<()> {
        let d = self.table.get(&fd)?;
        Ok(d.writable().and_then(|()| d.locate(&path).map(drop)))
    }

    fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        _f: PathFlags,
        _old: String,
        _new_fd: Resource<Descriptor>,
        _new: String,
    ) -> FsResult<()> {
        let d = self.table.get(&fd)?;
        Ok(d.writable().and(Err(ErrorCode::Unsupported)))
    }

    fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        _pflags: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let d = self.table.get(&fd)?;
        let opened = (|| {
            let wants_write = flags
                .intersects(DescriptorFlags::WRITE | DescriptorFlags::MUTATE_DIRECTORY)
                || oflags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
            if wants_write {
                d.writable()?;
            }
            let parts = resolve(&d.path, &path)?;
            let node = match walk(d.mount.root(), &parts) {
                Ok(node) => {
                    if oflags.contains(OpenFlags::CREATE | OpenFlags::EXCLUSIVE) {
                        return Err(ErrorCode::Exist);
                    }
                    node
                }
                Err(ErrorCode::NoEntry) if oflags.contains(OpenFlags::CREATE) => {
                    let (parent, name) = d.parent_of(&path)?;
                    let mut parent = parent.entries.write().unwrap_or_else(|e| e.into_inner());
                    let entry = d
                        .mount
                        .create(&name, oflags.contains(OpenFlags::DIRECTORY))?;
                    let node = entry.node.clone();
                    parent.insert(name, entry);
                    node
                }
                Err(e) => return Err(e),
            };
            if oflags.contains(OpenFlags::DIRECTORY) && !matches!(node, Node::Dir(_)) {
                return Err(ErrorCode::NotDirectory);
            }
            if let (true, Node::File(f)) = (oflags.contains(OpenFlags::TRUNCATE), &node) {
                f.data
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_len(0)?;
            }
            if matches!(node, Node::Dir(_)) && flags.contains(DescriptorFlags::WRITE) {
                return Err(ErrorCode::IsDirectory);
            }
            self.vfs.descriptor(node, &d.mount, parts, flags)
        })();
        Ok(match opened {
            Ok(desc) => Ok(self.table.push(desc)?),
            Err(e) => Err(e),
        })
    }

    fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        let d = self.table.get(&fd)?;
        // There are no symlinks: whatever exists is not one.
        Ok(d.locate(&path).and(Err(ErrorCode::Invalid)))
    }

    fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.remove(fd, &path, true)
    }

    fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old: String,
        new_fd: Resource<Descriptor>,
        new: String,
    ) -> FsResult<()> {
        let from = self.table.get(&fd)?;
        let to = self.table.get(&new_fd)?;
        Ok((|| {
            from.writable()?;
            to.writable()?;
            if !Arc::ptr_eq(&from.mount, &to.mount) {
                return Err(ErrorCode::CrossDevice);
            }
            let (src_dir, src_name) = from.parent_of(&old)?;
            let (dst_dir, dst_name) = to.parent_of(&new)?;
            let node = src_dir
                .entries
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&src_name)
                .map(|entry| entry.node.clone())
                .ok_or(ErrorCode::NoEntry)?;
            // Moving a directory into itself would detach it from the tree.
            let src_parts = resolve(&from.path, &old)?;
            let dst_parts = resolve(&to.path, &new)?;
            if matches!(node, Node::Dir(_))
                && dst_parts.starts_with(&src_parts)
                && dst_parts != src_parts
            {
                return Err(ErrorCode::Invalid);
            }
            if src_parts == dst_parts {
                return Ok(());
            }
            let mut dst = dst_dir.entries.write().unwrap_or_else(|e| e.into_inner());
            if let Some(existing) = dst.get(&dst_name) {
                match (&existing.node, &node) {
                    (Node::Dir(e), Node::Dir(_))
                        if !e
                            .entries
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .is_empty() =>
                    {
                        return Err(ErrorCode::NotEmpty);
                    }
                    (Node::Dir(_), Node::File(_)) => return Err(ErrorCode::IsDirectory),
                    (Node::File(_), Node::Dir(_)) => return Err(ErrorCode::NotDirectory),
                    _ => {}
                }
            }
            // What the replaced node held stays charged until nothing holds it: a
            // descriptor still open on it keeps its bytes in use.
            let entry = Entry {
                node,
                _name: from.mount.rename_charge(&dst_name)?,
            };
            let replaced = dst.insert(dst_name, entry);
            drop(dst);
            drop(replaced);
            src_dir
                .entries
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&src_name);
            Ok(())
        })())
    }

    fn symlink_at(&mut self, fd: Resource<Descriptor>, _old: String, _new: String) -> FsResult<()> {
        let d = self.table.get(&fd)?;
        Ok(d.writable().and(Err(ErrorCode::NotPermitted)))
    }

    fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.remove(fd, &path, false)
    }

    fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        Ok(self.table.get(&a)?.node.id() == self.table.get(&b)?.node.id())
    }

    // The hash is the node's number and size: equal for the same file unchanged, and made of
    // nothing but what the guest could learn anyway.
    fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<types::MetadataHashValue> {
        let node = &self.table.get(&fd)?.node;
        Ok(Ok(types::MetadataHashValue {
            lower: node.id(),
            upper: node.size(),
        }))
    }

    fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        _flags: PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        let d = self.table.get(&fd)?;
        Ok(d.locate(&path).map(|(_, node)| types::MetadataHashValue {
            lower: node.id(),
            upper: node.size(),
        }))
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.table.delete(fd)?;
        Ok(())
    }
}

impl VfsView<'_> {
    fn writer(
        &mut self,
        fd: Resource<Descriptor>,
        offset: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let d = self.table.get(&fd)?;
        let file = match d.writable().and_then(|()| d.file()) {
            Ok(f) => f.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let stream: DynOutputStream = Box::new(FileWriter {
            file,
            mount: d.mount.clone(),
            offset,
        });
        Ok(Ok(self.table.push(stream)?))
    }

    fn remove(&mut self, fd: Resource<Descriptor>, path: &str, directory: bool) -> FsResult<()> {
        let d = self.table.get(&fd)?;
        Ok((|| {
            d.writable()?;
            let (parent, name) = d.parent_of(path)?;
            let mut parent = parent.entries.write().unwrap_or_else(|e| e.into_inner());
            let entry = parent.get(&name).ok_or(ErrorCode::NoEntry)?;
            match (&entry.node, directory) {
                (Node::Dir(dir), true) => {
                    if !dir
                        .entries
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_empty()
                    {
                        return Err(ErrorCode::NotEmpty);
                    }
                }
                (Node::File(_), false) => {}
                (Node::Dir(_), false) => return Err(ErrorCode::IsDirectory),
                (Node::File(_), true) => return Err(ErrorCode::NotDirectory),
            }
            // The name's charge goes now; the node's, once nothing holds it open.
            let removed = parent.remove(&name);
            drop(parent);
            drop(removed);
            Ok(())
        })())
    }
}

impl types::HostDirectoryEntryStream for VfsView<'_> {
    fn read_directory_entry(
        &mut self,
        stream: Resource<DirStream>,
    ) -> FsResult<Option<DirectoryEntry>> {
        Ok(Ok(self.table.get_mut(&stream)?.entries.next()))
    }

    fn drop(&mut self, stream: Resource<DirStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

/// `read-via-stream`: reads from the file as it is at each read.
struct FileReader {
    file: Arc<File>,
    offset: u64,
}

impl InputStream for FileReader {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        let file = &self
            .file
            .data
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .bytes;
        let start = usize::try_from(self.offset)
            .unwrap_or(usize::MAX)
            .min(file.len());
        if start == file.len() {
            return Err(StreamError::Closed);
        }
        let end = start.saturating_add(size).min(file.len());
        self.offset = end as u64;
        Ok(Bytes::copy_from_slice(&file[start..end]))
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi_io::poll::Pollable for FileReader {
    async fn ready(&mut self) {}
}

/// `write-via-stream` (at an offset that advances) or `append-via-stream` (`offset: None`).
struct FileWriter {
    file: Arc<File>,
    mount: Arc<Mount>,
    offset: Option<u64>,
}

impl OutputStream for FileWriter {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let offset = match self.offset {
            Some(offset) => offset,
            None => self.file.data.read().map_or(0, |f| f.bytes.len() as u64),
        };
        write_at(&self.mount, &self.file, offset, &bytes).map_err(|code| {
            StreamError::LastOperationFailed(wasmtime::Error::new(StreamCode(code)))
        })?;
        if let Some(o) = &mut self.offset {
            *o += bytes.len() as u64;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(1 << 20)
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi_io::poll::Pollable for FileWriter {
    async fn ready(&mut self) {}
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
