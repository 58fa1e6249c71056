//! The TPM side of `tally-attest` against a real swtpm per test (never a mock):
//! provisioning (counter, AK, owner key), the owner record, certify-then-increment,
//! the pure-Rust verifier against real evidence, and interop with tpm2-tools.

use tally_attest::evidence::checkquote::write_checkquote_files;
use tally_attest::evidence::verify::{
    verify_evidence, verify_nv_certify, verify_quote, AkPublicKey, EvidenceKeys,
};
use tally_attest::evidence::{tally_counter_name, tpma_nv, Evidence, EvidenceError, SignedAttest};
use tally_attest::tpm::error::{
    tpm_base_code, TpmError, TPM_RC_INTEGRITY, TPM_RC_NV_UNINITIALIZED,
};
use tally_attest::tpm::owner::OwnerRecord;
use tally_attest::tpm::worker::{Provisioned, TpmConfig, TpmHandle};
use tally_tests::swtpm::Swtpm;

const INDEX: u32 = tally_attest::tpm::provision::DEFAULT_COUNTER_INDEX;
const OWNER_RECORD: &str = "0x01c17a12";

fn keys_of(p: &Provisioned) -> EvidenceKeys {
    EvidenceKeys {
        ak: AkPublicKey::from_pem(&p.ak.pem).unwrap(),
        owner_key: AkPublicKey::from_pem(&p.owner_key.pem).unwrap(),
    }
}

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
    let keys = keys_of(&first);
    assert_ne!(keys.ak, keys.owner_key, "two keys of their own");
    // TPM2B_PUBLIC: u16 size prefix covering the rest.
    let n = u16::from_be_bytes([first.ak.tpm2b_public[0], first.ak.tpm2b_public[1]]);
    assert_eq!(usize::from(n) + 2, first.ak.tpm2b_public.len());

    let second = h.provision().await.unwrap();
    assert!(!second.counter_defined_now);
    assert_eq!(second.counter, 1);
    assert_eq!(second.ak, first.ak);
    assert_eq!(second.owner_key, first.owner_key);

    // A new worker (new connection, keys re-derived) yields the same keys.
    drop(h);
    let h2 = handle_for(&tpm);
    let third = h2.provision().await.unwrap();
    assert_eq!(third.ak, first.ak);
    assert_eq!(third.owner_key, first.owner_key);
    assert!(!third.counter_defined_now);
    let keys = h2.keys().await.unwrap();
    assert_eq!((keys.ak, keys.owner_key), (first.ak, first.owner_key));
}

#[tokio::test]
async fn certify_never_increments_and_verifies_with_both_keys() {
    //! An anchor is certify (owner key + AK, at the open value), then a separate
    //! increment that closes the value; a fresh attestation is certify alone.
    let Some(tpm) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let p = h.provision().await.unwrap();
    let keys = keys_of(&p);
    let before = h.read_counter().await.unwrap();
    let ev = h.certify(qd(1)).await.unwrap();
    assert_eq!(ev.counter, before, "certified at the open value");
    assert_eq!(ev.timings.increment, std::time::Duration::ZERO);
    assert_eq!(
        h.read_counter().await.unwrap(),
        before,
        "certify never increments"
    );
    let v = verify_evidence(&keys, &ev, &qd(1), INDEX).unwrap();
    assert_eq!(v.counter, before);
    assert_eq!(ev.pcrs.digests.len(), 8);
    // The same value can be certified again (it is open) until the increment.
    assert_eq!(h.certify(qd(9)).await.unwrap().counter, before);
    assert_eq!(h.increment().await.unwrap(), before + 1);
    let after = h.certify(qd(2)).await.unwrap();
    assert_eq!(
        after.counter,
        before + 1,
        "the closed value is gone for good"
    );
    verify_evidence(&keys, &after, &qd(2), INDEX).unwrap();

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
    assert_eq!(h.certify(qd(3)).await.unwrap().counter, before + 1);
}

