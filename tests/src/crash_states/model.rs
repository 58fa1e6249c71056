//! The persistence model: which of the recorded operations a power cut may
//! have kept, and the file system it leaves (docs/DESIGN.md section 11,
//! "The persistence model the explorer tests").
//!
//! The op log is split into *units*, each persisted or not as a whole:
//!
//! * metadata units, in their global order: a file's creation, a truncation,
//!   a growth of its size (with, as ext4's `data=ordered` mode guarantees, the
//!   written bytes past the old end: they reach the disk before the size that
//!   makes them visible), a rename, an unlink, a mkdir or rmdir. The journal
//!   of the file system commits them in order, so what survives is a prefix;
//! * data units: each 4 KiB block (or the part of one) of a write inside the
//!   file's size, persisted or not independently of every other (torn and
//!   reordered writes).
//!
//! A unit is *forced* (it survives every cut after that point) once a flush
//! covering it has returned: `fsync`/`fdatasync` of its file covers all of
//! the file's data and metadata units before it, and, the journal committing
//! in order, every metadata unit before those; `fsync` of a directory covers
//! the names in it; a write durable on return (`O_DSYNC`) covers its own
//! blocks and its file's metadata; `sync`/`syncfs` cover everything.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context as _};

use super::image::{FileImage, Tree, BLOCK, LMDB_LOCK_FILE};
use super::oplog::{Op, Timed, TPM_CC_NV_INCREMENT};

/// Never forced.
const NEVER: usize = usize::MAX;

/// An inode of the model (a file, across renames).
type Ino = usize;

#[derive(Debug, Clone)]
enum Meta {
    Create {
        path: String,
        ino: Ino,
    },
    Mkdir {
        path: String,
    },
    Truncate {
        ino: Ino,
        len: u64,
    },
    /// The size grows to `len`; `tail` is the bytes written past the old end.
    Extend {
        ino: Ino,
        len: u64,
        tail: Option<(u64, Vec<u8>)>,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
}

#[derive(Debug, Clone)]
enum Kind {
    Meta(Meta),
    /// Bytes of one block written in place.
    Data {
        ino: Ino,
        offset: u64,
        bytes: Vec<u8>,
    },
}

/// One unit: what it does, the op that made it, the op whose return forced
/// it (or `NEVER`).
#[derive(Debug, Clone)]
struct Unit {
    op: usize,
    forced_at: usize,
    kind: Kind,
}

/// A cut: ops `..k` happened; with `in_flight`, op `k - 1` was still running
/// (its effects may be partial and it forced nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cut {
    pub k: usize,
    pub in_flight: bool,
}

/// What a cut allows: metadata prefixes `meta_min..=meta_max`, and each of
/// `optional` data units kept or not (the others before the cut are forced).
#[derive(Debug, Clone)]
pub struct Space {
    pub cut: Cut,
    pub meta_min: usize,
    pub meta_max: usize,
    /// Indices of the data units that may or may not have persisted.
    pub optional: Vec<usize>,
}

/// One crash state: a cut, a metadata prefix, the optional units kept.
#[derive(Debug, Clone)]
pub struct Choice {
    pub cut: Cut,
    pub meta_prefix: usize,
    pub kept: Vec<usize>,
}

/// The recorded run compiled into units.
#[derive(Debug)]
pub struct Model {
    snapshot: Tree,
    /// The snapshot's files by inode.
    snapshot_inos: BTreeMap<String, Ino>,
    units: Vec<Unit>,
    /// For each metadata unit (in order), its index in `units`.
    meta: Vec<usize>,
    /// When each op completed (CLOCK_MONOTONIC ns).
    at: Vec<u64>,
    /// Indices of the ops that flush (or write durably).
    flushes: Vec<usize>,
    /// Indices of the ops that sent TPM2_NV_Increment to the TPM.
    increments: Vec<usize>,
}

/// The model's view of the names while compiling: what each path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Ino),
}

fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(at) => path[..at].to_owned(),
        None => ".".to_owned(),
    }
}

