//! Idempotent provisioning: the NV counter index, the attestation key (AK) and the
//! owner key (OK).
//!
//! **AK choice: a primary key in the endorsement hierarchy, re-created on every
//! connection from a fixed template, never persisted.** A primary key is derived from
//! the hierarchy seed and the template, so the same template always yields the same key:
//! no persistent handle to allocate, collide with or leave behind, no state to lose. The
//! endorsement hierarchy (not owner) because (a) its seed survives TPM2_Clear (the owner
//! seed does not), so the AK identity a verifier pinned stays valid, and (b) the TPM only
//! reports un-obfuscated resetCount/restartCount/firmwareVersion in TPMS_ATTEST when the
//! signer is in the endorsement or platform hierarchy: the verifier can see reboots. The
//! cost is one CreatePrimary per connection (a few ms on swtpm, tens to hundreds of ms on
//! a chip); the worker keeps the key loaded while its connection lives.
//!
//! **Owner key: the same kind of primary, in the owner hierarchy.** It signs the
//! NV_Certify of the counter. TPM2_Clear replaces the owner seed (and deletes the
//! counter, which an orderly counter may then restart low): after a Clear the same
//! template yields another key, so evidence made after a Clear cannot verify against
//! the owner key a verifier pinned. The price: the TPM obfuscates resetCount and
//! restartCount in what this key signs, so verifiers read them from the AK's quote.

use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::{NvIndexAttributesBuilder, ObjectAttributesBuilder};
use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, EccParameter, EccPoint, EccScheme, HashScheme,
    KeyDerivationFunctionScheme, NvPublicBuilder, Public, PublicBuffer, PublicBuilder,
    PublicEccParametersBuilder, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use crate::evidence::tpma_nv;
use crate::tpm::error::{classify, tpm_base_code, TpmError, TPM_RC_HANDLE};

pub use crate::identity::DEFAULT_COUNTER_INDEX;

/// Label hashed into the AK template's `unique` field: it makes Tally's AK a key of its
/// own (distinct from the default templates other tools use), and bumping the version
/// yields a new AK.
const AK_UNIQUE_LABEL: &[u8] = b"tally attestation key v1";

/// Label hashed into the owner key template's `unique` field (see [`AK_UNIQUE_LABEL`]).
const OWNER_KEY_UNIQUE_LABEL: &[u8] = b"tally owner key v1";

/// NV indices where a TCG EK Credential Profile TPM stores EK certificates.
pub const EK_CERT_INDICES: [(u32, &str); 4] = [
    (0x01C0_0002, "RSA 2048 EK certificate"),
    (0x01C0_000A, "ECC NIST P-256 EK certificate"),
    (0x01C0_0014, "ECC NIST P-256 EK certificate (high range)"),
    // swtpm_setup 0.7 --create-ek-cert writes its ECC (P-384) EK certificate here.
    (0x01C0_0016, "ECC NIST P-384 EK certificate (high range)"),
];

/// A signing key's public part (the AK's or the owner key's), in the forms verifiers
/// and tools need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPublic {
    /// PEM SubjectPublicKeyInfo (for p256, openssl and `tpm2_checkquote -u`).
    pub pem: String,
    /// Marshalled TPM2B_PUBLIC (for tools that load the TPM's own structure).
    pub tpm2b_public: Vec<u8>,
    /// TPM Name: nameAlg || SHA-256(TPMT_PUBLIC).
    pub name: Vec<u8>,
}

/// A loaded signing primary (AK or owner key): its transient handle (valid for the
/// current connection) and public part.
#[derive(Debug, Clone)]
pub struct LoadedKey {
    /// Transient handle; flush it before dropping the connection.
    pub handle: KeyHandle,
    /// Public part.
    pub public: KeyPublic,
}

/// Which of Tally's two signing primaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// Endorsement hierarchy; signs quotes.
    Ak,
    /// Owner hierarchy; signs the counter's NV_Certify.
    OwnerKey,
}

impl SigningKey {
    fn label(self) -> &'static [u8] {
        match self {
            SigningKey::Ak => AK_UNIQUE_LABEL,
            SigningKey::OwnerKey => OWNER_KEY_UNIQUE_LABEL,
        }
    }

    fn hierarchy(self) -> Hierarchy {
        match self {
            SigningKey::Ak => Hierarchy::Endorsement,
            SigningKey::OwnerKey => Hierarchy::Owner,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SigningKey::Ak => "AK",
            SigningKey::OwnerKey => "owner key",
        }
    }
}

