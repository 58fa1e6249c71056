//! Errors of the TPM side (feature `tpm`), and the mapping from TSS2 response codes.
//!
//! tss-esapi 7.7 reports every failure as `tss_esapi::Error`: either a local
//! `WrapperError` or a raw `TSS2_RC`. The raw code's layer (bits 23:16) tells a TPM
//! answer (layer 0) from a transport failure (TCTI layer 10) or a TSS-internal one;
//! [`classify`] turns it into the variant a caller can act on.

use tss_esapi::constants::response_code::Tss2ResponseCode;

/// TPM_RC_LOCKOUT (format 0, warning).
pub const TPM_RC_LOCKOUT: u32 = 0x921;
/// TPM_RC_NV_RATE (format 0, warning).
pub const TPM_RC_NV_RATE: u32 = 0x920;
/// TPM_RC_RETRY (format 0, warning).
pub const TPM_RC_RETRY: u32 = 0x922;
/// TPM_RC_OBJECT_MEMORY (format 0, warning).
pub const TPM_RC_OBJECT_MEMORY: u32 = 0x902;
/// TPM_RC_INITIALIZE (format 0).
pub const TPM_RC_INITIALIZE: u32 = 0x100;
/// TPM_RC_NV_DEFINED (format 0).
pub const TPM_RC_NV_DEFINED: u32 = 0x14C;
/// TPM_RC_NV_UNINITIALIZED (format 0).
pub const TPM_RC_NV_UNINITIALIZED: u32 = 0x14A;
/// TPM_RC_AUTH_FAIL (format 1 base; the full code carries the handle/session number).
pub const TPM_RC_AUTH_FAIL: u32 = 0x08E;
/// TPM_RC_BAD_AUTH (format 1 base).
pub const TPM_RC_BAD_AUTH: u32 = 0x0A2;
/// TPM_RC_HANDLE (format 1 base).
pub const TPM_RC_HANDLE: u32 = 0x08B;
/// TPM_RC_INTEGRITY (format 1 base): an object's integrity check failed, e.g. a
/// sealed blob loaded under another TPM's (or a changed) parent, or tampered with.
pub const TPM_RC_INTEGRITY: u32 = 0x09F;
/// TSS2 layer of the TCTI (transport).
pub const TSS2_TCTI_RC_LAYER: u32 = 10;