impl Model {
    /// Compiles `ops` against the data directory's state before the run.
    /// Fails on an operation the model does not cover.
    pub fn new(snapshot: Tree, ops: &[Timed]) -> anyhow::Result<Model> {
        let mut names: HashMap<String, Entry> = HashMap::new();
        let mut sizes: HashMap<Ino, u64> = HashMap::new();
        let mut snapshot_inos = BTreeMap::new();
        for dir in &snapshot.dirs {
            names.insert(dir.clone(), Entry::Dir);
        }
        for (ino, (path, file)) in snapshot.files.iter().enumerate() {
            names.insert(path.clone(), Entry::File(ino));
            sizes.insert(ino, file.size);
            snapshot_inos.insert(path.clone(), ino);
        }
        let mut next_ino = snapshot.files.len();
        let mut units: Vec<Unit> = Vec::new();
        let mut pending_file: HashMap<Ino, Vec<usize>> = HashMap::new();
        let mut pending_dir: HashMap<String, Vec<usize>> = HashMap::new();
        let mut meta = Vec::new();
        let mut flushes = Vec::new();
        let mut increments = Vec::new();
        let file = |names: &HashMap<String, Entry>, path: &str| match names.get(path) {
            Some(Entry::File(ino)) => Ok(*ino),
            _ => bail!("the op log uses {path:?}, which the model does not know as a file"),
        };
        for (i, timed) in ops.iter().enumerate() {
            let mut push =
                |units: &mut Vec<Unit>, kind: Kind, ino: Option<Ino>, dirs: &[String]| {
                    let index = units.len();
                    if matches!(kind, Kind::Meta(_)) {
                        meta.push(index);
                    }
                    units.push(Unit {
                        op: i,
                        forced_at: NEVER,
                        kind,
                    });
                    if let Some(ino) = ino {
                        pending_file.entry(ino).or_default().push(index);
                    }
                    for dir in dirs {
                        pending_dir.entry(dir.clone()).or_default().push(index);
                    }
                    index
                };
            match &timed.op {
                Op::Tpm {
                    command: Some(TPM_CC_NV_INCREMENT),
                } => increments.push(i),
                Op::Start | Op::SyncFileRange | Op::Tpm { .. } => {}
                Op::Open {
                    path,
                    created,
                    truncated,
                } => {
                    if *created && !names.contains_key(path) {
                        let ino = next_ino;
                        next_ino += 1;
                        names.insert(path.clone(), Entry::File(ino));
                        sizes.insert(ino, 0);
                        let kind = Kind::Meta(Meta::Create {
                            path: path.clone(),
                            ino,
                        });
                        push(&mut units, kind, Some(ino), &[parent(path)]);
                    }
                    if *truncated {
                        let ino = file(&names, path)?;
                        sizes.insert(ino, 0);
                        push(
                            &mut units,
                            Kind::Meta(Meta::Truncate { ino, len: 0 }),
                            Some(ino),
                            &[],
                        );
                    }
                }
                Op::Write {
                    path,
                    offset,
                    data,
                    sync,
                } => {
                    let ino = file(&names, path)?;
                    let size = sizes.get(&ino).copied().unwrap_or(0);
                    let end = offset + data.len() as u64;
                    let mut mine = Vec::new();
                    // In place: one unit per block.
                    let mut at = *offset;
                    while at < end.min(size) {
                        let stop = ((at / BLOCK + 1) * BLOCK).min(end.min(size));
                        let bytes = data[(at - offset) as usize..(stop - offset) as usize].to_vec();
                        let kind = Kind::Data {
                            ino,
                            offset: at,
                            bytes,
                        };
                        mine.push(push(&mut units, kind, Some(ino), &[]));
                        at = stop;
                    }
                    if end > size {
                        let from = (*offset).max(size);
                        let tail = data[(from - offset) as usize..].to_vec();
                        let kind = Kind::Meta(Meta::Extend {
                            ino,
                            len: end,
                            tail: Some((from, tail)),
                        });
                        push(&mut units, kind, Some(ino), &[]);
                        sizes.insert(ino, end);
                    }
                    if *sync {
                        // Its own blocks, and the file's metadata (the
                        // journal commit of an O_DSYNC write).
                        for unit in mine {
                            units[unit].forced_at = i;
                        }
                        force_meta(&mut units, pending_file.get(&ino), i);
                        flushes.push(i);
                    }
                }
                Op::Truncate { path, len } => {
                    let ino = file(&names, path)?;
                    sizes.insert(ino, *len);
                    push(
                        &mut units,
                        Kind::Meta(Meta::Truncate { ino, len: *len }),
                        Some(ino),
                        &[],
                    );
                }
                Op::Fallocate {
                    path,
                    mode,
                    offset,
                    len,
                } => {
                    let ino = file(&names, path)?;
                    let size = sizes.get(&ino).copied().unwrap_or(0);
                    match mode {
                        // FALLOC_FL_KEEP_SIZE: blocks reserved, nothing visible.
                        1 => {}
                        0 if offset + len > size => {
                            let kind = Kind::Meta(Meta::Extend {
                                ino,
                                len: offset + len,
                                tail: None,
                            });
                            push(&mut units, kind, Some(ino), &[]);
                            sizes.insert(ino, offset + len);
                        }
                        0 => {}
                        other => bail!("fallocate mode {other} on {path} is not in the model"),
                    }
                }
                Op::Flush { path } => {
                    flushes.push(i);
                    match names.get(path) {
                        Some(Entry::File(ino)) => {
                            if let Some(list) = pending_file.remove(ino) {
                                for unit in list {
                                    force(&mut units[unit], i);
                                }
                            }
                        }
                        Some(Entry::Dir) => {
                            if let Some(list) = pending_dir.remove(path) {
                                for unit in list {
                                    force(&mut units[unit], i);
                                }
                            }
                        }
                        None => bail!("fsync of {path:?}, which the model does not know"),
                    }
                }
                Op::FlushAll => {
                    flushes.push(i);
                    for unit in &mut units {
                        force(unit, i);
                    }
                    pending_file.clear();
                    pending_dir.clear();
                }
                Op::Rename { from, to } => {
                    let entry = *names.get(from).with_context(|| {
                        format!("rename of {from:?}, which the model does not know")
                    })?;
                    names.remove(from);
                    names.insert(to.clone(), entry);
                    let ino = match entry {
                        Entry::File(ino) => Some(ino),
                        Entry::Dir => bail!("rename of the directory {from:?} is not in the model"),
                    };
                    let kind = Kind::Meta(Meta::Rename {
                        from: from.clone(),
                        to: to.clone(),
                    });
                    push(&mut units, kind, ino, &[parent(from), parent(to)]);
                }
                Op::Unlink { path } => {
                    let ino = file(&names, path)?;
                    names.remove(path);
                    let kind = Kind::Meta(Meta::Unlink { path: path.clone() });
                    push(&mut units, kind, Some(ino), &[parent(path)]);
                }
                Op::Mkdir { path } => {
                    names.insert(path.clone(), Entry::Dir);
                    let kind = Kind::Meta(Meta::Mkdir { path: path.clone() });
                    push(&mut units, kind, None, &[parent(path)]);
                }
                Op::Rmdir { path } => {
                    names.remove(path);
                    let kind = Kind::Meta(Meta::Rmdir { path: path.clone() });
                    push(&mut units, kind, None, &[parent(path)]);
                }
                Op::MapShared { path } => {
                    if path != LMDB_LOCK_FILE {
                        bail!(
                            "tallyd mapped {path} shared and writable: its writes bypass the recorder, \
                             so the explorer cannot model this file"
                        );
                    }
                }
                Op::Unsupported { what } => {
                    bail!("tallyd made an operation the explorer does not model: {what}")
                }
            }
        }
        Ok(Model {
            snapshot,
            snapshot_inos,
            units,
            meta,
            at: ops.iter().map(|timed| timed.at).collect(),
            flushes,
            increments,
        })
    }

