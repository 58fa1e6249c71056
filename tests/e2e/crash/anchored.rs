//! The anchoring path's extra check after each restart: the log's anchors
//! verify against its identity (taken once, at the first start, as a
//! verifier would) with a fresh attestation for a new nonce: PASS, genuine
//! and consecutive anchors, and current (the TPM's counter one past the
//! newest anchor: no kill left an anchor's value open or a gap).

use std::path::PathBuf;

use anyhow::{ensure, Context as _};
use rand::rngs::StdRng;
use rand::Rng;
use tally_tests::swtpm::Swtpm;
use tally_tests::{Daemon, DaemonOpts};

use super::ledger::Checked;

/// The owner record's NV index: the default counter index + 1.
const OWNER_RECORD: &str = "0x01c17a12";

/// A swtpm the daemon anchors in, every second when the log grew.
pub struct Anchored {
    pub tpm: Swtpm,
}

impl Anchored {
    /// Daemon options: anchoring in this swtpm at the fastest cadence.
    pub fn opts(&self) -> DaemonOpts {
        DaemonOpts {
            tpm: format!(
                "enabled = true\ntcti = \"{}\"\nanchor_interval_secs = 1",
                self.tpm.tcti()
            ),
            ..DaemonOpts::default()
        }
    }

    /// Undefines the owner record (`tpm.counter_index + 1`, the default
    /// index), so that a new log may take the counter: for a first start
    /// again on the same TPM. The daemon must be stopped.
    pub fn free_owner_record(&self) -> anyhow::Result<()> {
        let out = self.tpm.tool("tpm2_nvundefine", &[OWNER_RECORD, "-C", "o"]);
        ensure!(out.status.success(), "tpm2_nvundefine: {out:?}");
        Ok(())
    }

    /// `tallyd identity`, saved where a verifier keeps it.
    pub fn identity(&self, daemon: &Daemon) -> anyhow::Result<PathBuf> {
        let run = daemon.tallyd(&["identity"])?;
        ensure!(run.code == 0, "tallyd identity failed: {run:?}");
        let path = daemon.dir().join("identity.json");
        std::fs::write(&path, run.stdout)?;
        Ok(path)
    }

    /// Export with a fresh attestation, verify against the identity: PASS,
    /// over exactly the checked log. Returns the number of anchors verified.
    pub fn verify(
        &self,
        daemon: &Daemon,
        identity: &std::path::Path,
        rng: &mut StdRng,
        checked: &Checked,
    ) -> anyhow::Result<u64> {
        let nonce = hex::encode(rng.gen::<[u8; 16]>());
        let bundle = daemon.dir().join("anchored.bundle");
        let attestation = daemon.dir().join("anchored.att");
        let export = daemon.tally(&[
            "export".as_ref(),
            "--out".as_ref(),
            bundle.as_os_str(),
            "--attest".as_ref(),
            attestation.as_os_str(),
            "--nonce".as_ref(),
            nonce.as_ref(),
        ])?;
        ensure!(export.code == 0, "tally export --attest failed: {export:?}");
        let verify = daemon.tally(&[
            "verify".as_ref(),
            bundle.as_os_str(),
            "--json".as_ref(),
            "--identity".as_ref(),
            identity.as_os_str(),
            "--attestation".as_ref(),
            attestation.as_os_str(),
            "--nonce".as_ref(),
            std::ffi::OsStr::new(&nonce),
        ])?;
        let json: serde_json::Value = serde_json::from_str(verify.stdout.trim())
            .with_context(|| format!("tally verify --json: {verify:?}"))?;
        ensure!(
            verify.code == 0 && json["verdict"] == "pass",
            "the anchors do not verify after the restart: {json}"
        );
        ensure!(
            json["size"] == checked.size && json["head_hash"] == hex::encode(checked.head),
            "the verified bundle is not the checked log ({} records): {json}",
            checked.size
        );
        json["anchor_count"]
            .as_u64()
            .context("verify --json: anchor_count")
    }
}
