//! Export of a quote in the file formats `tpm2_checkquote` (tpm2-tools 5.4) reads:
//!
//! ```text
//! tpm2_checkquote -u ak.pem -m quote.msg -s quote.sig -f quote.pcrs -q QUALIFYING_HEX
//! ```
//!
//! * `-u`: the AK public key; tpm2-tools 5.4 accepts PEM SubjectPublicKeyInfo (checked
//!   against swtpm) as well as a TPM2B_PUBLIC.
//! * `-m`: the raw TPMS_ATTEST bytes (what the TPM signed).
//! * `-s`: the marshalled TPMT_SIGNATURE (tpm2_quote's default "tss" format).
//! * `-f`: the PCR file written by `tpm2_quote -o` in its default `serialized` format,
//!   which is NOT TPM wire format but a dump of the C structs in host (little-endian)
//!   byte order, with C padding:
//!   `TPML_PCR_SELECTION` (u32 count + 16 x {u16 hash, u8 sizeofSelect, u8\[4\] select,
//!   u8 pad} = 132 bytes), then a u32 number of `TPML_DIGEST`s, then that many
//!   `TPML_DIGEST` (u32 count + 8 x {u16 size, u8\[64\] buffer} = 532 bytes), each holding
//!   up to 8 digests (the chunks TPM2_PCR_Read returns). Checked byte-for-byte against
//!   the output of `tpm2_quote -o` on swtpm (668 bytes for 8 PCRs, 1200 for 10).

use std::path::{Path, PathBuf};

use crate::evidence::{PcrValues, SignedAttest};

/// sizeof(TPMS_PCR_SELECTION) in tpm2-tss (7 bytes + 1 padding byte).
const PCR_SELECTION_SIZE: usize = 8;
/// TPM2_NUM_PCR_BANKS: array length of TPML_PCR_SELECTION.pcrSelections.
const NUM_PCR_BANKS: usize = 16;
/// TPM2_PCR_SELECT_MAX: bytes of pcrSelect in tpm2-tss.
const PCR_SELECT_MAX: usize = 4;
/// sizeof(TPMU_HA): digest buffer length in TPM2B_DIGEST.
const DIGEST_BUFFER: usize = 64;
/// Digests per TPML_DIGEST.
const DIGESTS_PER_LIST: usize = 8;

/// Why the quote could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckquoteError {
    /// More PCR banks than TPML_PCR_SELECTION can hold.
    #[error("{banks} PCR banks selected, tpm2-tools holds at most 16")]
    TooManyBanks {
        /// Banks selected.
        banks: usize,
    },
    /// A bank's bitmap is longer than tpm2-tss's 4 bytes.
    #[error("PCR select bitmap of {len} bytes, tpm2-tools holds at most 4")]
    SelectTooLong {
        /// Bitmap length.
        len: usize,
    },
    /// A PCR digest is longer than TPMU_HA.
    #[error("PCR digest of {len} bytes, tpm2-tools holds at most 64")]
    DigestTooLong {
        /// Digest length.
        len: usize,
    },
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Encodes `pcrs` as the `-f` PCR file of tpm2_checkquote (see module docs).
pub fn pcr_file_bytes(pcrs: &PcrValues) -> Result<Vec<u8>, CheckquoteError> {
    if pcrs.selection.len() > NUM_PCR_BANKS {
        return Err(CheckquoteError::TooManyBanks {
            banks: pcrs.selection.len(),
        });
    }
    let mut out = Vec::with_capacity(4 + NUM_PCR_BANKS * PCR_SELECTION_SIZE + 4 + 532);
    out.extend_from_slice(&(pcrs.selection.len() as u32).to_le_bytes());
    for i in 0..NUM_PCR_BANKS {
        let mut entry = [0u8; PCR_SELECTION_SIZE];
        if let Some(bank) = pcrs.selection.get(i) {
            if bank.select.len() > PCR_SELECT_MAX {
                return Err(CheckquoteError::SelectTooLong {
                    len: bank.select.len(),
                });
            }
            entry[0..2].copy_from_slice(&bank.hash_alg.to_le_bytes());
            entry[2] = bank.select.len() as u8;
            entry[3..3 + bank.select.len()].copy_from_slice(&bank.select);
        }
        out.extend_from_slice(&entry);
    }
    let chunks: Vec<&[Vec<u8>]> = pcrs.digests.chunks(DIGESTS_PER_LIST).collect();
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for chunk in chunks {
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        for k in 0..DIGESTS_PER_LIST {
            let mut entry = [0u8; 2 + DIGEST_BUFFER];
            if let Some(d) = chunk.get(k) {
                if d.len() > DIGEST_BUFFER {
                    return Err(CheckquoteError::DigestTooLong { len: d.len() });
                }
                entry[0..2].copy_from_slice(&(d.len() as u16).to_le_bytes());
                entry[2..2 + d.len()].copy_from_slice(d);
            }
            out.extend_from_slice(&entry);
        }
    }
    Ok(out)
}

/// Paths of the files written by [`write_checkquote_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckquoteFiles {
    /// `-u`: AK public key, PEM.
    pub ak_pem: PathBuf,
    /// `-m`: TPMS_ATTEST.
    pub msg: PathBuf,
    /// `-s`: TPMT_SIGNATURE.
    pub sig: PathBuf,
    /// `-f`: PCR file.
    pub pcrs: PathBuf,
}

/// Writes `ak.pem`, `quote.msg`, `quote.sig` and `quote.pcrs` into `dir` (which must
/// exist), overwriting them. Pass the qualifying data as hex to `-q`.
pub fn write_checkquote_files(
    dir: &Path,
    ak_pem: &str,
    quote: &SignedAttest,
    pcrs: &PcrValues,
) -> Result<CheckquoteFiles, CheckquoteError> {
    let files = CheckquoteFiles {
        ak_pem: dir.join("ak.pem"),
        msg: dir.join("quote.msg"),
        sig: dir.join("quote.sig"),
        pcrs: dir.join("quote.pcrs"),
    };
    let pcr_bytes = pcr_file_bytes(pcrs)?;
    for (path, bytes) in [
        (&files.ak_pem, ak_pem.as_bytes()),
        (&files.msg, quote.attest.as_slice()),
        (&files.sig, quote.signature.as_slice()),
        (&files.pcrs, pcr_bytes.as_slice()),
    ] {
        std::fs::write(path, bytes).map_err(|source| CheckquoteError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{PcrBankSelection, TPM_ALG_SHA256};

    #[test]
    fn layout_matches_tpm2_quote_output() {
        // tpm2_quote -l sha256:0..7 on a fresh swtpm: 668 bytes, header 01000000 0b00 03 ff0000 00.
        let pcrs = PcrValues {
            selection: vec![PcrBankSelection::new(
                TPM_ALG_SHA256,
                &[0, 1, 2, 3, 4, 5, 6, 7],
            )],
            digests: vec![vec![0u8; 32]; 8],
        };
        let b = pcr_file_bytes(&pcrs).unwrap();
        assert_eq!(b.len(), 668);
        assert_eq!(&b[..8], &[1, 0, 0, 0, 0x0b, 0, 3, 0xff]);
        assert_eq!(&b[0x84..0x8e], &[1, 0, 0, 0, 8, 0, 0, 0, 0x20, 0]);
        let ten = PcrValues {
            selection: vec![PcrBankSelection::new(
                TPM_ALG_SHA256,
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            )],
            digests: vec![vec![0u8; 32]; 10],
        };
        assert_eq!(pcr_file_bytes(&ten).unwrap().len(), 1200);
    }
}