    /// Number of ops.
    pub fn ops(&self) -> usize {
        self.at.len()
    }

    /// The cuts worth checking: just after each flush returned, with that
    /// flush in flight (its own write torn, nothing forced by it), and the
    /// end of the run. Between two flushes a later cut allows every state an
    /// earlier one does (nothing more is forced) and requires more acks, so
    /// these cover every cut.
    pub fn cuts(&self) -> Vec<Cut> {
        let mut cuts = Vec::new();
        for &flush in &self.flushes {
            cuts.push(Cut {
                k: flush + 1,
                in_flight: true,
            });
            cuts.push(Cut {
                k: flush + 1,
                in_flight: false,
            });
        }
        cuts.push(Cut {
            k: self.ops(),
            in_flight: false,
        });
        cuts.sort();
        cuts.dedup();
        cuts
    }

    /// Acks received before this time must survive the cut (`u64::MAX`: all).
    pub fn acked_before(&self, cut: Cut) -> u64 {
        let first_unfinished = if cut.in_flight { cut.k - 1 } else { cut.k };
        self.at.get(first_unfinished).copied().unwrap_or(u64::MAX)
    }

    /// What `cut` allows.
    pub fn space(&self, cut: Cut) -> Space {
        let done = cut.k - usize::from(cut.in_flight);
        let forced = |unit: &Unit| unit.forced_at < done;
        let meta_max = self
            .meta
            .iter()
            .filter(|&&u| self.units[u].op < cut.k)
            .count();
        let meta_min = self
            .meta
            .iter()
            .rposition(|&u| forced(&self.units[u]))
            .map_or(0, |last| last + 1);
        let optional = self
            .units
            .iter()
            .enumerate()
            .filter(|(_, unit)| {
                unit.op < cut.k && matches!(unit.kind, Kind::Data { .. }) && !forced(unit)
            })
            .map(|(index, _)| index)
            .collect();
        Space {
            cut,
            meta_min,
            meta_max,
            optional,
        }
    }

