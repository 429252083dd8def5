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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use bytes::Bytes;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi_io::streams::{
    DynInputStream, DynOutputStream, InputStream, OutputStream, StreamError,
};

use crate::bindings::filesystem::wasi::filesystem::{preopens, types};
use crate::instance::RequestCtx;
use types::{
    DescriptorFlags, DescriptorStat, DescriptorType, DirectoryEntry, ErrorCode, Filesize,
    OpenFlags, PathFlags,
};

type FsResult<T> = wasmtime::Result<Result<T, ErrorCode>>;

/// A directory's entries.
type Entries = Arc<RwLock<BTreeMap<String, Node>>>;

/// A file or directory. Clones share the same node.
#[derive(Clone, Debug)]
enum Node {
    File(Arc<RwLock<Vec<u8>>>),
    Dir(Entries),
}

impl Node {
    fn empty_dir() -> Node {
        Node::Dir(Arc::default())
    }

    fn kind(&self) -> DescriptorType {
        match self {
            Node::File(_) => DescriptorType::RegularFile,
            Node::Dir(_) => DescriptorType::Directory,
        }
    }

    fn id(&self) -> u64 {
        match self {
            Node::File(f) => Arc::as_ptr(f) as *const u8 as u64,
            Node::Dir(d) => Arc::as_ptr(d) as *const u8 as u64,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Node::File(f) => f.read().map_or(0, |f| f.len() as u64),
            Node::Dir(d) => d.read().map_or(0, |d| d.len() as u64),
        }
    }

    /// Bytes and files held by this node and everything below it.
    fn usage(&self) -> (u64, u64) {
        match self {
            Node::File(f) => (f.read().map_or(0, |f| f.len() as u64), 1),
            Node::Dir(d) => d.read().map_or((0, 0), |d| {
                d.values().fold((0, 1), |(b, n), child| {
                    let (cb, cn) = child.usage();
                    (b + cb, n + cn)
                })
            }),
        }
    }
}

/// The app's read-only assets, loaded once per deploy.
#[derive(Clone, Debug)]
pub struct Assets(Arc<Mount>);

impl Assets {
    pub fn empty() -> Assets {
        Assets::mount(Node::empty_dir())
    }

    /// The read-only mount every request of the app shares: built once, cloned per request.
    fn mount(root: Node) -> Assets {
        Assets(Arc::new(Mount {
            root,
            writable: false,
            quota: TmpQuota {
                max_bytes: 0,
                max_files: 0,
            },
            used: RwLock::new((0, 0)),
        }))
    }

    /// Reads the directory `dir` (recursively) into memory. Symlinks are not followed.
    pub fn load(dir: &Path) -> anyhow::Result<Assets> {
        fn read(dir: &Path) -> anyhow::Result<Node> {
            let mut entries = BTreeMap::new();
            for entry in
                std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?
            {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let kind = entry.file_type()?;
                let node = if kind.is_dir() {
                    read(&entry.path())?
                } else if kind.is_file() {
                    Node::File(Arc::new(RwLock::new(std::fs::read(entry.path())?)))
                } else {
                    continue;
                };
                entries.insert(name, node);
            }
            Ok(Node::Dir(Arc::new(RwLock::new(entries))))
        }
        Ok(Assets::mount(read(dir)?))
    }
}

/// Limits on a request's `/tmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmpQuota {
    pub max_bytes: u64,
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

/// One mounted tree: its root, whether it is writable, and (for `/tmp`) what it holds.
#[derive(Debug)]
struct Mount {
    root: Node,
    writable: bool,
    quota: TmpQuota,
    used: RwLock<(u64, u64)>,
}

