//! Verifying an export bundle end to end: its format, then its chain against
//! the head it declares.

use std::io::BufRead;

use crate::bundle::{BundleError, BundleHeader, BundleReader};
use crate::chain::{verify_chain, ChainError, ChainSummary, Damage};

/// A bundle that verified: its header and what the replay established.
#[derive(Debug, Clone)]
pub struct BundleVerdict {
    pub header: BundleHeader,
    pub chain: ChainSummary,
}

/// Why a bundle failed verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The file is not a well-formed bundle.
    #[error("bad bundle: {0}")]
    Format(#[from] BundleError),
    /// The bundle is well-formed but the log in it is damaged.
    #[error("chain damaged: {0}")]
    Damaged(Damage),
}

/// Reads and verifies a bundle. `progress` gets `(records replayed, declared size)`.
pub fn verify_bundle<R: BufRead>(
    input: R,
    mut progress: impl FnMut(u64, u64),
) -> Result<BundleVerdict, VerifyError> {
    let mut reader = BundleReader::new(input)?;
    let header = reader.header().clone();
    let head = header.head()?;
    let size = header.size;
    let chain = verify_chain(&mut reader, size, &head, |done| progress(done, size)).map_err(
        |err| match err {
            ChainError::Damaged(damage) => VerifyError::Damaged(damage),
            ChainError::Source(err) => VerifyError::Format(err),
        },
    )?;
    Ok(BundleVerdict { header, chain })
}