    /// The file system `choice` leaves (without LMDB's lock file).
    pub fn materialise(&self, choice: &Choice) -> Tree {
        let done = choice.cut.k - usize::from(choice.cut.in_flight);
        let mut files: HashMap<Ino, FileImage> = HashMap::new();
        let mut names: BTreeMap<String, Entry> = BTreeMap::new();
        for dir in &self.snapshot.dirs {
            names.insert(dir.clone(), Entry::Dir);
        }
        for (path, &ino) in &self.snapshot_inos {
            names.insert(path.clone(), Entry::File(ino));
            if let Some(file) = self.snapshot.files.get(path) {
                files.insert(ino, file.clone());
            }
        }
        let mut kept = choice.kept.clone();
        kept.sort_unstable();
        let mut meta_seen = 0;
        for (index, unit) in self.units.iter().enumerate() {
            if unit.op >= choice.cut.k {
                break;
            }
            match &unit.kind {
                Kind::Meta(meta) => {
                    meta_seen += 1;
                    if meta_seen > choice.meta_prefix {
                        continue;
                    }
                    apply_meta(meta, &mut files, &mut names);
                }
                Kind::Data { ino, offset, bytes } => {
                    let keep = unit.forced_at < done || kept.binary_search(&index).is_ok();
                    if keep {
                        if let Some(file) = files.get_mut(ino) {
                            file.overwrite(*offset, bytes);
                        }
                    }
                }
            }
        }
        let mut tree = Tree::default();
        for (path, entry) in names {
            match entry {
                Entry::Dir => {
                    tree.dirs.insert(path);
                }
                Entry::File(_) if path == LMDB_LOCK_FILE => {}
                Entry::File(ino) => {
                    tree.files
                        .insert(path, files.get(&ino).cloned().unwrap_or_default());
                }
            }
        }
        tree
    }

    /// How many TPM2_NV_Increment commands tallyd had sent before `cut`'s
    /// crash (the TPM is not rolled back by a power cut: it keeps them).
    pub fn increments_before(&self, cut: Cut) -> u64 {
        let done = cut.k - usize::from(cut.in_flight);
        self.increments.iter().filter(|&&op| op < done).count() as u64
    }
}

fn force(unit: &mut Unit, at: usize) {
    if unit.forced_at == NEVER {
        unit.forced_at = at;
    }
}

/// Forces the metadata units among `pending` (an O_DSYNC write's journal
/// commit).
fn force_meta(units: &mut [Unit], pending: Option<&Vec<usize>>, at: usize) {
    for &unit in pending.into_iter().flatten() {
        if matches!(units[unit].kind, Kind::Meta(_)) {
            force(&mut units[unit], at);
        }
    }
}

fn apply_meta(
    meta: &Meta,
    files: &mut HashMap<Ino, FileImage>,
    names: &mut BTreeMap<String, Entry>,
) {
    match meta {
        Meta::Create { path, ino } => {
            names.insert(path.clone(), Entry::File(*ino));
            files.insert(*ino, FileImage::default());
        }
        Meta::Mkdir { path } => {
            names.insert(path.clone(), Entry::Dir);
        }
        Meta::Truncate { ino, len } => {
            if let Some(file) = files.get_mut(ino) {
                file.truncate(*len);
            }
        }
        Meta::Extend { ino, len, tail } => {
            if let Some(file) = files.get_mut(ino) {
                file.extend(*len);
                if let Some((offset, bytes)) = tail {
                    file.write(*offset, bytes);
                }
            }
        }
        Meta::Rename { from, to } => {
            if let Some(entry) = names.remove(from) {
                names.insert(to.clone(), entry);
            }
        }
        Meta::Unlink { path } | Meta::Rmdir { path } => {
            names.remove(path);
        }
    }
}

#[cfg(test)]
mod tests;