/// An NV_Certify of the counter signed by the AK instead of the owner key: what
/// anyone with (empty) endorsement auth can make, through tss-esapi directly.
fn certify_signed_by_the_ak(tpm: &Swtpm, qualifying_data: &[u8; 32]) -> SignedAttest {
    use tss_esapi::interface_types::resource_handles::NvAuth;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::{Data, SignatureScheme};
    use tss_esapi::traits::Marshall;
    let conf = tally_attest::tpm::tcti::parse_tcti(&tpm.tcti()).unwrap();
    let mut ctx = tss_esapi::Context::new(conf).unwrap();
    let ak = tally_attest::tpm::provision::load_ak(&mut ctx).unwrap();
    let counter = tally_attest::tpm::provision::open_nv_index(&mut ctx, INDEX)
        .unwrap()
        .unwrap();
    let data = Data::try_from(qualifying_data.to_vec()).unwrap();
    let (attest, signature) = ctx
        .execute_with_sessions(
            (
                Some(AuthSession::Password),
                Some(AuthSession::Password),
                None,
            ),
            |c| {
                c.nv_certify(
                    ak.handle,
                    NvAuth::Owner,
                    counter,
                    data,
                    SignatureScheme::Null,
                    8,
                    0,
                )
            },
        )
        .unwrap();
    ctx.flush_context(ak.handle.into()).unwrap();
    SignedAttest {
        attest: attest.value().to_vec(),
        signature: signature.marshall().unwrap(),
    }
}

#[tokio::test]
async fn a_certify_by_the_ak_does_not_pass_as_the_owner_keys() {
    //! The AK survives TPM2_Clear, so a counter certified by it could come from
    //! a counter a Clear restarted: only the owner key's certify is accepted.
    let Some(tpm) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let p = h.provision().await.unwrap();
    let keys = keys_of(&p);
    let mut ev = h.certify(qd(4)).await.unwrap();
    h.release().await.unwrap();
    let by_ak = certify_signed_by_the_ak(&tpm, &qd(4));
    // It is a genuine certify of the same counter by the pinned AK...
    let name = tally_counter_name(INDEX);
    let certified = verify_nv_certify(&keys.ak, &by_ak, &qd(4), Some(&name)).unwrap();
    assert_eq!(certified.value, ev.counter);
    // ...and it does not verify in the owner key's place.
    ev.nv_certify = by_ak;
    let err = verify_evidence(&keys, &ev, &qd(4), INDEX).unwrap_err();
    assert_eq!(err, EvidenceError::SignatureInvalid);
    // Nor do the keys swapped verify genuine evidence.
    let genuine = h.certify(qd(5)).await.unwrap();
    let swapped = EvidenceKeys {
        ak: keys.owner_key.clone(),
        owner_key: keys.ak.clone(),
    };
    assert_eq!(
        verify_evidence(&swapped, &genuine, &qd(5), INDEX).unwrap_err(),
        EvidenceError::SignatureInvalid
    );
}

/// Applies `f` to a copy of `ev` and returns the verification error.
fn tampered(keys: &EvidenceKeys, ev: &Evidence, f: impl FnOnce(&mut Evidence)) -> EvidenceError {
    let mut e = ev.clone();
    f(&mut e);
    verify_evidence(keys, &e, &qd(1), INDEX).unwrap_err()
}

