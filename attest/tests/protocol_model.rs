//! A model of the anchoring protocol v2 (docs/DESIGN.md section 10), checked exhaustively to a
//! bounded depth by a breadth-first explorer with a visited set of hashed states.
//!
//! **Modelled.** The state is the store (records, `anchors[counter]`, the owner key kept in
//! `meta.identity`), the TPM (NV counter or its absence, the saved maximum a redefined counter
//! restarts above, the owner seed a TPM2_Clear changes, resetCount and clock, the owner record),
//! tallyd's in-flight step, and what the verifier holds (the identity, pinned once the genesis
//! value is closed). tallyd's moves are the spec's steps, each a separate move, so a crash (lose
//! in-flight state, restart through the start-up table) can come between any two: start-up,
//! append (+ack), owner-record write, genesis certify, "prepare" (read T, increment first if
//! T == A, build the checkpoint), certify, commit, increment; a clean reboot (resetCount + 1);
//! optionally a power loss (the orderly counter jumps up, the clock goes back). Root's moves:
//! increment, certify the value the TPM holds over a checkpoint of its choice, TPM2_Clear
//! (then the counter is defined again and restarts low), undefine + redefine, reboot.
//!
//! **Root's store edits are not moves but a search.** Restoring an earlier copy, editing or
//! deleting any key, planting anchors: the verifier reads only the bundle root exports, so the
//! attack check asks whether *any* store root can write passes. Root holds every anchor tallyd
//! ever committed (tallyd never deletes one, so every earlier copy is a subset of today's), the
//! evidence in tallyd's memory when root takes over, and everything root certified; it may write
//! any records. The check enumerates every chain of held anchors from the genesis linked by prev
//! hashes, with the records of its longest checkpoint, and runs the verifier on each. This covers
//! store-edit sequences of any length (modelling them as moves blew up past 15 GB at depth 6).
//!
//! **Abstracted away.** Hashes are 64-bit SipHash (no collisions at these sizes); a Merkle root
//! is the record prefix itself; the log-key signature and the hash chain are left out (root holds
//! the sealed log key and can recompute the chain); NV_Certify and the Quote are one atomic
//! genuine evidence (counter, qualifying data, signer, clock), and evidence root fabricates never
//! verifies (no forgery), so it is not generated; the ack journal is folded into the store write;
//! owner record and meta keys are read only by tallyd, which does not run after root's first move
//! (root can do each of its steps). Root certifies only checkpoints that could ever verify: the
//! anchor line is the certified value, prev is the hash of a held anchor one value below (an
//! anchor's bytes cannot be predicted before its ECDSA signature exists), records are a proper
//! prefix of the protected ones (a chain member covering them all makes its log keep them, and an
//! edited record serves root no better than a truncation at the same place).
//!
//! **Properties.** Honest: every run of tallyd moves and crashes, then a crash and a settle
//! (start-up, genesis or anchor of what is unanchored, increment), ends in PASS with every acked
//! event. Attack: no store root can write gets a PASS unless its records start with those of the
//! newest anchor whose value was closed (incremented past) before root's first move. Negative
//! controls show the checker can fail: v1's increment-first order, and certify by the AK (which
//! survives TPM2_Clear).
//!
//! **Findings** (tests `v2_hole_*`, `v2_pinned_*`, `power_loss_*`): tallyd certifies an open value
//! again after a crash between certify and commit, over a longer checkpoint; whoever holds the
//! first evidence can swap it in for the closed anchor and drop what only the second covered.
//! Persisting the checkpoint before certifying (re-certify exactly it) closes that in the model;
//! tallyd does so now (`meta.pending_checkpoint`, DESIGN section 10 step 3). A power loss between
//! the owner-record write and the genesis commit made start-up refuse with "this log's anchors
//! were deleted", which did not happen; tallyd now makes the genesis then (an empty store without
//! an identity cannot have lost anything a verifier pinned).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// Events tallyd appends in an honest run (ids `0..N_EVENTS`).
const N_EVENTS: u8 = 3;
/// Root does not increment or redefine the counter beyond this value.
const COUNTER_MAX: u8 = 6;
/// The clock ticks once per certify and saturates here.
const CLOCK_MAX: u8 = 4;
/// Reboots (honest or root) stop at this resetCount.
const RESET_MAX: u8 = 2;
/// Root clears the TPM at most this many times.
const CLEARS_MAX: u8 = 2;
/// An orderly counter's jump on a power loss (libtpms: 3 -> 255).
const POWER_LOSS_JUMP: u8 = 2;
/// Depth bounds: honest-only runs; the honest prefix and root's moves of the attack runs.
const HONEST_DEPTH: usize = 22;
const ATTACK_HONEST_DEPTH: usize = 16;
const ATTACK_ROOT_DEPTH: usize = 7;
/// The discarded-evidence runs need a crash mid-anchor, a restart and a second anchor.
const LEAK_HONEST_DEPTH: usize = 17;
const LEAK_ROOT_DEPTH: usize = 6;

