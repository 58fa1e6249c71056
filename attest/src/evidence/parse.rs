//! Hand-written parsers for TPMS_ATTEST and TPMT_SIGNATURE (TPM 2.0 Part 2,
//! sections 10.12 and 11.3), pure Rust.
//!
//! Parsing only checks structure (lengths, magic, known tags). Whether the content is
//! what a verifier expects (type, qualifying data, signature) is [`crate::evidence::verify`]'s job.

use crate::evidence::error::EvidenceError;
use crate::evidence::wire::Reader;
use crate::evidence::{PcrBankSelection, TPM_ALG_SHA256};

/// TPM_GENERATED_VALUE: every TPMS_ATTEST the TPM signs starts with it.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_NV.
pub const TPM_ST_ATTEST_NV: u16 = 0x8014;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// TPM_ALG_ECDSA.
pub const TPM_ALG_ECDSA: u16 = 0x0018;

/// TPMS_CLOCK_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its last TPM2_Clear (never goes back).
    pub clock: u64,
    /// TPM resets (reboots) since TPM2_Clear. Obfuscated unless the signer is in the
    /// endorsement or platform hierarchy (Tally's AK is an endorsement primary).
    pub reset_count: u32,
    /// TPM2_Shutdown(STATE)/Startup(STATE) cycles since the last reset (also obfuscated
    /// for owner-hierarchy signers).
    pub restart_count: u32,
    /// Whether `clock` is known not to have gone back (no unorderly shutdown since update).
    pub safe: bool,
}

/// TPMS_NV_CERTIFY_INFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvCertifyInfo {
    /// Name of the certified NV index.
    pub index_name: Vec<u8>,
    /// Offset of the certified bytes within the index.
    pub offset: u16,
    /// The certified bytes.
    pub nv_contents: Vec<u8>,
}

/// TPMS_QUOTE_INFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// PCRs the quote covers (TPML_PCR_SELECTION).
    pub pcr_select: Vec<PcrBankSelection>,
    /// Digest (with the signing key's hash) of the concatenated selected PCR values.
    pub pcr_digest: Vec<u8>,
}

/// The `attested` union, for the two types Tally uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// TPM_ST_ATTEST_NV.
    Nv(NvCertifyInfo),
    /// TPM_ST_ATTEST_QUOTE.
    Quote(QuoteInfo),
}

/// A parsed TPMS_ATTEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// The TPMI_ST_ATTEST tag.
    pub attest_type: u16,
    /// Qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The qualifying data the caller passed (TPM2B_DATA).
    pub extra_data: Vec<u8>,
    /// TPM clock state at signing time.
    pub clock_info: ClockInfo,
    /// Vendor firmware version (obfuscated for owner-hierarchy signers).
    pub firmware_version: u64,
    /// Type-specific content.
    pub attested: Attested,
}

/// Parses a TPMS_ATTEST from exactly `bytes` (no trailing bytes allowed).
///
/// Errors: `BadMagic` if the first four bytes are not TPM_GENERATED_VALUE,
/// `UnsupportedAttestType` for types other than NV / QUOTE, `Truncated { what }` if a
/// field runs past the end, `TrailingBytes` if bytes are left over.
pub fn parse_attest(bytes: &[u8]) -> Result<Attest, EvidenceError> {
    let mut r = Reader::new(bytes);
    let magic = r.u32("TPMS_ATTEST.magic")?;
    if magic != TPM_GENERATED_VALUE {
        return Err(EvidenceError::BadMagic { found: magic });
    }
    let attest_type = r.u16("TPMS_ATTEST.type")?;
    if attest_type != TPM_ST_ATTEST_NV && attest_type != TPM_ST_ATTEST_QUOTE {
        return Err(EvidenceError::UnsupportedAttestType { found: attest_type });
    }
    let qualified_signer = r.tpm2b("TPMS_ATTEST.qualifiedSigner")?.to_vec();
    let extra_data = r.tpm2b("TPMS_ATTEST.extraData")?.to_vec();
    let clock_info = ClockInfo {
        clock: r.u64("TPMS_CLOCK_INFO.clock")?,
        reset_count: r.u32("TPMS_CLOCK_INFO.resetCount")?,
        restart_count: r.u32("TPMS_CLOCK_INFO.restartCount")?,
        safe: r.u8("TPMS_CLOCK_INFO.safe")? != 0,
    };
    let firmware_version = r.u64("TPMS_ATTEST.firmwareVersion")?;
    let attested = if attest_type == TPM_ST_ATTEST_NV {
        Attested::Nv(NvCertifyInfo {
            index_name: r.tpm2b("TPMS_NV_CERTIFY_INFO.indexName")?.to_vec(),
            offset: r.u16("TPMS_NV_CERTIFY_INFO.offset")?,
            nv_contents: r.tpm2b("TPMS_NV_CERTIFY_INFO.nvContents")?.to_vec(),
        })
    } else {
        let pcr_select = parse_pcr_selection(&mut r)?;
        let pcr_digest = r.tpm2b("TPMS_QUOTE_INFO.pcrDigest")?.to_vec();
        Attested::Quote(QuoteInfo {
            pcr_select,
            pcr_digest,
        })
    };
    r.finish()?;
    Ok(Attest {
        attest_type,
        qualified_signer,
        extra_data,
        clock_info,
        firmware_version,
        attested,
    })
}

