//! The tlog-checkpoint note body (<https://c2sp.org/tlog-checkpoint>):
//!
//! ```text
//! <origin>\n
//! <tree size, decimal, no leading zeros>\n
//! <base64 of the 32-byte RFC 6962 root hash>\n
//! <extension line>\n   (zero or more, each non-empty)
//! ```
//!
//! [`parse_body`] is the one parser of this shape; Tally's anchor checkpoint
//! ([`crate::anchor::Checkpoint`]) is this body with a `tally/<log id>` origin and at
//! most one extension line, the anchor line.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::record::Hash;

/// A parsed checkpoint body: what a log's signed note says about its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogCheckpoint {
    /// The log's identity; non-empty, one line.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 root hash of the tree of `size` leaves.
    pub root_hash: Hash,
    /// Opaque extension lines, each non-empty (not recommended by the spec).
    pub extensions: Vec<String>,
}

/// Why text is not a checkpoint body, or (the variants marked so) not a Tally
/// checkpoint. `line` numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("checkpoint text does not end with a newline")]
    NoFinalNewline,
    #[error("checkpoint has {found} lines, needs at least 3 (origin, size, root hash)")]
    TooFewLines { found: usize },
    #[error("checkpoint origin line is empty")]
    EmptyOrigin,
    #[error("checkpoint tree size is not a decimal u64 without leading zeros")]
    BadSize,
    #[error("checkpoint root hash is not base64 of 32 bytes")]
    BadRootHash,
    #[error("checkpoint line {line} is empty")]
    EmptyLine { line: usize },
    #[error("checkpoint line {line} has a control character")]
    ControlCharacter { line: usize },
    /// Tally's checkpoints only: the bytes are not UTF-8.
    #[error("checkpoint is not UTF-8")]
    NotUtf8,
    /// Tally's checkpoints only: the origin is not `tally/<log id hex>`.
    #[error("checkpoint origin is not tally/<32 hex digits>")]
    NotTallyOrigin,
    /// Tally's checkpoints only: the extension line is not the anchor line.
    #[error("checkpoint extension line is not `anchor <counter> <prev>`")]
    BadAnchorLine,
    /// Tally's checkpoints only: more than the one (anchor) extension line.
    #[error("checkpoint has more than one extension line")]
    ExtraLines,
    /// Tally's checkpoints only: the text is not what its parsed value writes
    /// (e.g. upper-case hex in the origin).
    #[error("checkpoint is not in canonical form")]
    NotCanonical,
}

/// A checkpoint body borrowed from its text: what [`parse_body`] checked. The one
/// parser of the tlog-checkpoint shape: [`TlogCheckpoint::parse`] copies it out, and
/// Tally's own [`crate::anchor::Checkpoint::parse`] reads its origin and extension
/// lines without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointBody<'a> {
    /// The origin line; non-empty.
    pub(crate) origin: &'a str,
    /// The tree size.
    pub(crate) size: u64,
    /// The RFC 6962 root hash of the tree of `size` leaves.
    pub(crate) root_hash: Hash,
    /// The extension lines, newline-separated, without the final newline; empty
    /// when there are none.
    extensions: &'a str,
}

impl<'a> CheckpointBody<'a> {
    /// The extension lines in order, each non-empty.
    pub(crate) fn extensions(&self) -> impl Iterator<Item = &'a str> {
        let extensions = self.extensions;
        (!extensions.is_empty())
            .then(|| extensions.split('\n'))
            .into_iter()
            .flatten()
    }
}

/// Parses a checkpoint body (final newline included). Strict: canonical size and
/// base64, no empty lines, no control characters. Errors come in this order: no
/// final newline, too few lines, the first empty line or control character, the
/// size, the root hash.
pub(crate) fn parse_body(text: &str) -> Result<CheckpointBody<'_>, CheckpointError> {
    let body = text
        .strip_suffix('\n')
        .ok_or(CheckpointError::NoFinalNewline)?;
    let found = body.split('\n').count();
    let mut lines = body.splitn(4, '\n');
    let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(CheckpointError::TooFewLines { found });
    };
    for (i, line) in body.split('\n').enumerate() {
        if line.is_empty() {
            return Err(if i == 0 {
                CheckpointError::EmptyOrigin
            } else {
                CheckpointError::EmptyLine { line: i + 1 }
            });
        }
        if line.chars().any(|c| c < ' ') {
            return Err(CheckpointError::ControlCharacter { line: i + 1 });
        }
    }
    Ok(CheckpointBody {
        origin,
        size: parse_canonical_u64(size).ok_or(CheckpointError::BadSize)?,
        root_hash: decode_hash(root).ok_or(CheckpointError::BadRootHash)?,
        extensions: lines.next().unwrap_or(""),
    })
}

impl TlogCheckpoint {
    /// Parses a checkpoint body (the verified text of a signed note, final
    /// newline included). Strict: canonical size and base64, no empty lines,
    /// no control characters. The crate's one parser of this shape
    /// (`parse_body`), copied out.
    pub fn parse(text: &str) -> Result<TlogCheckpoint, CheckpointError> {
        let body = parse_body(text)?;
        Ok(TlogCheckpoint {
            origin: body.origin.to_owned(),
            size: body.size,
            root_hash: body.root_hash,
            extensions: body.extensions().map(str::to_owned).collect(),
        })
    }

    /// The body text, final newline included: exactly what
    /// [`TlogCheckpoint::parse`] reads back into an equal value. Fails if the
    /// origin or an extension line is empty or has a newline or another
    /// control character.
    pub fn to_text(&self) -> Result<String, CheckpointError> {
        if self.origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let free_text = std::iter::once((1, &self.origin)).chain((4..).zip(&self.extensions));
        for (line, field) in free_text {
            if field.is_empty() {
                return Err(CheckpointError::EmptyLine { line });
            }
            if field.chars().any(|c| c < ' ') {
                return Err(CheckpointError::ControlCharacter { line });
            }
        }
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root_hash)
        );
        for extension in &self.extensions {
            text.push_str(extension);
            text.push('\n');
        }
        Ok(text)
    }
}

/// A decimal u64 in canonical form (digits only, no sign, no leading zeros):
/// the tree size, and the counter of Tally's anchor line.
pub(crate) fn parse_canonical_u64(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// Standard, padded base64 of exactly 32 bytes: the root hash, and the
/// previous anchor's hash in Tally's anchor line.
pub(crate) fn decode_hash(text: &str) -> Option<Hash> {
    BASE64
        .decode(text)
        .ok()
        .and_then(|bytes| Hash::try_from(bytes).ok())
}
