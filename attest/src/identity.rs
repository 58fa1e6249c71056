//! What a verifier pins about a log (its *identity*) and the acknowledgement
//! of a reviewed counter gap: small JSON files, schemas in docs/DESIGN.md
//! section 10.
//!
//! The identity is born with the log: tallyd writes it after committing the
//! genesis anchor (`<data_dir>/tpm/identity.json`). A verifier takes it once,
//! at provisioning, over a channel it trusts, and keeps it: the copy on the
//! host is only as trustworthy as the host. It names the two TPM keys, the
//! counter, the log and its checkpoint key, and the genesis anchor, so a
//! verifier can demand an unbroken chain of closed counter values from the
//! log's first anchor.

use serde::{Deserialize, Serialize};

use crate::evidence::verify::{AkPublicKey, EvidenceKeys};
use crate::record::Hash;

/// `format` of an identity file.
pub const IDENTITY_FORMAT: &str = "tally-identity-v1";
/// `format` of a gap acknowledgement.
pub const GAP_ACK_FORMAT: &str = "tally-gap-ack-v1";

/// Why an identity or acknowledgement file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The text is not JSON of this file's shape (or could not be written as JSON).
    #[error("not valid JSON for this file: {0}")]
    Json(#[source] serde_json::Error),
    #[error("format {found:?} is not {expected:?}")]
    Format {
        expected: &'static str,
        found: String,
    },
    /// One field's value is unusable.
    #[error("field {field}: {why}")]
    Field {
        field: &'static str,
        #[source]
        why: FieldProblem,
    },
}

/// What is wrong with one field of an identity or acknowledgement file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldProblem {
    #[error("not {digits} hex digits")]
    NotHex { digits: usize },
    /// The log key is not a note verifier key.
    #[error("{0}")]
    LogKey(#[source] crate::note::NoteError),
    /// The log key is named other than the log's checkpoint origin.
    #[error("is named {found}, not {expected}")]
    LogKeyName { found: String, expected: String },
    /// A TPM key is not a P-256 PEM SubjectPublicKeyInfo.
    #[error("{0}")]
    TpmKey(#[source] crate::evidence::EvidenceError),
    /// See [`parse_nv_index`] for the accepted syntax.
    #[error("not an NV index handle")]
    NotNvIndex,
    #[error("missing")]
    Missing,
}

/// What a verifier pins: the two TPM keys, the counter index and, from a log
/// identity, the log id and the log's checkpoint key.
#[derive(Debug, Clone)]
pub struct AnchorPolicy {
    pub keys: EvidenceKeys,
    pub counter_index: u32,
    /// The log's Ed25519 checkpoint key; when set, every checkpoint must be a
    /// C2SP signed note with a valid signature by it.
    pub log_key: Option<crate::note::Verifier>,
    /// When set, every checkpoint must be for this log.
    pub log_id: Option<[u8; 16]>,
}

/// The TPM's self-description at provisioning (informational).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TpmDescription {
    pub manufacturer: String,
    pub vendor: String,
    /// True for swtpm and other software TPMs: their anchors prove nothing
    /// against root on their own host.
    pub software: bool,
}

/// A log's identity as JSON (the file verifiers pin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub format: String,
    /// 32 hex digits.
    pub log_id: String,
    /// The checkpoint key as a note verifier key, `tally/<log id>+<key id>+<base64>`.
    pub log_key: String,
    /// The AK (endorsement hierarchy, signs quotes), PEM SubjectPublicKeyInfo.
    pub ak: String,
    /// The owner key (owner hierarchy, signs the counter's NV_Certify), PEM.
    pub owner_key: String,
    /// The NV counter's handle, `0x01c17a11`.
    pub counter_index: String,
    /// The genesis anchor's counter value and log size.
    pub genesis_counter: u64,
    pub genesis_size: u64,
    /// SHA-256 of the genesis anchor's stored `AnchorRecord` bytes, 64 hex digits.
    pub genesis_anchor_sha256: String,
    pub tpm: TpmDescription,
}

/// A parsed, checked identity.
#[derive(Debug, Clone)]
pub struct LogIdentity {
    pub log_id: [u8; 16],
    pub policy: AnchorPolicy,
    pub genesis_counter: u64,
    pub genesis_size: u64,
    pub genesis_anchor: Hash,
    pub tpm: TpmDescription,
}

fn field(field: &'static str, why: FieldProblem) -> IdentityError {
    IdentityError::Field { field, why }
}

fn hex_array<const N: usize>(name: &'static str, text: &str) -> Result<[u8; N], IdentityError> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or_else(|| field(name, FieldProblem::NotHex { digits: 2 * N }))
}

