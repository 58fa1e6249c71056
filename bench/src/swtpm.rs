//! A private swtpm for the anchoring scenario (`--swtpm`, and the smoke
//! test), started and stopped by the project's own script.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// `swtpm-ci/swtpm.sh` in this workspace.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../swtpm-ci/swtpm.sh")
}

/// Why a private swtpm cannot be started here, if it cannot.
pub fn unavailable() -> Option<String> {
    for tool in ["swtpm", "swtpm_setup", "tpm2_getcap"] {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed (swtpm-ci/install.sh)"));
        }
    }
    if !script().is_file() {
        return Some(format!("{} not found", script().display()));
    }
    None
}

/// A running swtpm in a temporary directory; stopped when dropped.
#[derive(Debug)]
pub struct Swtpm {
    dir: tempfile::TempDir,
    tcti: String,
}

impl Swtpm {
    /// Provisions (EK and certificate) and starts a fresh swtpm.
    pub fn start(work_dir: &Path) -> anyhow::Result<Swtpm> {
        if let Some(reason) = unavailable() {
            bail!("cannot start swtpm: {reason}");
        }
        let dir = tempfile::Builder::new()
            .prefix("tally-bench-swtpm-")
            .tempdir_in(work_dir)?;
        let output = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .context("cannot run swtpm-ci/swtpm.sh")?;
        if !output.status.success() {
            bail!(
                "swtpm-ci/swtpm.sh start failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tcti = String::from_utf8(output.stdout)?.trim().to_owned();
        Ok(Swtpm { dir, tcti })
    }

    pub fn tcti(&self) -> &str {
        &self.tcti
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
