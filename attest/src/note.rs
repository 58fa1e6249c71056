//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519, and the
//! tlog-checkpoint body they carry (<https://c2sp.org/tlog-checkpoint>).
//!
//! A signed note is `text || "\n" || signature line+`, where the text is
//! non-empty UTF-8 ending in a newline and each signature line is
//! `"— " || key name || " " || base64(key id (4 bytes, big-endian) ||
//! signature) || "\n"` (U+2014 em dash). The text is separated from the
//! signatures by the *last* blank line. No ASCII control character other than
//! newline may appear anywhere.
//!
//! Keys follow golang.org/x/mod/sumdb/note, so notes and keys interoperate
//! with Go's tooling:
//!
//! * key id = first 4 bytes of `SHA-256(name || 0x0A || 0x01 || public key)`;
//! * verifier key: `<name>+<8 lowercase hex digits of key id>+<base64(0x01 ||
//!   32-byte public key)>`;
//! * signer key: `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || 32-byte
//!   seed)>`.
//!
//! Verification ([`open`]) is stricter than Go's `note.Open` in two ways
//! that only bad notes notice: a second signature line from a known key is
//! [`NoteError::DuplicateSignature`] (Go skips it unverified), and base64
//! must be canonical.

mod checkpoint;
#[cfg(test)]
mod tests;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub(crate) use checkpoint::{decode_hash, parse_body, parse_canonical_u64};
pub use checkpoint::{CheckpointError, TlogCheckpoint};

/// Signature type byte of Ed25519 in key ids and key encodings.
pub const ALG_ED25519: u8 = 0x01;
/// Largest signed note [`open`] reads and [`sign`] writes, in bytes.
pub const MAX_NOTE_LEN: usize = 1 << 20;
/// Most signature lines [`open`] accepts (as Go's `note.Open`; the spec asks
/// for at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// Starts every signature line: U+2014 em dash, space.
const SIG_PREFIX: &str = "\u{2014} ";
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";

/// Why a note or key was refused. Names the key wherever one is involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("note is {len} bytes, more than the {max} allowed")]
    NoteTooLarge { len: usize, max: usize },
    #[error("note is not valid UTF-8")]
    NotUtf8,
    #[error("note has an ASCII control character at byte {offset}")]
    ControlCharacter { offset: usize },
    /// The note's shape is wrong (the reason says how).
    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    #[error("note has more than {max} signature lines")]
    TooManySignatures { max: usize },
    #[error(
        "invalid key name {0:?}: it must be non-empty, without spaces, '+' or control characters"
    )]
    InvalidKeyName(String),
    /// A verifier or signer key string is malformed (the reason says how).
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    #[error("key algorithm {alg:#04x} is not supported (only Ed25519, 0x01)")]
    UnsupportedAlgorithm { alg: u8 },
    #[error("key {name}: declared key id {declared:08x}, but the key's id is {computed:08x}")]
    KeyIdMismatch {
        name: String,
        declared: u32,
        computed: u32,
    },
    /// No signature in the note is by a known key; names the first signer.
    #[error(
        "no known key signed the note (first signature is by unknown key {name}+{key_id:08x})"
    )]
    UnknownKey { name: String, key_id: u32 },
    /// More than one known verifier has this name and key id.
    #[error("more than one known key is {name}+{key_id:08x}")]
    AmbiguousKey { name: String, key_id: u32 },
    /// A signature by a known key does not verify: the whole note is refused.
    #[error("signature by {name}+{key_id:08x} does not verify")]
    BadSignature { name: String, key_id: u32 },
    #[error("note has more than one signature by {name}+{key_id:08x}")]
    DuplicateSignature { name: String, key_id: u32 },
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
}

