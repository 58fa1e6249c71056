//! Sealing of content openings (docs/DESIGN.md, section 3b): what LMDB and
//! the ack journal hold instead of an opening is
//! `AES-256-CTR(key = the record's slot in the key file, IV = seq u64
//! big-endian || 8 zero bytes, opening)`, as many bytes as the opening.
//!
//! No MAC: the commitment inside the hashed record authenticates an opening
//! (a changed sealed value decrypts to an opening that no longer opens it).
//! Each key seals exactly one opening (one record, one seq), so the counter
//! blocks never repeat under a key, and the IV's low half (the block counter)
//! starts at zero. The cipher is RustCrypto's `aes` (constant-time, AES-NI
//! detected at run time) in `ctr`'s 64-bit big-endian counter mode, which is
//! what `openssl enc -aes-256-ctr` computes (the known answer below).

use aes::cipher::{KeyIvInit, StreamCipher};

type Aes256Ctr = ctr::Ctr64BE<aes::Aes256>;

/// A record's content key: 32 random bytes, zero once destroyed.
pub type ContentKey = [u8; 32];

/// The IV of record `seq`: seq u64 big-endian || 8 zero bytes.
fn iv(seq: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&seq.to_be_bytes());
    iv
}

/// Seals (or opens: CTR is its own inverse) `bytes` in place, for record
/// `seq` under its `key`.
pub fn apply(key: &ContentKey, seq: u64, bytes: &mut [u8]) {
    let mut cipher = Aes256Ctr::new(key.into(), &iv(seq).into());
    cipher.apply_keystream(bytes);
}

/// Whether a key slot holds a key (a destroyed or never-written slot is 32
/// zero bytes: there is nothing to open with).
pub fn is_live(key: &ContentKey) -> bool {
    key.iter().any(|&byte| byte != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key, seq and plaintext of the known answer.
    fn kat_key() -> ContentKey {
        std::array::from_fn(|i| i as u8)
    }
    const KAT_SEQ: u64 = 7;
    const KAT_PLAIN: &[u8] = b"tally sealed opening known answer, 41 bytes";

    #[test]
    fn sealing_matches_openssl_aes_256_ctr() {
        //! The seal is AES-256-CTR with the IV of DESIGN 3b, byte for byte:
        //! expected value from `printf 'tally sealed opening known answer, 41 bytes' |
        //! openssl enc -aes-256-ctr -K 000102..1f -iv 00000000000000070000000000000000 -nosalt | xxd -p`
        //! (OpenSSL 3 on the project's test machine), an implementation
        //! independent of RustCrypto's.
        let expected = "4335976dc4d956b7eee1f32bee0640286aef2c082d9bb1c797f9b1cad56559c59059ed51c962e52f4b6b98";
        let mut bytes = KAT_PLAIN.to_vec();
        apply(&kat_key(), KAT_SEQ, &mut bytes);
        assert_eq!(hex::encode(&bytes), expected);
        apply(&kat_key(), KAT_SEQ, &mut bytes);
        assert_eq!(bytes, KAT_PLAIN, "CTR opens what it sealed");
    }

    #[test]
    fn another_seq_or_key_gives_other_bytes() {
        //! The IV carries the seq: the same key and opening at another seq
        //! (or under another key) seal to different bytes.
        let mut a = KAT_PLAIN.to_vec();
        let mut b = KAT_PLAIN.to_vec();
        let mut c = KAT_PLAIN.to_vec();
        apply(&kat_key(), KAT_SEQ, &mut a);
        apply(&kat_key(), KAT_SEQ + 1, &mut b);
        let mut other = kat_key();
        other[0] ^= 1;
        apply(&other, KAT_SEQ, &mut c);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(is_live(&kat_key()));
        assert!(!is_live(&[0; 32]));
    }
}
