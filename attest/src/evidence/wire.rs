//! Big-endian TPM wire-format reading (TPM 2.0 Part 1, "Marshalling").
//!
//! A [`Reader`] walks a byte slice and fails with [`EvidenceError::Truncated`] naming the
//! field it was reading, so a malformed structure is reported precisely.

use crate::evidence::error::EvidenceError;

/// Cursor over TPM-marshalled (big-endian) bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the first byte of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Takes exactly `n` bytes, or fails with `Truncated { what }` without consuming.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EvidenceError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(EvidenceError::Truncated { what })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads one byte.
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, EvidenceError> {
        Ok(self.take(1, what)?[0])
    }

    /// Reads a big-endian u16.
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, EvidenceError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a big-endian u32.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, EvidenceError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a big-endian u64.
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, EvidenceError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Reads a TPM2B: a u16 size followed by that many bytes.
    pub(crate) fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], EvidenceError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    /// Fails with `TrailingBytes` unless every byte has been consumed.
    pub(crate) fn finish(&self) -> Result<(), EvidenceError> {
        let left = self.bytes.len() - self.pos;
        if left == 0 {
            Ok(())
        } else {
            Err(EvidenceError::TrailingBytes { count: left })
        }
    }
}

/// Appends a TPM2B (u16 big-endian length + bytes) to `out`.
///
/// Contract: `data.len()` must fit in a u16; TPM2B payloads in this crate are digests,
/// names or selections, all far below that, so longer input is truncated to 0xFFFF.
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, data: &[u8]) {
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&data[..usize::from(len)]);
}