/// An EK certificate read from NV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkCertificate {
    /// NV index it was read from.
    pub index: u32,
    /// What the TCG profile says lives there.
    pub description: &'static str,
    /// DER bytes (as stored; some vendors pad).
    pub der: Vec<u8>,
}

/// State of the counter after [`ensure_counter`].
#[derive(Debug, Clone, Copy)]
pub struct CounterState {
    /// ESYS handle of the index (valid for the current connection).
    pub handle: NvIndexHandle,
    /// Whether this call defined the index (false: it existed with the right shape).
    pub defined_now: bool,
    /// Current value.
    pub value: u64,
}

/// Sets the authorization values used for the owner and endorsement hierarchies.
/// Contract: call once per connection, before any owner/endorsement-authorized command.
pub fn set_hierarchy_auth(
    ctx: &mut Context,
    owner_auth: &[u8],
    endorsement_auth: &[u8],
) -> Result<(), TpmError> {
    for (handle, value, what) in [
        (ObjectHandle::Owner, owner_auth, "owner_auth"),
        (
            ObjectHandle::Endorsement,
            endorsement_auth,
            "endorsement_auth",
        ),
    ] {
        let auth = Auth::try_from(value.to_vec()).map_err(|_| TpmError::InvalidConfig {
            what,
            value: format!("{} bytes (too long)", value.len()),
        })?;
        ctx.tr_set_auth(handle, auth)
            .map_err(|e| classify("Esys_TR_SetAuth", e))?;
    }
    Ok(())
}

/// The fixed template of the AK and of the owner key: restricted ECC P-256 signing
/// key, ECDSA/SHA-256, fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth
/// (empty auth), unique = SHA-256(the key's label).
fn signing_template(key: SigningKey) -> Result<Public, TpmError> {
    let op = "signing key template";
    let ecc = PublicEccParametersBuilder::new()
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .build()
        .map_err(|e| classify(op, e))?;
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_restricted(true)
        .build()
        .map_err(|e| classify(op, e))?;
    let unique_x = EccParameter::try_from(Sha256::digest(key.label()).to_vec())
        .map_err(|e| classify(op, e))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(ecc)
        .with_ecc_unique_identifier(EccPoint::new(unique_x, EccParameter::default()))
        .build()
        .map_err(|e| classify(op, e))
}

/// Creates (re-derives) the AK as an endorsement-hierarchy primary and returns its
/// handle and public part. Contract: the caller flushes `handle` when done; calling this
/// twice on one TPM yields the same public key.
pub fn load_ak(ctx: &mut Context) -> Result<LoadedKey, TpmError> {
    load_signing_key(ctx, SigningKey::Ak)
}

/// Creates (re-derives) the owner key as an owner-hierarchy primary (owner auth).
/// Same contract as [`load_ak`]; after TPM2_Clear it yields another key.
pub fn load_owner_key(ctx: &mut Context) -> Result<LoadedKey, TpmError> {
    load_signing_key(ctx, SigningKey::OwnerKey)
}

fn load_signing_key(ctx: &mut Context, key: SigningKey) -> Result<LoadedKey, TpmError> {
    let template = signing_template(key)?;
    let op = match key {
        SigningKey::Ak => "TPM2_CreatePrimary(AK)",
        SigningKey::OwnerKey => "TPM2_CreatePrimary(owner key)",
    };
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(key.hierarchy(), template, None, None, None, None)
        })
        .map_err(|e| classify(op, e))?;
    let handle = created.key_handle;
    match key_public(ctx, key, handle, created.out_public) {
        Ok(public) => Ok(LoadedKey { handle, public }),
        Err(e) => {
            // Do not leak the transient object on a conversion failure.
            let _ = ctx.flush_context(handle.into());
            Err(e)
        }
    }
}

