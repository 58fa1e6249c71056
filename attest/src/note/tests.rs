use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::merkle;

// Known-answer vectors from golang/mod, sumdb/note/note_test.go (the
// golang.org/x/mod/sumdb/note tests; commit 02c99138): TestNewVerifier,
// TestNewSigner, TestSign and TestOpen.
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

fn peter() -> Verifier {
    Verifier::parse(PETER_VKEY).unwrap()
}

fn enoch() -> Verifier {
    Verifier::parse(ENOCH_VKEY).unwrap()
}

fn peter_note() -> String {
    format!("{TEXT}\n{PETER_SIG}")
}

fn key(name: &str, key_id: u32) -> KeyRef {
    KeyRef {
        name: name.to_owned(),
        key_id,
    }
}

fn generated(name: &str, rng: &mut StdRng) -> Signer {
    Signer::from_seed(name, &rng.gen()).unwrap()
}

#[test]
fn go_key_strings_parse_and_round_trip() {
    let verifier = peter();
    assert_eq!(verifier.name(), "PeterNeumann");
    assert_eq!(verifier.key_id(), 0xc74f20a3);
    assert_eq!(key_id("PeterNeumann", verifier.verifying_key()), 0xc74f20a3);
    assert_eq!(verifier.to_key_string(), PETER_VKEY);
    let signer = Signer::parse(PETER_SKEY).unwrap();
    assert_eq!(signer.verifier(), &verifier);
    assert_eq!(signer.to_key_string().as_str(), PETER_SKEY);
    assert_eq!(enoch().key_id(), 0xaf0cfe78);
    // Debug never shows the private key.
    let debug = format!("{signer:?}");
    assert!(
        debug.contains("c74f20a3") && !debug.contains("AYEKFAL"),
        "{debug}"
    );
}

#[test]
fn go_sign_vector_is_reproduced_exactly() {
    let signer = Signer::parse(PETER_SKEY).unwrap();
    assert_eq!(sign(TEXT, &signer).unwrap(), peter_note());
}

#[test]
fn go_signed_note_verifies_and_every_changed_byte_fails() {
    let msg = peter_note();
    let note = open(msg.as_bytes(), &[peter()]).unwrap();
    assert_eq!(note.text, TEXT);
    assert_eq!(note.verified_by, vec![key("PeterNeumann", 0xc74f20a3)]);
    assert!(note.unknown.is_empty());
    for i in 0..msg.len() {
        let mut bad = msg.clone().into_bytes();
        bad[i] ^= 0x01;
        assert!(open(&bad, &[peter()]).is_err(), "byte {i} changed");
    }
    // A changed text byte is a bad signature by the known key.
    let changed = msg.replacen("cryptography", "cryptographY", 1);
    assert_eq!(
        open(changed.as_bytes(), &[peter()]),
        Err(NoteError::BadSignature {
            name: "PeterNeumann".into(),
            key_id: 0xc74f20a3
        })
    );
}

/// golang/mod sumdb/note/note_test.go TestOpen: known and unknown signers.
#[test]
fn go_open_vectors_with_two_signers() {
    let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    let note = open(msg.as_bytes(), &[peter()]).unwrap();
    assert_eq!(note.verified_by, vec![key("PeterNeumann", 0xc74f20a3)]);
    assert_eq!(note.unknown, vec![key("EnochRoot", 0xaf0cfe78)]);

    let note = open(msg.as_bytes(), &[peter(), enoch()]).unwrap();
    assert_eq!(
        note.verified_by,
        vec![
            key("PeterNeumann", 0xc74f20a3),
            key("EnochRoot", 0xaf0cfe78)
        ]
    );
    assert!(note.unknown.is_empty());

    assert_eq!(
        open(msg.as_bytes(), &[]),
        Err(NoteError::UnknownKey {
            name: "PeterNeumann".into(),
            key_id: 0xc74f20a3
        })
    );
    // "Invalid signature": four characters inserted into Peter's signature.
    let mangled = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    assert!(matches!(
        open(mangled.as_bytes(), &[peter()]),
        Err(NoteError::BadSignature { .. })
    ));
    // Too many signatures (101 lines).
    let many = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
    assert_eq!(
        open(many.as_bytes(), &[peter()]),
        Err(NoteError::TooManySignatures { max: 100 })
    );
}

/// golang/mod sumdb/note/note_test.go TestOpen `badMsgs`: each is refused,
/// with the precise reason.
#[test]
fn go_malformed_messages_are_refused() {
    type Expect = fn(&NoteError) -> bool;
    let cases: [(String, Expect); 7] = [
        (TEXT.to_owned(), |e| matches!(e, NoteError::MalformedNote(_))),
        (format!("{TEXT}\n"), |e| matches!(e, NoteError::MalformedNote(_))),
        (format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]), |e| {
            matches!(e, NoteError::MalformedNote(_))
        }),
        (format!("\x01{TEXT}\n{PETER_SIG}"), |e| {
            *e == NoteError::ControlCharacter { offset: 0 }
        }),
        (format!("\u{ff}{TEXT}\n{PETER_SIG}"), |_| true),
        (
            format!("{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="),
            |e| matches!(e, NoteError::MalformedNote(_)),
        ),
        (format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"), |e| {
            matches!(e, NoteError::MalformedNote(_))
        }),
    ];
    for (msg, expected) in &cases {
        let err = open(msg.as_bytes(), &[peter()]).unwrap_err();
        assert!(expected(&err), "{msg:?}: {err:?}");
    }
    // Go's "\xff" case is a raw byte, not U+00FF.
    let mut raw = vec![0xff];
    raw.extend_from_slice(peter_note().as_bytes());
    assert_eq!(open(&raw, &[peter()]), Err(NoteError::NotUtf8));
}

