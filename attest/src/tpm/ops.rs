//! Evidence: NV_Certify of the counter (owner key) + Quote (AK), both bound to one
//! 32-byte qualifying data. The same operation serves an anchor (the daemon increments
//! afterwards, closing the value) and a fresh attestation (the value stays open).

use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tss_esapi::handles::{KeyHandle, NvIndexHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, SignatureScheme,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use crate::evidence::parse::{parse_attest, Attested};
use crate::evidence::{
    Evidence, PcrBankSelection, PcrValues, SignedAttest, StepTimings, TPM_ALG_SHA256,
};
use crate::tpm::error::{classify, TpmError};

/// Default quoted PCRs: the SRTM measurements of firmware and boot loader.
pub const DEFAULT_PCR_SPEC: &str = "sha256:0,1,2,3,4,5,6,7";

/// How often a quote is retried when a PCR is extended between Quote and PCR_Read.
const QUOTE_ATTEMPTS: u32 = 3;

/// PCRs to quote. Only the SHA-256 bank is supported (the AK signs with SHA-256 and the
/// verifier recomputes pcrDigest with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSpec {
    /// PCR indices (0..=23), ascending, no duplicates.
    pcrs: Vec<u8>,
}

impl PcrSpec {
    /// Parses `sha256:0,1,2` (tpm2-tools syntax, SHA-256 bank only).
    pub fn parse(spec: &str) -> Result<Self, TpmError> {
        let bad = || TpmError::InvalidConfig {
            what: "pcrs",
            value: spec.to_owned(),
        };
        let list = spec.strip_prefix("sha256:").ok_or_else(bad)?;
        let mut pcrs = list
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p < 24)
                    .ok_or_else(bad)
            })
            .collect::<Result<Vec<u8>, TpmError>>()?;
        pcrs.sort_unstable();
        pcrs.dedup();
        Ok(PcrSpec { pcrs })
    }

    /// The PCR indices, ascending.
    pub fn pcrs(&self) -> &[u8] {
        &self.pcrs
    }

    /// tss-esapi selection for `pcrs`.
    fn selection_list(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
        let slots = pcrs
            .iter()
            .map(|p| PcrSlot::try_from(1u32 << p).map_err(|e| classify("PCR selection", e)))
            .collect::<Result<Vec<_>, _>>()?;
        PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(|e| classify("PCR selection", e))
    }
}

impl Default for PcrSpec {
    fn default() -> Self {
        PcrSpec {
            pcrs: (0..8).collect(),
        }
    }
}

/// What evidence needs loaded in the TPM connection.
#[derive(Debug, Clone, Copy)]
pub struct EvidenceKeys {
    /// The loaded AK (signs the quote).
    pub ak: KeyHandle,
    /// The loaded owner key (signs the counter's NV_Certify).
    pub owner_key: KeyHandle,
    /// ESYS handle of the counter index.
    pub counter: NvIndexHandle,
    /// TPM handle of the counter index (recorded in the evidence).
    pub counter_index: u32,
}

/// Evidence over `qualifying_data` at the counter's current value: TPM2_NV_Certify of
/// the counter signed by the owner key, and TPM2_Quote of `pcrs` signed by the AK, both
/// with `qualifying_data`. Never increments: an anchor closes its counter value with a
/// separate [`increment_counter`](crate::tpm::provision::increment_counter) once it is
/// committed, and a fresh attestation leaves the value open.
pub fn certify(
    ctx: &mut Context,
    keys: &EvidenceKeys,
    pcrs: &PcrSpec,
    qualifying_data: &[u8; 32],
) -> Result<Evidence, TpmError> {
    let start = Instant::now();
    let mut timings = StepTimings::default();
    let (nv_certify, counter) = certify_counter(ctx, keys, qualifying_data)?;
    timings.nv_certify = start.elapsed();
    let (quote, pcr_values, quote_time, read_time) =
        quote_pcrs(ctx, keys.ak, pcrs, qualifying_data)?;
    timings.quote = quote_time;
    timings.pcr_read = read_time;
    timings.total = start.elapsed();
    Ok(Evidence {
        counter,
        counter_index: keys.counter_index,
        qualifying_data: *qualifying_data,
        nv_certify,
        quote,
        pcrs: pcr_values,
        timings,
    })
}