/// Exports a signing key's public part as PEM, TPM2B_PUBLIC and Name.
fn key_public(
    ctx: &mut Context,
    key: SigningKey,
    handle: KeyHandle,
    public: Public,
) -> Result<KeyPublic, TpmError> {
    let op = match key {
        SigningKey::Ak => "AK public export",
        SigningKey::OwnerKey => "owner key public export",
    };
    let Public::Ecc { ref unique, .. } = public else {
        return Err(TpmError::UnexpectedOutput {
            op,
            what: "public area is not ECC",
        });
    };
    let mut sec1 = vec![0x04];
    for coord in [unique.x().value(), unique.y().value()] {
        if coord.len() > 32 {
            return Err(TpmError::UnexpectedOutput {
                op,
                what: "coordinate longer than 32 bytes",
            });
        }
        sec1.extend(std::iter::repeat_n(0u8, 32 - coord.len()));
        sec1.extend_from_slice(coord);
    }
    let pem = crate::evidence::verify::AkPublicKey::from_sec1(&sec1)
        .and_then(|k| k.to_pem())
        .map_err(|_| TpmError::UnexpectedOutput {
            op,
            what: "point is not on P-256",
        })?;
    let tpm2b_public = PublicBuffer::try_from(public)
        .and_then(|b| b.marshall())
        .map_err(|e| classify(op, e))?;
    let name = ctx
        .tr_get_name(handle.into())
        .map_err(|e| classify("Esys_TR_GetName", e))?
        .value()
        .to_vec();
    tracing::debug!(key = key.name(), "signing key loaded");
    Ok(KeyPublic {
        pem,
        tpm2b_public,
        name,
    })
}

/// Whether NV index `index` is defined, from TPM2_GetCapability(TPM_CAP_HANDLES), which
/// (unlike probing with NV_ReadPublic) makes libtss2 log no error for an absent index.
pub fn nv_index_exists(ctx: &mut Context, index: u32) -> Result<bool, TpmError> {
    let (data, _more) = ctx
        .get_capability(CapabilityType::Handles, index, 1)
        .map_err(|e| classify("TPM2_GetCapability(handles)", e))?;
    let CapabilityData::Handles(list) = data else {
        return Err(TpmError::UnexpectedOutput {
            op: "TPM2_GetCapability(handles)",
            what: "not a handle list",
        });
    };
    Ok(list.first().map(|h| u32::from(*h)) == Some(index))
}

/// Flushes every transient object the TPM holds for this connection.
///
/// Without a resource manager (swtpm on a socket) objects loaded by a
/// process that died without flushing stay loaded, and a few crashes fill
/// the TPM's object slots (TPM_RC_OBJECT_MEMORY). Tally is the only user of
/// such a TPM connection; behind a resource manager (/dev/tpmrm0) the list
/// holds only this connection's own objects, so this is harmless there.
pub fn flush_transients(ctx: &mut Context) -> Result<usize, TpmError> {
    const TRANSIENT_FIRST: u32 = 0x8000_0000;
    let (data, _more) = ctx
        .get_capability(CapabilityType::Handles, TRANSIENT_FIRST, 64)
        .map_err(|e| classify("TPM2_GetCapability(transient handles)", e))?;
    let CapabilityData::Handles(list) = data else {
        return Ok(0);
    };
    let mut flushed = 0;
    for handle in list.iter().filter(|h| u32::from(**h) >> 24 == 0x80) {
        let Ok(object) = ctx.tr_from_tpm_public(*handle) else {
            continue;
        };
        if ctx.flush_context(object).is_ok() {
            flushed += 1;
        }
    }
    Ok(flushed)
}

/// Opens an ESYS handle for an existing NV index; `Ok(None)` if it is not defined.
pub fn open_nv_index(ctx: &mut Context, index: u32) -> Result<Option<NvIndexHandle>, TpmError> {
    let tpm_handle = NvIndexTpmHandle::new(index).map_err(|_| TpmError::InvalidConfig {
        what: "counter_index",
        value: format!("{index:#010x}"),
    })?;
    if !nv_index_exists(ctx, index)? {
        return Ok(None);
    }
    match ctx.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)) {
        Ok(h) => Ok(Some(NvIndexHandle::from(h))),
        Err(e) => match classify("TPM2_NV_ReadPublic", e) {
            TpmError::Tpm { rc, .. } if tpm_base_code(rc) == TPM_RC_HANDLE => Ok(None),
            other => Err(other),
        },
    }
}

