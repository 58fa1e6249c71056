//! Why TPM evidence does not parse or verify: one error type for the parser, the
//! TPM wire reader and the verifier, so none of them imports another for it.

/// Why a piece of evidence does not parse or verify. Each variant names one exact
/// violation: the structural ones come from [`crate::evidence::parse`] (and the TPM
/// wire reader it uses), the others from [`crate::evidence::verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A field ran past the end of its buffer.
    #[error("truncated structure while reading {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A TPML_PCR_SELECTION claims more banks than a TPM has (TPM2_NUM_PCR_BANKS, 16).
    #[error("TPML_PCR_SELECTION.count is {count}, more than the 16 PCR banks a TPM has")]
    TooManyPcrBanks {
        /// The count found.
        count: u32,
    },
    /// Bytes were left after a complete structure.
    #[error("{count} trailing bytes after the structure")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// The attest does not start with TPM_GENERATED_VALUE: the TPM did not produce it.
    #[error("bad magic {found:#010x}, expected TPM_GENERATED_VALUE 0xff544347")]
    BadMagic {
        /// The first four bytes, big-endian.
        found: u32,
    },
    /// The attestation type is neither NV certify nor quote.
    #[error("unsupported attestation type {found:#06x}")]
    UnsupportedAttestType {
        /// The TPMI_ST_ATTEST found.
        found: u16,
    },
    /// The attestation is of a different type than the caller expects.
    #[error("wrong attestation type: expected {expected:#06x}, found {found:#06x}")]
    WrongType {
        /// The type the caller asked to verify.
        expected: u16,
        /// The type in the signed bytes.
        found: u16,
    },
    /// The signature is not ECDSA.
    #[error("unsupported signature scheme {sig_alg:#06x} (only ECDSA 0x0018)")]
    UnsupportedSignatureScheme {
        /// TPMI_ALG_SIG_SCHEME found.
        sig_alg: u16,
    },
    /// The ECDSA signature uses a hash other than SHA-256.
    #[error("unsupported signature hash {hash_alg:#06x} (only SHA-256 0x000b)")]
    UnsupportedSignatureHash {
        /// TPMI_ALG_HASH found.
        hash_alg: u16,
    },
    /// r or s is not a valid P-256 scalar.
    #[error("malformed ECDSA signature scalars")]
    MalformedSignature,
    /// A PEM SubjectPublicKeyInfo (AK or owner key) could not be decoded or encoded
    /// as a P-256 key.
    #[error("invalid AK public key: {source}")]
    InvalidAkPem {
        /// The SubjectPublicKeyInfo decoder's or encoder's error.
        #[source]
        source: p256::pkcs8::spki::Error,
    },
    /// A SEC1 point (AK or owner key) is not a point on P-256.
    #[error("invalid AK public key: not a SEC1-encoded P-256 point")]
    InvalidAkPoint,
    /// The signature does not verify under the AK: forged, altered, or another TPM's AK.
    #[error("signature does not verify under the attestation key")]
    SignatureInvalid,
    /// The signed qualifying data is not the expected checkpoint digest / nonce.
    #[error("qualifying data mismatch")]
    QualifyingDataMismatch,
    /// The certified NV index is not the expected counter index.
    #[error("certified NV index name does not match the expected counter index")]
    NvIndexNameMismatch,
    /// The NV certify does not start at offset 0 of the counter.
    #[error("NV certify at offset {offset}, expected 0")]
    NvOffsetNotZero {
        /// Offset found.
        offset: u16,
    },
    /// The certified NV contents are not an 8-byte counter.
    #[error("NV certify covers {found} bytes, expected 8")]
    NvContentsSize {
        /// Number of bytes certified.
        found: usize,
    },
    /// The evidence claims a counter value other than the certified one.
    #[error("evidence claims counter {claimed} but the TPM certified {certified}")]
    CounterMismatch {
        /// Value in the unsigned evidence field.
        claimed: u64,
        /// Value in the signed NV contents.
        certified: u64,
    },
    /// The supplied PCR selection differs from the one the TPM quoted.
    #[error("supplied PCR selection differs from the quoted selection")]
    PcrSelectionMismatch,
    /// The quote selects a bank this verifier cannot hash.
    #[error("unsupported PCR bank {hash_alg:#06x}")]
    UnsupportedPcrBank {
        /// TPM_ALG_ID of the bank.
        hash_alg: u16,
    },
    /// The number of supplied PCR values differs from the number selected.
    #[error("{selected} PCRs selected but {supplied} values supplied")]
    PcrCountMismatch {
        /// PCRs in the selection.
        selected: usize,
        /// Values supplied.
        supplied: usize,
    },
    /// SHA-256 of the supplied PCR values is not the quoted pcrDigest.
    #[error("PCR values do not match the quoted pcrDigest")]
    PcrDigestMismatch,
}