type Ev = u8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    /// The spec: certify the open value, commit, then increment (close it).
    V2,
    /// The v1 bug: increment first, certify the new value and leave it open.
    V1IncrementFirst,
    /// V2 with the counter certified by the AK, which survives TPM2_Clear.
    V2NoOwnerKey,
}

impl Protocol {
    /// Step 6: is the anchor's commit followed by an increment?
    fn closes(self) -> bool {
        self != Protocol::V1IncrementFirst
    }
    /// Whether anchor `k` is protected with the counter at `t`, by the protocol's own claim.
    fn closed(self, k: u8, t: u8) -> bool {
        if self.closes() {
            k < t
        } else {
            k <= t
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Config {
    protocol: Protocol,
    /// Root holds evidence tallyd certified and then lost in a crash (core dump, freed heap).
    leak: bool,
    /// Honest runs include power losses.
    power_loss: bool,
    /// Proposed fix: persist the checkpoint before certifying, re-certify exactly it after a crash.
    pin_checkpoint: bool,
}

const V2: Config = Config {
    protocol: Protocol::V2,
    leak: false,
    power_loss: false,
    pin_checkpoint: false,
};

/// What an anchor's checkpoint says: the records it covers, the anchor line, the prev hash.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Body {
    records: Vec<Ev>,
    counter: u8,
    prev: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Signer {
    /// The owner key of this owner seed (a Clear moves to the next one).
    OwnerKey(u8),
    Ak,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Evidence {
    certified: u8,
    qd: u64,
    signer: Signer,
    /// (resetCount, clock) from the AK's quote.
    clock: (u8, u8),
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Anchor {
    body: Body,
    evidence: Evidence,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
struct Store {
    records: Vec<Ev>,
    anchors: BTreeMap<u8, Anchor>,
    /// `meta.identity`'s owner key, written with the genesis anchor.
    owner_key: Option<u8>,
    /// Only with `pin_checkpoint`: the checkpoint about to be certified.
    pending: Option<Body>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Tpm {
    counter: Option<u8>,
    /// What a (re)defined counter starts above; a Clear does not record an orderly counter here.
    saved_max: u8,
    owner_seed: u8,
    reset: u8,
    clock: u8,
    /// The owner record: the genesis counter of the log that owns the counter.
    owner_record: Option<u8>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Identity {
    owner_key: u8,
    genesis_counter: u8,
    genesis_hash: u64,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Daemon {
    Down,
    Halted(&'static str),
    Idle,
    GenesisOwner,
    GenesisCertify,
    Prepared(Body),
    Certified(Anchor),
    Committed(u8),
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct State {
    store: Store,
    tpm: Tpm,
    daemon: Daemon,
    /// Ghost: events appended and acked so far.
    next_event: u8,
    /// The verifier's pinned identity.
    identity: Option<Identity>,
    /// Anchors root holds: before it takes over, those a crashed tallyd discarded (`leak`).
    held: BTreeSet<Anchor>,
    /// Ghost, set when root takes over: the records protected by closed anchors.
    protected: Option<Vec<Ev>>,
}

#[derive(Clone, PartialEq, Debug)]
enum Move {
    Start,
    Append,
    WriteOwnerRecord,
    CertifyGenesis,
    Prepare,
    Certify,
    Commit,
    Increment,
    Crash,
    Reboot,
    PowerLoss,
    RootTakesOver,
    RootIncrement,
    RootClear,
    RootRedefine,
    RootReboot,
    RootCertify { records: Vec<Ev>, prev: u64 },
}

/// Why the verifier does not say PASS.
#[derive(Debug, PartialEq)]
enum Fail {
    NoAnchors,
    NotTheGenesis,
    BadSignature(u8),
    CounterMismatch(u8),
    QualifyingData(u8),
    RootVsRecords(u8),
    Gap { after: u8, next: u8 },
    PrevHash(u8),
    ResetCountWentBack,
    ClockWentBack,
    NoFreshAttestation,
    FreshBadSignature,
    NotCurrent { last: u8, fresh: u8 },
}

fn body(records: &[Ev], counter: u8, prev: Option<u64>) -> Body {
    Body {
        records: records.to_vec(),
        counter,
        prev,
    }
}

fn h<T: Hash>(x: &T) -> u64 {
    let mut s = DefaultHasher::new();
    x.hash(&mut s);
    s.finish()
}

fn initial() -> State {
    State {
        store: Store::default(),
        tpm: Tpm {
            counter: Some(1),
            saved_max: 0,
            owner_seed: 0,
            reset: 0,
            clock: 0,
            owner_record: None,
        },
        daemon: Daemon::Down,
        next_event: 0,
        identity: None,
        held: BTreeSet::new(),
        protected: None,
    }
}

/// Genuine evidence: only the TPM makes it, over its current counter value, with today's keys.
fn certify(p: Protocol, tpm: &mut Tpm, body: Body) -> Option<Anchor> {
    let certified = tpm.counter?;
    let signer = if p == Protocol::V2NoOwnerKey {
        Signer::Ak
    } else {
        Signer::OwnerKey(tpm.owner_seed)
    };
    let evidence = Evidence {
        certified,
        qd: h(&body),
        signer,
        clock: (tpm.reset, tpm.clock),
    };
    tpm.clock = (tpm.clock + 1).min(CLOCK_MAX);
    Some(Anchor { body, evidence })
}

/// The start-up table (one log, so "O names another log" never happens).
fn start_up(cfg: &Config, s: &mut State) -> Daemon {
    let Some(t) = s.tpm.counter else {
        return Daemon::Halted("counter index missing");
    };
    match s.store.anchors.keys().next_back().copied() {
        Some(_)
            if cfg.protocol != Protocol::V2NoOwnerKey
                && s.store.owner_key != Some(s.tpm.owner_seed) =>
        {
            Daemon::Halted("owner hierarchy cleared")
        }
        Some(a) if t == a => {
            if cfg.protocol.closes() {
                s.tpm.counter = Some(t + 1); // the close after anchor A was lost
            }
            Daemon::Idle
        }
        Some(a) if t == a + 1 => Daemon::Idle,
        Some(a) if t > a + 1 => Daemon::Halted("rollback: anchored values missing"),
        Some(_) => Daemon::Halted("TPM behind store"),
        None => match s.tpm.owner_record {
            None => Daemon::GenesisOwner,
            Some(g) if g == t => Daemon::GenesisCertify,
            Some(g) if t > g => Daemon::Halted("this log's anchors were deleted"),
            Some(_) => Daemon::Halted("owner record ahead of the counter"),
        },
    }
}

/// tallyd serves appends once start-up (genesis included, through its increment) is done.
fn serving(s: &State) -> bool {
    match &s.daemon {
        Daemon::Idle | Daemon::Prepared(_) => true,
        Daemon::Certified(a) => a.body.prev.is_some(),
        Daemon::Committed(k) => s.store.anchors.keys().next() != Some(k),
        _ => false,
    }
}

/// tallyd stops: in-flight state is lost (with `leak`, root later finds the evidence it held).
fn stop(cfg: &Config, s: &mut State) -> Option<()> {
    if matches!(s.daemon, Daemon::Down | Daemon::Halted(_)) {
        return None;
    }
    if let (true, Daemon::Certified(a)) = (cfg.leak, &s.daemon) {
        s.held.insert(a.clone());
    }
    s.daemon = Daemon::Down;
    Some(())
}

/// The moves worth trying in `s`; `step` rejects those that do not apply.
fn moves(s: &State) -> Vec<Move> {
    use Move::*;
    if s.protected.is_none() {
        return vec![
            Start,
            Append,
            WriteOwnerRecord,
            CertifyGenesis,
            Prepare,
            Certify,
            Commit,
            Increment,
            Crash,
            Reboot,
            PowerLoss,
        ];
    }
    let mut m = vec![RootIncrement, RootClear, RootRedefine, RootReboot];
    let Some(c) = s.tpm.counter else { return m };
    let prevs: BTreeSet<u64> = s
        .held
        .iter()
        .filter(|a| a.body.counter + 1 == c)
        .map(h)
        .collect();
    // Only records lacking a protected event can be in a violating chain (see `take_over`), and
    // a truncation serves root as well as an edit at the same place, so: every proper prefix.
    for i in 0..s.protected.as_ref().map_or(0, Vec::len) {
        let records = s.protected.as_ref().map_or(vec![], |p| p[..i].to_vec());
        m.extend(prevs.iter().map(|&prev| RootCertify {
            records: records.clone(),
            prev,
        }));
    }
    m
}

/// Apply one move; `None` when it does not apply in `s` or changes nothing.
fn step(cfg: &Config, s: &State, m: &Move) -> Option<State> {
    use Move::*;
    let p = cfg.protocol;
    let honest = !matches!(
        m,
        RootTakesOver | RootIncrement | RootClear | RootRedefine | RootReboot | RootCertify { .. }
    );
    if honest == s.protected.is_some() && *m != RootTakesOver {
        return None; // tallyd moves before root takes over, root moves after
    }
    let mut n = s.clone();
    match (m, &s.daemon) {
        (RootTakesOver, _) => return take_over(cfg, s),
        (Start, Daemon::Down) => n.daemon = start_up(cfg, &mut n),
        (Append, _) if serving(s) && s.next_event < N_EVENTS => {
            n.store.records.push(s.next_event);
            n.next_event += 1;
        }
        (WriteOwnerRecord, Daemon::GenesisOwner) => {
            n.tpm.owner_record = Some(s.tpm.counter?);
            n.daemon = Daemon::GenesisCertify;
        }
        (CertifyGenesis, Daemon::GenesisCertify) => {
            let body = body(&s.store.records, s.tpm.counter?, None);
            n.daemon = Daemon::Certified(certify(p, &mut n.tpm, body)?);
        }
        (Prepare, Daemon::Idle) => {
            let (&a, last) = s.store.anchors.iter().next_back()?;
            if s.store.records.len() <= last.body.records.len() {
                return None; // nothing to anchor
            }
            let mut t = s.tpm.counter?;
            if t == a {
                t += 1; // the increment after anchor A never happened: increment first
                n.tpm.counter = Some(t);
            }
            let fresh = body(&s.store.records, t, Some(h(last)));
            let body = match &s.store.pending {
                Some(b) if cfg.pin_checkpoint && b.counter == t && b.prev == fresh.prev => {
                    b.clone()
                }
                _ => fresh,
            };
            if cfg.pin_checkpoint {
                n.store.pending = Some(body.clone());
            }
            n.daemon = if t == a + 1 {
                Daemon::Prepared(body)
            } else {
                Daemon::Halted("unexpected counter")
            };
        }
        (Certify, Daemon::Prepared(body)) if s.tpm.counter == Some(body.counter) => {
            n.daemon = Daemon::Certified(certify(p, &mut n.tpm, body.clone())?);
        }
        (Certify, Daemon::Prepared(_)) => n.daemon = Daemon::Halted("certified value is not T"),
        (Commit, Daemon::Certified(a)) => {
            let k = a.body.counter;
            n.store.anchors.insert(k, a.clone());
            n.store.pending = None;
            if a.body.prev.is_none() {
                n.store.owner_key = Some(s.tpm.owner_seed);
            }
            n.daemon = if p.closes() {
                Daemon::Committed(k)
            } else {
                Daemon::Idle
            };
        }
        (Increment, Daemon::Committed(k)) if s.tpm.counter == Some(*k) => {
            n.tpm.counter = Some(k + 1);
            n.daemon = Daemon::Idle;
        }
        (Crash, _) => stop(cfg, &mut n)?,
        (Reboot, _) if s.tpm.reset < RESET_MAX => {
            stop(cfg, &mut n)?;
            n.tpm.reset += 1;
        }
        (PowerLoss, _) if cfg.power_loss && s.tpm.reset < RESET_MAX => {
            stop(cfg, &mut n)?;
            n.tpm.reset += 1;
            n.tpm.clock = 0;
            n.tpm.counter = s.tpm.counter.map(|c| c + POWER_LOSS_JUMP);
        }
        (RootIncrement, _) if s.tpm.counter? < COUNTER_MAX => {
            n.tpm.counter = s.tpm.counter.map(|c| c + 1)
        }
        (RootClear, _) if s.tpm.owner_seed < CLEARS_MAX => {
            // TPM2_Clear: new owner seed, clock info reset, owner indices deleted; the counter,
            // defined again, restarts above a saved maximum that never saw its orderly value.
            n.tpm.owner_seed += 1;
            n.tpm.reset = 0;
            n.tpm.clock = 0;
            n.tpm.counter = Some(s.tpm.saved_max + 1);
        }
        (RootRedefine, _) if s.tpm.counter? < COUNTER_MAX => {
            // An explicit undefine records the orderly value: the new counter starts above it.
            n.tpm.saved_max = s.tpm.saved_max.max(s.tpm.counter?);
            n.tpm.counter = Some(n.tpm.saved_max + 1);
        }
        (RootReboot, _) if s.tpm.reset < RESET_MAX => n.tpm.reset += 1,
        (RootCertify { records, prev }, _) => {
            let body = body(records, s.tpm.counter?, Some(*prev));
            n.held.insert(certify(p, &mut n.tpm, body)?);
        }
        _ => return None,
    }
    // tallyd writes identity.json once the genesis value is closed; the verifier pins it.
    if let (None, Some((&g, a)), Some(t)) =
        (&n.identity, n.store.anchors.iter().next(), n.tpm.counter)
    {
        if p.closed(g, t) {
            n.identity = Some(Identity {
                owner_key: n.tpm.owner_seed,
                genesis_counter: g,
                genesis_hash: h(a),
            });
        }
    }
    (n != *s).then_some(n)
}

/// Root's first move: it stops tallyd for good and takes every anchor it can read; the ghost
/// notes the records of the newest closed anchor. `None` when nothing is protected yet.
fn take_over(cfg: &Config, s: &State) -> Option<State> {
    s.identity.as_ref()?;
    let t = s.tpm.counter?;
    let (_, a) = s
        .store
        .anchors
        .iter()
        .rev()
        .find(|(&k, _)| cfg.protocol.closed(k, t))?;
    if a.body.records.is_empty() {
        return None;
    }
    let protected = a.body.records.clone();
    let mut n = s.clone();
    n.held.extend(s.store.anchors.values().cloned());
    if let Daemon::Certified(a) = &s.daemon {
        n.held.insert(a.clone()); // tallyd's memory at the moment root arrives
    }
    // A chain holding an anchor whose records start with the protected ones verifies only
    // records that do too: such anchors never help root, so it drops them, and the store.
    n.held.retain(|a| !a.body.records.starts_with(&protected));
    (n.store, n.daemon, n.next_event, n.tpm.owner_record) =
        (Store::default(), Daemon::Down, 0, None);
    n.protected = Some(protected);
    Some(n)
}

fn clock_ok(before: (u8, u8), after: (u8, u8)) -> Result<(), Fail> {
    match (after.0.cmp(&before.0), after.1 < before.1) {
        (std::cmp::Ordering::Less, _) => Err(Fail::ResetCountWentBack),
        (std::cmp::Ordering::Equal, true) => Err(Fail::ClockWentBack),
        _ => Ok(()),
    }
}

/// `tally verify` of `store` exported as a bundle, with a fresh attestation from `tpm` now.
fn verify(p: Protocol, id: &Identity, store: &Store, tpm: &Tpm) -> Result<(), Fail> {
    let signed = |sig: Signer| match sig {
        Signer::Ak => p == Protocol::V2NoOwnerKey,
        Signer::OwnerKey(e) => p != Protocol::V2NoOwnerKey && e == id.owner_key,
    };
    let mut last: Option<(u8, &Anchor)> = None;
    for (&k, a) in &store.anchors {
        let ev = &a.evidence;
        if !signed(ev.signer) {
            return Err(Fail::BadSignature(k));
        }
        if ev.certified != k || a.body.counter != k {
            return Err(Fail::CounterMismatch(k));
        }
        if ev.qd != h(&a.body) {
            return Err(Fail::QualifyingData(k));
        }
        if !store.records.starts_with(&a.body.records) {
            return Err(Fail::RootVsRecords(k));
        }
        match last {
            None if k != id.genesis_counter || h(a) != id.genesis_hash => {
                return Err(Fail::NotTheGenesis)
            }
            None => {}
            Some((pk, _)) if k != pk + 1 => return Err(Fail::Gap { after: pk, next: k }),
            Some((_, pa)) if a.body.prev != Some(h(pa)) => return Err(Fail::PrevHash(k)),
            Some((_, pa)) => clock_ok(pa.evidence.clock, ev.clock)?,
        }
        last = Some((k, a));
    }
    let (lk, la) = last.ok_or(Fail::NoAnchors)?;
    let fresh = certify(p, &mut tpm.clone(), body(&store.records, 0, None))
        .ok_or(Fail::NoFreshAttestation)?;
    if !signed(fresh.evidence.signer) {
        return Err(Fail::FreshBadSignature);
    }
    clock_ok(la.evidence.clock, fresh.evidence.clock)?;
    let f = fresh.evidence.certified;
    match if p.closes() { lk + 1 == f } else { lk == f } {
        true => Ok(()),
        false => Err(Fail::NotCurrent { last: lk, fresh: f }),
    }
}

/// The honest property at `s`: a crash, a restart and a settle end in PASS with every acked event.
fn honest_check(cfg: &Config, s: &State) -> Option<String> {
    use Move::*;
    let mut s = s.clone();
    for m in [
        Crash,
        Start,
        WriteOwnerRecord,
        CertifyGenesis,
        Commit,
        Increment,
        Prepare,
        Certify,
        Commit,
        Increment,
    ] {
        if let Some(n) = step(cfg, &s, &m) {
            s = n;
        }
    }
    if let Daemon::Halted(why) = s.daemon {
        return Some(format!("honest run ends with tallyd refusing: {why}"));
    }
    if s.store.records != (0..s.next_event).collect::<Vec<_>>() {
        return Some(format!("acked events lost: {:?}", s.store.records));
    }
    let Some(id) = s.identity.as_ref() else {
        return Some("no identity pinned after the settle".into());
    };
    verify(cfg.protocol, id, &s.store, &s.tpm)
        .err()
        .map(|f| format!("honest run does not PASS: {f:?}"))
}

/// The attack property at `s`: no store root can write from what it holds gets a PASS without
/// the protected records. Tries every chain of held anchors from the genesis linked by prev.
fn attack_check(cfg: &Config, s: &State) -> Option<String> {
    let (protected, id) = (s.protected.as_ref()?, s.identity.as_ref()?);
    let mut chains: Vec<Vec<&Anchor>> = s
        .held
        .iter()
        .filter(|a| h(*a) == id.genesis_hash)
        .map(|a| vec![a])
        .collect();
    while let Some(chain) = chains.pop() {
        let last = chain[chain.len() - 1];
        let records = chain
            .iter()
            .map(|a| &a.body.records)
            .max_by_key(|r| r.len())?
            .clone();
        let anchors = chain
            .iter()
            .map(|a| (a.body.counter, (*a).clone()))
            .collect();
        let store = Store {
            records,
            anchors,
            ..Store::default()
        };
        if verify(cfg.protocol, id, &store, &s.tpm).is_ok() && !store.records.starts_with(protected)
        {
            return Some(format!(
                "root writes a store that gets PASS: {}; it lacks events {protected:?}, anchored by a value closed before root's first move",
                summary_store(&store)
            ));
        }
        let next = s
            .held
            .iter()
            .filter(|a| a.body.counter == last.body.counter + 1 && a.body.prev == Some(h(last)));
        chains.extend(next.map(|a| [chain.clone(), vec![a]].concat()));
    }
    None
}

struct Outcome {
    states: usize,
    depth: usize,
    violation: Option<(Vec<Move>, String)>,
    reached: Vec<(State, Vec<Move>)>,
}

/// Breadth-first search from `starts` (each with the trace that led to it) to `max_depth` moves;
/// `check` runs on every distinct state. With `keep`, returns every state reached and its trace.
fn explore(
    cfg: &Config,
    starts: Vec<(State, Vec<Move>)>,
    max_depth: usize,
    keep: bool,
    check: &dyn Fn(&State) -> Option<String>,
) -> Outcome {
    let mut seen = HashSet::new();
    // (parent node, move) per node; a start node holds its index in `starts` and no move.
    let mut nodes: Vec<(usize, Option<Move>)> = Vec::new();
    let mut queue = VecDeque::new();
    for (i, (s, _)) in starts.iter().enumerate() {
        if seen.insert(h(s)) {
            nodes.push((i, None));
            queue.push_back((nodes.len() - 1, 0, s.clone()));
        }
    }
    let trace = |nodes: &[(usize, Option<Move>)], mut id: usize| {
        let mut t = Vec::new();
        while let (parent, Some(m)) = &nodes[id] {
            t.push(m.clone());
            id = *parent;
        }
        t.reverse();
        [starts[nodes[id].0].1.clone(), t].concat()
    };
    let (mut depth, mut reached) = (0, Vec::new());
    while let Some((id, d, s)) = queue.pop_front() {
        depth = depth.max(d);
        if let Some(msg) = check(&s) {
            let violation = Some((trace(&nodes, id), msg));
            return Outcome {
                states: seen.len(),
                depth,
                violation,
                reached,
            };
        }
        if keep {
            reached.push((s.clone(), trace(&nodes, id)));
        }
        if d == max_depth {
            continue;
        }
        for m in moves(&s) {
            if let Some(n) = step(cfg, &s, &m) {
                if seen.insert(h(&n)) {
                    nodes.push((id, Some(m)));
                    queue.push_back((nodes.len() - 1, d + 1, n));
                }
            }
        }
    }
    Outcome {
        states: seen.len(),
        depth,
        violation: None,
        reached,
    }
}

/// Honest runs to `honest_depth`; root takes over in each state reached and has `root_depth`
/// moves. Returns root's search and the number of honest states.
fn explore_attacks(cfg: &Config, honest_depth: usize, root_depth: usize) -> (Outcome, usize) {
    let honest = explore(cfg, vec![(initial(), vec![])], honest_depth, true, &|_| {
        None
    });
    let mut seen = HashSet::new();
    let starts: Vec<_> = (honest.reached.into_iter())
        .filter_map(|(s, t)| Some((take_over(cfg, &s)?, [t, vec![Move::RootTakesOver]].concat())))
        .filter(|(s, _)| seen.insert(h(s)))
        .collect();
    (
        explore(cfg, starts, root_depth, false, &|s| attack_check(cfg, s)),
        honest.states,
    )
}

fn summary_anchor(a: &Anchor) -> String {
    let sig = match a.evidence.signer {
        Signer::OwnerKey(e) => format!("OK{e}"),
        Signer::Ak => "AK".into(),
    };
    let (r, c) = a.evidence.clock;
    format!(
        "{}:{:?} {sig} r{r}c{c} {}",
        a.body.counter,
        a.body.records,
        id16(h(a))
    )
}

fn summary_store(s: &Store) -> String {
    let anchors: Vec<String> = s.anchors.values().map(summary_anchor).collect();
    format!("records {:?} anchors [{}]", s.records, anchors.join(", "))
}

/// A short anchor id for traces: the low 16 bits of its hash.
fn id16(hash: u64) -> String {
    format!("#{:04x}", hash & 0xffff)
}

fn summary(s: &State) -> String {
    let t = &s.tpm;
    let held: Vec<String> = s.held.iter().map(summary_anchor).collect();
    let daemon = match &s.daemon {
        Daemon::Prepared(b) => format!("Prepared({}:{:?})", b.counter, b.records),
        Daemon::Certified(a) => format!("Certified({})", summary_anchor(a)),
        d => format!("{d:?}"),
    };
    format!(
        "{} | tpm counter {:?} seed {} r{}c{} | tallyd {daemon} | root holds [{}]",
        summary_store(&s.store),
        t.counter,
        t.owner_seed,
        t.reset,
        t.clock,
        held.join(", ")
    )
}

fn report(name: &str, cfg: &Config, o: &Outcome, bound: usize) {
    println!(
        "{name}: {} distinct states explored, depth reached {} (bound {bound})",
        o.states, o.depth
    );
    if let Some((trace, msg)) = &o.violation {
        println!("{name}: VIOLATION after {} moves: {msg}", trace.len());
        let mut s = initial();
        println!("  initial: {}", summary(&s));
        for m in trace {
            s = step(cfg, &s, m).unwrap_or(s);
            let m = match m {
                Move::RootCertify { records, prev } => {
                    format!("RootCertify({records:?}, prev {})", id16(*prev))
                }
                m => format!("{m:?}"),
            };
            println!("  {m}: {}", summary(&s));
        }
    }
}

#[test]
fn v2_honest_runs_with_crashes_end_in_pass() {
    let o = explore(&V2, vec![(initial(), vec![])], HONEST_DEPTH, false, &|s| {
        honest_check(&V2, s)
    });
    report("v2 honest", &V2, &o, HONEST_DEPTH);
    assert!(o.violation.is_none(), "an honest run does not end in PASS");
    assert_eq!(o.depth, HONEST_DEPTH);
}

#[test]
fn v2_root_never_gets_a_pass_without_the_closed_anchors_events() {
    let (o, honest) = explore_attacks(&V2, ATTACK_HONEST_DEPTH, ATTACK_ROOT_DEPTH);
    println!("v2 attack: {honest} honest states to depth {ATTACK_HONEST_DEPTH}, then root:");
    report("v2 attack", &V2, &o, ATTACK_ROOT_DEPTH);
    assert!(
        o.violation.is_none(),
        "root got a PASS without a protected event"
    );
    assert_eq!(o.depth, ATTACK_ROOT_DEPTH);
}

#[test]
fn negative_control_v1_increment_first_is_broken() {
    let cfg = Config {
        protocol: Protocol::V1IncrementFirst,
        ..V2
    };
    let (o, _) = explore_attacks(&cfg, ATTACK_HONEST_DEPTH, ATTACK_ROOT_DEPTH);
    report("v1 attack", &cfg, &o, ATTACK_ROOT_DEPTH);
    assert!(
        o.violation.is_some(),
        "the checker missed v1's re-certification of the open value"
    );
}

#[test]
fn negative_control_ak_certify_is_broken_by_a_clear() {
    let cfg = Config {
        protocol: Protocol::V2NoOwnerKey,
        ..V2
    };
    let (o, _) = explore_attacks(&cfg, ATTACK_HONEST_DEPTH, ATTACK_ROOT_DEPTH);
    report("AK-certify attack", &cfg, &o, ATTACK_ROOT_DEPTH);
    let (trace, _) = o
        .violation
        .as_ref()
        .expect("the checker missed the TPM2_Clear attack");
    assert!(trace.contains(&Move::RootClear));
}

/// Spec gap: tallyd can certify one open value twice (certify, crash, restart, more events,
/// certify again). Root holding the discarded evidence swaps it in for the closed anchor.
#[test]
fn v2_hole_recovered_discarded_evidence_drops_a_closed_anchors_events() {
    let cfg = Config { leak: true, ..V2 };
    let (o, _) = explore_attacks(&cfg, LEAK_HONEST_DEPTH, LEAK_ROOT_DEPTH);
    report("v2 + recovered evidence", &cfg, &o, LEAK_ROOT_DEPTH);
    let (trace, _) = o
        .violation
        .as_ref()
        .expect("expected the discarded-evidence attack");
    assert!(trace.contains(&Move::Crash));
}

/// The fix the model suggests: persist the checkpoint before certifying and re-certify exactly it.
#[test]
fn v2_pinned_checkpoint_closes_the_discarded_evidence_hole() {
    let cfg = Config {
        leak: true,
        pin_checkpoint: true,
        ..V2
    };
    let (o, _) = explore_attacks(&cfg, LEAK_HONEST_DEPTH, LEAK_ROOT_DEPTH);
    report(
        "v2 + pinned checkpoint + recovered evidence",
        &cfg,
        &o,
        LEAK_ROOT_DEPTH,
    );
    assert!(o.violation.is_none());
    let honest = explore(&cfg, vec![(initial(), vec![])], HONEST_DEPTH, false, &|s| {
        honest_check(&cfg, s)
    });
    report("v2 + pinned checkpoint honest", &cfg, &honest, HONEST_DEPTH);
    assert!(honest.violation.is_none());
}

/// A power loss jumps the orderly counter: honest runs end in PASS or in a refusal, and the
/// refusals are collected (one of them names a deletion that never happened).
#[test]
fn power_loss_ends_in_pass_or_a_refusal() {
    let cfg = Config {
        power_loss: true,
        ..V2
    };
    let refusals = std::cell::RefCell::new(BTreeSet::new());
    let o = explore(
        &cfg,
        vec![(initial(), vec![])],
        HONEST_DEPTH,
        false,
        &|s| match honest_check(&cfg, s) {
            Some(msg) if msg.contains("refusing") => {
                refusals.borrow_mut().insert(msg);
                None
            }
            other => other,
        },
    );
    report("v2 honest + power loss", &cfg, &o, HONEST_DEPTH);
    println!("v2 honest + power loss ends in: {:?}", refusals.borrow());
    assert!(o.violation.is_none());
    assert_eq!(
        refusals.borrow().len(),
        2,
        "expected the rollback and the genesis refusals"
    );
}
