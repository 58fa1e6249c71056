//! Pure-Rust verification of Tally's TPM evidence (no TPM, no libtss2).
//!
//! Order of checks, so that each failure names the first real violation:
//! 1. structure (parse TPMS_ATTEST and TPMT_SIGNATURE: magic, lengths, schemes),
//! 2. the AK's ECDSA P-256 signature over SHA-256 of the exact attest bytes,
//! 3. the attestation type, 4. the qualifying data, 5. the type-specific content.
//!
//! Every failure is an [`EvidenceError`] naming the first violation.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use crate::evidence::error::EvidenceError;
use crate::evidence::parse::{
    parse_attest, parse_signature, Attest, Attested, ClockInfo, TPM_ST_ATTEST_NV,
    TPM_ST_ATTEST_QUOTE,
};
use crate::evidence::{tally_counter_name, Evidence, PcrValues, SignedAttest, TPM_ALG_SHA256};

/// A P-256 attestation key public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublicKey {
    key: VerifyingKey,
}

impl AkPublicKey {
    /// Decodes a PEM "PUBLIC KEY" (SubjectPublicKeyInfo) holding a P-256 key.
    pub fn from_pem(pem: &str) -> Result<Self, EvidenceError> {
        VerifyingKey::from_public_key_pem(pem)
            .map(|key| AkPublicKey { key })
            .map_err(|source| EvidenceError::InvalidAkPem { source })
    }

    /// Decodes a SEC1 point (0x04 || x || y).
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, EvidenceError> {
        VerifyingKey::from_sec1_bytes(bytes)
            .map(|key| AkPublicKey { key })
            .map_err(|_| EvidenceError::InvalidAkPoint)
    }

    /// The key as PEM SubjectPublicKeyInfo.
    pub fn to_pem(&self) -> Result<String, EvidenceError> {
        use p256::pkcs8::EncodePublicKey;
        self.key
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|source| EvidenceError::InvalidAkPem { source })
    }
}

/// Parses `signed` and checks the AK's signature over it; returns the parsed attest.
///
/// Contract: `Ok` means the TPM holding `ak` produced exactly these attest bytes. Type
/// and content are NOT checked; use [`verify_nv_certify`] / [`verify_quote`].
pub fn verify_signed_attest(
    ak: &AkPublicKey,
    signed: &SignedAttest,
) -> Result<Attest, EvidenceError> {
    let attest = parse_attest(&signed.attest)?;
    let sig = parse_signature(&signed.signature)?;
    let r = left_pad_32(&sig.r)?;
    let s = left_pad_32(&sig.s)?;
    let signature = Signature::from_scalars(r, s).map_err(|_| EvidenceError::MalformedSignature)?;
    let digest = Sha256::digest(&signed.attest);
    ak.key
        .verify_prehash(&digest, &signature)
        .map_err(|_| EvidenceError::SignatureInvalid)?;
    Ok(attest)
}

/// Left-pads a big-endian scalar to 32 bytes; longer (non-zero-prefixed) is malformed.
fn left_pad_32(v: &[u8]) -> Result<[u8; 32], EvidenceError> {
    let trimmed = match v.iter().position(|b| *b != 0) {
        Some(i) => &v[i..],
        None => &[],
    };
    if trimmed.len() > 32 {
        return Err(EvidenceError::MalformedSignature);
    }
    let mut out = [0u8; 32];
    out[32 - trimmed.len()..].copy_from_slice(trimmed);
    Ok(out)
}

/// A counter value the TPM certified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedCounter {
    /// The counter value (big-endian u64 in the NV contents).
    pub value: u64,
    /// TPM clock when certified.
    pub clock_info: ClockInfo,
    /// Name of the certified index.
    pub index_name: Vec<u8>,
}

/// Verifies an NV_Certify of the counter: signature, type NV, qualifying data, offset 0,
/// 8-byte contents and, if `expected_index_name` is given, the index Name.
pub fn verify_nv_certify(
    ak: &AkPublicKey,
    signed: &SignedAttest,
    qualifying_data: &[u8],
    expected_index_name: Option<&[u8]>,
) -> Result<CertifiedCounter, EvidenceError> {
    let attest = verify_signed_attest(ak, signed)?;
    let info = match attest.attested {
        Attested::Nv(info) => info,
        Attested::Quote(_) => {
            return Err(EvidenceError::WrongType {
                expected: TPM_ST_ATTEST_NV,
                found: attest.attest_type,
            })
        }
    };
    if attest.extra_data != qualifying_data {
        return Err(EvidenceError::QualifyingDataMismatch);
    }
    if let Some(name) = expected_index_name {
        if info.index_name != name {
            return Err(EvidenceError::NvIndexNameMismatch);
        }
    }
    if info.offset != 0 {
        return Err(EvidenceError::NvOffsetNotZero {
            offset: info.offset,
        });
    }
    let bytes: [u8; 8] =
        info.nv_contents
            .as_slice()
            .try_into()
            .map_err(|_| EvidenceError::NvContentsSize {
                found: info.nv_contents.len(),
            })?;
    Ok(CertifiedCounter {
        value: u64::from_be_bytes(bytes),
        clock_info: attest.clock_info,
        index_name: info.index_name,
    })
}

