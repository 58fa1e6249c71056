//! The op log written by `libtally_iorec.so` (tests/iorec), parsed.
//!
//! One text header line per operation, `<kind> <monotonic ns> <fields...>`,
//! paths relative to the watched directory (`.` for itself), last:
//!
//! | kind | fields |
//! |------|--------|
//! | `start` | pid |
//! | `open` | flags (hex), created (0/1), truncated (0/1), path |
//! | `write` | offset, length n, durable on return (0/1), path; then n bytes |
//! | `trunc` | length, path |
//! | `falloc` | mode, offset, length, path |
//! | `fsync`, `fdatasync`, `syncfs` | path |
//! | `sfr` | offset, length, flags, path (sync_file_range: no durability) |
//! | `sync` | `-` |
//! | `rename` | from, to |
//! | `unlink`, `rmdir`, `mkdir` | path |
//! | `mmapw` | path (a shared writable mapping) |
//! | `unsupported` | what, path |
//! | `tpm` | bytes written, TPM command code (hex) or `-` |

use anyhow::{bail, ensure, Context as _};

/// One recorded operation, in completion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `open`; only creation and truncation change the file system.
    Open {
        path: String,
        created: bool,
        truncated: bool,
    },
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
        /// Durable when the call returned (`O_DSYNC`/`O_SYNC`, `RWF_DSYNC`).
        sync: bool,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Fallocate {
        path: String,
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// `fsync` or `fdatasync` of a file or directory.
    Flush {
        path: String,
    },
    /// `sync` or `syncfs`: everything before is durable.
    FlushAll,
    /// `sync_file_range`: starts writeback, promises nothing.
    SyncFileRange,
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    /// A shared writable mapping of a file (its stores bypass the recorder).
    MapShared {
        path: String,
    },
    /// Something the model does not cover.
    Unsupported {
        what: String,
    },
    /// A write on the TPM's socket; `command` is the TPM command code when
    /// the write starts a command.
    Tpm {
        command: Option<u32>,
    },
    /// The recorder started in a process.
    Start,
}

/// A recorded operation and when it completed (CLOCK_MONOTONIC, ns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    pub at: u64,
    pub op: Op,
}

/// TPM2_NV_Increment's command code.
pub const TPM_CC_NV_INCREMENT: u32 = 0x0000_0134;

/// Parses a whole op log. The SIGKILL that ends a recorded run can cut the
/// last record short (the operation had completed, its record was being
/// appended, tallyd had not seen it return): that record is dropped, so the
/// model treats the operation as never made, one of the states a power cut
/// during it allows.
pub fn parse(log: &[u8]) -> anyhow::Result<Vec<Timed>> {
    let mut ops = Vec::new();
    let mut rest = log;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&byte| byte == b'\n') else {
            break;
        };
        let line = std::str::from_utf8(&rest[..end]).context("op log: a header is not UTF-8")?;
        rest = &rest[end + 1..];
        let fields: Vec<&str> = line.split(' ').collect();
        let [kind, at, args @ ..] = fields.as_slice() else {
            bail!("op log: bad header {line:?}");
        };
        let at: u64 = at
            .parse()
            .with_context(|| format!("op log: time in {line:?}"))?;
        let num = |i: usize| -> anyhow::Result<u64> {
            args.get(i)
                .with_context(|| format!("op log: field {i} missing in {line:?}"))?
                .parse::<u64>()
                .with_context(|| format!("op log: field {i} of {line:?}"))
        };
        let text = |i: usize| -> anyhow::Result<String> {
            let value = args
                .get(i)
                .with_context(|| format!("op log: field {i} missing in {line:?}"))?;
            ensure!(
                *value != "?",
                "op log: a path the recorder could not print: {line:?}"
            );
            Ok((*value).to_owned())
        };
        let last = args.len().saturating_sub(1);
        let op = match *kind {
            "start" => Op::Start,
            "open" => Op::Open {
                created: num(1)? == 1,
                truncated: num(2)? == 1,
                path: text(3)?,
            },
            "write" => {
                let len = usize::try_from(num(1)?)?;
                if rest.len() < len {
                    break;
                }
                let data = rest[..len].to_vec();
                rest = &rest[len..];
                Op::Write {
                    offset: num(0)?,
                    data,
                    sync: num(2)? == 1,
                    path: text(3)?,
                }
            }
            "trunc" => Op::Truncate {
                len: num(0)?,
                path: text(1)?,
            },
            "falloc" => Op::Fallocate {
                mode: i32::try_from(num(0)?)?,
                offset: num(1)?,
                len: num(2)?,
                path: text(3)?,
            },
            "fsync" | "fdatasync" => Op::Flush { path: text(0)? },
            "syncfs" | "sync" => Op::FlushAll,
            "sfr" => Op::SyncFileRange,
            "rename" => Op::Rename {
                from: text(0)?,
                to: text(1)?,
            },
            "unlink" => Op::Unlink { path: text(0)? },
            "rmdir" => Op::Rmdir { path: text(0)? },
            "mkdir" => Op::Mkdir { path: text(0)? },
            "mmapw" => Op::MapShared { path: text(0)? },
            "unsupported" => Op::Unsupported {
                what: args.join(" "),
            },
            "tpm" => Op::Tpm {
                command: match args.get(last) {
                    Some(&"-") | None => None,
                    Some(code) => Some(
                        u32::from_str_radix(code, 16)
                            .with_context(|| format!("op log: command code in {line:?}"))?,
                    ),
                },
            },
            other => bail!("op log: unknown operation {other:?} in {line:?}"),
        };
        ops.push(Timed { at, op });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_a_writes_bytes() {
        let mut log =
            b"start 1 42\nopen 2 0x42 1 0 store/data.mdb\nwrite 3 4096 5 1 store/data.mdb\n"
                .to_vec();
        log.extend_from_slice(b"hello");
        log.extend_from_slice(
            b"fdatasync 4 store/data.mdb\nrename 5 a b\ntpm 6 22 00000134\ntpm 7 3 -\n",
        );
        let ops = parse(&log).unwrap();
        assert_eq!(ops.len(), 7);
        assert_eq!(
            ops[2],
            Timed {
                at: 3,
                op: Op::Write {
                    path: "store/data.mdb".into(),
                    offset: 4096,
                    data: b"hello".to_vec(),
                    sync: true
                }
            }
        );
        assert_eq!(
            ops[5].op,
            Op::Tpm {
                command: Some(TPM_CC_NV_INCREMENT)
            }
        );
        assert_eq!(ops[6].op, Op::Tpm { command: None });
    }

    #[test]
    fn a_last_record_cut_short_by_the_kill_is_dropped_and_a_bad_one_is_an_error() {
        let ops = parse(b"fsync 1 f\nwrite 3 0 10 0 f\nabc").unwrap();
        assert_eq!(
            ops,
            [Timed {
                at: 1,
                op: Op::Flush { path: "f".into() }
            }]
        );
        assert_eq!(parse(b"fsync 1 f\nfsyn").unwrap().len(), 1);
        let err = parse(b"frobnicate 1 f\n").unwrap_err();
        assert!(err.to_string().contains("unknown operation"), "{err}");
    }
}
