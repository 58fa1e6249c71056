//! A file read once, front to back (a bundle being verified): the kernel is
//! told so (`POSIX_FADV_SEQUENTIAL`, for a larger read-ahead), and every
//! [`DROP_EVERY`] bytes it is told to drop the pages already read
//! (`POSIX_FADV_DONTNEED`), so the page cache this process fills, which
//! cgroups and monitors count as its file-backed memory, stays at a few
//! MiB however large the bundle is (the issue measured RssFile reaching the
//! size of what was read).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

/// Bytes read between two DONTNEED calls.
pub const DROP_EVERY: u64 = 64 << 20;

pub struct SequentialReader {
    file: File,
    /// Bytes read so far.
    read: u64,
    /// Everything before this offset has been dropped.
    dropped: u64,
}

impl SequentialReader {
    pub fn new(file: File) -> SequentialReader {
        // Advice only: a file system that ignores it reads as before.
        let _ = posix_fadvise(
            file.as_raw_fd(),
            0,
            0,
            PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        );
        SequentialReader {
            file,
            read: 0,
            dropped: 0,
        }
    }
}

impl Read for SequentialReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read += n as u64;
        if self.read - self.dropped >= DROP_EVERY || (n == 0 && self.read > self.dropped) {
            let len = i64::try_from(self.read - self.dropped).unwrap_or(i64::MAX);
            let offset = i64::try_from(self.dropped).unwrap_or(i64::MAX);
            let _ = posix_fadvise(
                self.file.as_raw_fd(),
                offset,
                len,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.dropped = self.read;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_every_byte_in_order() {
        //! The advice must not change what is read: a file of a few
        //! DONTNEED windows reads back byte for byte.
        let dir = std::env::temp_dir().join(format!("tally-seq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file");
        let data: Vec<u8> = (0..(DROP_EVERY as usize * 2 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let mut reader = SequentialReader::new(File::open(&path).unwrap());
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data);
        assert_eq!(reader.dropped, data.len() as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