/// The C2SP key id of an Ed25519 key: the first 4 bytes, big-endian, of
/// `SHA-256(name || 0x0A || 0x01 || public key)`.
pub fn key_id(name: &str, public_key: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key.as_bytes());
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A public key that verifies notes, with its name and key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl Verifier {
    /// The verifier for `key` under `name`. Fails if the name is not a valid
    /// key name, or the key is a weak (small-order) point.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Verifier, NoteError> {
        check_name(name)?;
        if key.is_weak() {
            return Err(NoteError::MalformedKey("weak (small-order) Ed25519 key"));
        }
        Ok(Verifier {
            name: name.to_owned(),
            key_id: key_id(name, &key),
            key,
        })
    }

    /// Parses a verifier key `<name>+<hex key id>+<base64(0x01 || key)>`.
    /// The key id must be 8 lowercase hex digits and match the key.
    pub fn parse(vkey: &str) -> Result<Verifier, NoteError> {
        let (name, declared, key) = split_key(vkey)?;
        let bytes = BASE64
            .decode(key)
            .map_err(|_| NoteError::MalformedKey("key is not base64"))?;
        let key = ed25519_key(&bytes)?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| NoteError::MalformedKey("not an Ed25519 public key"))?;
        let verifier = Verifier::new(name, key)?;
        verifier.check_declared(declared)?;
        Ok(verifier)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id (see [`key_id`]).
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The verifier key string that [`Verifier::parse`] reads.
    pub fn to_key_string(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, BASE64.encode(key))
    }

    fn check_declared(&self, declared: u32) -> Result<(), NoteError> {
        if declared != self.key_id {
            return Err(NoteError::KeyIdMismatch {
                name: self.name.clone(),
                declared,
                computed: self.key_id,
            });
        }
        Ok(())
    }
}

/// A private key that signs notes, with its name and key id. The key is
/// wiped from memory on drop and never printed (`Debug` shows the name and
/// id only).
#[derive(Clone)]
pub struct Signer {
    verifier: Verifier,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.verifier.name)
            .field("key_id", &format_args!("{:08x}", self.verifier.key_id))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer for the Ed25519 key with this 32-byte seed (RFC 8032
    /// private key) under `name`.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Signer, NoteError> {
        let key = SigningKey::from_bytes(seed);
        let verifier = Verifier::new(name, key.verifying_key())?;
        Ok(Signer { verifier, key })
    }

    /// Parses a signer key `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ||
    /// seed)>`. The key id must match the public key derived from the seed.
    /// Errors never contain key material.
    pub fn parse(skey: &str) -> Result<Signer, NoteError> {
        let rest = skey
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or(NoteError::MalformedKey(
                "signer key does not start with PRIVATE+KEY+",
            ))?;
        let (name, declared, key) = split_key(rest)?;
        let bytes = Zeroizing::new(
            BASE64
                .decode(key)
                .map_err(|_| NoteError::MalformedKey("key is not base64"))?,
        );
        let seed = Zeroizing::new(ed25519_key(&bytes)?);
        let signer = Signer::from_seed(name, &seed)?;
        signer.verifier.check_declared(declared)?;
        Ok(signer)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.verifier.name
    }

    /// The key id (see [`key_id`]).
    pub fn key_id(&self) -> u32 {
        self.verifier.key_id
    }

    /// The matching verifier (public key).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The signer key string that [`Signer::parse`] reads: secret, for
    /// backups only; wiped from memory when dropped.
    pub fn to_key_string(&self) -> Zeroizing<String> {
        let mut key = Zeroizing::new(vec![ALG_ED25519]);
        key.extend_from_slice(self.key.as_bytes());
        let encoded = Zeroizing::new(BASE64.encode(&*key));
        Zeroizing::new(format!(
            "{PRIVATE_KEY_PREFIX}{}+{:08x}+{}",
            self.verifier.name,
            self.verifier.key_id,
            encoded.as_str()
        ))
    }

    /// The signature line for `text`, with its final newline.
    fn signature_line(&self, text: &str) -> String {
        let signature = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.verifier.key_id.to_be_bytes());
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{SIG_PREFIX}{} {}\n",
            self.verifier.name,
            BASE64.encode(blob)
        )
    }
}

