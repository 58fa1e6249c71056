//! Verification with anchors (`tally-bench verify-anchors`): the synthetic
//! bundle of [`crate::synth`] (N records, M anchors whose evidence software
//! P-256 keys sign) verified in-process with `tally_attest::verify_bundle`,
//! as `tally verify --identity` does, against
//!
//! * the same records without any anchor section, verified without a policy
//!   (chain only: with a policy and no anchors the verifier answers
//!   `NoAnchors`, a FAIL, so the chain-only run is the "no anchors" baseline);
//! * `--anchors newest` on the anchored bundle (two anchors' signatures,
//!   every anchor parsed and chained);
//! * bare SHA-256 over the same record bytes (baseline (c)).
//!
//! Each configuration first runs once cold (not counted; its peak RSS is
//! taken then, before the SHA-256 baseline's records are loaded), then the
//! timed runs alternate, one of each per round, and medians are reported.
//! Microbenchmarks of one ECDSA P-256 verify, one Ed25519 verify and one
//! whole `verify_anchor` on this machine explain the cost per anchor.

use std::fs::File;
use std::hint::black_box;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::pkcs8::DecodePublicKey as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tally_attest::anchor::checks::parse_anchor_unverified;
use tally_attest::anchor::{decode_anchor, verify_anchor};
use tally_attest::bundle::BundleReader;
use tally_attest::evidence::parse::parse_signature;
use tally_attest::evidence::verify::verify_signed_attest;
use tally_attest::evidence::SignedAttest;
use tally_attest::identity::LogIdentity;
use tally_attest::verify::{AnchorChecks, AnchorsVerdict, CounterVerdict, Origin};
use tally_attest::VerifyOptions;

use super::verify::median;
use crate::baseline::sha256::{self, ShaBaseline};
use crate::synth::{self, Shape};

#[derive(Debug, Clone)]
pub struct VerifyAnchorsOptions {
    /// Where the generated bundles are cached.
    pub dir: PathBuf,
    pub shape: Shape,
    /// Timed runs of each configuration (alternating).
    pub runs: usize,
    /// Iterations of each microbenchmark.
    pub micro_iterations: usize,
}

/// One verifier configuration's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub name: &'static str,
    pub bundle_bytes: u64,
    /// The untimed first run (None: skipped, see `COLD_ALL_MAX_ANCHORS`).
    pub cold_seconds: Option<f64>,
    /// Highest peak RSS of the process over the timed runs.
    pub peak_rss_bytes: Option<u64>,
    pub runs: Vec<Run>,
    /// Median of the runs' seconds.
    pub seconds: f64,
    /// Median of the runs' CPU seconds (all threads).
    pub cpu_seconds: f64,
    /// Record bytes per second, MB/s.
    pub record_mb_per_sec: f64,
    /// Bundle bytes per second, MB/s.
    pub bundle_mb_per_sec: f64,
}

/// Single-thread costs on this machine, CPU microseconds per call.
#[derive(Debug, Clone, Serialize)]
pub struct Micro {
    pub iterations: usize,
    /// p256 `VerifyingKey::verify_prehash`, the bare ECDSA P-256 verify.
    pub ecdsa_p256_verify_us: f64,
    /// The same verify with precomputed fixed-base tables of the generator and
    /// the key (`crate::ecdsa_table`, a prototype no verifier uses).
    pub ecdsa_p256_table_verify_us: f64,
    /// `verify_signed_attest`: parse TPMS_ATTEST and TPMT_SIGNATURE, SHA-256, ECDSA verify.
    pub signed_attest_us: f64,
    /// ed25519-dalek `verify_strict` (what `note::open` uses) over a checkpoint-sized text.
    pub ed25519_verify_us: f64,
    /// `note::open` of one anchor's signed checkpoint with the log key.
    pub note_open_us: f64,
    /// `verify_anchor`: everything one anchor costs under `--anchors all`.
    pub verify_anchor_us: f64,
    /// `parse_anchor_unverified`: what one anchor costs under `--anchors newest`.
    pub parse_anchor_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyAnchors {
    pub records: u64,
    pub anchors: u64,
    pub payload: usize,
    /// Sum of the record sizes (what is hashed).
    pub record_bytes: u64,
    /// Threads the verifier spreads anchor checks over (available parallelism).
    pub threads: usize,
    /// `None`: the bundles were cached.
    pub generated_seconds: Option<f64>,
    pub plain: Config,
    pub all: Config,
    pub newest: Config,
    pub sha: ShaBaseline,
    /// (all - plain) / anchors: wall time each anchor adds, in microseconds.
    pub all_us_per_anchor_wall: f64,
    /// The same in CPU time of the process (all threads).
    pub all_us_per_anchor_cpu: f64,
    pub newest_us_per_anchor_wall: f64,
    pub micro: Micro,
}

struct Target<'a> {
    name: &'static str,
    path: &'a Path,
    identity: Option<&'a LogIdentity>,
    checks: AnchorChecks,
}

