//! The owner record: which log owns the counter.
//!
//! An ordinary NV index at `counter_index + 1` (OWNERREAD | OWNERWRITE, not orderly,
//! 32 bytes): `"TALLYOWN"` (8) || log id (16) || genesis counter (u64 big-endian). The
//! daemon writes it before a log's genesis anchor; a second log started on the same
//! counter finds another log's id there and is refused, naming the owner.
//!
//! The record authorizes nothing (anyone with owner auth can rewrite it): it exists so
//! that an honest mistake (two data directories on one counter, or a log whose anchors
//! were deleted) is named at start-up instead of surfacing later as a verifier's gap.

use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::handles::NvIndexHandle;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::MaxNvBuffer;
use tss_esapi::Context;

use crate::evidence::tpma_nv;
use crate::tpm::error::{classify, tpm_base_code, TpmError, TPM_RC_NV_UNINITIALIZED};
use crate::tpm::provision::{define_owner_index, open_nv_index};

/// First bytes of an owner record.
pub const OWNER_RECORD_MAGIC: &[u8; 8] = b"TALLYOWN";
/// Size of an owner record.
pub const OWNER_RECORD_LEN: usize = 32;
/// Attributes of the owner record index (status bits excluded): an ordinary index,
/// OWNERWRITE | OWNERREAD. Not ORDERLY: it is written once per log.
pub const OWNER_RECORD_ATTRIBUTES: u32 = tpma_nv::OWNERWRITE | tpma_nv::OWNERREAD;

/// Which log owns the counter, and at which counter value its genesis anchor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerRecord {
    pub log_id: [u8; 16],
    pub genesis_counter: u64,
}

impl OwnerRecord {
    /// `"TALLYOWN" || log id || genesis counter u64 BE`.
    pub fn to_bytes(&self) -> [u8; OWNER_RECORD_LEN] {
        let mut out = [0u8; OWNER_RECORD_LEN];
        out[..8].copy_from_slice(OWNER_RECORD_MAGIC);
        out[8..24].copy_from_slice(&self.log_id);
        out[24..].copy_from_slice(&self.genesis_counter.to_be_bytes());
        out
    }

    /// Parses [`OwnerRecord::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<OwnerRecord> {
        let bytes: &[u8; OWNER_RECORD_LEN] = bytes.try_into().ok()?;
        if &bytes[..8] != OWNER_RECORD_MAGIC {
            return None;
        }
        let log_id = bytes[8..24].try_into().ok()?;
        let genesis_counter = u64::from_be_bytes(bytes[24..].try_into().ok()?);
        Some(OwnerRecord {
            log_id,
            genesis_counter,
        })
    }
}

/// The owner record's NV index for a counter at `counter_index`.
pub fn owner_record_index(counter_index: u32) -> Result<u32, TpmError> {
    counter_index
        .checked_add(1)
        .filter(|index| index >> 24 == 0x01)
        .ok_or(TpmError::InvalidConfig {
            what: "counter_index",
            value: format!(
                "{counter_index:#010x} (its owner record would be outside the owner NV range)"
            ),
        })
}

/// Checks that an existing index has the owner record's shape.
fn check_shape(ctx: &mut Context, index: u32, handle: NvIndexHandle) -> Result<bool, TpmError> {
    let (public, _name) = ctx
        .nv_read_public(handle)
        .map_err(|e| classify("TPM2_NV_ReadPublic", e))?;
    let found =
        u32::try_from(public.attributes()).map_err(|e| classify("TPMA_NV conversion", e))?;
    if found & !tpma_nv::STATUS_MASK != OWNER_RECORD_ATTRIBUTES
        || public.data_size() != OWNER_RECORD_LEN
    {
        return Err(TpmError::OwnerRecordWrongShape {
            index,
            expected_attributes: OWNER_RECORD_ATTRIBUTES,
            expected_size: OWNER_RECORD_LEN,
            found_attributes: found & !tpma_nv::STATUS_MASK,
            found_size: public.data_size(),
        });
    }
    Ok(found & tpma_nv::WRITTEN != 0)
}

