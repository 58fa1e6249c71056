//! A file system image in memory: sparse files of 4 KiB blocks and
//! directories, loaded from a real directory and written back to one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{Hash as _, Hasher as _};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

/// The block of the model: an unflushed write persists (or not) per block.
pub const BLOCK: u64 = 4096;

/// LMDB's lock file: its reader table is a shared writable mapping the
/// recorder cannot see, and LMDB rebuilds it when the first process opens
/// the environment, so crash states leave it out (docs/DESIGN.md section 11).
pub const LMDB_LOCK_FILE: &str = "store/lock.mdb";

/// A sparse file: its size and its non-zero blocks (every byte past `size`
/// is zero).
#[derive(Debug, Clone, Default)]
pub struct FileImage {
    pub size: u64,
    blocks: BTreeMap<u64, Arc<[u8]>>,
}

impl FileImage {
    /// Writes `data` at `offset`, growing the file when it ends past it.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let block = at / BLOCK;
            let start = (at % BLOCK) as usize;
            let take = rest.len().min(BLOCK as usize - start);
            let mut bytes = match self.blocks.get(&block) {
                Some(old) => old.to_vec(),
                None => vec![0; BLOCK as usize],
            };
            bytes[start..start + take].copy_from_slice(&rest[..take]);
            if bytes.iter().all(|&byte| byte == 0) {
                self.blocks.remove(&block);
            } else {
                self.blocks.insert(block, bytes.into());
            }
            rest = &rest[take..];
            at += take as u64;
        }
        self.size = self.size.max(offset + data.len() as u64);
    }

    /// Writes the part of `data` at `offset` that lies inside the file's
    /// current size (what an in-place overwrite can change).
    pub fn overwrite(&mut self, offset: u64, data: &[u8]) {
        if offset >= self.size {
            return;
        }
        let keep = data.len().min((self.size - offset) as usize);
        self.write(offset, &data[..keep]);
    }

    /// Sets the size; bytes past it become zero.
    pub fn truncate(&mut self, len: u64) {
        let first_gone = len.div_ceil(BLOCK);
        self.blocks.retain(|&block, _| block < first_gone);
        if !len.is_multiple_of(BLOCK) && len < self.size {
            let zeros = vec![0; (BLOCK - len % BLOCK) as usize];
            let size = self.size;
            self.write(len, &zeros);
            self.size = size;
        }
        self.size = len;
    }

    /// Grows the size to `len` (zeros), if smaller.
    pub fn extend(&mut self, len: u64) {
        self.size = self.size.max(len);
    }

    /// The whole content (tests and small files).
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0; self.size as usize];
        for (&block, bytes) in &self.blocks {
            let start = (block * BLOCK) as usize;
            let end = (start + bytes.len()).min(out.len());
            if start < end {
                out[start..end].copy_from_slice(&bytes[..end - start]);
            }
        }
        out
    }
}

/// A directory tree: paths relative to its root (`.` is the root itself).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub files: BTreeMap<String, FileImage>,
    pub dirs: BTreeSet<String>,
}

impl Tree {
    /// Reads `root` (files and directories, no links).
    pub fn load(root: &Path) -> anyhow::Result<Tree> {
        let mut tree = Tree::default();
        tree.dirs.insert(".".into());
        load_dir(root, root, &mut tree)?;
        Ok(tree)
    }

    /// A hash of every path, size and byte: equal trees hash equal.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.dirs.hash(&mut hasher);
        for (path, file) in &self.files {
            path.hash(&mut hasher);
            file.size.hash(&mut hasher);
            for (block, bytes) in &file.blocks {
                block.hash(&mut hasher);
                hasher.write(bytes);
            }
        }
        hasher.finish()
    }

    /// Creates the tree under `root` (which must not exist), sparse.
    pub fn write_to(&self, root: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        for dir in self.dirs.iter().filter(|dir| *dir != ".") {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("cannot create {}", root.join(dir).display()))?;
        }
        for (path, image) in &self.files {
            let path = root.join(path);
            let file = fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.set_len(image.size)?;
            for (&block, bytes) in &image.blocks {
                let start = block * BLOCK;
                let keep = bytes.len().min(image.size.saturating_sub(start) as usize);
                file.write_all_at(&bytes[..keep], start)?;
            }
        }
        Ok(())
    }
}

fn load_dir(root: &Path, dir: &Path, tree: &mut Tree) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)?
            .to_str()
            .context("a non-UTF-8 path in the data directory")?
            .to_owned();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tree.dirs.insert(rel);
            load_dir(root, &path, tree)?;
        } else if kind.is_file() {
            let bytes =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut image = FileImage::default();
            image.write(0, &bytes);
            tree.files.insert(rel, image);
        } else {
            anyhow::bail!("{} is neither a file nor a directory", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_truncates_and_overwrites_like_a_file() {
        let mut file = FileImage::default();
        file.write(4090, b"0123456789");
        assert_eq!(file.size, 4100);
        file.truncate(4093);
        assert_eq!(&file.bytes()[4090..], b"012");
        file.extend(4096 * 3);
        assert_eq!(
            file.bytes()[4093..4100],
            [0; 7],
            "truncated bytes come back as zeros"
        );
        file.overwrite(4096 * 3 - 2, b"abcd");
        assert_eq!(file.size, 4096 * 3, "an overwrite never grows the file");
        assert_eq!(&file.bytes()[4096 * 3 - 2..], b"ab");
    }
}