pub fn run(options: &VerifyAnchorsOptions) -> anyhow::Result<VerifyAnchors> {
    let shape = options.shape;
    anyhow::ensure!(shape.anchors >= 1, "--anchors must be at least 1");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let files = synth::ensure(&options.dir, &shape, threads)?;
    let identity = LogIdentity::from_json(&std::fs::read_to_string(&files.identity)?)
        .with_context(|| format!("{}", files.identity.display()))?;
    let targets = [
        Target {
            name: "no anchors (chain only)",
            path: &files.plain,
            identity: None,
            checks: AnchorChecks::All,
        },
        Target {
            name: "anchors all",
            path: &files.anchored,
            identity: Some(&identity),
            checks: AnchorChecks::All,
        },
        Target {
            name: "anchors newest",
            path: &files.anchored,
            identity: Some(&identity),
            checks: AnchorChecks::Newest,
        },
    ];
    // Cold runs warm the page cache; the `--anchors all` run at scale is
    // minutes of CPU per run, so its first timed run is its cold one.
    let mut cold = Vec::new();
    for target in &targets {
        let skip = target.checks == AnchorChecks::All
            && target.identity.is_some()
            && shape.anchors > COLD_ALL_MAX_ANCHORS;
        cold.push(if skip {
            None
        } else {
            eprintln!("tally-bench: cold run, {}", target.name);
            Some(verify_once(target, &shape)?.seconds)
        });
    }
    let micro = micro(&files.anchored, &identity, options.micro_iterations)?;
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    let mut sha_runs = Vec::new();
    let mut sha = None;
    for round in 0..options.runs {
        for (target, runs) in targets.iter().zip(runs.iter_mut()) {
            eprintln!("tally-bench: round {}, {}", round + 1, target.name);
            runs.push(verify_once(target, &shape)?);
        }
        // Loaded per round and freed before the next verify runs, so their
        // peak RSS is the verifier's own.
        let records = read_records_upto(&files.plain, SHA_MAX_BYTES)?;
        sha_runs.push(sha256::measure(&records));
        sha = Some(ShaBaseline::from(
            &records,
            median(&sha_runs),
            sha_runs.len(),
        ));
    }
    let sha = sha.context("no runs (--runs 0)")?;
    finish(options, &files, &targets, runs, cold, sha, threads, micro)
}

/// Bare SHA-256 hashes at most this many record bytes (in memory), the
/// first records of the bundle: a rate, so a prefix gives the same MB/s.
const SHA_MAX_BYTES: usize = 1 << 30;
/// Above this many anchors the `--anchors all` configuration has no
/// separate cold run.
const COLD_ALL_MAX_ANCHORS: u64 = 100_000;

/// One timed verify.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Run {
    pub seconds: f64,
    /// CPU seconds of this process (all threads) during the run.
    pub cpu_seconds: f64,
    /// `VmHWM` after the run, reset before it (None if /proc refused).
    pub peak_rss_bytes: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
