//! Plain-data evidence produced by the TPM worker and consumed by the verifier.
//!
//! Everything here is bytes and integers: no libtss2 types, so a verifier (or the log
//! store) can hold, serialise and check evidence without a TPM.

pub mod checkquote;
pub mod error;
pub mod parse;
pub mod verify;
pub(crate) mod wire;

pub use error::EvidenceError;

use std::time::Duration;

use crate::evidence::wire::put_tpm2b;

/// TPM_ALG_SHA256.
pub const TPM_ALG_SHA256: u16 = 0x000B;

/// One signed TPM attestation: the exact bytes the TPM signed and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAttest {
    /// Marshalled TPMS_ATTEST, byte-for-byte as returned in the TPM2B_ATTEST.
    pub attest: Vec<u8>,
    /// Marshalled TPMT_SIGNATURE.
    pub signature: Vec<u8>,
}

/// One TPMS_PCR_SELECTION: a hash bank and a PCR bitmap (bit i of byte j = PCR 8j+i).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBankSelection {
    /// TPM_ALG_ID of the bank (e.g. [`TPM_ALG_SHA256`]).
    pub hash_alg: u16,
    /// pcrSelect bitmap, `sizeofSelect` bytes long (3 for 24 PCRs).
    pub select: Vec<u8>,
}

impl PcrBankSelection {
    /// A selection of `pcrs` in `hash_alg`, with a bitmap of `max(3, needed)` bytes.
    pub fn new(hash_alg: u16, pcrs: &[u8]) -> Self {
        let needed = pcrs
            .iter()
            .map(|p| usize::from(*p) / 8 + 1)
            .max()
            .unwrap_or(0);
        let mut select = vec![0u8; needed.max(3)];
        for p in pcrs {
            select[usize::from(*p) / 8] |= 1 << (p % 8);
        }
        PcrBankSelection { hash_alg, select }
    }

    /// The selected PCR indices in ascending order (the order the TPM hashes them).
    pub fn indices(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (byte_idx, byte) in self.select.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    // byte_idx < 256 because sizeofSelect is a u8.
                    out.push(byte_idx as u32 * 8 + bit);
                }
            }
        }
        out
    }
}

/// PCR values that a quote covers: the selection (TPML_PCR_SELECTION) and the digests
/// in TPM order (banks in selection order, PCRs ascending within a bank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValues {
    /// The banks and PCRs selected.
    pub selection: Vec<PcrBankSelection>,
    /// One digest per selected PCR, in TPM order.
    pub digests: Vec<Vec<u8>>,
}

impl PcrValues {
    /// Marshals the selection as a TPM TPML_PCR_SELECTION (big-endian).
    pub fn selection_bytes(&self) -> Vec<u8> {
        marshal_pcr_selection(&self.selection)
    }
}

/// Marshals `selection` as TPML_PCR_SELECTION in TPM (big-endian) wire format.
pub fn marshal_pcr_selection(selection: &[PcrBankSelection]) -> Vec<u8> {
    let mut out = Vec::new();
    let count = u32::try_from(selection.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for bank in selection {
        out.extend_from_slice(&bank.hash_alg.to_be_bytes());
        let n = u8::try_from(bank.select.len()).unwrap_or(u8::MAX);
        out.push(n);
        out.extend_from_slice(&bank.select[..usize::from(n)]);
    }
    out
}

/// Latency of each TPM step of one anchor or fresh attestation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimings {
    /// TPM2_NV_Increment (zero for a fresh attestation, which does not increment).
    pub increment: Duration,
    /// TPM2_NV_Certify.
    pub nv_certify: Duration,
    /// TPM2_Quote.
    pub quote: Duration,
    /// TPM2_PCR_Read of the quoted PCRs.
    pub pcr_read: Duration,
    /// Whole operation as seen by the worker thread (excludes channel hops).
    pub total: Duration,
}

