//! Sealing a small secret (the log's Ed25519 seed) to this TPM.
//!
//! The secret becomes a sealed-data object (KeyedHash, no sign/decrypt
//! attributes, fixedTPM, fixedParent) under a storage primary key that the
//! owner hierarchy re-derives from a fixed template on every use. Only the
//! TPM can load the blob: copied to another machine, or after the owner
//! hierarchy is cleared (TPM2_Clear changes the owner seed), it is useless.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, KeyDerivationFunctionScheme, KeyedHashScheme, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use crate::tpm::error::{classify, TpmError};

/// A sealed secret as stored on disk: the object's marshalled TPM2B_PUBLIC
/// and its TPM2B_PRIVATE (encrypted by the TPM; useless without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlob {
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

impl SealedBlob {
    /// `len(public) u16 BE || public || len(private) u16 BE || private`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.public.len() + self.private.len());
        for part in [&self.public, &self.private] {
            out.extend_from_slice(&(part.len().min(u16::MAX as usize) as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Parses [`SealedBlob::to_bytes`]; `None` when malformed.
    pub fn from_bytes(bytes: &[u8]) -> Option<SealedBlob> {
        let (public, rest) = take_part(bytes)?;
        let (private, rest) = take_part(rest)?;
        rest.is_empty().then(|| SealedBlob {
            public: public.to_vec(),
            private: private.to_vec(),
        })
    }
}

fn take_part(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The storage primary: restricted ECC P-256 decryption key, AES-128-CFB.
fn storage_primary(ctx: &mut Context) -> Result<KeyHandle, TpmError> {
    let op = "storage primary";
    let ecc = PublicEccParametersBuilder::new()
        .with_ecc_scheme(EccScheme::Null)
        .with_curve(EccCurve::NistP256)
        .with_is_signing_key(false)
        .with_is_decryption_key(true)
        .with_restricted(true)
        .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .build()
        .map_err(|e| classify(op, e))?;
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .with_restricted(true)
        .build()
        .map_err(|e| classify(op, e))?;
    let template = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(ecc)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(|e| classify(op, e))?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.create_primary(Hierarchy::Owner, template, None, None, None, None)
    })
    .map(|created| created.key_handle)
    .map_err(|e| classify("TPM2_CreatePrimary (storage key)", e))
}

/// Runs `op` with the storage primary loaded, flushing it afterwards (no
/// resource manager on swtpm: a leaked transient object costs a slot).
fn with_primary<T>(
    ctx: &mut Context,
    op: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let primary = storage_primary(ctx)?;
    let result = op(ctx, primary);
    if let Err(e) = ctx.flush_context(primary.into()) {
        tracing::debug!(error = %e, "flushing the storage primary failed");
    }
    result
}

/// Seals `secret` (at most 128 bytes) to this TPM.
pub fn seal(ctx: &mut Context, secret: &[u8]) -> Result<SealedBlob, TpmError> {
    let op = "TPM2_Create (sealed object)";
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .build()
        .map_err(|e| classify(op, e))?;
    let template = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(|e| classify(op, e))?;
    let data = SensitiveData::try_from(secret.to_vec()).map_err(|e| classify(op, e))?;
    let created = with_primary(ctx, |ctx, primary| {
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.create(primary, template, None, Some(data), None, None)
        })
        .map_err(|e| classify(op, e))
    })?;
    Ok(SealedBlob {
        public: created.out_public.marshall().map_err(|e| classify(op, e))?,
        private: created.out_private.value().to_vec(),
    })
}

/// Unseals a blob made by [`seal`] on this TPM.
pub fn unseal(
    ctx: &mut Context,
    blob: &SealedBlob,
) -> Result<zeroize::Zeroizing<Vec<u8>>, TpmError> {
    let op = "TPM2_Unseal";
    let public = Public::unmarshall(&blob.public).map_err(|e| classify(op, e))?;
    let private = Private::try_from(blob.private.clone()).map_err(|e| classify(op, e))?;
    with_primary(ctx, |ctx, primary| {
        let object = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.load(primary, private, public)
            })
            .map_err(|e| classify("TPM2_Load (sealed object)", e))?;
        let data = ctx
            .execute_with_session(Some(AuthSession::Password), |c| c.unseal(object.into()))
            .map_err(|e| classify(op, e));
        if let Err(e) = ctx.flush_context(object.into()) {
            tracing::debug!(error = %e, "flushing the sealed object failed");
        }
        Ok(zeroize::Zeroizing::new(data?.value().to_vec()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_encoding_round_trips_and_rejects_garbage() {
        let blob = SealedBlob {
            public: vec![1, 2, 3],
            private: vec![9; 40],
        };
        assert_eq!(SealedBlob::from_bytes(&blob.to_bytes()), Some(blob.clone()));
        let mut extra = blob.to_bytes();
        extra.push(0);
        assert_eq!(SealedBlob::from_bytes(&extra), None);
        assert_eq!(SealedBlob::from_bytes(&blob.to_bytes()[..5]), None);
    }
}
