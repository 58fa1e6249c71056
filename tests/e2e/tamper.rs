//! Byte surgery on an exported bundle: each kind of damage makes `tally
//! verify` exit 1 naming the exact seq (or positions) and the kind.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use rand::Rng;
use tally_tests::{events, Daemon, DaemonOpts, Run};

const RECORDS: u64 = 50;
const MAGIC_LEN: usize = 16;
const RECORD_SECTION: u8 = 0x02;
const CONTENT_SECTION: u8 = 0x05;
const END_SECTION: u8 = 0x7f;

/// A bundle split into its sections: `(kind, start, end)` byte ranges, each
/// covering the 5-byte section head and the section's bytes.
struct Bundle {
    bytes: Vec<u8>,
    sections: Vec<(u8, usize, usize)>,
}

impl Bundle {
    fn parse(bytes: Vec<u8>) -> Bundle {
        assert_eq!(&bytes[..MAGIC_LEN], tally_attest::bundle::MAGIC);
        let mut sections = Vec::new();
        let mut at = MAGIC_LEN;
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            sections.push((bytes[at], at, at + 5 + len));
            at += 5 + len;
        }
        assert_eq!(at, bytes.len(), "sections do not tile the file");
        Bundle { bytes, sections }
    }

    /// Byte range of the record section of `seq` and the content section
    /// after it (section 0x05), as root would drop the two.
    fn record_and_content(&self, seq: u64) -> (usize, usize) {
        let at = self
            .sections
            .iter()
            .position(|(kind, start, _)| *kind == RECORD_SECTION && *start == self.record(seq).0)
            .unwrap();
        match self.sections.get(at + 1) {
            Some(&(CONTENT_SECTION, _, end)) => (self.sections[at].1, end),
            _ => (self.sections[at].1, self.sections[at].2),
        }
    }

    /// Byte range (section head included) of the record section of `seq`.
    fn record(&self, seq: u64) -> (usize, usize) {
        let (_, start, end) = self
            .sections
            .iter()
            .filter(|(kind, _, _)| *kind == RECORD_SECTION)
            .nth(seq as usize)
            .copied()
            .unwrap();
        (start, end)
    }
}

fn verify(daemon: &Daemon, bundle: &Path) -> anyhow::Result<(Run, serde_json::Value)> {
    let text = daemon.tally(&[OsStr::new("verify"), bundle.as_os_str()])?;
    let json = daemon.tally(&[OsStr::new("verify"), "--json".as_ref(), bundle.as_os_str()])?;
    assert_eq!(json.code, text.code, "--json changes the exit code");
    Ok((text, serde_json::from_str(json.stdout.trim())?))
}

/// Writes `bytes` as a damaged copy, verifies it: exit 1, the text output
/// contains `expected`, and `--json` reports `first_bad_seq`.
fn expect_damage(
    daemon: &Daemon,
    name: &str,
    bytes: &[u8],
    expected: &str,
    first_bad_seq: Option<u64>,
) -> anyhow::Result<()> {
    let path = daemon.dir().join(name);
    std::fs::write(&path, bytes)?;
    let (run, json) = verify(daemon, &path)?;
    assert_eq!(run.code, 1, "{name}: {run:?}");
    assert!(
        run.stdout.contains(expected),
        "{name}: expected {expected:?} in {:?}",
        run.stdout
    );
    assert_eq!(json["ok"], false, "{name}");
    assert_eq!(
        json["first_bad_seq"].as_u64(),
        first_bad_seq,
        "{name}: {json}"
    );
    Ok(())
}

fn exported(daemon: &Daemon) -> anyhow::Result<(PathBuf, Bundle)> {
    let path = daemon.dir().join("good.bundle");
    let run = daemon.tally(&[OsStr::new("export"), "--out".as_ref(), path.as_os_str()])?;
    assert_eq!(run.code, 0, "{run:?}");
    let (run, json) = verify(daemon, &path)?;
    assert_eq!(
        run.code, 3,
        "the untouched bundle's chain must verify (PARTIAL: no identity, no anchors): {run:?}"
    );
    assert_eq!(json["size"], RECORDS);
    let bundle = Bundle::parse(std::fs::read(&path)?);
    let records = bundle
        .sections
        .iter()
        .filter(|(kind, _, _)| *kind == RECORD_SECTION)
        .count();
    assert_eq!(records as u64, RECORDS);
    Ok((path, bundle))
}