/// Failure of a TPM operation. `op` names the TPM command or step that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string does not parse.
    #[error("invalid TCTI {tcti:?}: {source}")]
    InvalidTcti {
        /// The TCTI string.
        tcti: String,
        /// Parser error.
        #[source]
        source: tss_esapi::Error,
    },
    /// No TPM answers at the TCTI (device missing, swtpm not running).
    #[error("no TPM at {tcti:?} (TSS2_RC {rc:#x}); set the TCTI (tpm.tcti, --tcti, TCTI or TPM2TOOLS_TCTI), or run without a TPM with --no-tpm")]
    NoTpm {
        /// The TCTI string tried.
        tcti: String,
        /// The raw TSS2 response code.
        rc: u32,
    },
    /// The connection to the TPM broke during `op`. The worker reconnects on the next
    /// request; `op` may or may not have taken effect in the TPM.
    #[error("lost connection to the TPM during {op} (TSS2_RC {rc:#x})")]
    Communication {
        /// The failing step.
        op: &'static str,
        /// The raw TSS2 response code.
        rc: u32,
    },
    /// The TPM is in dictionary-attack lockout (TPM_RC_LOCKOUT).
    #[error("TPM is in dictionary-attack lockout during {op}: wait for the lockout to expire, or reset it with the lockout authorization (tpm2_dictionarylockout -c)")]
    Lockout {
        /// The failing step.
        op: &'static str,
    },
    /// Wrong authorization value (TPM_RC_BAD_AUTH / TPM_RC_AUTH_FAIL): for the owner
    /// hierarchy when defining, incrementing or reading the counter.
    #[error("wrong authorization value for {op} (TPM_RC {rc:#x}): the TPM's owner or endorsement hierarchy has a password; give it in TALLYD_TPM_OWNER_AUTH / TALLYD_TPM_ENDORSEMENT_AUTH")]
    BadAuth {
        /// The failing step.
        op: &'static str,
        /// The raw response code (its handle/session number says which auth).
        rc: u32,
    },
    /// The TPM asks to slow down NV writes (TPM_RC_NV_RATE): retry later.
    #[error("TPM is rate-limiting NV writes during {op}")]
    NvRate {
        /// The failing step.
        op: &'static str,
    },
    /// The NV index exists but was not defined as Tally's counter.
    #[error(
        "NV index {index:#010x} has attributes {found:#010x}, expected {expected:#010x} \
         (TPM_NT_COUNTER | OWNERWRITE | OWNERREAD | ORDERLY): another tool owns this index; choose another tpm.counter_index"
    )]
    IndexWrongAttributes {
        /// The NV index handle.
        index: u32,
        /// The attributes Tally defines (status bits excluded).
        expected: u32,
        /// The attributes found (status bits excluded).
        found: u32,
    },
    /// The NV index exists with the right attributes but another size or name hash.
    #[error("NV index {index:#010x} has size {found_size} / nameAlg {found_name_alg:#06x}, expected 8 / SHA-256")]
    IndexWrongShape {
        /// The NV index handle.
        index: u32,
        /// Data size found.
        found_size: usize,
        /// nameAlg found.
        found_name_alg: u16,
    },
    /// The owner record's index (counter index + 1) exists with another shape.
    #[error(
        "NV index {index:#010x} (the owner record, counter index + 1) has attributes {found_attributes:#010x} and \
         size {found_size}, expected {expected_attributes:#010x} (OWNERWRITE | OWNERREAD) and {expected_size}: \
         another tool owns this index; choose another tpm.counter_index"
    )]
    OwnerRecordWrongShape {
        /// The NV index handle.
        index: u32,
        /// The attributes Tally defines the record with (status bits excluded).
        expected_attributes: u32,
        /// The record's size.
        expected_size: usize,
        /// The attributes found (status bits excluded).
        found_attributes: u32,
        /// Data size found.
        found_size: usize,
    },
    /// The owner record's index holds something that is not an owner record.
    #[error("NV index {index:#010x} (the owner record, counter index + 1) does not hold a Tally owner record: another tool writes it; choose another tpm.counter_index")]
    OwnerRecordMalformed {
        /// The NV index handle.
        index: u32,
    },
    /// The owner record names another log; it is never overwritten.
    #[error(
        "NV index {index:#010x} already records that the counter belongs to log {} (genesis at counter {genesis_counter}); \
         refusing to overwrite it: choose another tpm.counter_index, or, if that log is gone for good, undefine the record \
         (tpm2_nvundefine {index:#010x} -C o)",
        hex::encode(.log_id)
    )]
    OwnerRecordTaken {
        /// The NV index handle.
        index: u32,
        /// The log id found.
        log_id: [u8; 16],
        /// The genesis counter found.
        genesis_counter: u64,
    },
    /// The counter index is not defined: run provisioning first.
    #[error("NV counter index {index:#010x} is not defined (not provisioned)")]
    CounterNotDefined {
        /// The NV index handle.
        index: u32,
    },
    /// Configuration value out of range.
    #[error("invalid configuration: {what} = {value}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// The quoted PCRs kept changing between TPM2_Quote and TPM2_PCR_Read.
    #[error("PCRs changed between quote and read in {attempts} attempts")]
    PcrsChanged {
        /// Attempts made.
        attempts: u32,
    },
    /// TPM2_PCR_Read returned fewer values than selected.
    #[error("TPM2_PCR_Read returned {got} values for {asked} selected PCRs")]
    PcrReadIncomplete {
        /// PCRs asked for.
        asked: usize,
        /// Values returned.
        got: usize,
    },
    /// The TPM returned a structure this crate cannot use (e.g. a non-ECC AK public).
    #[error("unexpected TPM output in {op}: {what}")]
    UnexpectedOutput {
        /// The step.
        op: &'static str,
        /// What was wrong.
        what: &'static str,
    },
    /// The TPM's own output failed our parser (should not happen with a sane TPM).
    #[error("TPM output of {op} does not parse: {source}")]
    MalformedOutput {
        /// The step.
        op: &'static str,
        /// Parser error.
        #[source]
        source: crate::evidence::EvidenceError,
    },
    /// Any other TPM response code.
    #[error("{op} failed: TPM_RC {rc:#x}: {source}")]
    Tpm {
        /// The step.
        op: &'static str,
        /// The raw response code.
        rc: u32,
        /// tss-esapi's error.
        #[source]
        source: tss_esapi::Error,
    },
    /// A TSS error that is not a TPM response (bad parameter, ESYS state).
    #[error("{op} failed in the TSS: {source}")]
    Tss {
        /// The step.
        op: &'static str,
        /// tss-esapi's error.
        #[source]
        source: tss_esapi::Error,
    },
    /// The worker thread could not be started.
    #[error("cannot start the TPM worker thread: {0}")]
    SpawnWorker(#[source] std::io::Error),
    /// The worker thread has stopped; no request can be served.
    #[error("the TPM worker thread has stopped")]
    WorkerGone,
}