#[tokio::test]
async fn verifier_names_each_violation() {
    let Some(tpm) = Swtpm::start() else { return };
    let Some(other) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let p = h.provision().await.unwrap();
    let keys = keys_of(&p);
    let ak = keys.ak.clone();
    let ev = h.certify(qd(1)).await.unwrap();
    verify_evidence(&keys, &ev, &qd(1), INDEX).unwrap();

    // Tampered attest byte (inside the clock info): the signature breaks.
    let clock_at = 4 + 2 + 2 + 34 + 2 + 32; // magic, type, qualifiedSigner, extraData
    let err = tampered(&keys, &ev, |e| e.nv_certify.attest[clock_at + 3] ^= 1);
    assert_eq!(err, EvidenceError::SignatureInvalid);
    let err = tampered(&keys, &ev, |e| e.quote.attest[clock_at + 3] ^= 1);
    assert_eq!(err, EvidenceError::SignatureInvalid);
    // Tampered magic.
    let err = tampered(&keys, &ev, |e| e.nv_certify.attest[0] = 0);
    assert!(
        matches!(err, EvidenceError::BadMagic { found: 0x0054_4347 }),
        "{err:?}"
    );
    // Wrong qualifying data (a verifier expecting another checkpoint).
    let err = verify_evidence(&keys, &ev, &qd(2), INDEX).unwrap_err();
    assert_eq!(err, EvidenceError::QualifyingDataMismatch);
    // Another TPM's keys: its owner key fails the certify, its AK the quote.
    let h2 = handle_for(&other);
    let other_keys = keys_of(&h2.provision().await.unwrap());
    assert_ne!(other_keys.ak, ak);
    let err = verify_evidence(&other_keys, &ev, &qd(1), INDEX).unwrap_err();
    assert_eq!(err, EvidenceError::SignatureInvalid);
    let other_ak_only = EvidenceKeys {
        ak: other_keys.ak.clone(),
        owner_key: keys.owner_key.clone(),
    };
    let err = verify_evidence(&other_ak_only, &ev, &qd(1), INDEX).unwrap_err();
    assert_eq!(err, EvidenceError::SignatureInvalid);
    // Truncated attest and signature; trailing byte.
    let err = tampered(&keys, &ev, |e| {
        e.nv_certify.attest.truncate(e.nv_certify.attest.len() - 3)
    });
    assert!(matches!(err, EvidenceError::Truncated { .. }), "{err:?}");
    let err = tampered(&keys, &ev, |e| e.quote.signature.truncate(20));
    assert!(matches!(err, EvidenceError::Truncated { .. }), "{err:?}");
    let err = tampered(&keys, &ev, |e| e.quote.attest.push(0));
    assert_eq!(err, EvidenceError::TrailingBytes { count: 1 });
    // NV certify and quote swapped: each is checked with the other key.
    let err = tampered(&keys, &ev, |e| {
        std::mem::swap(&mut e.nv_certify, &mut e.quote)
    });
    assert_eq!(err, EvidenceError::SignatureInvalid);
    // Under its own key, each is of the wrong type for the other's place.
    let err = verify_nv_certify(&ak, &ev.quote, &qd(1), None).unwrap_err();
    assert_eq!(
        err,
        EvidenceError::WrongType {
            expected: 0x8014,
            found: 0x8018
        }
    );
    let err = verify_quote(&keys.owner_key, &ev.nv_certify, &qd(1), &ev.pcrs).unwrap_err();
    assert_eq!(
        err,
        EvidenceError::WrongType {
            expected: 0x8018,
            found: 0x8014
        }
    );
    // A PCR value that is not what the TPM quoted.
    let err = tampered(&keys, &ev, |e| e.pcrs.digests[3][0] ^= 1);
    assert_eq!(err, EvidenceError::PcrDigestMismatch);
    // The unsigned counter field lies.
    let err = tampered(&keys, &ev, |e| e.counter += 1);
    assert!(
        matches!(err, EvidenceError::CounterMismatch { .. }),
        "{err:?}"
    );
    // Another counter index expected.
    let err = verify_evidence(&keys, &ev, &qd(1), INDEX + 1).unwrap_err();
    assert_eq!(err, EvidenceError::NvIndexNameMismatch);
    // The name we compute is the one the TPM certified.
    let c = verify_nv_certify(&keys.owner_key, &ev.nv_certify, &qd(1), None).unwrap();
    assert_eq!(c.index_name, tally_counter_name(INDEX));
}

#[tokio::test]
async fn tpm2_checkquote_accepts_exported_quote() {
    let Some(tpm) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let p = h.provision().await.unwrap();
    let ev = h.certify(qd(7)).await.unwrap();
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
    let keys = keys_of(&p);
    let c1 = h.certify(qd(1)).await.unwrap().counter;
    assert_eq!(h.increment().await.unwrap(), c1 + 1);

    tpm.kill();
    let err = h.certify(qd(1)).await.unwrap_err();
    assert!(
        matches!(err, TpmError::Communication { .. } | TpmError::NoTpm { .. }),
        "{err:?}"
    );
    let err = h.read_counter().await.unwrap_err();
    assert!(matches!(err, TpmError::NoTpm { .. }), "{err:?}");

    tpm.restart();
    let ev = h.certify(qd(3)).await.unwrap();
    // The SIGKILL was an unclean TPM reset, so the ORDERLY counter jumped
    // forward (reference implementation: to the next multiple of 256, minus
    // one); the certify attempted during the outage changed nothing.
    assert!(
        ev.counter > c1 + 1,
        "an orderly counter jumps after an unclean reset"
    );
    assert_eq!(
        ev.counter % 256,
        255,
        "jump to 256k-1: {c1} -> {}",
        ev.counter
    );
    verify_evidence(&keys, &ev, &qd(3), INDEX).unwrap();
    let again = h.provision().await.unwrap();
    assert_eq!(again.ak, p.ak, "same AK after TPM reset");
    assert_eq!(
        again.owner_key, p.owner_key,
        "same owner key after TPM reset"
    );
}

