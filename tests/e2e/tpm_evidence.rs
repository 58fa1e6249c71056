//! The TPM side of `tally-attest` against a real swtpm per test (never a mock):
//! provisioning, anchors, the pure-Rust verifier against real evidence, and
//! interop with tpm2-tools.

use tally_attest::evidence::checkquote::write_checkquote_files;
use tally_attest::evidence::verify::{
    verify_evidence, verify_nv_certify, verify_quote, AkPublicKey, VerifyError,
};
use tally_attest::evidence::{tally_counter_name, tpma_nv, Evidence};
use tally_attest::tpm::error::TpmError;
use tally_attest::tpm::worker::{TpmConfig, TpmHandle};
use tally_tests::swtpm::Swtpm;

const INDEX: u32 = tally_attest::tpm::provision::DEFAULT_COUNTER_INDEX;

fn handle_for(tpm: &Swtpm) -> TpmHandle {
    TpmHandle::spawn(TpmConfig {
        tcti: Some(tpm.tcti()),
        ..TpmConfig::default()
    })
    .unwrap()
}

fn qd(tag: u8) -> [u8; 32] {
    [tag; 32]
}

#[tokio::test]
async fn provisioning_is_idempotent() {
    let Some(tpm) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let first = h.provision().await.unwrap();
    assert!(first.counter_defined_now);
    assert_eq!(
        first.counter, 1,
        "a new counter is incremented once so it can be read"
    );
    assert!(first.vendor.is_software_tpm(), "{:?}", first.vendor);
    assert_eq!(first.vendor.manufacturer, "IBM");
    let idx: Vec<u32> = first.ek_certificates.iter().map(|c| c.index).collect();
    assert!(
        idx.contains(&0x01C0_0002) && idx.contains(&0x01C0_0016),
        "{idx:x?}"
    );
    assert!(first
        .ek_certificates
        .iter()
        .all(|c| c.der.first() == Some(&0x30)));
    AkPublicKey::from_pem(&first.ak.pem).unwrap();
    // TPM2B_PUBLIC: u16 size prefix covering the rest.
    let n = u16::from_be_bytes([first.ak.tpm2b_public[0], first.ak.tpm2b_public[1]]);
    assert_eq!(usize::from(n) + 2, first.ak.tpm2b_public.len());

    let second = h.provision().await.unwrap();
    assert!(!second.counter_defined_now);
    assert_eq!(second.counter, 1);
    assert_eq!(second.ak, first.ak);

    // A new worker (new connection, AK re-derived) yields the same AK.
    drop(h);
    let h2 = handle_for(&tpm);
    let third = h2.provision().await.unwrap();
    assert_eq!(third.ak, first.ak);
    assert!(!third.counter_defined_now);
}

