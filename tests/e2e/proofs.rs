//! Merkle proofs end to end: inclusion and consistency proofs from the real
//! daemon, bound to TPM anchors on a real swtpm, verified offline with only
//! the AK public key; tampered proofs and another TPM's key are refused.

use prost::Message;
use rand::Rng;
use tally_attest::proof::ProofFile;
use tally_tests::swtpm::Swtpm;
use tally_tests::{append_pipelined, Daemon, DaemonOpts, Run};

fn tally(daemon: &Daemon, args: &[&str]) -> Run {
    daemon.tally(args).unwrap()
}

fn ok(run: Run) -> String {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inclusion_and_consistency_proofs_verify_with_only_the_identity() {
    let Some(tpm) = Swtpm::start() else { return };
    let daemon = Daemon::start(DaemonOpts {
        tpm: format!(
            "enabled = true\ntcti = \"{}\"\nanchor_interval_secs = 3600\n",
            tpm.tcti()
        ),
        ..DaemonOpts::default()
    })
    .unwrap();
    let mut client = daemon.client().await.unwrap();
    let batches = |from: u64, to: u64| {
        (from..to)
            .step_by(100)
            .map(move |start| start..(start + 100).min(to))
    };
    append_pipelined(&mut client, batches(0, 1000), 4, |_, _| {})
        .await
        .unwrap();
    ok(tally(&daemon, &["anchor"]));
    append_pipelined(&mut client, batches(1000, 1537), 4, |_, _| {})
        .await
        .unwrap();
    ok(tally(&daemon, &["anchor"]));
    let ak = daemon.data_dir().join("tpm/ak.pem").display().to_string();
    let owner_key = daemon
        .data_dir()
        .join("tpm/owner-key.pem")
        .display()
        .to_string();
    let path = |name: &str| daemon.dir().join(name).display().to_string();
    let id = path("identity.json");
    let identity = daemon.tallyd(&["identity"]).unwrap();
    assert_eq!(identity.code, 0, "{identity:?}");
    std::fs::write(&id, &identity.stdout).unwrap();

    // Inclusion of a record against the newest anchor (1537 records).
    let seq =
        tally_tests::seed::rng("inclusion_and_consistency_proofs_verify_with_only_the_identity")
            .gen_range(0..1537u64);
    let inclusion = path("inclusion.proof");
    ok(tally(
        &daemon,
        &[
            "prove",
            "inclusion",
            "--seq",
            &seq.to_string(),
            "--out",
            &inclusion,
        ],
    ));
    let out = ok(tally(
        &daemon,
        &["verify-proof", &inclusion, "--identity", &id],
    ));
    assert!(
        out.contains(&format!("record seq {seq} ")) && out.contains("log of 1537 records"),
        "{out}"
    );

    // Against the older anchor, and a record beyond it.
    let older = path("older.proof");
    ok(tally(
        &daemon,
        &[
            "prove",
            "inclusion",
            "--seq",
            "999",
            "--size",
            "1000",
            "--out",
            &older,
        ],
    ));
    assert!(
        ok(tally(&daemon, &["verify-proof", &older, "--identity", &id]))
            .contains("log of 1000 records")
    );
    let beyond = tally(
        &daemon,
        &[
            "prove",
            "inclusion",
            "--seq",
            "1200",
            "--size",
            "1000",
            "--out",
            &older,
        ],
    );
    assert_eq!(beyond.code, 2);
    assert!(
        beyond
            .stderr
            .contains("not in the anchored log of 1000 records"),
        "{beyond:?}"
    );
    let unanchored = tally(
        &daemon,
        &[
            "prove",
            "inclusion",
            "--seq",
            "1",
            "--size",
            "1001",
            "--out",
            &older,
        ],
    );
    assert!(
        unanchored
            .stderr
            .contains("no anchor covers exactly 1001 records"),
        "{unanchored:?}"
    );

    // The checkpoints are C2SP signed notes by the log's key, sealed to the TPM.
    let log_key = daemon
        .data_dir()
        .join("tpm/log-key.pub")
        .display()
        .to_string();
    // Keys given one by one (no identity): the proof verifies, but the log
    // is not pinned, so the verdict is PARTIAL (exit 3).
    let run = tally(
        &daemon,
        &[
            "verify-proof",
            &inclusion,
            "--ak",
            &ak,
            "--owner-key",
            &owner_key,
            "--log-key",
            &log_key,
        ],
    );
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.starts_with("OK"), "{}", run.stdout);
    assert!(run.stdout.contains("PARTIAL"), "{}", run.stdout);
    let stranger = "tally/00000000000000000000000000000000+e643c1fb+AUfA+ZUXaylh7DiUNgfPt7eh7CaX8ej3dmEiaU4YbXXe";
    let run = tally(
        &daemon,
        &[
            "verify-proof",
            &inclusion,
            "--ak",
            &ak,
            "--owner-key",
            &owner_key,
            "--log-key",
            stranger,
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("checkpoint signature"),
        "{}",
        run.stdout
    );
    let bundle = path("log.bundle");
    ok(tally(&daemon, &["export", "--out", &bundle]));
    let run = tally(&daemon, &["verify", &bundle, "--identity", &id]);
    // No fresh attestation: PARTIAL (exit 3), with everything else OK.
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert!(
        run.stdout.contains("checkpoint keys:    OK"),
        "{}",
        run.stdout
    );
    // A tampered log fails against its anchored checkpoints: one record
    // rewritten and the chain after it recomputed consistently (the strongest
    // rewrite a root attacker can make without the TPM) breaks the roots.
    let rewritten = path("rewritten.bundle");
    rewrite_record_consistently(&bundle, &rewritten, 700);
    let run = tally(&daemon, &["verify", &rewritten, "--identity", &id]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("chain intact:       OK"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Merkle root for size 1000 does not match the records"),
        "{}",
        run.stdout
    );

    // Consistency: today's log extends yesterday's.
    let consistency = path("consistency.proof");
    ok(tally(
        &daemon,
        &[
            "prove",
            "consistency",
            "--from",
            "1000",
            "--out",
            &consistency,
        ],
    ));
    let out = ok(tally(
        &daemon,
        &["verify-proof", &consistency, "--identity", &id],
    ));
    assert!(
        out.contains("the log of 1537 records") && out.contains("extends the log of 1000 records"),
        "{out}"
    );

    // Proof sizes: the Merkle part is what grows with the log.
    let file = ProofFile::decode(std::fs::read(&inclusion).unwrap().as_slice()).unwrap();
    let proof = file.inclusion.unwrap();
    assert!(
        proof.path.len() <= 11,
        "ceil(log2 1537) = 11 hashes at most"
    );
    println!(
        "inclusion proof: {} hashes ({} bytes) + record {} bytes + anchor {} bytes",
        proof.path.len(),
        32 * proof.path.len(),
        proof.record.len(),
        proof.anchor.len()
    );

    // Tampering: one bit of the path, one byte of the record, the anchor's
    // checkpoint size, and another TPM's AK.
    let tampered = path("tampered.proof");
    let mut bad = proof.clone();
    bad.path[0][7] ^= 0x10;
    std::fs::write(
        &tampered,
        ProofFile {
            inclusion: Some(bad),
            consistency: None,
        }
        .encode_to_vec(),
    )
    .unwrap();
    let run = tally(&daemon, &["verify-proof", &tampered, "--identity", &id]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("FAILED") && run.stdout.contains("root"),
        "{}",
        run.stdout
    );

    let mut bad = proof.clone();
    let last = bad.record.len() - 1;
    bad.record[last] ^= 0x01;
    std::fs::write(
        &tampered,
        ProofFile {
            inclusion: Some(bad),
            consistency: None,
        }
        .encode_to_vec(),
    )
    .unwrap();
    assert_eq!(
        tally(&daemon, &["verify-proof", &tampered, "--identity", &id]).code,
        1
    );

    let mut bad = ProofFile::decode(std::fs::read(&consistency).unwrap().as_slice()).unwrap();
    let mut record =
        tally_attest::anchor::decode_anchor(&bad.consistency.as_ref().unwrap().old_anchor).unwrap();
    let mut checkpoint = tally_attest::anchor::Checkpoint::parse(&record.checkpoint).unwrap();
    checkpoint.size -= 1;
    record.checkpoint = checkpoint.to_text().into_bytes();
    bad.consistency.as_mut().unwrap().old_anchor = record.encode_to_vec();
    std::fs::write(&tampered, bad.encode_to_vec()).unwrap();
    // The identity pins the log key, so the edited checkpoint fails on its
    // signature; with the TPM keys alone, on the TPM's qualifying data.
    let run = tally(&daemon, &["verify-proof", &tampered, "--identity", &id]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("checkpoint signature"),
        "{}",
        run.stdout
    );
    let run = tally(
        &daemon,
        &[
            "verify-proof",
            &tampered,
            "--ak",
            &ak,
            "--owner-key",
            &owner_key,
        ],
    );
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("qualifying data"), "{}", run.stdout);

    let Some(other_tpm) = Swtpm::start() else {
        return;
    };
    let other = daemon.dir().join("other");
    let provision = tally_tests::tallyd(&[
        std::ffi::OsStr::new("--data-dir"),
        other.as_os_str(),
        std::ffi::OsStr::new("--tcti"),
        std::ffi::OsStr::new(&other_tpm.tcti()),
        std::ffi::OsStr::new("provision"),
    ])
    .unwrap();
    assert_eq!(provision.code, 0, "{provision:?}");
    let other_ak = other.join("tpm/ak.pem").display().to_string();
    let other_owner = other.join("tpm/owner-key.pem").display().to_string();
    let run = tally(
        &daemon,
        &[
            "verify-proof",
            &inclusion,
            "--ak",
            &other_ak,
            "--owner-key",
            &other_owner,
        ],
    );
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("signature"), "{}", run.stdout);
}

/// Changes one byte of record `seq`'s body and re-links every later record
/// (their prev_hash) and the header's head, so the chain itself verifies.
fn rewrite_record_consistently(from: &str, to: &str, seq: usize) {
    use tally_attest::bundle::{BundleHeader, MAGIC};
    let bytes = std::fs::read(from).unwrap();
    let mut sections = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        sections.push((bytes[at], bytes[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    let mut records: Vec<&mut Vec<u8>> = sections
        .iter_mut()
        .filter(|(kind, _)| *kind == 0x02)
        .map(|(_, body)| body)
        .collect();
    let last = records[seq].len() - 1;
    records[seq][last] ^= 0x01;
    for i in seq + 1..records.len() {
        let prev = tally_attest::entry_hash(records[i - 1]);
        records[i][9..41].copy_from_slice(&prev);
    }
    let head = tally_attest::entry_hash(records.last().unwrap());
    let header = &mut sections[0].1;
    let mut decoded = BundleHeader::decode(header.as_slice()).unwrap();
    decoded.head_hash = head.to_vec();
    *header = decoded.encode_to_vec();
    let mut out = MAGIC.to_vec();
    for (kind, body) in &sections {
        out.push(*kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    std::fs::write(to, out).unwrap();
}
