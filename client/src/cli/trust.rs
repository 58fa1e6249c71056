//! Where a verifier's trust comes from: a log identity file, or the keys and
//! counter given one by one. Shared by `verify`, `verify-proof` and `gap-ack`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tally_attest::anchor::AnchorPolicy;
use tally_attest::evidence::verify::{AkPublicKey, EvidenceKeys};
use tally_attest::identity::{parse_nv_index, LogIdentity};

/// tallyd's default NV counter index, taken when `--ak` comes without
/// `--counter-index`.
pub use tally_attest::identity::DEFAULT_COUNTER_INDEX;

/// Where the verifier's trust comes from: a log identity, or explicit keys.
#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    /// The log's identity (identity.json), taken at provisioning from
    /// `tallyd identity` over a channel you trust and kept by you. It pins
    /// the TPM's keys, the counter, the log key and the genesis anchor. Do
    /// not read it from the host you are checking: root there can replace it.
    #[arg(long, conflicts_with_all = ["ak", "owner_key", "counter_index"])]
    pub identity: Option<PathBuf>,
    /// Instead of --identity (scripting): the AK public key (PEM). Without a
    /// pinned genesis (or --trusted) the verdict is PARTIAL at best.
    #[arg(long, requires = "owner_key")]
    pub ak: Option<PathBuf>,
    /// With --ak: the TPM owner key's public key (PEM, <data_dir>/tpm/owner-key.pem).
    #[arg(long, requires = "ak")]
    pub owner_key: Option<PathBuf>,
    /// With --ak: the NV counter index the anchors must certify.
    #[arg(long, requires = "ak")]
    pub counter_index: Option<String>,
    /// With --ak: the log's Ed25519 checkpoint key (a C2SP verifier key, or a
    /// file holding it): every checkpoint must be signed by it.
    #[arg(long, requires = "ak")]
    pub log_key: Option<String>,
}

/// Parses `--counter-index`: "0x01c17a11", or the same hex digits without
/// 0x (where `parse_nv_index`, which this wraps, would read decimal).
pub fn parse_index(text: &str) -> anyhow::Result<u32> {
    let hex = if text.starts_with("0x") || text.starts_with("0X") {
        text.to_owned()
    } else {
        format!("0x{text}")
    };
    parse_nv_index(&hex).with_context(|| format!("{text:?} is not a hex NV index"))
}

/// A C2SP verifier key given inline or as a file.
pub fn load_log_key(text: &str) -> anyhow::Result<tally_attest::note::Verifier> {
    let key = match std::fs::read_to_string(text) {
        Ok(contents) => contents,
        // A key string always holds '+' (origin+id+key); a name without one
        // was meant as a file, and "not a log key" would hide that it is
        // missing. tallyd writes it to <data_dir>/tpm/, not the working directory.
        Err(err) if !text.contains('+') => anyhow::bail!(
            "cannot read the log key file {text}: {err} (tallyd writes it to \
             <data_dir>/tpm/log-key.pub, e.g. /var/lib/tally/tpm/log-key.pub; \
             identity.json carries it too: --identity)"
        ),
        Err(_) => text.to_owned(),
    };
    tally_attest::note::Verifier::parse(key.trim()).with_context(|| {
        format!("{text:?} is not a log key (a tally/<log id>+<key id>+<base64> string, or a file holding one, e.g. <data_dir>/tpm/log-key.pub)")
    })
}

/// Reads a PEM P-256 public key.
pub fn load_key(path: &Path) -> anyhow::Result<AkPublicKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    AkPublicKey::from_pem(&pem)
        .with_context(|| format!("{} is not a P-256 public key in PEM", path.display()))
}

/// Reads an identity file.
pub fn load_identity(path: &Path) -> anyhow::Result<LogIdentity> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    LogIdentity::from_json(&text)
        .with_context(|| format!("{} is not a Tally log identity", path.display()))
}

/// The policy and, from an identity, the genesis origin.
pub fn load_trust(args: &TrustArgs) -> anyhow::Result<(Option<AnchorPolicy>, Option<LogIdentity>)> {
    if let Some(path) = &args.identity {
        let identity = load_identity(path)?;
        return Ok((Some(identity.policy.clone()), Some(identity)));
    }
    let (Some(ak), Some(owner_key)) = (&args.ak, &args.owner_key) else {
        return Ok((None, None));
    };
    let policy = AnchorPolicy {
        keys: EvidenceKeys {
            ak: load_key(ak)?,
            owner_key: load_key(owner_key)?,
        },
        counter_index: match &args.counter_index {
            Some(text) => parse_index(text)?,
            None => DEFAULT_COUNTER_INDEX,
        },
        log_key: args.log_key.as_deref().map(load_log_key).transpose()?,
        log_id: None,
    };
    Ok((Some(policy), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_index_is_hex_with_or_without_0x() {
        assert_eq!(parse_index("0x01c17a11").unwrap(), DEFAULT_COUNTER_INDEX);
        assert_eq!(parse_index("0X01C17A11").unwrap(), DEFAULT_COUNTER_INDEX);
        assert_eq!(parse_index("01c17a11").unwrap(), DEFAULT_COUNTER_INDEX);
        let err = parse_index("zz").unwrap_err();
        assert_eq!(err.to_string(), "\"zz\" is not a hex NV index");
    }

    /// Regression: `--log-key log-key.pub` (no such file here) said "malformed key".
    #[test]
    fn a_missing_log_key_file_is_named_with_where_tallyd_writes_it() {
        let err = load_log_key("no-such-dir/log-key.pub").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("cannot read the log key file no-such-dir/log-key.pub"),
            "{text}"
        );
        assert!(text.contains("<data_dir>/tpm/log-key.pub"), "{text}");
        let err = load_log_key("tally/00+0000+AAAA").unwrap_err();
        assert!(format!("{err:#}").contains("is not a log key"), "{err:#}");
    }
}
