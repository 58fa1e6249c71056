//! `tally tail --cursor FILE`: where a script's previous run stopped. The
//! file is one line, `tally-cursor v1 log=<log id, hex> next=<seq>`: every
//! record below `next` was examined (printed, or skipped by the filter), so
//! a new run starts at `next` and neither misses nor repeats one. The log id
//! (from the daemon's hello) keeps a cursor of one log from being used on
//! another, where its seq would mean nothing.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const PREFIX: &str = "tally-cursor v1";

/// Why a cursor file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read the cursor {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a tally cursor (expected one line \"{PREFIX} log=HEX next=SEQ\")")]
    Malformed { path: PathBuf },
    #[error("the cursor {path} is for log {cursor_log}, but this daemon serves log {log}: use another --cursor file for this log")]
    OtherLog {
        path: PathBuf,
        cursor_log: String,
        log: String,
    },
    #[error("cannot write the cursor {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A cursor file of one log.
#[derive(Debug, Clone)]
pub struct Cursor {
    path: PathBuf,
    log_id: String,
}

impl Cursor {
    /// The cursor at `path` for the log `log_id`.
    pub fn new(path: &Path, log_id: &[u8]) -> Cursor {
        Cursor {
            path: path.to_owned(),
            log_id: hex::encode(log_id),
        }
    }

    /// The seq to start at, or None when the file does not exist yet.
    pub fn load(&self) -> Result<Option<u64>, CursorError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CursorError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let (log, next) = parse(&text).ok_or_else(|| CursorError::Malformed {
            path: self.path.clone(),
        })?;
        if log != self.log_id {
            return Err(CursorError::OtherLog {
                path: self.path.clone(),
                cursor_log: log.to_owned(),
                log: self.log_id.clone(),
            });
        }
        Ok(Some(next))
    }

    /// Records `next` atomically: a temporary file beside it, fsynced, then
    /// renamed over it. The fsync is of the file, so a crash never leaves the
    /// name on an empty or partial file (which would be refused as
    /// malformed and stop the script); the directory is not fsynced, as a
    /// rename lost in a crash only brings back the previous position, from
    /// which some records are printed again, none missed.
    pub fn save(&self, next: u64) -> Result<(), CursorError> {
        let error = |source| CursorError::Write {
            path: self.path.clone(),
            source,
        };
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".tmp-{}", std::process::id()));
        let temp = self.path.with_file_name(name);
        let written = (|| {
            let mut file = File::create(&temp)?;
            writeln!(file, "{PREFIX} log={} next={next}", self.log_id)?;
            file.sync_data()?;
            fs::rename(&temp, &self.path)
        })();
        if written.is_err() {
            // Nothing to do if the temporary file is already gone.
            let _ = fs::remove_file(&temp);
        }
        written.map_err(error)
    }
}

fn parse(text: &str) -> Option<(&str, u64)> {
    let rest = text.strip_suffix('\n')?.strip_prefix(PREFIX)?;
    let mut fields = rest.split(' ');
    let (empty, log, next) = (fields.next()?, fields.next()?, fields.next()?);
    if !empty.is_empty() || fields.next().is_some() {
        return None;
    }
    let log = log.strip_prefix("log=")?;
    if log.is_empty() || hex::decode(log).is_err() {
        return None;
    }
    Some((log, next.strip_prefix("next=")?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_cursor_loads_back_and_only_for_its_log() {
        let dir = std::env::temp_dir().join(format!("tally-cursor-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pos");
        let cursor = Cursor::new(&path, &[0xab; 16]);
        assert_eq!(cursor.load().unwrap(), None);
        cursor.save(42).unwrap();
        assert_eq!(cursor.load().unwrap(), Some(42));
        cursor.save(43).unwrap();
        assert_eq!(cursor.load().unwrap(), Some(43));
        // No temporary file left beside it.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let other = Cursor::new(&path, &[0xcd; 16]);
        let err = other.load().unwrap_err();
        assert!(matches!(err, CursorError::OtherLog { .. }), "{err}");
        assert!(err.to_string().contains(&"ab".repeat(16)), "{err}");
        fs::write(&path, "tally-cursor v1 log=abab next=x\n").unwrap();
        assert!(matches!(
            cursor.load().unwrap_err(),
            CursorError::Malformed { .. }
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_exact_line_parses() {
        assert_eq!(
            parse("tally-cursor v1 log=00ff next=7\n"),
            Some(("00ff", 7))
        );
        for bad in [
            "",
            "tally-cursor v1 log=00ff next=7",
            "tally-cursor v1 log=00ff next=7 extra\n",
            "tally-cursor v1 log= next=7\n",
            "tally-cursor v1 log=xyz next=7\n",
            "tally-cursor v1 next=7 log=00ff\n",
            "tally-cursor v2 log=00ff next=7\n",
            "tally-cursor v1 log=00ff next=-1\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
