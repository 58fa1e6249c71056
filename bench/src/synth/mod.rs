//! A synthetic anchored bundle: N records chained as tallyd stores them and
//! M anchors spread evenly over them, whose TPM evidence is signed by
//! *software* P-256 keys that the accompanying identity pins.
//!
//! Real evidence for a million anchors cannot be made on swtpm in reasonable
//! time. The verifier cannot tell these anchors from a TPM's (and need not:
//! it runs the same code on them): the TPMS_ATTEST and TPMT_SIGNATURE bytes
//! are marshalled exactly as `tally_attest::evidence::parse` parses them, the
//! checkpoints are C2SP signed notes by an Ed25519 log key, and every anchor
//! names the previous one by hash, so the bundle verifies as a real one
//! would (see the tests, which also show that a flipped signature byte makes
//! an anchor invalid).
//!
//! The chain of anchors is sequential (anchor k's checkpoint names the hash
//! of anchor k-1's stored bytes, signatures included), so signatures cannot
//! simply be made in parallel. What is parallel is the expensive part of
//! ECDSA signing, the nonce point `k * G`: worker threads precompute
//! `(k^-1, r)` pairs, and the sequential pass finishes each signature with
//! `s = k^-1 (z + r d)` (a few scalar multiplications). The Ed25519 note
//! signature stays on the sequential pass.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context as _;
use p256::ecdsa::Signature;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::elliptic_curve::Field;
use p256::{FieldBytes, ProjectivePoint, Scalar, U256};
use prost::Message;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use tally_attest::anchor::{
    anchor_hash, anchor_qualifying_data, AnchorLine, AnchorPolicy, AnchorRecord, Checkpoint,
    EvidenceRecord,
};
use tally_attest::bundle::{BundleHeader, BundleReader, BundleWriter, BUNDLE_FORMAT_VERSION};
use tally_attest::evidence::parse::{TPM_ALG_ECDSA, TPM_ST_ATTEST_NV, TPM_ST_ATTEST_QUOTE};
use tally_attest::evidence::verify::{AkPublicKey, EvidenceKeys};
use tally_attest::evidence::{
    marshal_pcr_selection, tally_counter_name, PcrBankSelection, TPM_ALG_SHA256,
};
use tally_attest::identity::{LogIdentity, TpmDescription};
use tally_attest::merkle::Frontier;
use tally_attest::note;
use tally_attest::{Hash, RecordHeader, GENESIS_PREV};
use tally_client::proto::{peer, Event, Peer, RecordBody, UnixPeer};

/// The synthetic log's id (fixed, so cached files stay valid).
pub const LOG_ID: [u8; 16] = *b"tally-bench-syn1";
/// The counter index the evidence certifies (tallyd's default).
pub const COUNTER_INDEX: u32 = tally_attest::identity::DEFAULT_COUNTER_INDEX;
/// The genesis anchor's counter value.
pub const GENESIS_COUNTER: u64 = 1000;
/// The PCRs quoted (tallyd's default, `sha256:0,1,2,3,4,5,6,7`).
const PCRS: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// TPM clock of the genesis anchor (ms) and its step per anchor.
const CLOCK_START: u64 = 5_000_000;
const CLOCK_STEP: u64 = 10;
const RESET_COUNT: u32 = 3;
/// First record's receive time (Unix ns) and the step per record.
const TIME_START: i64 = 1_790_000_000_000_000_000;
const TIME_STEP: i64 = 1_000;
/// Anchors per block of precomputed nonces.
const NONCE_BLOCK: usize = 4096;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub records: u64,
    /// Anchors, the genesis (at size 0) included; 0 for none.
    pub anchors: u64,
    /// Event payload bytes.
    pub payload: usize,
}

impl Shape {
    /// Log size covered by anchor `k`: 0 for the genesis, then evenly spread
    /// up to the whole log for the last.
    pub fn anchor_size(&self, k: u64) -> u64 {
        if self.anchors <= 1 {
            return 0;
        }
        (u128::from(k) * u128::from(self.records) / u128::from(self.anchors - 1)) as u64
    }
}

/// The software keys standing in for the TPM's and the log's.
pub struct Keys {
    ak: Scalar,
    owner_key: Scalar,
    ak_public: AkPublicKey,
    owner_public: AkPublicKey,
    log_key: note::Signer,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("log_key", &self.log_key)
            .finish_non_exhaustive()
    }
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(format!("tally-bench synthetic {label}").as_bytes()).into()
}