/// Ensures the counter index exists with Tally's attributes and has been written once,
/// and returns its handle and value. Idempotent: defines and increments only if absent;
/// an index left unwritten (crash between define and first increment) is incremented;
/// an index of another shape is an error, never redefined. `opened` is an ESYS handle
/// for the index already open on this connection, if any (avoids a second ESYS object).
pub fn ensure_counter(
    ctx: &mut Context,
    index: u32,
    opened: Option<NvIndexHandle>,
) -> Result<CounterState, TpmError> {
    let existing = match opened {
        Some(h) => Some(h),
        None => open_nv_index(ctx, index)?,
    };
    let (handle, defined_now) = match existing {
        Some(handle) => (handle, false),
        None => (define_counter(ctx, index)?, true),
    };
    let (public, _name) = ctx
        .nv_read_public(handle)
        .map_err(|e| classify("TPM2_NV_ReadPublic", e))?;
    let found =
        u32::try_from(public.attributes()).map_err(|e| classify("TPMA_NV conversion", e))?;
    if found & !tpma_nv::STATUS_MASK != tpma_nv::TALLY_COUNTER {
        return Err(TpmError::IndexWrongAttributes {
            index,
            expected: tpma_nv::TALLY_COUNTER,
            found: found & !tpma_nv::STATUS_MASK,
        });
    }
    if public.data_size() != 8 || public.name_algorithm() != HashingAlgorithm::Sha256 {
        return Err(TpmError::IndexWrongShape {
            index,
            found_size: public.data_size(),
            found_name_alg: tss_esapi::tss2_esys::TPMI_ALG_HASH::from(public.name_algorithm()),
        });
    }
    if found & tpma_nv::WRITTEN == 0 {
        // A counter cannot be read (TPM_RC_NV_UNINITIALIZED) until first incremented.
        increment_counter(ctx, handle)?;
    }
    let value = read_counter(ctx, handle)?;
    Ok(CounterState {
        handle,
        defined_now,
        value,
    })
}

/// TPM2_NV_DefineSpace of Tally's counter (owner auth). See [`tpma_nv::TALLY_COUNTER`]
/// for why it is ORDERLY.
fn define_counter(ctx: &mut Context, index: u32) -> Result<NvIndexHandle, TpmError> {
    define_owner_index(
        ctx,
        "TPM2_NV_DefineSpace",
        index,
        NvIndexType::Counter,
        true,
        8,
    )
}

/// TPM2_NV_DefineSpace (owner auth) of an owner-readable, owner-writable index
/// with a SHA-256 name.
pub(crate) fn define_owner_index(
    ctx: &mut Context,
    op: &'static str,
    index: u32,
    kind: NvIndexType,
    orderly: bool,
    size: u16,
) -> Result<NvIndexHandle, TpmError> {
    let tpm_handle = NvIndexTpmHandle::new(index).map_err(|_| TpmError::InvalidConfig {
        what: "counter_index",
        value: format!("{index:#010x}"),
    })?;
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(kind)
        .with_owner_write(true)
        .with_owner_read(true)
        .with_orderly(orderly)
        .build()
        .map_err(|e| classify(op, e))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(tpm_handle)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(size.into())
        .build()
        .map_err(|e| classify(op, e))?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_define_space(Provision::Owner, None, public)
    })
    .map_err(|e| classify(op, e))
}

/// TPM2_NV_Increment under owner authorization.
pub fn increment_counter(ctx: &mut Context, handle: NvIndexHandle) -> Result<(), TpmError> {
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_increment(NvAuth::Owner, handle)
    })
    .map_err(|e| classify("TPM2_NV_Increment", e))
}

/// TPM2_NV_Read of the 8-byte counter (owner authorization), decoded big-endian.
pub fn read_counter(ctx: &mut Context, handle: NvIndexHandle) -> Result<u64, TpmError> {
    let op = "TPM2_NV_Read";
    let data = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_read(NvAuth::Owner, handle, 8, 0)
        })
        .map_err(|e| classify(op, e))?;
    let bytes: [u8; 8] = data
        .value()
        .try_into()
        .map_err(|_| TpmError::UnexpectedOutput {
            op,
            what: "counter is not 8 bytes",
        })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Reads every EK certificate present at [`EK_CERT_INDICES`] (owner authorization).
/// Absent indices are skipped; other failures are errors.
pub fn read_ek_certificates(ctx: &mut Context) -> Result<Vec<EkCertificate>, TpmError> {
    let mut out = Vec::new();
    for (index, description) in EK_CERT_INDICES {
        let tpm_handle = NvIndexTpmHandle::new(index).map_err(|_| TpmError::InvalidConfig {
            what: "EK certificate index",
            value: format!("{index:#010x}"),
        })?;
        if !nv_index_exists(ctx, index)? {
            continue;
        }
        let read = ctx.execute_with_session(Some(AuthSession::Password), |c| {
            tss_esapi::abstraction::nv::read_full(c, NvAuth::Owner, tpm_handle)
        });
        match read.map_err(|e| classify("TPM2_NV_Read(EK certificate)", e)) {
            Ok(der) => out.push(EkCertificate {
                index,
                description,
                der,
            }),
            Err(TpmError::Tpm { rc, .. }) if tpm_base_code(rc) == TPM_RC_HANDLE => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