/// TPM2_NV_Certify of the whole 8-byte counter, signed by the owner key (scheme from
/// the key), owner authorization for the read. Returns the signed attest and the
/// certified value.
fn certify_counter(
    ctx: &mut Context,
    keys: &EvidenceKeys,
    qualifying_data: &[u8; 32],
) -> Result<(SignedAttest, u64), TpmError> {
    let op = "TPM2_NV_Certify";
    let data = Data::try_from(qualifying_data.to_vec()).map_err(|e| classify(op, e))?;
    let (attest, signature) = ctx
        .execute_with_sessions(
            (
                Some(AuthSession::Password), // owner key (empty auth)
                Some(AuthSession::Password), // owner, to read the index
                None,
            ),
            |c| {
                c.nv_certify(
                    keys.owner_key,
                    NvAuth::Owner,
                    keys.counter,
                    data,
                    SignatureScheme::Null,
                    8,
                    0,
                )
            },
        )
        .map_err(|e| classify(op, e))?;
    let signed = SignedAttest {
        attest: attest.value().to_vec(),
        signature: signature.marshall().map_err(|e| classify(op, e))?,
    };
    let parsed =
        parse_attest(&signed.attest).map_err(|source| TpmError::MalformedOutput { op, source })?;
    let Attested::Nv(info) = parsed.attested else {
        return Err(TpmError::UnexpectedOutput {
            op,
            what: "NV_Certify returned a non-NV attestation",
        });
    };
    let bytes: [u8; 8] =
        info.nv_contents
            .as_slice()
            .try_into()
            .map_err(|_| TpmError::UnexpectedOutput {
                op,
                what: "certified counter is not 8 bytes",
            })?;
    Ok((signed, u64::from_be_bytes(bytes)))
}

/// TPM2_Quote of `spec` and TPM2_PCR_Read of the same PCRs, retried while the read
/// values do not hash to the quoted pcrDigest (a PCR was extended in between).
fn quote_pcrs(
    ctx: &mut Context,
    ak: KeyHandle,
    spec: &PcrSpec,
    qualifying_data: &[u8; 32],
) -> Result<(SignedAttest, PcrValues, Duration, Duration), TpmError> {
    let op = "TPM2_Quote";
    for _ in 0..QUOTE_ATTEMPTS {
        let selection = PcrSpec::selection_list(spec.pcrs())?;
        let data = Data::try_from(qualifying_data.to_vec()).map_err(|e| classify(op, e))?;
        let t = Instant::now();
        let (attest, signature) = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.quote(ak, data, SignatureScheme::Null, selection)
            })
            .map_err(|e| classify(op, e))?;
        let quote_time = t.elapsed();
        let signed = SignedAttest {
            // tss-esapi 7.7 returns the quote parsed; re-marshalling TPMS_ATTEST is
            // canonical (the pure verifier checks the signature over these bytes).
            attest: attest.marshall().map_err(|e| classify(op, e))?,
            signature: signature.marshall().map_err(|e| classify(op, e))?,
        };
        let parsed = parse_attest(&signed.attest)
            .map_err(|source| TpmError::MalformedOutput { op, source })?;
        let Attested::Quote(info) = parsed.attested else {
            return Err(TpmError::UnexpectedOutput {
                op,
                what: "Quote returned a non-quote attestation",
            });
        };
        let t = Instant::now();
        let digests = read_pcrs(ctx, &info.pcr_select)?;
        let read_time = t.elapsed();
        let mut h = Sha256::new();
        for d in &digests {
            h.update(d);
        }
        if h.finalize()[..] == info.pcr_digest[..] {
            let values = PcrValues {
                selection: info.pcr_select,
                digests,
            };
            return Ok((signed, values, quote_time, read_time));
        }
    }
    Err(TpmError::PcrsChanged {
        attempts: QUOTE_ATTEMPTS,
    })
}

/// Reads the PCRs of `selection` (SHA-256 bank only) in TPM order, at most 8 per
/// TPM2_PCR_Read (the TPM's limit per response).
fn read_pcrs(ctx: &mut Context, selection: &[PcrBankSelection]) -> Result<Vec<Vec<u8>>, TpmError> {
    let op = "TPM2_PCR_Read";
    let mut out = Vec::new();
    for bank in selection {
        if bank.hash_alg != TPM_ALG_SHA256 {
            return Err(TpmError::UnexpectedOutput {
                op,
                what: "quote selected a non-SHA-256 bank",
            });
        }
        let indices: Vec<u8> = bank
            .indices()
            .into_iter()
            .filter_map(|i| u8::try_from(i).ok())
            .collect();
        for chunk in indices.chunks(8) {
            let list = PcrSpec::selection_list(chunk)?;
            let (_, _, digests) = ctx
                .execute_without_session(|c| c.pcr_read(list))
                .map_err(|e| classify(op, e))?;
            if digests.value().len() != chunk.len() {
                return Err(TpmError::PcrReadIncomplete {
                    asked: chunk.len(),
                    got: digests.value().len(),
                });
            }
            out.extend(digests.value().iter().map(|d| d.value().to_vec()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_spec() {
        assert_eq!(
            PcrSpec::parse(DEFAULT_PCR_SPEC).unwrap(),
            PcrSpec::default()
        );
        assert_eq!(PcrSpec::parse("sha256:7,0,7").unwrap().pcrs(), &[0, 7]);
        assert!(PcrSpec::parse("sha1:0").is_err());
        assert!(PcrSpec::parse("sha256:24").is_err());
        assert!(PcrSpec::parse("sha256:").is_err());
    }
}