#[tokio::test]
async fn the_owner_record_names_one_log_and_is_never_overwritten() {
    //! A second log on the same counter is refused by the daemon because the
    //! owner record names the first; here the TPM side of it.
    let Some(tpm) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    h.provision().await.unwrap();
    assert_eq!(h.read_owner_record().await.unwrap(), None);
    let first = OwnerRecord {
        log_id: [0x11; 16],
        genesis_counter: 1,
    };
    h.write_owner_record(&first).await.unwrap();
    h.write_owner_record(&first).await.unwrap(); // idempotent
    assert_eq!(h.read_owner_record().await.unwrap(), Some(first));
    let second = OwnerRecord {
        log_id: [0x22; 16],
        genesis_counter: 5,
    };
    match h.write_owner_record(&second).await.unwrap_err() {
        TpmError::OwnerRecordTaken {
            index,
            log_id,
            genesis_counter,
        } => {
            assert_eq!(index, INDEX + 1);
            assert_eq!(log_id, [0x11; 16]);
            assert_eq!(genesis_counter, 1);
        }
        other => panic!("expected OwnerRecordTaken, got {other:?}"),
    }
    assert_eq!(h.read_owner_record().await.unwrap(), Some(first));
    // tpm2-tools reads the layout DESIGN gives.
    h.release().await.unwrap();
    let out = tpm.tool("tpm2_nvread", &[OWNER_RECORD, "-C", "o"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, first.to_bytes());
    let public = tpm.tool("tpm2_nvreadpublic", &[OWNER_RECORD]);
    let public = String::from_utf8_lossy(&public.stdout);
    assert!(public.contains("ownerwrite|ownerread|written"), "{public}");
}

#[tokio::test]
async fn an_owner_record_index_of_another_shape_is_refused() {
    let Some(tpm) = Swtpm::start() else { return };
    let out = tpm.tool(
        "tpm2_nvdefine",
        &[
            OWNER_RECORD,
            "-C",
            "o",
            "-s",
            "16",
            "-a",
            "ownerread|ownerwrite",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let h = handle_for(&tpm);
    let err = h.read_owner_record().await.unwrap_err();
    assert!(
        matches!(err, TpmError::OwnerRecordWrongShape { found_size: 16, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("tpm.counter_index"), "{err}");
}

#[tokio::test]
async fn tpm2_clear_changes_the_owner_key_and_deletes_the_counter_but_keeps_the_ak() {
    //! Why the owner key signs the counter: after TPM2_Clear (which may restart
    //! an orderly counter low), the TPM can no longer make the pinned owner key.
    let Some(tpm) = Swtpm::start() else { return };
    let h = handle_for(&tpm);
    let before = h.provision().await.unwrap();
    h.write_owner_record(&OwnerRecord {
        log_id: [1; 16],
        genesis_counter: 1,
    })
    .await
    .unwrap();
    h.release().await.unwrap();
    let out = tpm.tool("tpm2_clear", &["-c", "l"]);
    assert!(out.status.success(), "{out:?}");
    let keys = h.keys().await.unwrap();
    assert_eq!(keys.ak, before.ak, "the endorsement hierarchy survives");
    assert_ne!(keys.owner_key, before.owner_key, "the owner seed does not");
    let err = h.read_counter().await.unwrap_err();
    assert!(matches!(err, TpmError::CounterNotDefined { .. }), "{err:?}");
    assert_eq!(h.read_owner_record().await.unwrap(), None);
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
    // Certifying the wrong index is refused too (never written, not a counter).
    let err = h.certify(qd(1)).await.unwrap_err();
    assert!(
        matches!(err, TpmError::Tpm { op: "TPM2_NV_Certify", rc, .. }
            if tpm_base_code(rc) == TPM_RC_NV_UNINITIALIZED),
        "{err:?}"
    );
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
    // The TPM refuses to load the blob under another TPM's storage primary:
    // TPM_RC_INTEGRITY, not some other failure that would hide a broken seal.
    let refused_as_tampered = |err: &TpmError| {
        matches!(err, TpmError::Tpm { op: "TPM2_Load (sealed object)", rc, .. }
            if tpm_base_code(*rc) == TPM_RC_INTEGRITY)
    };
    let err = handle_for(&other)
        .unseal(stored.clone())
        .await
        .expect_err("another TPM unsealed it");
    assert!(refused_as_tampered(&err), "{err:?}");
    let mut tampered = stored;
    let at = tampered.private.len() - 3;
    tampered.private[at] ^= 0x40;
    let err = h
        .unseal(tampered)
        .await
        .expect_err("a tampered blob unsealed");
    assert!(refused_as_tampered(&err), "{err:?}");
}