impl TpmError {
    /// Whether the worker must drop its `Context` and reconnect before the next request:
    /// the transport broke, or the TPM restarted under an open connection (loaded
    /// handles gone: TPM_RC_HANDLE / TPM_RC_INITIALIZE / TPM_RC_REFERENCE_Hx).
    pub fn needs_reconnect(&self) -> bool {
        match self {
            TpmError::Communication { .. } | TpmError::NoTpm { .. } => true,
            TpmError::Tpm { rc, .. } => {
                let base = tpm_base_code(*rc);
                base == TPM_RC_HANDLE
                    || base == TPM_RC_INITIALIZE
                    || (0x910..=0x916).contains(&base)
            }
            _ => false,
        }
    }
}

/// The raw TSS2_RC inside a tss-esapi error, if it carries one.
pub fn raw_rc(e: &tss_esapi::Error) -> Option<u32> {
    match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => Some(rc.0),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => Some(rc.0),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::Success) => Some(0),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

/// Reduces a TPM-layer response code to the code a table lookup needs: format-1 codes
/// lose their parameter/handle/session number (bits 11:6 -> base 0x80|error), format-0
/// codes are returned as they are.
pub fn tpm_base_code(rc: u32) -> u32 {
    let rc = rc & 0xFFFF;
    if rc & 0x80 != 0 {
        0x80 | (rc & 0x3F)
    } else {
        rc & 0xFFF
    }
}

/// Maps a tss-esapi error from step `op` to the variant a caller can act on.
pub fn classify(op: &'static str, e: tss_esapi::Error) -> TpmError {
    let Some(rc) = raw_rc(&e) else {
        return TpmError::Tss { op, source: e };
    };
    let layer = (rc >> 16) & 0xFF;
    if layer == TSS2_TCTI_RC_LAYER {
        return TpmError::Communication { op, rc };
    }
    if layer != 0 {
        // ESYS/SYS/MU failures after a transport error leave the ESYS context in an
        // unknown state; treat them like a broken connection so the worker reconnects.
        return TpmError::Communication { op, rc };
    }
    match tpm_base_code(rc) {
        TPM_RC_LOCKOUT => TpmError::Lockout { op },
        TPM_RC_NV_RATE => TpmError::NvRate { op },
        TPM_RC_BAD_AUTH | TPM_RC_AUTH_FAIL => TpmError::BadAuth { op, rc },
        _ => TpmError::Tpm { op, rc, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_codes() {
        // BAD_AUTH on session 1 as swtpm reports it.
        assert_eq!(tpm_base_code(0x9a2), TPM_RC_BAD_AUTH);
        assert_eq!(tpm_base_code(0x98e), TPM_RC_AUTH_FAIL);
        assert_eq!(tpm_base_code(0x18b), TPM_RC_HANDLE);
        assert_eq!(tpm_base_code(TPM_RC_LOCKOUT), TPM_RC_LOCKOUT);
    }
}