/// tallyd's default NV counter index, in the owner range 0x01xxxxxx ("7A11" ~
/// "TALL"); its owner record is the index after it. Here, not in `tpm`, so a
/// verifier built without libtss2 knows it too.
pub const DEFAULT_COUNTER_INDEX: u32 = 0x01C1_7A11;

/// Parses an NV index handle; every NV index Tally reads from text should go
/// through this one parser. Accepted: `0x` or `0X` followed by hex digits of either case
/// (`0x01c17a11`), or decimal digits (`29456913`). Leading zeros are allowed, a
/// leading `+` is tolerated (as Rust's integer parsing does), and nothing else:
/// no whitespace, no `_`, no other sign. The value must fit in 32 bits; whether it
/// lies in the NV range (0x01xxxxxx) is not checked here. `None` otherwise.
pub fn parse_nv_index(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl LogIdentity {
    /// Parses and checks an identity file.
    pub fn from_json(text: &str) -> Result<LogIdentity, IdentityError> {
        let file: IdentityFile = serde_json::from_str(text).map_err(IdentityError::Json)?;
        if file.format != IDENTITY_FORMAT {
            return Err(IdentityError::Format {
                expected: IDENTITY_FORMAT,
                found: file.format,
            });
        }
        let log_id = hex_array::<16>("log_id", &file.log_id)?;
        let log_key = crate::note::Verifier::parse(&file.log_key)
            .map_err(|e| field("log_key", FieldProblem::LogKey(e)))?;
        let origin = format!("tally/{}", file.log_id);
        if log_key.name() != origin {
            return Err(field(
                "log_key",
                FieldProblem::LogKeyName {
                    found: log_key.name().to_owned(),
                    expected: origin,
                },
            ));
        }
        let ak =
            AkPublicKey::from_pem(&file.ak).map_err(|e| field("ak", FieldProblem::TpmKey(e)))?;
        let owner_key = AkPublicKey::from_pem(&file.owner_key)
            .map_err(|e| field("owner_key", FieldProblem::TpmKey(e)))?;
        let counter_index = parse_nv_index(&file.counter_index)
            .ok_or_else(|| field("counter_index", FieldProblem::NotNvIndex))?;
        Ok(LogIdentity {
            log_id,
            policy: AnchorPolicy {
                keys: EvidenceKeys { ak, owner_key },
                counter_index,
                log_key: Some(log_key),
                log_id: Some(log_id),
            },
            genesis_counter: file.genesis_counter,
            genesis_size: file.genesis_size,
            genesis_anchor: hex_array::<32>("genesis_anchor_sha256", &file.genesis_anchor_sha256)?,
            tpm: file.tpm,
        })
    }

    /// The identity file's JSON (pretty, with a final newline).
    pub fn to_json(&self) -> Result<String, IdentityError> {
        let pem = |key: &AkPublicKey, name| {
            key.to_pem()
                .map_err(|e| field(name, FieldProblem::TpmKey(e)))
        };
        let log_key = self
            .policy
            .log_key
            .as_ref()
            .ok_or_else(|| field("log_key", FieldProblem::Missing))?;
        let file = IdentityFile {
            format: IDENTITY_FORMAT.to_owned(),
            log_id: hex::encode(self.log_id),
            log_key: log_key.to_key_string(),
            ak: pem(&self.policy.keys.ak, "ak")?,
            owner_key: pem(&self.policy.keys.owner_key, "owner_key")?,
            counter_index: format!("{:#010x}", self.policy.counter_index),
            genesis_counter: self.genesis_counter,
            genesis_size: self.genesis_size,
            genesis_anchor_sha256: hex::encode(self.genesis_anchor),
            tpm: self.tpm.clone(),
        };
        let mut json = serde_json::to_string_pretty(&file).map_err(IdentityError::Json)?;
        json.push('\n');
        Ok(json)
    }
}

/// A reviewed counter gap, pinned by the anchors on both sides: it accepts
/// exactly that gap between exactly those two anchors, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapAck {
    pub log_id: [u8; 16],
    pub after_counter: u64,
    pub after_anchor: Hash,
    pub next_counter: u64,
    pub next_anchor: Hash,
    pub reviewed_by: String,
    pub reason: String,
    pub reviewed_at_unix: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GapAckFile {
    format: String,
    log_id: String,
    after_counter: u64,
    after_anchor_sha256: String,
    next_counter: u64,
    next_anchor_sha256: String,
    reviewed_by: String,
    reason: String,
    reviewed_at_unix: u64,
}

impl GapAck {
    /// The acknowledgement of the gap between two verified anchors, each
    /// given as (counter, anchor hash).
    pub fn between(
        log_id: [u8; 16],
        after: (u64, Hash),
        next: (u64, Hash),
        reviewed_by: &str,
        reason: &str,
        reviewed_at_unix: u64,
    ) -> GapAck {
        GapAck {
            log_id,
            after_counter: after.0,
            after_anchor: after.1,
            next_counter: next.0,
            next_anchor: next.1,
            reviewed_by: reviewed_by.to_owned(),
            reason: reason.to_owned(),
            reviewed_at_unix,
        }
    }

    pub fn from_json(text: &str) -> Result<GapAck, IdentityError> {
        let file: GapAckFile = serde_json::from_str(text).map_err(IdentityError::Json)?;
        if file.format != GAP_ACK_FORMAT {
            return Err(IdentityError::Format {
                expected: GAP_ACK_FORMAT,
                found: file.format,
            });
        }
        Ok(GapAck {
            log_id: hex_array::<16>("log_id", &file.log_id)?,
            after_counter: file.after_counter,
            after_anchor: hex_array::<32>("after_anchor_sha256", &file.after_anchor_sha256)?,
            next_counter: file.next_counter,
            next_anchor: hex_array::<32>("next_anchor_sha256", &file.next_anchor_sha256)?,
            reviewed_by: file.reviewed_by,
            reason: file.reason,
            reviewed_at_unix: file.reviewed_at_unix,
        })
    }

    pub fn to_json(&self) -> Result<String, IdentityError> {
        let file = GapAckFile {
            format: GAP_ACK_FORMAT.to_owned(),
            log_id: hex::encode(self.log_id),
            after_counter: self.after_counter,
            after_anchor_sha256: hex::encode(self.after_anchor),
            next_counter: self.next_counter,
            next_anchor_sha256: hex::encode(self.next_anchor),
            reviewed_by: self.reviewed_by.clone(),
            reason: self.reason.clone(),
            reviewed_at_unix: self.reviewed_at_unix,
        };
        let mut json = serde_json::to_string_pretty(&file).map_err(IdentityError::Json)?;
        json.push('\n');
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid P-256 point (the NIST generator's multiple used in p256's tests).
    const AK_SEC1: [u8; 65] = [
        4, 107, 23, 209, 242, 225, 44, 66, 71, 248, 188, 230, 229, 99, 164, 64, 242, 119, 3, 125,
        129, 45, 235, 51, 160, 244, 161, 57, 69, 216, 152, 194, 150, 79, 227, 66, 226, 254, 26,
        127, 155, 142, 231, 235, 74, 124, 15, 158, 22, 43, 206, 51, 87, 107, 49, 94, 206, 203, 182,
        64, 104, 55, 191, 81, 245,
    ];

    fn identity() -> LogIdentity {
        let log_id = [0x11; 16];
        let signer =
            crate::note::Signer::from_seed("tally/11111111111111111111111111111111", &[7u8; 32])
                .unwrap();
        let key = AkPublicKey::from_sec1(&AK_SEC1).unwrap();
        LogIdentity {
            log_id,
            policy: AnchorPolicy {
                keys: EvidenceKeys {
                    ak: key.clone(),
                    owner_key: key,
                },
                counter_index: 0x01c1_7a11,
                log_key: Some(signer.verifier().clone()),
                log_id: Some(log_id),
            },
            genesis_counter: 3,
            genesis_size: 0,
            genesis_anchor: [0x22; 32],
            tpm: TpmDescription::default(),
        }
    }

    #[test]
    fn identity_round_trips_and_refuses_what_it_cannot_trust() {
        let json = identity().to_json().unwrap();
        let back = LogIdentity::from_json(&json).unwrap();
        assert_eq!(back.to_json().unwrap(), json);
        assert_eq!(back.policy.counter_index, 0x01c1_7a11);
        assert_eq!(back.genesis_anchor, [0x22; 32]);

        let wrong_format = json.replace(IDENTITY_FORMAT, "tally-identity-v0");
        assert!(matches!(
            LogIdentity::from_json(&wrong_format),
            Err(IdentityError::Format { .. })
        ));
        let other_log = json.replace(
            "\"log_id\": \"11111111111111111111111111111111\"",
            "\"log_id\": \"22222222222222222222222222222222\"",
        );
        assert!(matches!(
            LogIdentity::from_json(&other_log),
            Err(IdentityError::Field {
                field: "log_key",
                ..
            })
        ));
        let unknown = json.replacen('{', "{\"extra\": 1,", 1);
        assert!(matches!(
            LogIdentity::from_json(&unknown),
            Err(IdentityError::Json(_))
        ));
    }

    #[test]
    fn gap_ack_round_trips() {
        let ack = GapAck {
            log_id: [1; 16],
            after_counter: 5,
            after_anchor: [2; 32],
            next_counter: 255,
            next_anchor: [3; 32],
            reviewed_by: "oncall@example".into(),
            reason: "power loss".into(),
            reviewed_at_unix: 1_790_000_000,
        };
        assert_eq!(GapAck::from_json(&ack.to_json().unwrap()).unwrap(), ack);
    }
}
