//! The crash-state explorer (issue 16): what a power cut can leave of
//! tallyd's data directory, and whether tallyd recovers every acked event
//! from each such state.
//!
//! 1. [`record::record`] runs a workload against `tallyd` with
//!    `libtally_iorec.so` preloaded (tests/iorec): every file-system
//!    operation on the data directory lands in an op log, in completion
//!    order, with its CLOCK_MONOTONIC time; the clients keep each ack with
//!    the time they received it; then SIGKILL.
//! 2. [`model::Model`] compiles the op log under the persistence model
//!    (docs/DESIGN.md section 11) and [`states::choices`] picks the crash
//!    states of each cut; states are deduplicated by a hash of the files
//!    they hold.
//! 3. [`check::check`] writes each distinct state to a directory, starts
//!    tallyd on it and reads everything back: every event acked before the
//!    cut (received before the first operation the cut did not complete) is
//!    at its seq with its entry hash, the chain verifies, nothing unsent is
//!    there; with a TPM, the store is not behind the TPM's counter as tallyd
//!    had incremented it by then (the TPM keeps its state across the cut).

pub mod check;
pub mod image;
pub mod model;
pub mod oplog;
pub mod process;
pub mod record;
pub mod states;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use model::{Choice, Model};
use record::Recording;

/// How much exploring to do.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Random states (and single-block variations) per cut beyond the
    /// exhaustive limit.
    pub samples_per_cut: usize,
    /// Distinct states checked at most (a seeded sample when there are more).
    pub max_checks: usize,
    /// States checked in parallel.
    pub workers: usize,
}

/// What exploring one recorded run found.
#[derive(Debug)]
pub struct Report {
    pub path: &'static str,
    pub ops: usize,
    pub acks: usize,
    pub cuts: usize,
    /// Crash states built (before deduplication).
    pub built: usize,
    /// Distinct crash states (by the files they hold).
    pub distinct: usize,
    /// Distinct crash states tallyd was started on and checked.
    pub checked: usize,
    /// Each failed state: what was wrong, and which state it was.
    pub failures: Vec<String>,
    /// TPM2_NV_Increment commands tallyd sent during the run.
    pub increments: u64,
    pub elapsed: Duration,
}

/// A distinct state and the most any cut producing it requires.
#[derive(Debug)]
struct Candidate {
    choice: Choice,
    acked_before: u64,
    increments: u64,
}

/// At most `max` of `candidates`, spread over the cuts: a random state of
/// each cut, then another of each, and so on, so that a narrow window (a
/// few ops between two flushes) is never left out of a sample.
fn spread(candidates: Vec<Candidate>, max: usize, rng: &mut impl Rng) -> Vec<Candidate> {
    let mut by_cut: std::collections::BTreeMap<model::Cut, Vec<Candidate>> = Default::default();
    for candidate in candidates {
        by_cut
            .entry(candidate.choice.cut)
            .or_default()
            .push(candidate);
    }
    let mut groups: Vec<Vec<Candidate>> = by_cut.into_values().collect();
    for group in &mut groups {
        group.shuffle(rng);
    }
    groups.shuffle(rng);
    let mut out = Vec::with_capacity(max);
    while out.len() < max {
        let before = out.len();
        for group in &mut groups {
            if out.len() < max {
                out.extend(group.pop());
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

/// Explores `recording`; with `tpm`, also checks the store against the TPM
/// counter increments in the op log.
pub fn explore(
    path: &'static str,
    recording: &Recording,
    tpm: bool,
    budget: Budget,
    rng: &mut impl Rng,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let model = Model::new(recording.snapshot.clone(), &recording.ops)?;
    let work = recording.path().join("states");
    std::fs::create_dir_all(&work)?;
    let base_anchor = if tpm {
        let seen = check::check(
            &recording.snapshot,
            recording,
            &[],
            None,
            &work.join("snapshot"),
        )?;
        Some(seen.newest_anchor.unwrap_or(0))
    } else {
        None
    };
    let cuts = model.cuts();
    let mut distinct: HashMap<u64, Candidate> = HashMap::new();
    let mut built = 0;
    for &cut in &cuts {
        let space = model.space(cut);
        for choice in states::choices(&space, rng, budget.samples_per_cut) {
            built += 1;
            let fingerprint = model.materialise(&choice).fingerprint();
            let acked_before = model.acked_before(cut);
            let increments = model.increments_before(cut);
            let candidate = distinct.entry(fingerprint).or_insert(Candidate {
                choice,
                acked_before,
                increments,
            });
            candidate.acked_before = candidate.acked_before.max(acked_before);
            candidate.increments = candidate.increments.max(increments);
        }
    }
    let count = distinct.len();
    let mut candidates: Vec<Candidate> = distinct.into_values().collect();
    candidates.sort_by_key(|candidate| {
        (
            candidate.choice.cut,
            candidate.choice.meta_prefix,
            candidate.choice.kept.clone(),
        )
    });
    if candidates.len() > budget.max_checks {
        candidates = spread(candidates, budget.max_checks, rng);
    }
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..budget.workers.max(1) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(candidate) = candidates.get(index) else { break };
                let tree = model.materialise(&candidate.choice);
                let required: Vec<_> = recording
                    .acks
                    .iter()
                    .filter(|ack| ack.at < candidate.acked_before)
                    .copied()
                    .collect();
                let min_anchor = base_anchor.map(|base| base + candidate.increments);
                let dir = work.join(index.to_string());
                match check::check(&tree, recording, &required, min_anchor, &dir) {
                    Ok(_) => {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    Err(err) => {
                        let choice = &candidate.choice;
                        let text = format!(
                            "{path}: state at op {} of {} (in flight: {}), metadata prefix {}, {} optional blocks kept, \
                             {} acks required (kept in {}): {err:#}",
                            choice.cut.k,
                            model.ops(),
                            choice.cut.in_flight,
                            choice.meta_prefix,
                            choice.kept.len(),
                            required.len(),
                            dir.display()
                        );
                        match failures.lock() {
                            Ok(mut failures) => failures.push(text),
                            Err(_) => return,
                        }
                    }
                }
            });
        }
    });
    let report = Report {
        path,
        ops: model.ops(),
        acks: recording.acks.len(),
        cuts: cuts.len(),
        built,
        distinct: count,
        checked: candidates.len(),
        failures: failures.into_inner().unwrap_or_default(),
        increments: model.increments_before(model::Cut {
            k: model.ops(),
            in_flight: false,
        }),
        elapsed: started.elapsed(),
    };
    println!(
        "crash states {}: {} ops, {} acks, {} cuts, {} states built, {} distinct, {} checked, {} failed, {} TPM counter increments, {:.1} s",
        report.path,
        report.ops,
        report.acks,
        report.cuts,
        report.built,
        report.distinct,
        report.checked,
        report.failures.len(),
        report.increments,
        report.elapsed.as_secs_f64()
    );
    Ok(report)
}