/// Signs `text` and returns the signed note: `text`, a blank line, one
/// signature line. `text` must be non-empty, end with a newline and contain
/// no other control character; the result is at most [`MAX_NOTE_LEN`]
/// bytes. Whatever this returns, [`open`] (and Go's `note.Open`) accept with
/// the signer's verifier.
pub fn sign(text: &str, signer: &Signer) -> Result<String, NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::MalformedNote("text does not end with a newline"));
    }
    check_no_control(text.as_bytes())?;
    // The text alone can already be too large: refuse before signing it.
    if text.len() + 1 > MAX_NOTE_LEN {
        return Err(NoteError::NoteTooLarge {
            len: text.len() + 1,
            max: MAX_NOTE_LEN,
        });
    }
    let line = signer.signature_line(text);
    let len = text.len() + 1 + line.len();
    if len > MAX_NOTE_LEN {
        return Err(NoteError::NoteTooLarge {
            len,
            max: MAX_NOTE_LEN,
        });
    }
    let mut note = String::with_capacity(len);
    note.push_str(text);
    note.push('\n');
    note.push_str(&line);
    Ok(note)
}

/// A key named by a signature line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef {
    pub name: String,
    pub key_id: u32,
}

/// A note whose signatures [`open`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNote<'a> {
    /// The signed text, final newline included (the bytes signed).
    pub text: &'a str,
    /// Known keys whose signature verified, in note order; never empty.
    pub verified_by: Vec<KeyRef>,
    /// Keys not among the known ones, in note order, each once: their
    /// signatures were not checked and prove nothing.
    pub unknown: Vec<KeyRef>,
}

/// Parses a signed note and verifies it against `known`. `Ok` means: the
/// note is well formed, every signature line by a known key (name and key id
/// both match) verifies over the text, no known key signed twice, and at
/// least one known key signed. Signatures by other keys are listed, not
/// checked. Any signature by a known key that fails refuses the whole note.
pub fn open<'a>(msg: &'a [u8], known: &[Verifier]) -> Result<VerifiedNote<'a>, NoteError> {
    if msg.len() > MAX_NOTE_LEN {
        return Err(NoteError::NoteTooLarge {
            len: msg.len(),
            max: MAX_NOTE_LEN,
        });
    }
    let msg = std::str::from_utf8(msg).map_err(|_| NoteError::NotUtf8)?;
    check_no_control(msg.as_bytes())?;
    let split = msg.rfind("\n\n").ok_or(NoteError::MalformedNote(
        "no blank line before the signatures",
    ))?;
    let (text, sigs) = (&msg[..split + 1], &msg[split + 2..]);
    if sigs.is_empty() {
        return Err(NoteError::MalformedNote("no signature lines"));
    }
    if !sigs.ends_with('\n') {
        return Err(NoteError::MalformedNote(
            "last signature line has no newline",
        ));
    }
    if sigs.split_terminator('\n').count() > MAX_SIGNATURES {
        return Err(NoteError::TooManySignatures {
            max: MAX_SIGNATURES,
        });
    }
    let mut note = VerifiedNote {
        text,
        verified_by: Vec::new(),
        unknown: Vec::new(),
    };
    for line in sigs.split_terminator('\n') {
        let (signer, signature) = parse_signature_line(line)?;
        let mut matches = known
            .iter()
            .filter(|v| v.name == signer.name && v.key_id == signer.key_id);
        let Some(verifier) = matches.next() else {
            if !note.unknown.contains(&signer) {
                note.unknown.push(signer);
            }
            continue;
        };
        if matches.next().is_some() {
            return Err(NoteError::AmbiguousKey {
                name: signer.name,
                key_id: signer.key_id,
            });
        }
        if note.verified_by.contains(&signer) {
            return Err(NoteError::DuplicateSignature {
                name: signer.name,
                key_id: signer.key_id,
            });
        }
        let verified = <[u8; 64]>::try_from(signature.as_slice())
            .ok()
            .map(|bytes| Signature::from_bytes(&bytes))
            .is_some_and(|sig| verifier.key.verify_strict(text.as_bytes(), &sig).is_ok());
        if !verified {
            return Err(NoteError::BadSignature {
                name: signer.name,
                key_id: signer.key_id,
            });
        }
        note.verified_by.push(signer);
    }
    if note.verified_by.is_empty() {
        // Every line named an unknown key (any other line returned above),
        // so the first unknown key is the first signer.
        return Err(match note.unknown.into_iter().next() {
            Some(KeyRef { name, key_id }) => NoteError::UnknownKey { name, key_id },
            None => NoteError::MalformedNote("no signature lines"),
        });
    }
    Ok(note)
}