/// Evidence of one anchor (or fresh attestation): the counter value certified by the
/// TPM and a quote of the platform state, both bound to the same qualifying data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Counter value the NV_Certify covers (after the increment, for an anchor).
    pub counter: u64,
    /// TPM handle of the NV counter index (0x01xxxxxx).
    pub counter_index: u32,
    /// The caller's 32-byte qualifying data (checkpoint digest or verifier nonce).
    pub qualifying_data: [u8; 32],
    /// TPM2_NV_Certify over the counter (offset 0, size 8).
    pub nv_certify: SignedAttest,
    /// TPM2_Quote over [`Evidence::pcrs`].
    pub quote: SignedAttest,
    /// The quoted PCR values, read right after the quote and checked against it.
    pub pcrs: PcrValues,
    /// Per-step latency.
    pub timings: StepTimings,
}

/// TPMA_NV bits that matter for the counter index.
pub mod tpma_nv {
    /// TPMA_NV_OWNERWRITE.
    pub const OWNERWRITE: u32 = 1 << 1;
    /// TPMA_NV_AUTHWRITE.
    pub const AUTHWRITE: u32 = 1 << 2;
    /// TPM_NT_COUNTER in the TPM_NT field (bits 7:4).
    pub const NT_COUNTER: u32 = 0x1 << 4;
    /// Mask of the TPM_NT field.
    pub const NT_MASK: u32 = 0xF << 4;
    /// TPMA_NV_WRITELOCKED (status, set by the TPM).
    pub const WRITELOCKED: u32 = 1 << 11;
    /// TPMA_NV_OWNERREAD.
    pub const OWNERREAD: u32 = 1 << 17;
    /// TPMA_NV_AUTHREAD.
    pub const AUTHREAD: u32 = 1 << 18;
    /// TPMA_NV_ORDERLY.
    pub const ORDERLY: u32 = 1 << 26;
    /// TPMA_NV_READLOCKED (status, set by the TPM).
    pub const READLOCKED: u32 = 1 << 28;
    /// TPMA_NV_WRITTEN (status, set by the TPM on first write).
    pub const WRITTEN: u32 = 1 << 29;
    /// Status bits the TPM sets itself; excluded when comparing defined attributes.
    pub const STATUS_MASK: u32 = WRITELOCKED | READLOCKED | WRITTEN;
    /// Attributes Tally defines its counter with: counter type, owner read + write,
    /// ORDERLY.
    ///
    /// ORDERLY on purpose: a non-orderly counter writes NV on every increment, and TPM
    /// NV is rated for about 500k writes, so anchoring every few seconds would wear a
    /// real TPM out within weeks. An orderly counter lives in TPM RAM and reaches NV only
    /// every 2^k increments (256 in the reference implementation) and at an orderly
    /// TPM2_Shutdown. The price: after an unclean TPM reset (power loss, a reboot
    /// without TPM2_Shutdown) the TPM bumps it forward past any value it may have handed
    /// out, so the log shows a counter gap across that reset. The daemon and the verifier
    /// report such a gap as a gap (see docs/DESIGN.md), never as continuity.
    pub const TALLY_COUNTER: u32 = NT_COUNTER | OWNERWRITE | OWNERREAD | ORDERLY;
}

/// Computes the TPM Name of an NV index: nameAlg(SHA-256) || SHA-256(TPMS_NV_PUBLIC),
/// with an empty authPolicy. `attributes` must include the status bits (e.g. WRITTEN)
/// as the TPM currently reports them; an index's Name changes when it is first written.
pub fn nv_index_name(index: u32, attributes: u32, data_size: u16) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut public = Vec::with_capacity(14);
    public.extend_from_slice(&index.to_be_bytes());
    public.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    public.extend_from_slice(&attributes.to_be_bytes());
    put_tpm2b(&mut public, &[]);
    public.extend_from_slice(&data_size.to_be_bytes());
    let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(&public));
    name
}

/// Name of Tally's counter index once written (the state every certified value is in).
pub fn tally_counter_name(index: u32) -> Vec<u8> {
    nv_index_name(index, tpma_nv::TALLY_COUNTER | tpma_nv::WRITTEN, 8)
}