/// A flipped byte in one record's body, a deleted record section, two swapped
/// record sections and a cut file are each detected and named exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_bundles_name_the_record_and_the_damage() -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::default())?;
    daemon.client().await?.append(events(0, RECORDS)).await?;
    let (_, bundle) = exported(&daemon)?;
    let mut rng = tally_tests::seed::rng("damaged_bundles_name_the_record_and_the_damage");

    // One byte of one record's body (past the 41-byte record header).
    let seq = rng.gen_range(1..RECORDS - 1);
    let (start, end) = bundle.record(seq);
    let body = start + 5 + tally_attest::HEADER_LEN;
    let mut flipped = bundle.bytes.clone();
    flipped[rng.gen_range(body..end)] ^= 0x20;
    expect_damage(
        &daemon,
        "flipped.bundle",
        &flipped,
        &format!("seq {seq}: record modified"),
        Some(seq),
    )?;

    // The last record has no successor: the declared head catches it.
    let (start, end) = bundle.record(RECORDS - 1);
    let mut flipped = bundle.bytes.clone();
    flipped[rng.gen_range(start + 5 + tally_attest::HEADER_LEN..end)] ^= 0x01;
    expect_damage(
        &daemon,
        "flipped-last.bundle",
        &flipped,
        &format!("seq {}: record modified", RECORDS - 1),
        Some(RECORDS - 1),
    )?;

    let seq = rng.gen_range(1..RECORDS - 1);
    let (start, end) = bundle.record_and_content(seq);
    let mut deleted = bundle.bytes.clone();
    deleted.drain(start..end);
    expect_damage(
        &daemon,
        "deleted.bundle",
        &deleted,
        &format!(
            "seq {seq}: record deleted (the next record present is seq {})",
            seq + 1
        ),
        Some(seq),
    )?;

    let first = rng.gen_range(0..RECORDS / 2);
    let second = rng.gen_range(RECORDS / 2..RECORDS);
    let (a_start, a_end) = bundle.record_and_content(first);
    let (b_start, b_end) = bundle.record_and_content(second);
    let mut swapped = bundle.bytes[..a_start].to_vec();
    swapped.extend_from_slice(&bundle.bytes[b_start..b_end]);
    swapped.extend_from_slice(&bundle.bytes[a_end..b_start]);
    swapped.extend_from_slice(&bundle.bytes[a_start..a_end]);
    swapped.extend_from_slice(&bundle.bytes[b_end..]);
    assert_eq!(swapped.len(), bundle.bytes.len());
    expect_damage(
        &daemon,
        "swapped.bundle",
        &swapped,
        &format!(
            "records reordered: position {first} holds seq {second}, \
             and seq {first} is at position {second}"
        ),
        Some(first),
    )?;

    // Cut in the middle of the file (inside some section): a format error.
    let cut = &bundle.bytes[..bundle.bytes.len() / 2];
    expect_damage(&daemon, "cut.bundle", cut, "bundle is cut short", None)?;

    // Cut at a record boundary, with a forged end section: the declared
    // size still exposes the missing tail.
    let keep = RECORDS / 2;
    let (start, _) = bundle.record(keep);
    let mut tail_cut = bundle.bytes[..start].to_vec();
    tail_cut.extend_from_slice(&[END_SECTION, 0, 0, 0, 0]);
    expect_damage(
        &daemon,
        "tail-cut.bundle",
        &tail_cut,
        &format!("log truncated: {RECORDS} records declared, only {keep} present (seq {keep} onwards missing)"),
        Some(keep),
    )?;
    Ok(())
}
