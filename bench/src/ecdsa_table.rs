//! A prototype (bench only, not used by any verifier): ECDSA P-256
//! verification with precomputed fixed-base tables, to size what the
//! anchor verifier could gain.
//!
//! `p256` 0.13 verifies with two full constant-time scalar multiplications
//! (`lincomb` is not specialised), about 320 us here. Every anchor is
//! verified against the same two pinned keys (AK, owner key) and the
//! generator, so a table per point (`j * 16^i * P` for 64 nibble positions,
//! 16 values each: 1024 affine points, 64 KiB) turns each multiplication
//! into at most 64 mixed additions, with no doublings. Verification only
//! handles public data, so variable time is fine.

use p256::ecdsa::Signature;
use p256::elliptic_curve::group::Curve as _;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256};

/// Multiples of one point: `rows[i][j] = j * 16^i * P`.
#[derive(Debug, Clone)]
pub struct FixedBase {
    rows: Vec<[AffinePoint; 16]>,
}

impl FixedBase {
    pub fn new(point: ProjectivePoint) -> FixedBase {
        let mut projective = Vec::with_capacity(64 * 16);
        let mut base = point;
        for _ in 0..64 {
            let mut multiple = ProjectivePoint::IDENTITY;
            for _ in 0..16 {
                projective.push(multiple);
                multiple += base;
            }
            // multiple = 16 * base.
            base = multiple;
        }
        let mut affine = vec![AffinePoint::IDENTITY; projective.len()];
        ProjectivePoint::batch_normalize(&projective, &mut affine);
        let rows = affine
            .chunks_exact(16)
            .map(|row| {
                let mut out = [AffinePoint::IDENTITY; 16];
                out.copy_from_slice(row);
                out
            })
            .collect();
        FixedBase { rows }
    }

    /// `k * P`, variable time.
    pub fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let bytes = k.to_bytes();
        let mut acc = ProjectivePoint::IDENTITY;
        for (i, row) in self.rows.iter().enumerate() {
            let byte = bytes[31 - i / 2];
            let nibble = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            if nibble != 0 {
                acc += row[usize::from(nibble)];
            }
        }
        acc
    }
}

/// A verifying key with its table (and the generator's).
#[derive(Debug, Clone)]
pub struct TableVerifier {
    generator: FixedBase,
    key: FixedBase,
}

impl TableVerifier {
    pub fn new(key: &p256::ecdsa::VerifyingKey) -> TableVerifier {
        TableVerifier {
            generator: FixedBase::new(ProjectivePoint::GENERATOR),
            key: FixedBase::new(ProjectivePoint::from(*key.as_affine())),
        }
    }

    /// ECDSA verification of `signature` over the SHA-256 `digest`, the same
    /// equation as `ecdsa::hazmat::verify_prehashed`.
    pub fn verify_prehash(&self, digest: &[u8; 32], signature: &Signature) -> bool {
        let z = <Scalar as Reduce<U256>>::reduce_bytes(FieldBytes::from_slice(digest));
        let (r, s) = signature.split_scalars();
        let Some(s_inv) = Option::<Scalar>::from(s.invert()) else {
            return false;
        };
        let point = self.generator.mul(&(z * s_inv)) + self.key.mul(&(*r * s_inv));
        let x = point.to_affine().x();
        *r == <Scalar as Reduce<U256>>::reduce_bytes(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
    use p256::ecdsa::SigningKey;
    use p256::elliptic_curve::Field as _;
    use rand::{Rng, SeedableRng};

    #[test]
    fn agrees_with_p256_on_valid_and_altered_signatures() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let key = SigningKey::random(&mut rng);
        let table = TableVerifier::new(key.verifying_key());
        let base = FixedBase::new(ProjectivePoint::GENERATOR);
        for _ in 0..64 {
            let k = Scalar::random(&mut rng);
            assert_eq!(base.mul(&k), ProjectivePoint::GENERATOR * k);
            let digest: [u8; 32] = rng.gen();
            let signature: Signature = key.sign_prehash(&digest).unwrap();
            assert!(table.verify_prehash(&digest, &signature));
            let mut other = digest;
            other[rng.gen_range(0..32)] ^= 1 << rng.gen_range(0..8);
            assert!(!table.verify_prehash(&other, &signature));
            assert!(key
                .verifying_key()
                .verify_prehash(&other, &signature)
                .is_err());
        }
        assert_eq!(base.mul(&Scalar::ZERO), ProjectivePoint::IDENTITY);
    }
}
