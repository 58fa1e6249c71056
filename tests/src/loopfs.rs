//! Test helper: a small real ext4 file system on a loop device, so a test can
//! fill a disk for real. Created in a temporary directory, mounted there, and
//! unmounted and detached on Drop (also when the test fails). Needs root and
//! util-linux/e2fsprogs (`losetup`, `mkfs.ext4`, `mount`): without them the
//! test is skipped ([`Needs::Ci`]: CI runs as root and has them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::skip::{skip, Needs, Part};

/// A mounted loop-device ext4 file system.
#[derive(Debug)]
pub struct LoopFs {
    /// Holds the image and the mount point.
    dir: tempfile::TempDir,
    /// `/dev/loopN`.
    device: String,
    mounted: bool,
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl LoopFs {
    /// Makes an ext4 file system of `mib` MiB with no blocks reserved for
    /// root (so root, as the tests run, sees ENOSPC when `statvfs` says 0
    /// bytes are available) and mounts it. `None`, after recording the skip,
    /// when this is not root or the tools are missing.
    pub fn mount(mib: u64) -> Option<LoopFs> {
        if !nix::unistd::geteuid().is_root() {
            skip(
                Needs::Ci,
                Part::Whole,
                "a loop-mounted file system needs root",
            );
            return None;
        }
        // Spawning is the test: mkfs.ext4 has no --version (it prints its
        // usage and fails), and the tools run only as root anyway.
        let have = |program: &str| Command::new(program).arg("-V").output().is_ok();
        if !have("losetup") || !have("mkfs.ext4") || !have("mount") {
            skip(
                Needs::Ci,
                Part::Whole,
                "losetup, mkfs.ext4 or mount missing (util-linux, e2fsprogs)",
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("tally-loopfs-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("fs.img");
        File::create(&image)
            .and_then(|file| file.set_len(mib << 20))
            .expect("create the image");
        let image_text = image.display().to_string();
        ok("mkfs.ext4", &["-q", "-F", "-m", "0", &image_text]);
        let device = ok("losetup", &["-f", "--show", &image_text]);
        let mut fs = LoopFs {
            dir,
            device,
            mounted: false,
        };
        std::fs::create_dir(fs.path()).expect("mount point");
        let mount_point = fs.path().display().to_string();
        ok("mount", &[&fs.device, &mount_point]);
        fs.mounted = true;
        Some(fs)
    }

    /// The mount point.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Bytes available now.
    pub fn free_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.path()).expect("statvfs");
        stat.blocks_available() * stat.fragment_size()
    }

    /// Allocates a file `name` that leaves about `leave` bytes free (within a
    /// block), and returns its path; deleting it frees the space again.
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.path().join(name);
        let file = File::create(&path).expect("create the filler");
        let free = self.free_bytes();
        assert!(
            free > leave,
            "only {free} bytes free, wanted to leave {leave}"
        );
        let len = i64::try_from(free - leave).unwrap();
        nix::fcntl::posix_fallocate(file.as_raw_fd(), 0, len).expect("fallocate the filler");
        file.sync_all().expect("fsync the filler");
        path
    }

    /// Removes a file made by [`LoopFs::fill`] (and syncs, so the freed
    /// blocks count at once).
    pub fn free(&self, path: &Path) {
        std::fs::remove_file(path).expect("remove the filler");
        nix::unistd::sync();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let mount_point = self.path().display().to_string();
            // A daemon killed by the failing test may still be exiting: lazy.
            if !run("umount", &[&mount_point]).status.success() {
                let _ = run("umount", &["-l", &mount_point]);
            }
        }
        let _ = run("losetup", &["-d", &self.device]);
    }
}