/// golang/mod sumdb/note/note_test.go TestNewVerifier and TestNewSigner:
/// every proper substring and every single incremented byte of the key
/// strings is refused, as are the two hand-made bad keys.
#[test]
fn go_mangled_key_strings_are_refused() {
    for (good, parse) in [
        (
            PETER_VKEY,
            (|s: &str| Verifier::parse(s).is_ok()) as fn(&str) -> bool,
        ),
        (PETER_SKEY, |s: &str| Signer::parse(s).is_ok()),
    ] {
        assert!(parse(good));
        let b = good.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    assert!(!parse(&good[i..j]), "{:?}", &good[i..j]);
                }
            }
        }
        for i in 0..b.len() {
            let mut bad = b.to_vec();
            bad[i] += 1;
            let bad = String::from_utf8(bad).unwrap();
            assert!(!parse(&bad), "{bad:?}");
        }
    }
    // Wrong key length and unknown algorithm, each with an adjusted key id.
    assert!(Verifier::parse(
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
    )
    .is_err());
    assert_eq!(
        Verifier::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        Err(NoteError::UnsupportedAlgorithm { alg: 0x65 })
    );
    assert_eq!(
        Verifier::parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        Err(NoteError::KeyIdMismatch {
            name: "PeterNeumann".into(),
            declared: 0xc74f20a4,
            computed: 0xc74f20a3
        })
    );
}

#[test]
fn generated_key_round_trips() {
    let mut rng = StdRng::seed_from_u64(1);
    let signer = generated("tally.example/log", &mut rng);
    let verifier = Verifier::parse(&signer.verifier().to_key_string()).unwrap();
    assert_eq!(&verifier, signer.verifier());
    let again = Signer::parse(&signer.to_key_string()).unwrap();
    assert_eq!(again.verifier(), signer.verifier());

    let text = "tally.example/log\n12\nAAAA\n\nblank lines are fine inside the text\n";
    let msg = sign(text, &signer).unwrap();
    let note = open(msg.as_bytes(), &[verifier]).unwrap();
    assert_eq!(note.text, text);
    assert_eq!(note.verified_by, vec![key(signer.name(), signer.key_id())]);
}

#[test]
fn unknown_and_impostor_keys_are_refused() {
    let mut rng = StdRng::seed_from_u64(2);
    let log = generated("tally.example/log", &mut rng);
    let stranger = generated("someone.else/log", &mut rng);
    let msg = sign("hello\n", &stranger).unwrap();
    assert_eq!(
        open(msg.as_bytes(), &[log.verifier().clone()]),
        Err(NoteError::UnknownKey {
            name: stranger.name().into(),
            key_id: stranger.key_id()
        })
    );

    // A different key under the same name has a different key id: unknown.
    let impostor = generated("tally.example/log", &mut rng);
    assert_ne!(impostor.key_id(), log.key_id());
    let msg = sign("hello\n", &impostor).unwrap();
    assert_eq!(
        open(msg.as_bytes(), &[log.verifier().clone()]),
        Err(NoteError::UnknownKey {
            name: log.name().into(),
            key_id: impostor.key_id()
        })
    );

    // The impostor's valid signature relabelled with the log's key id (as
    // if the impostor had ground a colliding id) is a bad signature.
    let line = msg.lines().last().unwrap();
    let encoded = line.rsplit(' ').next().unwrap();
    let mut blob = BASE64.decode(encoded).unwrap();
    blob[..4].copy_from_slice(&log.key_id().to_be_bytes());
    let forged = format!("hello\n\n\u{2014} {} {}\n", log.name(), BASE64.encode(blob));
    assert_eq!(
        open(forged.as_bytes(), &[log.verifier().clone()]),
        Err(NoteError::BadSignature {
            name: log.name().into(),
            key_id: log.key_id()
        })
    );
}

