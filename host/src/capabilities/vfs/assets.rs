//! An app's read-only assets: the bundle a deploy carries them in, checked and bounded, and
//! the shared tree every request of the app mounts at `/app`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context;

use super::tree::*;
use crate::budget::Charge;

/// Most files an app's assets may hold. Every replica keeps a node per file in memory for as
/// long as the version is loaded, so a deployer must not be able to make that unbounded (a
/// bundle of a million empty files cost 215 MiB on every replica).
pub const MAX_ASSET_FILES: usize = 10_000;
/// Deepest an asset's path may be, in names: the tree is built (and a bundle walked) by
/// recursion, and a path 3,000 directories deep overflowed the control thread's stack.
pub const MAX_ASSET_DEPTH: usize = 32;

/// The first bytes of an assets bundle, and its version.
pub(super) const BUNDLE_MAGIC: &[u8] = b"tabula-assets 1\n";

/// The app's read-only assets, loaded once per deploy.
#[derive(Clone, Debug)]
pub struct Assets(pub(super) Arc<Mount>);

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
    pub(super) fn load_with(
        fill: impl FnOnce(&Mount) -> anyhow::Result<Entries>,
    ) -> anyhow::Result<Assets> {
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