/// Parses exactly one marshalled TPML_PCR_SELECTION (as [`crate::evidence::marshal_pcr_selection`] writes it).
pub fn parse_pcr_selection_bytes(bytes: &[u8]) -> Result<Vec<PcrBankSelection>, EvidenceError> {
    let mut r = Reader::new(bytes);
    let selection = parse_pcr_selection(&mut r)?;
    r.finish()?;
    Ok(selection)
}

/// Parses a TPML_PCR_SELECTION (big-endian TPM wire format).
fn parse_pcr_selection(r: &mut Reader<'_>) -> Result<Vec<PcrBankSelection>, EvidenceError> {
    let count = r.u32("TPML_PCR_SELECTION.count")?;
    // TPM2_NUM_PCR_BANKS is 16; anything larger is malformed, not merely long.
    if count > 16 {
        return Err(EvidenceError::TooManyPcrBanks { count });
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let hash_alg = r.u16("TPMS_PCR_SELECTION.hash")?;
        let size = r.u8("TPMS_PCR_SELECTION.sizeofSelect")?;
        let select = r
            .take(usize::from(size), "TPMS_PCR_SELECTION.pcrSelect")?
            .to_vec();
        out.push(PcrBankSelection { hash_alg, select });
    }
    Ok(out)
}

/// An ECDSA signature from a TPMT_SIGNATURE, as big-endian scalars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcdsaSignature {
    /// Hash the TPM signed with (always SHA-256 once parsed).
    pub hash_alg: u16,
    /// r, as the TPM returned it (normally 32 bytes for P-256).
    pub r: Vec<u8>,
    /// s, as the TPM returned it.
    pub s: Vec<u8>,
}

/// Parses a marshalled TPMT_SIGNATURE that must be ECDSA with SHA-256.
///
/// Errors: `UnsupportedSignatureScheme` for any sigAlg but ECDSA,
/// `UnsupportedSignatureHash` for any hash but SHA-256, `Truncated`/`TrailingBytes`.
pub fn parse_signature(bytes: &[u8]) -> Result<EcdsaSignature, EvidenceError> {
    let mut r = Reader::new(bytes);
    let sig_alg = r.u16("TPMT_SIGNATURE.sigAlg")?;
    if sig_alg != TPM_ALG_ECDSA {
        return Err(EvidenceError::UnsupportedSignatureScheme { sig_alg });
    }
    let hash_alg = r.u16("TPMS_SIGNATURE_ECDSA.hash")?;
    if hash_alg != TPM_ALG_SHA256 {
        return Err(EvidenceError::UnsupportedSignatureHash { hash_alg });
    }
    let sig_r = r.tpm2b("TPMS_SIGNATURE_ECDSA.signatureR")?.to_vec();
    let sig_s = r.tpm2b("TPMS_SIGNATURE_ECDSA.signatureS")?.to_vec();
    r.finish()?;
    Ok(EcdsaSignature {
        hash_alg,
        r: sig_r,
        s: sig_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TPMS_ATTEST (quote) captured from swtpm via `tpm2_quote`.
    const QUOTE: &str = "ff54434780180022000b34a5fbee73428db776078e88b8ece8333019f2ef682a336e70454738b13afecc0008001122334455667700000000000010f6000000020000000001201910230016363600000001000b03ff000000205341e6b2646979a70e57653007a1f310169421ec9bdd9f1a5648f75ade005af1";

    fn quote_bytes() -> Vec<u8> {
        hex::decode(QUOTE).unwrap()
    }

    #[test]
    fn parses_captured_quote() {
        let a = parse_attest(&quote_bytes()).unwrap();
        assert_eq!(a.attest_type, TPM_ST_ATTEST_QUOTE);
        assert_eq!(a.extra_data, hex::decode("0011223344556677").unwrap());
        assert_eq!(a.clock_info.clock, 0x10f6);
        assert!(a.clock_info.safe);
        let Attested::Quote(q) = a.attested else {
            panic!("not a quote")
        };
        assert_eq!(q.pcr_select.len(), 1);
        assert_eq!(q.pcr_select[0].indices(), (0..8).collect::<Vec<_>>());
        assert_eq!(q.pcr_digest.len(), 32);
    }

    #[test]
    fn every_truncation_is_reported() {
        let b = quote_bytes();
        for n in 0..b.len() {
            assert!(
                matches!(parse_attest(&b[..n]), Err(EvidenceError::Truncated { .. })),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn trailing_and_magic() {
        let mut b = quote_bytes();
        b.push(0);
        assert_eq!(
            parse_attest(&b),
            Err(EvidenceError::TrailingBytes { count: 1 })
        );
        let mut b = quote_bytes();
        b[0] = 0;
        assert!(matches!(
            parse_attest(&b),
            Err(EvidenceError::BadMagic { .. })
        ));
    }

    #[test]
    fn too_many_pcr_banks_is_named() {
        assert_eq!(
            parse_pcr_selection_bytes(&17u32.to_be_bytes()),
            Err(EvidenceError::TooManyPcrBanks { count: 17 })
        );
    }

    #[test]
    fn signature_schemes() {
        let rsa = [0x00, 0x14, 0x00, 0x0b, 0x00, 0x00];
        assert_eq!(
            parse_signature(&rsa),
            Err(EvidenceError::UnsupportedSignatureScheme { sig_alg: 0x14 })
        );
        let sha1 = [0x00, 0x18, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(
            parse_signature(&sha1),
            Err(EvidenceError::UnsupportedSignatureHash { hash_alg: 4 })
        );
    }
}