/// Reads the owner record at `index`: `None` when the index is absent or was never
/// written; an error when it has another shape or holds something else.
pub fn read_owner_record(ctx: &mut Context, index: u32) -> Result<Option<OwnerRecord>, TpmError> {
    let Some(handle) = open_nv_index(ctx, index)? else {
        return Ok(None);
    };
    let result = read_opened(ctx, index, handle);
    close(ctx, handle);
    result
}

fn read_opened(
    ctx: &mut Context,
    index: u32,
    handle: NvIndexHandle,
) -> Result<Option<OwnerRecord>, TpmError> {
    if !check_shape(ctx, index, handle)? {
        return Ok(None);
    }
    let op = "TPM2_NV_Read(owner record)";
    let len = OWNER_RECORD_LEN as u16;
    let data = match ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_read(NvAuth::Owner, handle, len, 0)
    }) {
        Ok(data) => data,
        Err(e) => {
            return match classify(op, e) {
                TpmError::Tpm { rc, .. } if tpm_base_code(rc) == TPM_RC_NV_UNINITIALIZED => {
                    Ok(None)
                }
                other => Err(other),
            }
        }
    };
    OwnerRecord::from_bytes(data.value())
        .map(Some)
        .ok_or(TpmError::OwnerRecordMalformed { index })
}

/// Writes `record` at `index`, defining the index if absent. Idempotent; refuses an
/// index of another shape, and an index that already names another record (a record
/// is never overwritten: undefine it by hand to reuse the counter).
pub fn write_owner_record(
    ctx: &mut Context,
    index: u32,
    record: &OwnerRecord,
) -> Result<(), TpmError> {
    let handle = match open_nv_index(ctx, index)? {
        Some(handle) => handle,
        None => define(ctx, index)?,
    };
    let result = write_opened(ctx, index, handle, record);
    close(ctx, handle);
    result
}

fn write_opened(
    ctx: &mut Context,
    index: u32,
    handle: NvIndexHandle,
    record: &OwnerRecord,
) -> Result<(), TpmError> {
    if check_shape(ctx, index, handle)? {
        match read_opened(ctx, index, handle)? {
            Some(found) if found == *record => return Ok(()),
            Some(found) => {
                return Err(TpmError::OwnerRecordTaken {
                    index,
                    log_id: found.log_id,
                    genesis_counter: found.genesis_counter,
                })
            }
            None => {}
        }
    }
    let op = "TPM2_NV_Write(owner record)";
    let data = MaxNvBuffer::try_from(record.to_bytes().to_vec()).map_err(|e| classify(op, e))?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_write(NvAuth::Owner, handle, data, 0)
    })
    .map_err(|e| classify(op, e))
}

fn define(ctx: &mut Context, index: u32) -> Result<NvIndexHandle, TpmError> {
    define_owner_index(
        ctx,
        "TPM2_NV_DefineSpace(owner record)",
        index,
        NvIndexType::Ordinary,
        false,
        OWNER_RECORD_LEN as u16,
    )
}

/// Releases the ESYS object of an NV index (the index itself stays defined).
fn close(ctx: &mut Context, handle: NvIndexHandle) {
    let mut object = handle.into();
    if let Err(e) = ctx.tr_close(&mut object) {
        tracing::debug!(error = %e, "closing the owner record's ESYS handle failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_nothing_else_parses() {
        let record = OwnerRecord {
            log_id: [0xab; 16],
            genesis_counter: 0x0102_0304_0506_0708,
        };
        let bytes = record.to_bytes();
        assert_eq!(&bytes[..8], b"TALLYOWN");
        assert_eq!(&bytes[24..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(OwnerRecord::from_bytes(&bytes), Some(record));
        let mut other = bytes;
        other[0] = b'X';
        assert_eq!(OwnerRecord::from_bytes(&other), None);
        assert_eq!(OwnerRecord::from_bytes(&bytes[..31]), None);
        assert_eq!(owner_record_index(0x01c1_7a11).unwrap(), 0x01c1_7a12);
        assert!(owner_record_index(0x01ff_ffff).is_err());
    }
}
