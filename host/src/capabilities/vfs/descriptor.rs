//! What a guest holds: descriptors (a node, where it is, what it may do), directory
//! listings, and the streams that read and write a file as it is at each call.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi_io::streams::{InputStream, OutputStream, StreamError};

use super::bindings::wasi::filesystem::types;
use super::tree::*;
use crate::budget::Charge;
use types::{DescriptorFlags, DescriptorStat, DirectoryEntry, ErrorCode};

/// What a guest holds open: a node, where it is, and what it may do.
#[derive(Debug)]
pub struct Descriptor {
    pub(super) node: Node,
    pub(super) mount: Arc<Mount>,
    /// Path from the mount's root, for resolving `..`.
    pub(super) path: Vec<String>,
    pub(super) flags: DescriptorFlags,
    pub(super) _charge: Charge,
}

/// A snapshot of a directory's entries, handed out one by one.
#[derive(Debug)]
pub struct DirStream {
    pub(super) entries: std::vec::IntoIter<DirectoryEntry>,
    pub(super) _charge: Charge,
}

impl Descriptor {
    pub(super) fn locate(&self, path: &str) -> Result<(Vec<String>, Node), ErrorCode> {
        let parts = resolve(&self.path, path)?;
        let node = walk(self.mount.root(), &parts)?;
        Ok((parts, node))
    }

    /// The directory that would hold `path`, and the last component's name.
    pub(super) fn parent_of(&self, path: &str) -> Result<(Arc<Dir>, String), ErrorCode> {
        let mut parts = resolve(&self.path, path)?;
        let name = parts.pop().ok_or(ErrorCode::Invalid)?;
        match walk(self.mount.root(), &parts)? {
            Node::Dir(d) => Ok((d, name)),
            Node::File(_) => Err(ErrorCode::NotDirectory),
        }
    }

    pub(super) fn writable(&self) -> Result<(), ErrorCode> {
        if self.mount.writable() {
            Ok(())
        } else {
            Err(ErrorCode::ReadOnly)
        }
    }

    pub(super) fn file(&self) -> Result<&Arc<File>, ErrorCode> {
        match &self.node {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(ErrorCode::IsDirectory),
        }
    }

    pub(super) fn stat_of(node: &Node) -> DescriptorStat {
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

/// A filesystem error carried by a stream error, so `filesystem-error-code` can recover it
/// (and std reports e.g. `StorageFull` rather than a generic I/O error).
#[derive(Debug)]
pub(super) struct StreamCode(pub(super) ErrorCode);

impl std::fmt::Display for StreamCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "filesystem error: {:?}", self.0)
    }
}

impl std::error::Error for StreamCode {}

/// `read-via-stream`: reads from the file as it is at each read.
pub(super) struct FileReader {
    pub(super) file: Arc<File>,
    pub(super) offset: u64,
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
pub(super) struct FileWriter {
    pub(super) file: Arc<File>,
    pub(super) mount: Arc<Mount>,
    pub(super) offset: Option<u64>,
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
