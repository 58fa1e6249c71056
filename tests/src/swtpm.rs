//! Test helper: one real swtpm per test, on a Unix socket in a temp dir, provisioned by
//! `swtpm_setup` (EK + EK certificate from swtpm's local CA), killed on Drop.
//! A machine without swtpm skips the test with a printed reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::skip::{Needs, Part};

/// A running (or stopped, between `kill` and `restart`) swtpm.
#[derive(Debug)]
pub struct Swtpm {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// TPM2_GetRandom(8): used to check that swtpm answers.
const GET_RANDOM: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

impl Swtpm {
    /// Provisions and starts a fresh swtpm; `None` (after recording the skip: `crate::skip`) if swtpm is not
    /// installed. Panics if it is installed but cannot be set up.
    pub fn start() -> Option<Swtpm> {
        let have = |bin: &str| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        if !have("swtpm") || !have("swtpm_setup") {
            crate::skip::skip(Needs::Ci, Part::Whole, "swtpm not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("swtpm_setup")
            .args(["--tpm2", "--tpmstate"])
            .arg(dir.path())
            .args([
                "--create-ek-cert",
                "--create-platform-cert",
                "--pcr-banks",
                "sha256",
            ])
            .output()
            .expect("run swtpm_setup");
        assert!(
            out.status.success(),
            "swtpm_setup failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tpm = Swtpm { dir, child: None };
        tpm.restart();
        Some(tpm)
    }

    /// State directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("swtpm.sock")
    }

    /// TCTI string for tss-esapi and tpm2-tools.
    pub fn tcti(&self) -> String {
        format!("swtpm:path={}", self.sock().display())
    }

    /// Starts swtpm on the existing state (TPM reset: startup-clear) and waits until it
    /// answers a TPM2_GetRandom.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "swtpm already running");
        let _ = std::fs::remove_file(self.sock());
        let d = self.dir.path().display().to_string();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={d}"))
            .arg("--server")
            .arg(format!("type=unixio,path={d}/swtpm.sock"))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={d}/swtpm.sock.ctrl"))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn swtpm");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.answers() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "swtpm did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.sock()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut hdr = [0u8; 10];
        s.write_all(&GET_RANDOM).is_ok()
            && s.read_exact(&mut hdr).is_ok()
            && hdr[6..10] == [0, 0, 0, 0]
    }

    /// Process id of the running swtpm.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOPs swtpm: the TPM stops answering (commands hang) until [`Swtpm::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
    }

    /// SIGCONTs a paused swtpm.
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }

    /// SIGKILLs swtpm (the TPM "disappears"); state stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A TPM reset as a reboot makes it: `_TPM_Init` (swtpm's control
    /// channel, `swtpm_ioctl -i`), then `tpm2_startup -c`. `orderly`: with a
    /// `tpm2_shutdown -c` before, as an orderly reboot; without it, as after a
    /// power loss (an ORDERLY counter then jumps forward). No other client may
    /// hold the TPM.
    pub fn reset(&self, orderly: bool) {
        if orderly {
            ok_tool(self.tool("tpm2_shutdown", &["-c"]), "tpm2_shutdown -c");
        }
        let ctrl = format!("{}.ctrl", self.sock().display());
        let init = Command::new("swtpm_ioctl")
            .args(["--unix", &ctrl, "-i"])
            .output()
            .expect("run swtpm_ioctl");
        ok_tool(init, "swtpm_ioctl -i");
        ok_tool(self.tool("tpm2_startup", &["-c"]), "tpm2_startup -c");
    }

    /// An orderly stop (`tpm2_shutdown -c`, then SIGKILL): the next
    /// [`Swtpm::restart`] finds the counter where it was.
    pub fn stop_orderly(&mut self) {
        ok_tool(self.tool("tpm2_shutdown", &["-c"]), "tpm2_shutdown -c");
        self.kill();
    }

    /// Copies the stopped TPM's state files (NV, seeds) to `to`.
    pub fn save_state(&self, to: &Path) {
        assert!(self.child.is_none(), "stop swtpm before copying its state");
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(self.dir()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    /// Puts state files saved by [`Swtpm::save_state`] back (swtpm stopped).
    pub fn load_state(&self, from: &Path) {
        assert!(
            self.child.is_none(),
            "stop swtpm before replacing its state"
        );
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), self.dir().join(entry.file_name())).unwrap();
        }
    }

    /// The NV counter at `index` (`tpm2_nvread`, 8 bytes big-endian).
    pub fn nv_counter(&self, index: &str) -> u64 {
        let out = self.tool("tpm2_nvread", &[index, "-C", "o"]);
        let bytes = ok_tool(out, "tpm2_nvread");
        u64::from_be_bytes(bytes[..8].try_into().expect("an 8-byte counter"))
    }

    /// Runs a tpm2-tools command against this TPM. The caller must make sure no other
    /// client holds the connection (swtpm serves one at a time).
    pub fn tool(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .args(args)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .unwrap_or_else(|e| panic!("run {bin}: {e}"))
    }
}

/// The command's stdout, after asserting it succeeded.
fn ok_tool(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}
