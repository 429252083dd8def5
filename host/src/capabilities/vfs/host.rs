//! `wasi:filesystem`'s host functions over the tree: the WIT side, generated traits
//! implemented for [`VfsView`].

use std::sync::Arc;

use wasmtime::component::Resource;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream};

use super::bindings::wasi::filesystem::{preopens, types};
use super::descriptor::*;
use super::tree::*;
use super::{FsResult, VfsView};
use types::{
    DescriptorFlags, DescriptorStat, DescriptorType, DirectoryEntry, ErrorCode, Filesize,
    OpenFlags, PathFlags,
};

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