/// A quote whose PCR values have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// TPM clock when quoted.
    pub clock_info: ClockInfo,
    /// The quoted pcrDigest.
    pub pcr_digest: Vec<u8>,
}

/// Verifies a quote: signature, type QUOTE, qualifying data, that `pcrs.selection` is the
/// quoted selection, and that SHA-256 over `pcrs.digests` equals the quoted pcrDigest.
pub fn verify_quote(
    ak: &AkPublicKey,
    signed: &SignedAttest,
    qualifying_data: &[u8],
    pcrs: &PcrValues,
) -> Result<VerifiedQuote, EvidenceError> {
    let attest = verify_signed_attest(ak, signed)?;
    let info = match attest.attested {
        Attested::Quote(info) => info,
        Attested::Nv(_) => {
            return Err(EvidenceError::WrongType {
                expected: TPM_ST_ATTEST_QUOTE,
                found: attest.attest_type,
            })
        }
    };
    if attest.extra_data != qualifying_data {
        return Err(EvidenceError::QualifyingDataMismatch);
    }
    if info.pcr_select != pcrs.selection {
        return Err(EvidenceError::PcrSelectionMismatch);
    }
    let mut selected = 0usize;
    for bank in &info.pcr_select {
        if bank.hash_alg != TPM_ALG_SHA256 {
            return Err(EvidenceError::UnsupportedPcrBank {
                hash_alg: bank.hash_alg,
            });
        }
        selected += bank.indices().len();
    }
    if selected != pcrs.digests.len() {
        return Err(EvidenceError::PcrCountMismatch {
            selected,
            supplied: pcrs.digests.len(),
        });
    }
    let mut h = Sha256::new();
    for d in &pcrs.digests {
        h.update(d);
    }
    if h.finalize()[..] != info.pcr_digest[..] {
        return Err(EvidenceError::PcrDigestMismatch);
    }
    Ok(VerifiedQuote {
        clock_info: attest.clock_info,
        pcr_digest: info.pcr_digest,
    })
}

/// What a fully verified [`Evidence`] proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvidence {
    /// The certified counter value.
    pub counter: u64,
    /// TPM clock at the NV certify (owner key: resetCount and restartCount obfuscated).
    pub counter_clock: ClockInfo,
    /// TPM clock at the quote (AK: real resetCount and restartCount).
    pub quote_clock: ClockInfo,
    /// The quoted pcrDigest.
    pub pcr_digest: Vec<u8>,
}

/// The two TPM keys whose signatures make up Tally's evidence.
///
/// The NV_Certify of the counter is signed by the *owner key*, an owner-hierarchy
/// primary: TPM2_Clear replaces the owner seed, so after a Clear (which also lets an
/// orderly counter restart low) the TPM can no longer produce this key, and evidence
/// made afterwards does not verify. The Quote is signed by the *AK*, an
/// endorsement-hierarchy primary: its TPMS_CLOCK_INFO carries the real resetCount and
/// restartCount (the TPM obfuscates them for owner-hierarchy signers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceKeys {
    /// Signs the Quote (endorsement hierarchy).
    pub ak: AkPublicKey,
    /// Signs the NV_Certify of the counter (owner hierarchy).
    pub owner_key: AkPublicKey,
}

/// Verifies a whole [`Evidence`] against the verifier's own expectations: the two
/// keys, the qualifying data the verifier computed itself (never trusted from the
/// evidence), and the counter index it pinned. Checks the certify (owner key), then
/// the quote (AK), then that the evidence's unsigned `counter` field equals the
/// certified value.
pub fn verify_evidence(
    keys: &EvidenceKeys,
    evidence: &Evidence,
    expected_qualifying_data: &[u8; 32],
    expected_counter_index: u32,
) -> Result<VerifiedEvidence, EvidenceError> {
    let name = tally_counter_name(expected_counter_index);
    let counter = verify_nv_certify(
        &keys.owner_key,
        &evidence.nv_certify,
        expected_qualifying_data,
        Some(&name),
    )?;
    let quote = verify_quote(
        &keys.ak,
        &evidence.quote,
        expected_qualifying_data,
        &evidence.pcrs,
    )?;
    if counter.value != evidence.counter {
        return Err(EvidenceError::CounterMismatch {
            claimed: evidence.counter,
            certified: counter.value,
        });
    }
    Ok(VerifiedEvidence {
        counter: counter.value,
        counter_clock: counter.clock_info,
        quote_clock: quote.clock_info,
        pcr_digest: quote.pcr_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad() {
        assert_eq!(left_pad_32(&[1]).unwrap()[31], 1);
        assert_eq!(left_pad_32(&[0u8; 33]).unwrap(), [0u8; 32]);
        assert_eq!(
            left_pad_32(&[1u8; 33]),
            Err(EvidenceError::MalformedSignature)
        );
    }
}