#[test]
fn duplicate_ambiguous_oversized_and_bad_texts_are_refused() {
    let mut rng = StdRng::seed_from_u64(3);
    let log = generated("tally.example/log", &mut rng);
    let known = [log.verifier().clone()];
    let msg = sign("hello\n", &log).unwrap();
    let line = &msg["hello\n\n".len()..];
    let twice = format!("{msg}{line}");
    assert_eq!(
        open(twice.as_bytes(), &known),
        Err(NoteError::DuplicateSignature {
            name: log.name().into(),
            key_id: log.key_id()
        })
    );
    let ambiguous = [log.verifier().clone(), log.verifier().clone()];
    assert!(matches!(
        open(msg.as_bytes(), &ambiguous),
        Err(NoteError::AmbiguousKey { .. })
    ));
    // 99 unknown signatures plus the known one: at the limit, accepted, and
    // repeated unknown keys are listed once.
    let stranger = generated("someone.else/log", &mut rng);
    let other_line = sign("hello\n", &stranger).unwrap()["hello\n\n".len()..].to_owned();
    let full = format!("{msg}{}", other_line.repeat(99));
    let note = open(full.as_bytes(), &known).unwrap();
    assert_eq!(note.unknown.len(), 1);

    let big = "x".repeat(MAX_NOTE_LEN) + "\n";
    assert!(matches!(
        sign(&big, &log),
        Err(NoteError::NoteTooLarge { .. })
    ));
    assert!(matches!(
        open(format!("{big}\n{line}").as_bytes(), &known),
        Err(NoteError::NoteTooLarge { .. })
    ));
    assert!(matches!(
        sign("no newline", &log),
        Err(NoteError::MalformedNote(_))
    ));
    assert!(matches!(sign("", &log), Err(NoteError::MalformedNote(_))));
    assert_eq!(
        sign("tab\there\n", &log),
        Err(NoteError::ControlCharacter { offset: 3 })
    );
    for name in ["", "a+b", "a b", "a\u{2003}b", "a\u{1}b"] {
        assert_eq!(
            Signer::from_seed(name, &[7; 32]).map(|_| ()),
            Err(NoteError::InvalidKeyName(name.into()))
        );
    }
}

/// The example body of C2SP/C2SP tlog-checkpoint.md (its signature cannot
/// be checked: the spec does not publish the key).
#[test]
fn c2sp_checkpoint_example_parses() {
    let text =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    let checkpoint = TlogCheckpoint::parse(text).unwrap();
    assert_eq!(checkpoint.origin, "example.com/behind-the-sofa");
    assert_eq!(checkpoint.size, 20852163);
    assert_eq!(
        hex::encode(checkpoint.root_hash),
        "0ac5186a91863e8e1d90c808014aa89bf5da8e3ee1d9f07630f0378f68f1ab62"
    );
    assert!(checkpoint.extensions.is_empty());
    assert_eq!(checkpoint.to_text().unwrap(), text);
}

#[test]
fn bad_checkpoints_are_refused_precisely() {
    let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
    let cases = [
        (format!("o\n1\n{root}"), CheckpointError::NoFinalNewline),
        (
            "o\n1\n".to_owned(),
            CheckpointError::TooFewLines { found: 2 },
        ),
        (format!("\n1\n{root}\n"), CheckpointError::EmptyOrigin),
        (format!("o\n01\n{root}\n"), CheckpointError::BadSize),
        (format!("o\n+1\n{root}\n"), CheckpointError::BadSize),
        (
            format!("o\n18446744073709551616\n{root}\n"),
            CheckpointError::BadSize,
        ),
        ("o\n1\nCsUYapGG\n".to_owned(), CheckpointError::BadRootHash),
        (
            format!("o\n1\n{root}\n\n"),
            CheckpointError::EmptyLine { line: 4 },
        ),
        (
            format!("o\n1\n{root}\next\tx\n"),
            CheckpointError::ControlCharacter { line: 4 },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(TlogCheckpoint::parse(&text), Err(expected), "{text:?}");
    }
    let ok = TlogCheckpoint::parse(&format!("o\n0\n{root}\nfirst ext\nsecond\n")).unwrap();
    assert_eq!(ok.size, 0);
    assert_eq!(ok.extensions, vec!["first ext", "second"]);
    let mut bad = ok.clone();
    bad.origin = "two\nlines".into();
    assert_eq!(
        bad.to_text(),
        Err(CheckpointError::ControlCharacter { line: 1 })
    );
    bad.origin = "o".into();
    bad.extensions.push(String::new());
    assert_eq!(bad.to_text(), Err(CheckpointError::EmptyLine { line: 6 }));
}

/// A checkpoint over a real Merkle root, signed and opened again.
#[test]
fn signed_checkpoint_over_a_merkle_root_round_trips() {
    let mut rng = StdRng::seed_from_u64(4);
    let log = generated("tally.example/log", &mut rng);
    let leaves: Vec<_> = (0u32..1000)
        .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
        .collect();
    let checkpoint = TlogCheckpoint {
        origin: log.name().to_owned(),
        size: leaves.len() as u64,
        root_hash: merkle::root_from_leaf_hashes(&leaves),
        extensions: vec![],
    };
    let msg = sign(&checkpoint.to_text().unwrap(), &log).unwrap();
    let (opened, note) = open_checkpoint(msg.as_bytes(), &[log.verifier().clone()]).unwrap();
    assert_eq!(opened, checkpoint);
    assert_eq!(note.verified_by, vec![key(log.name(), log.key_id())]);

    let not_a_checkpoint = sign("just text\n", &log).unwrap();
    assert_eq!(
        open_checkpoint(not_a_checkpoint.as_bytes(), &[log.verifier().clone()]),
        Err(NoteError::Checkpoint(CheckpointError::TooFewLines {
            found: 1
        }))
    );
}