fn p256_key(label: &str) -> anyhow::Result<(Scalar, AkPublicKey)> {
    let secret = p256::SecretKey::from_bytes(&seed(label).into())
        .map_err(|_| anyhow::anyhow!("seed of {label} is not a P-256 scalar"))?;
    let public = secret.public_key().to_encoded_point(false);
    let public = AkPublicKey::from_sec1(public.as_bytes())?;
    Ok((*secret.to_nonzero_scalar(), public))
}

impl Keys {
    /// The fixed keys (derived from labels, so regenerated files match).
    pub fn fixed() -> anyhow::Result<Keys> {
        let (ak, ak_public) = p256_key("AK")?;
        let (owner_key, owner_public) = p256_key("owner key")?;
        let origin = format!("tally/{}", hex::encode(LOG_ID));
        let log_key = note::Signer::from_seed(&origin, &seed("log key"))?;
        Ok(Keys {
            ak,
            owner_key,
            ak_public,
            owner_public,
            log_key,
        })
    }

    /// The identity a verifier pins, given the genesis anchor's hash.
    pub fn identity(&self, genesis_anchor: Hash) -> LogIdentity {
        LogIdentity {
            log_id: LOG_ID,
            policy: AnchorPolicy {
                keys: EvidenceKeys {
                    ak: self.ak_public.clone(),
                    owner_key: self.owner_public.clone(),
                },
                counter_index: COUNTER_INDEX,
                log_key: Some(self.log_key.verifier().clone()),
                log_id: Some(LOG_ID),
            },
            genesis_counter: GENESIS_COUNTER,
            genesis_size: 0,
            genesis_anchor,
            tpm: TpmDescription {
                manufacturer: "synthetic (software P-256 keys)".into(),
                vendor: "tally-bench".into(),
                software: true,
            },
        }
    }
}

/// An ECDSA nonce, precomputed: `k^-1` and `r = x(k G) mod n`.
#[derive(Debug, Clone, Copy)]
struct Nonce {
    k_inv: Scalar,
    r: Scalar,
}

impl Nonce {
    fn random(rng: &mut rand::rngs::StdRng) -> Nonce {
        loop {
            let k = Scalar::random(&mut *rng);
            let x = (ProjectivePoint::GENERATOR * k).to_affine().x();
            let r = <Scalar as Reduce<U256>>::reduce_bytes(&x);
            let k_inv = Option::<Scalar>::from(k.invert());
            if let (Some(k_inv), false) = (k_inv, bool::from(r.is_zero())) {
                return Nonce { k_inv, r };
            }
        }
    }

    /// The ECDSA signature by `d` over SHA-256 `digest`, as a marshalled
    /// TPMT_SIGNATURE (ECDSA, SHA-256, r and s as 32-byte TPM2Bs).
    fn sign(&self, d: &Scalar, digest: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        let z = <Scalar as Reduce<U256>>::reduce_bytes(FieldBytes::from_slice(digest));
        let s = self.k_inv * (z + self.r * d);
        let signature = Signature::from_scalars(self.r, s)
            .map_err(|_| anyhow::anyhow!("ECDSA signature with s = 0"))?;
        let (r, s) = signature.split_bytes();
        let mut out = Vec::with_capacity(72);
        out.extend_from_slice(&TPM_ALG_ECDSA.to_be_bytes());
        out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        put_tpm2b(&mut out, &r);
        put_tpm2b(&mut out, &s);
        Ok(out)
    }
}

