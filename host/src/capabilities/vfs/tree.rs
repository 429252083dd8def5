//! The tree model: nodes, files and directories, mounts and what a writable one charges,
//! and how a guest's path is resolved and walked within its mount. Nothing here knows WIT
//! beyond the error codes it answers with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::bindings::wasi::filesystem::types;
use crate::budget::{Budget, Charge, OverBudget};
use types::{DescriptorType, ErrorCode};

/// Longest name of one file or directory, as POSIX's usual `NAME_MAX`.
pub(super) const NAME_MAX: usize = 255;
/// Longest path a guest may name or a descriptor may sit at, as POSIX's usual `PATH_MAX`.
/// It bounds the work of walking a path (a tree can still grow deeper through renames, which
/// is why trees are freed without recursion).
pub(super) const PATH_MAX: usize = 4096;
/// Bytes charged for each directory entry, descriptor or listed entry beyond its name: the
/// map node, the `Node` and the table entry that hold it.
pub(super) const OVERHEAD: u64 = 64;

/// A directory's entries by name.
pub(super) type Entries = BTreeMap<String, Entry>;

/// A name in a directory, and the charge for keeping it there.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) node: Node,
    pub(super) _name: Charge,
}

/// A file or directory. Clones share the same node.
#[derive(Clone, Debug)]
pub(super) enum Node {
    File(Arc<File>),
    Dir(Arc<Dir>),
}

/// A file's bytes, charged by their capacity for as long as the file exists: while it is in
/// a directory or while any descriptor or stream still holds it, so neither truncating nor
/// unlinking an open file frees budget that is still in use.
#[derive(Debug)]
pub(super) struct File {
    pub(super) id: u64,
    pub(super) data: RwLock<FileData>,
    pub(super) _counted: Charge,
}

#[derive(Debug)]
pub(super) struct FileData {
    pub(super) bytes: Vec<u8>,
    /// The length, against the `/tmp` quota.
    pub(super) length: Charge,
    /// The capacity, against the request's budget.
    pub(super) memory: Charge,
}

#[derive(Debug)]
pub(super) struct Dir {
    pub(super) id: u64,
    pub(super) entries: RwLock<Entries>,
    pub(super) _counted: Charge,
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
    pub(super) fn kind(&self) -> DescriptorType {
        match self {
            Node::File(_) => DescriptorType::RegularFile,
            Node::Dir(_) => DescriptorType::Directory,
        }
    }

    /// The node's number within its mount: a counter, not an address, so nothing of the
    /// host's memory layout reaches the guest.
    pub(super) fn id(&self) -> u64 {
        match self {
            Node::File(f) => f.id,
            Node::Dir(d) => d.id,
        }
    }

    pub(super) fn size(&self) -> u64 {
        match self {
            Node::File(f) => f.data.read().map_or(0, |f| f.bytes.len() as u64),
            Node::Dir(d) => d.entries.read().map_or(0, |d| d.len() as u64),
        }
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
pub(super) struct Mount {
    /// Always `Some` once built; a mount numbers its own root.
    pub(super) root: Option<Node>,
    /// `None` for the read-only assets.
    pub(super) space: Option<Space>,
    pub(super) next_id: AtomicU64,
}

/// What a writable mount charges: file contents (by length) and files against its quotas,
/// and the memory behind them (contents by capacity, and names) against the request's
/// budget.
#[derive(Debug)]
pub(super) struct Space {
    pub(super) bytes: Arc<Budget>,
    pub(super) files: Arc<Budget>,
    pub(super) memory: Arc<Budget>,
}

/// A quota refused a charge: the guest sees no space left.
impl From<OverBudget> for ErrorCode {
    fn from(_: OverBudget) -> ErrorCode {
        ErrorCode::InsufficientSpace
    }
}

impl Mount {
    pub(super) fn root(&self) -> &Node {
        self.root.as_ref().expect("a mount has a root")
    }

    pub(super) fn writable(&self) -> bool {
        self.space.is_some()
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn new_dir(&self, entries: Entries, counted: Charge) -> Node {
        Node::Dir(Arc::new(Dir {
            id: self.next_id(),
            entries: RwLock::new(entries),
            _counted: counted,
        }))
    }

    pub(super) fn new_file(&self, data: FileData, counted: Charge) -> Node {
        Node::File(Arc::new(File {
            id: self.next_id(),
            data: RwLock::new(data),
            _counted: counted,
        }))
    }

    pub(super) fn space(&self) -> Result<&Space, ErrorCode> {
        self.space.as_ref().ok_or(ErrorCode::ReadOnly)
    }

    /// A new, empty node under `name`: charged one file, and the name's bytes.
    pub(super) fn create(&self, name: &str, dir: bool) -> Result<Entry, ErrorCode> {
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
    pub(super) fn rename_charge(&self, name: &str) -> Result<Charge, ErrorCode> {
        Mount::name_charge(self.space()?, name)
    }

    /// A name's bytes, against the request's budget.
    pub(super) fn name_charge(space: &Space, name: &str) -> Result<Charge, ErrorCode> {
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
    pub(super) fn set_len(&mut self, len: usize) -> Result<(), ErrorCode> {
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

/// Splits `path` into the components to walk from `base`, refusing escapes, names longer
/// than [`NAME_MAX`] and paths longer than [`PATH_MAX`].
pub(super) fn resolve(base: &[String], path: &str) -> Result<Vec<String>, ErrorCode> {
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

pub(super) fn walk(root: &Node, parts: &[String]) -> Result<Node, ErrorCode> {
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

/// Writes `data` at `offset`, growing the file (and charging the mount's quota) as needed.
pub(super) fn write_at(
    mount: &Mount,
    file: &File,
    offset: u64,
    data: &[u8],
) -> Result<(), ErrorCode> {
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