#[tokio::test]
async fn anchor_increments_by_one_and_verifies() {
    let Some(tpm) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let p = h.provision().await.unwrap();
    let ak = AkPublicKey::from_pem(&p.ak.pem).unwrap();
    let before = h.read_counter().await.unwrap();
    let ev = h.anchor(qd(1)).await.unwrap();
    assert_eq!(ev.counter, before + 1);
    assert_eq!(h.read_counter().await.unwrap(), before + 1);
    let v = verify_evidence(&ak, &ev, &qd(1), INDEX).unwrap();
    assert_eq!(v.counter, before + 1);
    assert_eq!(ev.pcrs.digests.len(), 8);

    // Fresh attestation: no increment, verifies with the nonce.
    let fresh = h.attest_fresh(qd(9)).await.unwrap();
    assert_eq!(fresh.counter, before + 1);
    assert_eq!(fresh.timings.increment, std::time::Duration::ZERO);
    verify_evidence(&ak, &fresh, &qd(9), INDEX).unwrap();
    assert_eq!(h.read_counter().await.unwrap(), before + 1);

    // tpm2_nvread agrees (release first: swtpm serves one connection at a time).
    h.release().await.unwrap();
    let out = tpm.tool(
        "tpm2_nvread",
        &[&format!("{INDEX:#x}"), "-C", "o", "-s", "8"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes: [u8; 8] = out.stdout.as_slice().try_into().unwrap();
    assert_eq!(u64::from_be_bytes(bytes), before + 1);
    // The worker reconnects transparently after release.
    assert_eq!(h.anchor(qd(2)).await.unwrap().counter, before + 2);
}

/// Applies `f` to a copy of `ev` and returns the verification error.
fn tampered(ak: &AkPublicKey, ev: &Evidence, f: impl FnOnce(&mut Evidence)) -> VerifyError {
    let mut e = ev.clone();
    f(&mut e);
    verify_evidence(ak, &e, &qd(1), INDEX).unwrap_err()
}

#[tokio::test]
async fn verifier_names_each_violation() {
    let Some(tpm) = Swtpm::start() else { return };
    let Some(other) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let p = h.provision().await.unwrap();
    let ak = AkPublicKey::from_pem(&p.ak.pem).unwrap();
    let ev = h.anchor(qd(1)).await.unwrap();
    verify_evidence(&ak, &ev, &qd(1), INDEX).unwrap();

    // Tampered attest byte (inside the clock info): the signature breaks.
    let clock_at = 4 + 2 + 2 + 34 + 2 + 32; // magic, type, qualifiedSigner, extraData
    let err = tampered(&ak, &ev, |e| e.nv_certify.attest[clock_at + 3] ^= 1);
    assert_eq!(err, VerifyError::SignatureInvalid);
    let err = tampered(&ak, &ev, |e| e.quote.attest[clock_at + 3] ^= 1);
    assert_eq!(err, VerifyError::SignatureInvalid);
    // Tampered magic.
    let err = tampered(&ak, &ev, |e| e.nv_certify.attest[0] = 0);
    assert!(
        matches!(err, VerifyError::BadMagic { found: 0x0054_4347 }),
        "{err:?}"
    );
    // Wrong qualifying data (a verifier expecting another checkpoint).
    let err = verify_evidence(&ak, &ev, &qd(2), INDEX).unwrap_err();
    assert_eq!(err, VerifyError::QualifyingDataMismatch);
    // Another TPM's AK.
    let h2 = handle_for(&other);
    let other_ak = AkPublicKey::from_pem(&h2.provision().await.unwrap().ak.pem).unwrap();
    assert_ne!(other_ak, ak);
    let err = verify_evidence(&other_ak, &ev, &qd(1), INDEX).unwrap_err();
    assert_eq!(err, VerifyError::SignatureInvalid);
    // Truncated attest and signature; trailing byte.
    let err = tampered(&ak, &ev, |e| {
        e.nv_certify.attest.truncate(e.nv_certify.attest.len() - 3)
    });
    assert!(matches!(err, VerifyError::Truncated { .. }), "{err:?}");
    let err = tampered(&ak, &ev, |e| e.quote.signature.truncate(20));
    assert!(matches!(err, VerifyError::Truncated { .. }), "{err:?}");
    let err = tampered(&ak, &ev, |e| e.quote.attest.push(0));
    assert_eq!(err, VerifyError::TrailingBytes { count: 1 });
    // NV certify and quote swapped.
    let err = tampered(&ak, &ev, |e| {
        std::mem::swap(&mut e.nv_certify, &mut e.quote)
    });
    assert_eq!(
        err,
        VerifyError::WrongType {
            expected: 0x8014,
            found: 0x8018
        }
    );
    let err = verify_quote(&ak, &ev.nv_certify, &qd(1), &ev.pcrs).unwrap_err();
    assert_eq!(
        err,
        VerifyError::WrongType {
            expected: 0x8018,
            found: 0x8014
        }
    );
    // A PCR value that is not what the TPM quoted.
    let err = tampered(&ak, &ev, |e| e.pcrs.digests[3][0] ^= 1);
    assert_eq!(err, VerifyError::PcrDigestMismatch);
    // The unsigned counter field lies.
    let err = tampered(&ak, &ev, |e| e.counter += 1);
    assert!(
        matches!(err, VerifyError::CounterMismatch { .. }),
        "{err:?}"
    );
    // Another counter index expected.
    let err = verify_evidence(&ak, &ev, &qd(1), INDEX + 1).unwrap_err();
    assert_eq!(err, VerifyError::NvIndexNameMismatch);
    // The name we compute is the one the TPM certified.
    let c = verify_nv_certify(&ak, &ev.nv_certify, &qd(1), None).unwrap();
    assert_eq!(c.index_name, tally_counter_name(INDEX));
}

#[tokio::test]
async fn tpm2_checkquote_accepts_exported_quote() {
    let Some(tpm) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let p = h.provision().await.unwrap();
    let ev = h.anchor(qd(7)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = write_checkquote_files(dir.path(), &p.ak.pem, &ev.quote, &ev.pcrs).unwrap();
    // The AK as marshalled TPM2B_PUBLIC, the other form `-u` accepts.
    let ak_tpm2b = dir.path().join("ak.pub");
    std::fs::write(&ak_tpm2b, &p.ak.tpm2b_public).unwrap();
    let run_with = |ak: &std::path::Path, q: &str| {
        std::process::Command::new("tpm2_checkquote")
            .arg("-u")
            .arg(ak)
            .arg("-m")
            .arg(&f.msg)
            .arg("-s")
            .arg(&f.sig)
            .arg("-f")
            .arg(&f.pcrs)
            .args(["-g", "sha256", "-q", q])
            .output()
            .unwrap()
    };
    let run = |q: &str| run_with(&f.ak_pem, q);
    let ok = run(&hex::encode(qd(7)));
    assert!(
        ok.status.success(),
        "tpm2_checkquote rejected our quote: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !run(&hex::encode(qd(8))).status.success(),
        "wrong nonce must fail"
    );
}

#[tokio::test]
async fn survives_swtpm_kill_and_restart() {
    let Some(mut tpm) = Swtpm::start() else {
        return;
    };
    let h = handle_for(&tpm);
    let p = h.provision().await.unwrap();
    let ak = AkPublicKey::from_pem(&p.ak.pem).unwrap();
    let c1 = h.anchor(qd(1)).await.unwrap().counter;

    tpm.kill();
    let err = h.anchor(qd(1)).await.unwrap_err();
    assert!(
        matches!(err, TpmError::Communication { .. } | TpmError::NoTpm { .. }),
        "{err:?}"
    );
    let err = h.read_counter().await.unwrap_err();
    assert!(matches!(err, TpmError::NoTpm { .. }), "{err:?}");

    tpm.restart();
    let ev = h.anchor(qd(3)).await.unwrap();
    // The SIGKILL was an unclean TPM reset, so the ORDERLY counter jumped
    // forward (reference implementation: to the next multiple of 256, minus
    // one), and the anchor added exactly one: the anchor attempted during the
    // outage did not increment it.
    assert!(
        ev.counter > c1 + 1,
        "an orderly counter jumps after an unclean reset"
    );
    assert_eq!(
        ev.counter % 256,
        0,
        "jump to 256k-1, then exactly one increment: {c1} -> {}",
        ev.counter
    );
    verify_evidence(&ak, &ev, &qd(3), INDEX).unwrap();
    assert_eq!(
        h.provision().await.unwrap().ak,
        p.ak,
        "same AK after TPM reset"
    );
}

#[tokio::test]
async fn predefined_index_with_wrong_attributes_is_refused() {
    let Some(tpm) = Swtpm::start() else { return };
    let out = tpm.tool(
        "tpm2_nvdefine",
        &[
            &format!("{INDEX:#x}"),
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "ownerread|ownerwrite",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = handle_for(&tpm);
    let err = h.provision().await.unwrap_err();
    match err {
        TpmError::IndexWrongAttributes {
            index,
            expected,
            found,
        } => {
            assert_eq!(index, INDEX);
            assert_eq!(expected, tpma_nv::TALLY_COUNTER);
            assert_eq!(found, tpma_nv::OWNERREAD | tpma_nv::OWNERWRITE);
        }
        other => panic!("expected IndexWrongAttributes, got {other:?}"),
    }
    // Anchoring on the wrong index is refused too (the index is not a counter).
    assert!(h.anchor(qd(1)).await.is_err());
}

#[tokio::test]
async fn wrong_owner_auth_and_missing_tpm_are_named() {
    let Some(tpm) = Swtpm::start() else { return };
    let out = tpm.tool("tpm2_changeauth", &["-c", "o", "s3cret"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = handle_for(&tpm);
    let err = h.provision().await.unwrap_err();
    assert!(matches!(err, TpmError::BadAuth { .. }), "{err:?}");
    drop(h);
    let h = TpmHandle::spawn(TpmConfig {
        tcti: Some(tpm.tcti()),
        owner_auth: b"s3cret".to_vec(),
        ..TpmConfig::default()
    })
    .unwrap();
    assert!(h.provision().await.unwrap().counter_defined_now);

    let gone = TpmHandle::spawn(TpmConfig {
        tcti: Some("swtpm:path=/nonexistent/swtpm.sock".into()),
        ..TpmConfig::default()
    })
    .unwrap();
    let err = gone.provision().await.unwrap_err();
    assert!(matches!(err, TpmError::NoTpm { .. }), "{err:?}");
}

#[tokio::test]
async fn a_sealed_secret_unseals_only_on_its_own_tpm() {
    //! The log's signing key is sealed to the TPM: it unseals there, not on
    //! another TPM, and not from a tampered blob.
    use tally_attest::tpm::seal::SealedBlob;
    let Some(tpm) = Swtpm::start() else { return };
    let Some(other) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let secret = zeroize::Zeroizing::new((0u8..32).collect::<Vec<u8>>());
    let blob = h.seal(secret.clone()).await.unwrap();
    assert!(
        !blob.private.windows(8).any(|w| w == &secret[..8]),
        "the secret is in the blob in clear"
    );
    let stored = SealedBlob::from_bytes(&blob.to_bytes()).unwrap();
    assert_eq!(*h.unseal(stored.clone()).await.unwrap(), *secret);
    assert!(
        handle_for(&other).unseal(stored.clone()).await.is_err(),
        "another TPM unsealed it"
    );
    let mut tampered = stored;
    let at = tampered.private.len() - 3;
    tampered.private[at] ^= 0x40;
    assert!(
        h.unseal(tampered).await.is_err(),
        "a tampered blob unsealed"
    );
}