/// Opens a signed checkpoint: [`open`], then [`TlogCheckpoint::parse`] of
/// the verified text.
pub fn open_checkpoint<'a>(
    msg: &'a [u8],
    known: &[Verifier],
) -> Result<(TlogCheckpoint, VerifiedNote<'a>), NoteError> {
    let note = open(msg, known)?;
    let checkpoint = TlogCheckpoint::parse(note.text)?;
    Ok((checkpoint, note))
}

/// Splits one signature line (without its newline) into the key it names
/// and the signature bytes after the key id.
fn parse_signature_line(line: &str) -> Result<(KeyRef, Vec<u8>), NoteError> {
    let rest = line
        .strip_prefix(SIG_PREFIX)
        .ok_or(NoteError::MalformedNote(
            "signature line does not start with an em dash and a space",
        ))?;
    let (name, encoded) = rest
        .split_once(' ')
        .ok_or(NoteError::MalformedNote("signature line has no signature"))?;
    if !is_valid_name(name) {
        return Err(NoteError::MalformedNote(
            "signature line has an invalid key name",
        ));
    }
    let blob = BASE64
        .decode(encoded)
        .map_err(|_| NoteError::MalformedNote("signature is not base64"))?;
    let Some((id, signature)) = blob.split_first_chunk::<4>() else {
        return Err(NoteError::MalformedNote(
            "signature is shorter than a key id",
        ));
    };
    if signature.is_empty() {
        return Err(NoteError::MalformedNote("signature is only a key id"));
    }
    let signer = KeyRef {
        name: name.to_owned(),
        key_id: u32::from_be_bytes(*id),
    };
    Ok((signer, signature.to_vec()))
}

/// Splits `<name>+<hex id>+<key>` (the name cannot contain '+'; base64 can).
fn split_key(s: &str) -> Result<(&str, u32, &str), NoteError> {
    let (name, rest) = s
        .split_once('+')
        .ok_or(NoteError::MalformedKey("no '+' after the key name"))?;
    let (id, key) = rest
        .split_once('+')
        .ok_or(NoteError::MalformedKey("no '+' after the key id"))?;
    check_name(name)?;
    if id.len() != 8 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(NoteError::MalformedKey(
            "key id is not 8 lowercase hex digits",
        ));
    }
    let id = u32::from_str_radix(id, 16)
        .map_err(|_| NoteError::MalformedKey("key id is not 8 lowercase hex digits"))?;
    Ok((name, id, key))
}

/// The 32 key bytes of `0x01 || key`.
fn ed25519_key(bytes: &[u8]) -> Result<[u8; 32], NoteError> {
    let (&alg, key) = bytes
        .split_first()
        .ok_or(NoteError::MalformedKey("key is empty"))?;
    if alg != ALG_ED25519 {
        return Err(NoteError::UnsupportedAlgorithm { alg });
    }
    <[u8; 32]>::try_from(key).map_err(|_| NoteError::MalformedKey("Ed25519 key is not 32 bytes"))
}

/// Key names are non-empty, with no Unicode space, '+' or ASCII control
/// character.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c == '+' || c.is_whitespace() || c < ' ')
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName(name.to_owned()))
    }
}

/// Refuses ASCII control characters other than newline.
fn check_no_control(bytes: &[u8]) -> Result<(), NoteError> {
    match bytes.iter().position(|&b| b < 0x20 && b != b'\n') {
        Some(offset) => Err(NoteError::ControlCharacter { offset }),
        None => Ok(()),
    }
}