fn finish(
    options: &VerifyAnchorsOptions,
    files: &synth::Files,
    targets: &[Target<'_>],
    runs: Vec<Vec<Run>>,
    cold: Vec<Option<f64>>,
    sha: ShaBaseline,
    threads: usize,
    micro: Micro,
) -> anyhow::Result<VerifyAnchors> {
    let shape = options.shape;
    let record_bytes = record_bytes(&files.plain)?;
    let mut configs = Vec::new();
    for ((target, runs), cold_seconds) in targets.iter().zip(runs).zip(cold) {
        let seconds = median(&runs.iter().map(|run| run.seconds).collect::<Vec<_>>());
        let cpu_seconds = median(&runs.iter().map(|run| run.cpu_seconds).collect::<Vec<_>>());
        let bundle_bytes = std::fs::metadata(target.path)?.len();
        configs.push(Config {
            name: target.name,
            bundle_bytes,
            cold_seconds,
            peak_rss_bytes: runs.iter().filter_map(|run| run.peak_rss_bytes).max(),
            runs,
            seconds,
            cpu_seconds,
            record_mb_per_sec: record_bytes as f64 / seconds / 1e6,
            bundle_mb_per_sec: bundle_bytes as f64 / seconds / 1e6,
        });
    }
    let [plain, all, newest]: [Config; 3] = configs
        .try_into()
        .map_err(|_| anyhow::anyhow!("three configurations expected"))?;
    let per_anchor =
        |config: &Config| (config.seconds - plain.seconds) / shape.anchors as f64 * 1e6;
    let per_anchor_cpu =
        |config: &Config| (config.cpu_seconds - plain.cpu_seconds) / shape.anchors as f64 * 1e6;
    Ok(VerifyAnchors {
        records: shape.records,
        anchors: shape.anchors,
        payload: shape.payload,
        record_bytes,
        threads,
        generated_seconds: files.generated_seconds,
        all_us_per_anchor_wall: per_anchor(&all),
        all_us_per_anchor_cpu: per_anchor_cpu(&all),
        newest_us_per_anchor_wall: per_anchor(&newest),
        plain,
        all,
        newest,
        sha,
        micro,
    })
}

/// One verify of `target`, checked as a PASS-ready report.
fn verify_once(target: &Target<'_>, shape: &Shape) -> anyhow::Result<Run> {
    let input = BufReader::with_capacity(1 << 20, File::open(target.path)?);
    let options = match target.identity {
        None => VerifyOptions::default(),
        Some(identity) => VerifyOptions {
            policy: Some(&identity.policy),
            origin: Some(Origin::Genesis {
                counter: identity.genesis_counter,
                anchor: identity.genesis_anchor,
            }),
            anchor_checks: target.checks,
            ..Default::default()
        },
    };
    let rss_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let cpu = crate::procfs::own_cpu_seconds()?;
    let started = Instant::now();
    let report = tally_attest::verify_bundle(input, options, |_, _| {})?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = crate::procfs::own_cpu_seconds()? - cpu;
    let peak_rss_bytes = rss_reset
        .then(|| crate::procfs::status_bytes(std::process::id(), "VmHWM").ok())
        .flatten();
    let chain = report
        .chain
        .as_ref()
        .map_err(|damage| anyhow::anyhow!("{}: damage: {damage}", target.name))?;
    anyhow::ensure!(
        chain.size == shape.records,
        "verified {} records",
        chain.size
    );
    if target.identity.is_some() {
        let signatures = match target.checks {
            AnchorChecks::All => shape.anchors,
            AnchorChecks::Newest => shape.anchors.min(2),
        };
        anyhow::ensure!(
            report.anchors
                == AnchorsVerdict::Valid {
                    count: shape.anchors,
                    signatures_checked: signatures
                },
            "{}: anchors {:?}",
            target.name,
            report.anchors
        );
        anyhow::ensure!(
            matches!(report.counter, CounterVerdict::Continuous { .. }),
            "{}: counter {:?}",
            target.name,
            report.counter
        );
    }
    Ok(Run {
        seconds,
        cpu_seconds,
        peak_rss_bytes,
    })
}

/// The first records of `bundle`, up to `max_bytes` of them, in memory.
fn read_records_upto(bundle: &Path, max_bytes: usize) -> anyhow::Result<sha256::Records> {
    let input = BufReader::with_capacity(1 << 20, File::open(bundle)?);
    let mut reader = BundleReader::new(input)?;
    let mut records = sha256::Records::default();
    let mut buf = Vec::new();
    while records.bytes.len() < max_bytes && reader.next_record(&mut buf)? {
        records.bytes.extend_from_slice(&buf);
        records.ends.push(records.bytes.len());
    }
    Ok(records)
}

/// Sum of the record sizes of `bundle`.
fn record_bytes(bundle: &Path) -> anyhow::Result<u64> {
    let input = BufReader::with_capacity(1 << 20, File::open(bundle)?);
    let mut reader = BundleReader::new(input)?;
    let (mut total, mut buf) = (0u64, Vec::new());
    while reader.next_record(&mut buf)? {
        total += buf.len() as u64;
    }
    Ok(total)
}

/// Mean CPU microseconds per call of `f` over `iterations` calls: the
/// process's CPU time (only this thread runs here), so that other load on
/// the shared machine does not count; 10 ms clock ticks, hence at least
/// 0.5 s per figure.
fn time_us(iterations: usize, mut f: impl FnMut() -> bool) -> anyhow::Result<f64> {
    let cpu = crate::procfs::own_cpu_seconds()?;
    let started = Instant::now();
    let mut calls = 0usize;
    while calls < iterations || started.elapsed().as_secs_f64() < 0.5 {
        anyhow::ensure!(black_box(f()), "a microbenchmark call failed");
        calls += 1;
    }
    Ok((crate::procfs::own_cpu_seconds()? - cpu) * 1e6 / calls as f64)
}

fn micro(bundle: &Path, identity: &LogIdentity, iterations: usize) -> anyhow::Result<Micro> {
    // The last anchor (a typical one: full-length anchor line).
    let mut reader = BundleReader::new(BufReader::new(File::open(bundle)?))?;
    let (mut bytes, mut buf) = (Vec::new(), Vec::new());
    while reader.next_anchor(&mut buf)? {
        std::mem::swap(&mut bytes, &mut buf);
    }
    let record = decode_anchor(&bytes)?;
    let evidence = record
        .evidence
        .as_ref()
        .context("anchor without evidence")?;
    let policy = &identity.policy;
    let ak = &policy.keys.ak;
    let signed = SignedAttest {
        attest: evidence.quote_attest.clone(),
        signature: evidence.quote_signature.clone(),
    };
    let parsed = parse_signature(&signed.signature)?;
    let signature = p256::ecdsa::Signature::from_scalars(
        *p256::FieldBytes::from_slice(&parsed.r),
        *p256::FieldBytes::from_slice(&parsed.s),
    )?;
    let key = p256::ecdsa::VerifyingKey::from_public_key_pem(&ak.to_pem()?)?;
    let digest = Sha256::digest(&signed.attest);
    let table = crate::ecdsa_table::TableVerifier::new(&key);
    let log_key = policy
        .log_key
        .as_ref()
        .context("identity without log key")?;
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let text = &record.checkpoint[..];
    let ed_signature = signing.sign(text);
    let ed_key = signing.verifying_key();
    Ok(Micro {
        iterations,
        ecdsa_p256_verify_us: time_us(iterations, || {
            key.verify_prehash(black_box(&digest), &signature).is_ok()
        })?,
        ecdsa_p256_table_verify_us: time_us(iterations, || {
            table.verify_prehash(black_box(&digest.into()), &signature)
        })?,
        signed_attest_us: time_us(iterations, || {
            verify_signed_attest(ak, black_box(&signed)).is_ok()
        })?,
        ed25519_verify_us: time_us(iterations, || {
            ed_key.verify_strict(black_box(text), &ed_signature).is_ok()
        })?,
        note_open_us: time_us(iterations, || {
            tally_attest::note::open(black_box(text), std::slice::from_ref(log_key))
                .is_ok_and(|note| !note.verified_by.is_empty())
        })?,
        verify_anchor_us: time_us(iterations, || {
            verify_anchor(policy, black_box(&bytes)).is_ok()
        })?,
        parse_anchor_us: time_us(iterations, || {
            parse_anchor_unverified(black_box(&bytes)).is_ok()
        })?,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", crate::format::mib(bytes))
}

impl VerifyAnchors {
    /// The figures as a text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(
            &mut out,
            format!(
                "verify-anchors: {} records ({} record bytes, {}-byte payloads), {} anchors, {} threads, median of {} alternating runs{}",
                self.records,
                self.record_bytes,
                self.payload,
                self.anchors,
                self.threads,
                self.plain.runs.len(),
                match self.generated_seconds {
                    Some(seconds) => format!(", bundles generated in {seconds:.0} s"),
                    None => ", bundles cached".into(),
                }
            ),
        );
        line(
            &mut out,
            format!(
                "{:<24} {:>15} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10}",
                "configuration",
                "bundle bytes",
                "seconds",
                "rec MB/s",
                "bndl MB/s",
                "/no-anch",
                "/sha256",
                "cold s",
                "peak RSS"
            ),
        );
        for config in [&self.plain, &self.all, &self.newest] {
            line(
                &mut out,
                format!(
                    "{:<24} {:>15} {:>9.3} {:>10.0} {:>10.0} {:>9.4} {:>9.4} {:>9} {:>10}",
                    config.name,
                    config.bundle_bytes,
                    config.seconds,
                    config.record_mb_per_sec,
                    config.bundle_mb_per_sec,
                    config.record_mb_per_sec / self.plain.record_mb_per_sec,
                    config.record_mb_per_sec / self.sha.mb_per_sec,
                    config
                        .cold_seconds
                        .map_or_else(|| "-".into(), |s| format!("{s:.3}")),
                    config.peak_rss_bytes.map_or_else(|| "-".into(), mib),
                ),
            );
        }
        line(
            &mut out,
            format!(
                "{:<24} {:>15} {:>9.3} {:>10.0} {:>10} {:>9.4} {:>9}",
                format!("bare SHA-256 ({}k rec)", self.sha.records / 1000),
                "-",
                self.sha.seconds,
                self.sha.mb_per_sec,
                "-",
                self.sha.mb_per_sec / self.plain.record_mb_per_sec,
                "1",
            ),
        );
        line(
            &mut out,
            format!(
                "runs (s): no anchors {:?}; all {:?}; newest {:?}",
                rounded(&self.plain.runs),
                rounded(&self.all.runs),
                rounded(&self.newest.runs)
            ),
        );
        line(
            &mut out,
            format!(
                "per anchor: all {:.1} us wall, {:.1} us CPU (process, {} verifier threads); newest {:.2} us wall",
                self.all_us_per_anchor_wall,
                self.all_us_per_anchor_cpu,
                self.threads,
                self.newest_us_per_anchor_wall
            ),
        );
        let m = &self.micro;
        line(
            &mut out,
            format!(
                "one call, one thread, CPU time (>= {} calls and >= 0.5 s each): ECDSA P-256 verify {:.1} us (with fixed-base tables, prototype: {:.1} us), verify_signed_attest {:.1} us, Ed25519 verify_strict {:.1} us, note::open {:.1} us, verify_anchor {:.1} us, parse_anchor_unverified {:.2} us",
                m.iterations,
                m.ecdsa_p256_verify_us,
                m.ecdsa_p256_table_verify_us,
                m.signed_attest_us,
                m.ed25519_verify_us,
                m.note_open_us,
                m.verify_anchor_us,
                m.parse_anchor_us
            ),
        );
        let target = self.all.record_mb_per_sec / self.plain.record_mb_per_sec;
        line(
            &mut out,
            format!(
                "target: MB/s with anchors (all) >= 0.9 of MB/s without: {:.4} -> {}",
                target,
                if target >= 0.9 { "met" } else { "NOT met" }
            ),
        );
        out
    }
}

fn rounded(runs: &[Run]) -> Vec<f64> {
    runs.iter()
        .map(|run| (run.seconds * 1000.0).round() / 1000.0)
        .collect()
}