impl Mount {
    /// Reserves `bytes` more bytes and `files` more files, or says there is no space.
    fn grow(&self, bytes: i64, files: i64) -> Result<(), ErrorCode> {
        let mut used = self.used.write().unwrap_or_else(|e| e.into_inner());
        let new_bytes = used.0.saturating_add_signed(bytes);
        let new_files = used.1.saturating_add_signed(files);
        if (bytes > 0 && new_bytes > self.quota.max_bytes)
            || (files > 0 && new_files > self.quota.max_files)
        {
            return Err(ErrorCode::InsufficientSpace);
        }
        *used = (new_bytes, new_files);
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
}

/// A snapshot of a directory's entries, handed out one by one.
#[derive(Debug)]
pub struct DirStream(std::vec::IntoIter<DirectoryEntry>);

/// A request's filesystem.
pub struct Vfs {
    tmp: Arc<Mount>,
    app: Arc<Mount>,
}

impl Vfs {
    /// A fresh, empty `/tmp` and the app's shared assets at `/app`.
    pub fn new(assets: &Assets, quota: TmpQuota) -> Vfs {
        Vfs {
            tmp: Arc::new(Mount {
                root: Node::empty_dir(),
                writable: true,
                quota,
                used: RwLock::new((0, 0)),
            }),
            app: assets.0.clone(),
        }
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

/// Replaces wasmtime-wasi's `wasi:filesystem` (already in `linker`) with this one.
pub fn add_to_linker(linker: &mut Linker<RequestCtx>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    types::add_to_linker::<RequestCtx, VfsData>(linker, RequestCtx::vfs)?;
    preopens::add_to_linker::<RequestCtx, VfsData>(linker, RequestCtx::vfs)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Splits `path` into the components to walk from `base`, refusing escapes.
fn resolve(base: &[String], path: &str) -> Result<Vec<String>, ErrorCode> {
    if path.starts_with('/') {
        return Err(ErrorCode::NotPermitted);
    }
    let mut parts = base.to_vec();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or(ErrorCode::NotPermitted)?;
            }
            name => parts.push(name.to_string()),
        }
    }
    Ok(parts)
}

fn walk(root: &Node, parts: &[String]) -> Result<Node, ErrorCode> {
    let mut node = root.clone();
    for part in parts {
        let next = match &node {
            Node::Dir(d) => d
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(part)
                .cloned(),
            Node::File(_) => return Err(ErrorCode::NotDirectory),
        };
        node = next.ok_or(ErrorCode::NoEntry)?;
    }
    Ok(node)
}

impl Descriptor {
    fn locate(&self, path: &str) -> Result<(Vec<String>, Node), ErrorCode> {
        let parts = resolve(&self.path, path)?;
        let node = walk(&self.mount.root, &parts)?;
        Ok((parts, node))
    }

    /// The directory that would hold `path`, and the last component's name.
    fn parent_of(&self, path: &str) -> Result<(Entries, String), ErrorCode> {
        let mut parts = resolve(&self.path, path)?;
        let name = parts.pop().ok_or(ErrorCode::Invalid)?;
        match walk(&self.mount.root, &parts)? {
            Node::Dir(d) => Ok((d, name)),
            Node::File(_) => Err(ErrorCode::NotDirectory),
        }
    }

    fn writable(&self) -> Result<(), ErrorCode> {
        if self.mount.writable {
            Ok(())
        } else {
            Err(ErrorCode::ReadOnly)
        }
    }

    fn file(&self) -> Result<&Arc<RwLock<Vec<u8>>>, ErrorCode> {
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
fn write_at(
    mount: &Mount,
    file: &RwLock<Vec<u8>>,
    offset: u64,
    data: &[u8],
) -> Result<(), ErrorCode> {
    if !mount.writable {
        return Err(ErrorCode::ReadOnly);
    }
    let mut file = file.write().unwrap_or_else(|e| e.into_inner());
    let offset = usize::try_from(offset).map_err(|_| ErrorCode::FileTooLarge)?;
    let end = offset
        .checked_add(data.len())
        .ok_or(ErrorCode::FileTooLarge)?;
    if end > file.len() {
        mount.grow((end - file.len()) as i64, 0)?;
        file.resize(end, 0);
    }
    file[offset..end].copy_from_slice(data);
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
        for (mount, name) in [(&self.vfs.tmp, "/tmp"), (&self.vfs.app, "/app")] {
            let flags = if mount.writable {
                DescriptorFlags::READ | DescriptorFlags::WRITE | DescriptorFlags::MUTATE_DIRECTORY
            } else {
                DescriptorFlags::READ
            };
            let d = Descriptor {
                node: mount.root.clone(),
                mount: mount.clone(),
                path: Vec::new(),
                flags,
            };
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
            let mut file = d.file()?.write().unwrap_or_else(|e| e.into_inner());
            let size = usize::try_from(size).map_err(|_| ErrorCode::FileTooLarge)?;
            d.mount.grow(size as i64 - file.len() as i64, 0)?;
            file.resize(size, 0);
            Ok(())
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
            let file = f.read().unwrap_or_else(|e| e.into_inner());
            let start = (offset as usize).min(file.len());
            let end = start.saturating_add(len as usize).min(file.len());
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
        let entries: Vec<DirectoryEntry> = dir
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, node)| DirectoryEntry {
                type_: node.kind(),
                name: name.clone(),
            })
            .collect();
        Ok(Ok(self.table.push(DirStream(entries.into_iter()))?))
    }

    fn sync(&mut self, _fd: Resource<Descriptor>) -> FsResult<()> {
        Ok(Ok(()))
    }

    fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let d = self.table.get(&fd)?;
        Ok((|| {
            d.writable()?;
            let (parent, name) = d.parent_of(&path)?;
            let mut parent = parent.write().unwrap_or_else(|e| e.into_inner());
            if parent.contains_key(&name) {
                return Err(ErrorCode::Exist);
            }
            d.mount.grow(0, 1)?;
            parent.insert(name, Node::empty_dir());
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
            let node = match walk(&d.mount.root, &parts) {
                Ok(node) => {
                    if oflags.contains(OpenFlags::CREATE | OpenFlags::EXCLUSIVE) {
                        return Err(ErrorCode::Exist);
                    }
                    node
                }
                Err(ErrorCode::NoEntry) if oflags.contains(OpenFlags::CREATE) => {
                    let (parent, name) = d.parent_of(&path)?;
                    let mut parent = parent.write().unwrap_or_else(|e| e.into_inner());
                    d.mount.grow(0, 1)?;
                    let node = if oflags.contains(OpenFlags::DIRECTORY) {
                        Node::empty_dir()
                    } else {
                        Node::File(Arc::default())
                    };
                    parent.insert(name, node.clone());
                    node
                }
                Err(e) => return Err(e),
            };
            if oflags.contains(OpenFlags::DIRECTORY) && !matches!(node, Node::Dir(_)) {
                return Err(ErrorCode::NotDirectory);
            }
            if let (true, Node::File(f)) = (oflags.contains(OpenFlags::TRUNCATE), &node) {
                let mut f = f.write().unwrap_or_else(|e| e.into_inner());
                d.mount.grow(-(f.len() as i64), 0)?;
                f.clear();
            }
            if matches!(node, Node::Dir(_)) && flags.contains(DescriptorFlags::WRITE) {
                return Err(ErrorCode::IsDirectory);
            }
            Ok(Descriptor {
                node,
                mount: d.mount.clone(),
                path: parts,
                flags,
            })
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
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&src_name)
                .cloned()
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
            let mut dst = dst_dir.write().unwrap_or_else(|e| e.into_inner());
            if let Some(existing) = dst.get(&dst_name) {
                match (existing, &node) {
                    (Node::Dir(e), Node::Dir(_))
                        if !e.read().unwrap_or_else(|e| e.into_inner()).is_empty() =>
                    {
                        return Err(ErrorCode::NotEmpty);
                    }
                    (Node::Dir(_), Node::File(_)) => return Err(ErrorCode::IsDirectory),
                    (Node::File(_), Node::Dir(_)) => return Err(ErrorCode::NotDirectory),
                    _ => {}
                }
                let (bytes, files) = existing.usage();
                from.mount.grow(-(bytes as i64), -(files as i64))?;
            }
            dst.insert(dst_name, node);
            drop(dst);
            src_dir
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
            let mut parent = parent.write().unwrap_or_else(|e| e.into_inner());
            let node = parent.get(&name).ok_or(ErrorCode::NoEntry)?;
            match (node, directory) {
                (Node::Dir(dir), true) => {
                    if !dir.read().unwrap_or_else(|e| e.into_inner()).is_empty() {
                        return Err(ErrorCode::NotEmpty);
                    }
                }
                (Node::File(_), false) => {}
                (Node::Dir(_), false) => return Err(ErrorCode::IsDirectory),
                (Node::File(_), true) => return Err(ErrorCode::NotDirectory),
            }
            let (bytes, files) = node.usage();
            d.mount.grow(-(bytes as i64), -(files as i64))?;
            parent.remove(&name);
            Ok(())
        })())
    }
}

impl types::HostDirectoryEntryStream for VfsView<'_> {
    fn read_directory_entry(
        &mut self,
        stream: Resource<DirStream>,
    ) -> FsResult<Option<DirectoryEntry>> {
        Ok(Ok(self.table.get_mut(&stream)?.0.next()))
    }

    fn drop(&mut self, stream: Resource<DirStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

/// `read-via-stream`: reads from the file as it is at each read.
struct FileReader {
    file: Arc<RwLock<Vec<u8>>>,
    offset: u64,
}

impl InputStream for FileReader {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        let file = self.file.read().unwrap_or_else(|e| e.into_inner());
        let start = (self.offset as usize).min(file.len());
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
    file: Arc<RwLock<Vec<u8>>>,
    mount: Arc<Mount>,
    offset: Option<u64>,
}

impl OutputStream for FileWriter {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let offset = match self.offset {
            Some(offset) => offset,
            None => self.file.read().map_or(0, |f| f.len() as u64),
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