fn put_tpm2b(out: &mut Vec<u8>, data: &[u8]) {
    // Every TPM2B here is a digest, name or counter: far below 64 KiB.
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// TPMS_ATTEST up to and including firmwareVersion.
fn attest_head(kind: u16, signer: &[u8], extra_data: &[u8; 32], clock: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(&tally_attest::evidence::parse::TPM_GENERATED_VALUE.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    put_tpm2b(&mut out, signer);
    put_tpm2b(&mut out, extra_data);
    out.extend_from_slice(&clock.to_be_bytes());
    out.extend_from_slice(&RESET_COUNT.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // restartCount
    out.push(1); // safe
    out.extend_from_slice(&0x2019_1023_0016_3636u64.to_be_bytes()); // firmwareVersion
    out
}

/// What every anchor's evidence shares.
struct EvidenceParts {
    counter_name: Vec<u8>,
    ak_name: Vec<u8>,
    owner_name: Vec<u8>,
    selection: Vec<PcrBankSelection>,
    pcr_digests: Vec<Vec<u8>>,
    pcr_digest: [u8; 32],
}

impl EvidenceParts {
    fn new(keys: &Keys) -> anyhow::Result<EvidenceParts> {
        // Qualified names of the signing keys: nameAlg || SHA-256(public key).
        let name = |key: &AkPublicKey| -> anyhow::Result<Vec<u8>> {
            let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
            name.extend_from_slice(&Sha256::digest(key.to_pem()?.as_bytes()));
            Ok(name)
        };
        let pcr_digests: Vec<Vec<u8>> = PCRS
            .iter()
            .map(|pcr| Sha256::digest([*pcr]).to_vec())
            .collect();
        let mut hasher = Sha256::new();
        for digest in &pcr_digests {
            hasher.update(digest);
        }
        Ok(EvidenceParts {
            counter_name: tally_counter_name(COUNTER_INDEX),
            ak_name: name(&keys.ak_public)?,
            owner_name: name(&keys.owner_public)?,
            selection: vec![PcrBankSelection::new(TPM_ALG_SHA256, &PCRS)],
            pcr_digests,
            pcr_digest: hasher.finalize().into(),
        })
    }

    /// NV_Certify of the counter at `counter` (owner key) and Quote (AK),
    /// both over `qd`.
    fn evidence(
        &self,
        keys: &Keys,
        counter: u64,
        clock: u64,
        qd: &[u8; 32],
        nonces: (Nonce, Nonce),
    ) -> anyhow::Result<EvidenceRecord> {
        let mut certify = attest_head(TPM_ST_ATTEST_NV, &self.owner_name, qd, clock);
        put_tpm2b(&mut certify, &self.counter_name);
        certify.extend_from_slice(&0u16.to_be_bytes()); // offset
        put_tpm2b(&mut certify, &counter.to_be_bytes());
        let mut quote = attest_head(TPM_ST_ATTEST_QUOTE, &self.ak_name, qd, clock);
        quote.extend_from_slice(&marshal_pcr_selection(&self.selection));
        put_tpm2b(&mut quote, &self.pcr_digest);
        let certify_sig = nonces
            .0
            .sign(&keys.owner_key, &Sha256::digest(&certify).into())?;
        let quote_sig = nonces.1.sign(&keys.ak, &Sha256::digest(&quote).into())?;
        Ok(EvidenceRecord {
            counter,
            counter_index: COUNTER_INDEX,
            nv_certify_attest: certify,
            nv_certify_signature: certify_sig,
            quote_attest: quote,
            quote_signature: quote_sig,
            pcr_selection: marshal_pcr_selection(&self.selection),
            pcr_digests: self.pcr_digests.clone(),
        })
    }
}

/// Record `seq` chained after `prev`, as tallyd stores it (41-byte header,
/// then the `RecordBody` encoding of an event like the other scenarios').
fn record(seq: u64, prev: &Hash, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    RecordHeader {
        seq,
        prev_hash: *prev,
    }
    .encode_into(out);
    let body = RecordBody {
        receive_time_unix_nanos: TIME_START + TIME_STEP * seq as i64,
        peer: Some(Peer {
            kind: Some(peer::Kind::Unix(UnixPeer {
                uid: 1000,
                gid: 1000,
                pid: 4242,
            })),
        }),
        event: Some(Event {
            kind: "bench".into(),
            actor: crate::load::CLIENT_NAME.into(),
            subject: format!("event-{seq}"),
            payload: payload.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Encoding into a Vec cannot fail.
    let _ = body.encode(out);
}

/// Writes the records-only bundle (no anchor section) and returns its header
/// and the Merkle root at each anchor's size.
pub fn write_plain<W: Write>(out: W, shape: &Shape) -> anyhow::Result<(BundleHeader, Vec<Hash>)> {
    // The head is known only at the end: compute it in a first pass that
    // also collects the roots (hashing only), then write.
    let payload = vec![b'x'; shape.payload];
    let mut roots = Vec::with_capacity(shape.anchors as usize);
    let mut frontier = Frontier::new();
    let mut next_anchor = 0u64;
    let take_roots = |frontier: &Frontier, roots: &mut Vec<Hash>, next: &mut u64| {
        while *next < shape.anchors && shape.anchor_size(*next) == frontier.size() {
            roots.push(frontier.root());
            *next += 1;
        }
    };
    take_roots(&frontier, &mut roots, &mut next_anchor);
    let mut prev = GENESIS_PREV;
    let mut buf = Vec::new();
    for seq in 0..shape.records {
        record(seq, &prev, &payload, &mut buf);
        prev = tally_attest::entry_hash(&buf);
        frontier.push(prev, |_, _, _| {})?;
        take_roots(&frontier, &mut roots, &mut next_anchor);
    }
    let header = BundleHeader {
        format_version: BUNDLE_FORMAT_VERSION,
        log_id: LOG_ID.to_vec(),
        size: shape.records,
        head_hash: prev.to_vec(),
        exported_at_unix_nanos: TIME_START + TIME_STEP * shape.records as i64,
        producer: "tally-bench synthetic".into(),
        redacted: false,
    };
    let mut writer = BundleWriter::new(out, &header)?;
    let mut prev = GENESIS_PREV;
    for seq in 0..shape.records {
        record(seq, &prev, &payload, &mut buf);
        prev = tally_attest::entry_hash(&buf);
        writer.record(&buf)?;
    }
    writer.finish()?;
    Ok((header, roots))
}

/// Writes the anchored bundle: `header`, the anchors over `roots`, then the
/// records copied from the plain bundle `records`. Returns the genesis
/// anchor's hash.
pub fn write_anchored<W: Write, R: std::io::BufRead>(
    out: W,
    header: &BundleHeader,
    roots: &[Hash],
    shape: &Shape,
    keys: &Keys,
    records: R,
    threads: usize,
) -> anyhow::Result<Hash> {
    let mut writer = BundleWriter::new(out, header)?;
    let genesis = write_anchors(&mut writer, roots, shape, keys, threads)?;
    let mut reader = BundleReader::new(records)?;
    let mut buf = Vec::new();
    while reader.next_record(&mut buf)? {
        writer.record(&buf)?;
    }
    writer.finish()?;
    Ok(genesis)
}

fn write_anchors<W: Write>(
    writer: &mut BundleWriter<W>,
    roots: &[Hash],
    shape: &Shape,
    keys: &Keys,
    threads: usize,
) -> anyhow::Result<Hash> {
    anyhow::ensure!(
        roots.len() as u64 == shape.anchors,
        "{} roots for {} anchors",
        roots.len(),
        shape.anchors
    );
    let parts = EvidenceParts::new(keys)?;
    let blocks = roots.len().div_ceil(NONCE_BLOCK);
    let next_block = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (send, receive) = mpsc::channel::<(usize, Vec<(Nonce, Nonce)>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let send = send.clone();
            let (next_block, stop) = (&next_block, &stop);
            scope.spawn(move || loop {
                let block = next_block.fetch_add(1, Ordering::Relaxed);
                if block >= blocks || stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut rng = rand::rngs::StdRng::seed_from_u64(block as u64);
                let len = NONCE_BLOCK.min(roots.len() - block * NONCE_BLOCK);
                let nonces = (0..len)
                    .map(|_| (Nonce::random(&mut rng), Nonce::random(&mut rng)))
                    .collect();
                if send.send((block, nonces)).is_err() {
                    return;
                }
            });
        }
        drop(send);
        let result = sequential(writer, roots, shape, keys, &parts, &receive);
        stop.store(true, Ordering::Relaxed);
        result
    })
}

/// The sequential pass: each anchor names the previous one's hash.
fn sequential<W: Write>(
    writer: &mut BundleWriter<W>,
    roots: &[Hash],
    shape: &Shape,
    keys: &Keys,
    parts: &EvidenceParts,
    nonces: &mpsc::Receiver<(usize, Vec<(Nonce, Nonce)>)>,
) -> anyhow::Result<Hash> {
    let mut pending = std::collections::HashMap::new();
    let mut prev: Option<Hash> = None;
    let mut genesis = None;
    let mut bytes = Vec::new();
    for block in 0..roots.len().div_ceil(NONCE_BLOCK) {
        let block_nonces = loop {
            if let Some(found) = pending.remove(&block) {
                break found;
            }
            let (index, found) = nonces.recv().context("nonce workers stopped")?;
            pending.insert(index, found);
        };
        for (i, nonces) in block_nonces.into_iter().enumerate() {
            let k = block * NONCE_BLOCK + i;
            let counter = GENESIS_COUNTER + k as u64;
            let checkpoint = Checkpoint {
                log_id: LOG_ID,
                size: shape.anchor_size(k as u64),
                root: roots[k],
                anchor: Some(AnchorLine { counter, prev }),
            };
            let signed = checkpoint.sign(&keys.log_key)?;
            let qd = anchor_qualifying_data(signed.as_bytes());
            let clock = CLOCK_START + CLOCK_STEP * k as u64;
            let evidence = parts.evidence(keys, counter, clock, &qd, nonces)?;
            let record = AnchorRecord {
                checkpoint: signed.into_bytes(),
                evidence: Some(evidence),
                created_unix_nanos: TIME_START + 1_000_000_000 * k as i64,
            };
            bytes.clear();
            record.encode(&mut bytes)?;
            writer.anchor(&bytes)?;
            let hash = anchor_hash(&bytes);
            genesis.get_or_insert(hash);
            prev = Some(hash);
        }
    }
    genesis.context("no anchors")
}

/// The generated files of one shape.
#[derive(Debug, Clone)]
pub struct Files {
    /// Records only, no anchor section.
    pub plain: PathBuf,
    /// The same records after the anchors.
    pub anchored: PathBuf,
    /// The identity pinning the software keys and the genesis anchor.
    pub identity: PathBuf,
    /// Seconds spent generating; `None` when every file was cached.
    pub generated_seconds: Option<f64>,
}

/// Generates the files for `shape` in `dir`, unless they are there already.
/// Files are written under a temporary name and renamed when complete.
pub fn ensure(dir: &Path, shape: &Shape, threads: usize) -> anyhow::Result<Files> {
    std::fs::create_dir_all(dir)?;
    let stem = format!(
        "synth-n{}-m{}-p{}",
        shape.records, shape.anchors, shape.payload
    );
    let files = Files {
        plain: dir.join(format!(
            "synth-n{}-p{}.plain.tally",
            shape.records, shape.payload
        )),
        anchored: dir.join(format!("{stem}.tally")),
        identity: dir.join(format!("{stem}.identity.json")),
        generated_seconds: None,
    };
    let plain_roots = dir.join(format!("{stem}.roots"));
    if files.plain.is_file() && files.anchored.is_file() && files.identity.is_file() {
        return Ok(files);
    }
    let started = Instant::now();
    let keys = Keys::fixed()?;
    let (header, roots) = if files.plain.is_file() && plain_roots.is_file() {
        let header = BundleReader::new(BufReader::new(File::open(&files.plain)?))?
            .header()
            .clone();
        let bytes = std::fs::read(&plain_roots)?;
        let roots = bytes
            .chunks_exact(32)
            .map(|chunk| <[u8; 32]>::try_from(chunk).unwrap_or_default())
            .collect();
        (header, roots)
    } else {
        eprintln!(
            "tally-bench: writing {} records to {}",
            shape.records,
            files.plain.display()
        );
        let temp = files.plain.with_extension("partial");
        let (header, roots) = write_plain(
            BufWriter::with_capacity(1 << 20, File::create(&temp)?),
            shape,
        )?;
        std::fs::write(&plain_roots, roots.concat())?;
        std::fs::rename(&temp, &files.plain)?;
        (header, roots)
    };
    eprintln!(
        "tally-bench: signing {} anchors ({threads} nonce threads) into {}",
        shape.anchors,
        files.anchored.display()
    );
    let temp = files.anchored.with_extension("partial");
    let records = BufReader::with_capacity(1 << 20, File::open(&files.plain)?);
    let genesis = write_anchored(
        BufWriter::with_capacity(1 << 20, File::create(&temp)?),
        &header,
        &roots,
        shape,
        &keys,
        records,
        threads,
    )?;
    std::fs::write(&files.identity, keys.identity(genesis).to_json()?)?;
    std::fs::rename(&temp, &files.anchored)?;
    let _ = std::fs::remove_file(&plain_roots);
    Ok(Files {
        generated_seconds: Some(started.elapsed().as_secs_f64()),
        ..files
    })
}

#[cfg(test)]
mod tests;
