//! The receive-time index against root (docs/DESIGN.md, sections 4c and
//! 11): with the daemon stopped, root deletes or lowers a `times` entry; a
//! `since` read then misses records that match while the whole log still
//! exports and verifies, `tallyd check` fails naming the index, and the
//! repair (`tallyd check --rebuild-times`, or dropping the index by hand and
//! restarting) makes the `since` read right again.

use std::time::Duration;

use tally_client::proto::{Event, Filter, ReadRequest};
use tally_tests::{store_edit, Daemon, DaemonOpts};

const GROUPS: u64 = 4;
const PER_GROUP: u64 = 10;

/// A daemon holding `GROUPS` appends of `PER_GROUP` events, a pause between
/// them (so each is a batch that raises the running maximum), and every
/// record's receive time by seq.
async fn grouped_log() -> anyhow::Result<(Daemon, Vec<i64>)> {
    // Each batch straight to LMDB: through the ack journal, batches reach
    // LMDB together later and the index gets fewer entries to attack.
    let daemon = Daemon::start(DaemonOpts::with_config("ack_journal_max_bytes = 0"))?;
    let mut client = daemon.client().await?;
    for group in 0..GROUPS {
        let events = (0..PER_GROUP)
            .map(|i| Event {
                kind: format!("group-{group}"),
                subject: format!("event-{i}"),
                ..Default::default()
            })
            .collect();
        client.append(events).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times = Vec::new();
    for record in client.read(0, 0).await? {
        anyhow::ensure!(record.seq == times.len() as u64, "a gap at {}", record.seq);
        times.push(
            tally_client::record::decode(&record.record)?
                .body
                .receive_time_unix_nanos,
        );
    }
    anyhow::ensure!(times.len() as u64 == GROUPS * PER_GROUP, "{times:?}");
    Ok((daemon, times))
}

/// The seqs a `since` read returns, page by page from `resume_seq`.
async fn since(daemon: &Daemon, since: i64) -> anyhow::Result<Vec<u64>> {
    let mut client = daemon.client().await?;
    let size = client.status().await?.size;
    let mut from = 0;
    let mut seqs = Vec::new();
    while from < size {
        let page = client
            .read_where(ReadRequest {
                from_seq: from,
                max_records: 7,
                filter: Some(Filter {
                    since_unix_nanos: Some(since),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        anyhow::ensure!(page.resume_seq > from, "no progress at {from}");
        from = page.resume_seq;
        seqs.extend(page.records.iter().map(|record| record.seq));
    }
    Ok(seqs)
}

/// The stored entries `(max, first seq)`, decoded as root would.
fn entries(daemon: &Daemon) -> anyhow::Result<Vec<([u8; 16], i64, u64)>> {
    store_edit::edit(&daemon.data_dir(), |wtxn, dbs| {
        let mut out = Vec::new();
        for entry in dbs.times.iter(wtxn)? {
            let key: [u8; 16] = entry?.0.try_into()?;
            let max = (u64::from_be_bytes(key[..8].try_into()?) ^ (1 << 63)) as i64;
            out.push((key, max, u64::from_be_bytes(key[8..].try_into()?)));
        }
        Ok(out)
    })
}

/// The seq of the record received at `max` (the one a seek past its batch
/// hides).
fn hidden(times: &[i64], max: i64) -> anyhow::Result<u64> {
    let seq = times.iter().position(|&time| time == max);
    Ok(seq.ok_or_else(|| anyhow::anyhow!("no record at {max}: {times:?}"))? as u64)
}

fn expected(times: &[i64], since: i64) -> Vec<u64> {
    (0..times.len() as u64)
        .filter(|&seq| times[seq as usize] >= since)
        .collect()
}

/// `tallyd check` refuses the index, naming it, the first bad entry and the
/// repair.
fn check_refuses(daemon: &Daemon, entry: &str) -> anyhow::Result<()> {
    let check = daemon.tallyd(&["check"])?;
    anyhow::ensure!(check.code == 1, "check passed an unsound index: {check:?}");
    for needle in ["receive-time index", entry, "--since", "--rebuild-times"] {
        anyhow::ensure!(check.stderr.contains(needle), "{needle:?} in {check:?}");
    }
    Ok(())
}

#[tokio::test]
async fn root_deleting_a_times_entry_hides_records_from_since_until_check_and_rebuild(
) -> anyhow::Result<()> {
    let (mut daemon, times) = grouped_log().await?;
    assert!(daemon.terminate()?.success());
    let before = entries(&daemon)?;
    assert!(before.len() >= 3, "one entry per raising batch: {before:?}");
    let check = daemon.tallyd(&["check"])?;
    assert_eq!(check.code, 0, "{check:?}");

    // Root deletes the second entry: a since at its maximum now seeks to
    // the third entry's seq, past the batch that reached it.
    let (key, max, _) = before[1];
    let seq = hidden(&times, max)?;
    let deleted = store_edit::edit(&daemon.data_dir(), |wtxn, dbs| {
        Ok(dbs.times.delete(wtxn, &key)?)
    })?;
    assert!(deleted);
    daemon.restart()?;
    let want = expected(&times, max);
    let got = since(&daemon, max).await?;
    assert!(
        want.contains(&seq) && !got.contains(&seq) && got.len() < want.len(),
        "the attack should hide seq {seq}: want {want:?}, got {got:?}"
    );
    // The hole the check closes: the whole log is untouched and verifies.
    daemon.export_and_verify()?;

    assert!(daemon.terminate()?.success());
    check_refuses(&daemon, "entry 1")?;
    let repair = daemon.tallyd(&["check", "--rebuild-times"])?;
    assert_eq!(repair.code, 0, "{repair:?}");
    assert!(repair.stdout.starts_with("ok: 40 records"), "{repair:?}");
    let check = daemon.tallyd(&["check"])?;
    assert_eq!(check.code, 0, "the rebuilt index: {check:?}");
    daemon.restart()?;
    for since_time in times.iter().copied().chain([times[0] - 1, max + 1]) {
        assert_eq!(
            since(&daemon, since_time).await?,
            expected(&times, since_time),
            "since {since_time} after the rebuild"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_lowered_maximum_is_refused_and_dropping_the_index_by_hand_repairs_it(
) -> anyhow::Result<()> {
    //! The operator's other repair (docs/OPERATIONS.md, 6a): delete the
    //! `times` database's entries and `times_size`, restart; the open
    //! re-indexes the log from its records.
    let (mut daemon, times) = grouped_log().await?;
    assert!(daemon.terminate()?.success());
    let before = entries(&daemon)?;
    assert!(before.len() >= 3, "{before:?}");
    // Root lowers the third entry's maximum to just above the second's: a
    // since between them seeks to the fourth entry, past the third batch.
    let (key, max, _) = before[2];
    let seq = hidden(&times, max)?;
    let lowered = before[1].1 + 1;
    store_edit::edit(&daemon.data_dir(), |wtxn, dbs| {
        dbs.times.delete(wtxn, &key)?;
        let mut new = key;
        new[..8].copy_from_slice(&((lowered as u64) ^ (1 << 63)).to_be_bytes());
        dbs.times.put(wtxn, &new, &[])?;
        Ok(())
    })?;
    daemon.restart()?;
    let got = since(&daemon, max).await?;
    assert!(
        !got.contains(&seq) && expected(&times, max).contains(&seq),
        "the attack should hide seq {seq}: {got:?}"
    );
    assert!(daemon.terminate()?.success());
    // The fault shows where the records first disagree: at the next entry.
    let at = if before.len() > 3 {
        "entry 3".to_owned()
    } else {
        format!("after its last entry ({} entries)", before.len())
    };
    check_refuses(&daemon, &at)?;

    store_edit::edit(&daemon.data_dir(), |wtxn, dbs| {
        dbs.times.clear(wtxn)?;
        dbs.meta.delete(wtxn, "times_size")?;
        Ok(())
    })?;
    daemon.restart()?;
    assert_eq!(since(&daemon, max).await?, expected(&times, max));
    assert!(
        daemon
            .stderr()
            .contains("indexed the receive times of records written before the time index"),
        "{}",
        daemon.stderr()
    );
    assert!(daemon.terminate()?.success());
    let check = daemon.tallyd(&["check"])?;
    assert_eq!(check.code, 0, "{check:?}");
    Ok(())
}

#[tokio::test]
async fn an_unreadable_newest_times_key_refuses_the_start_naming_the_repair() -> anyhow::Result<()>
{
    //! Start-up reads the newest entry: a key root made 17 bytes long was
    //! "damaged, restore a backup" (exit 3), though the records are intact.
    let (mut daemon, times) = grouped_log().await?;
    assert!(daemon.terminate()?.success());
    store_edit::edit(&daemon.data_dir(), |wtxn, dbs| {
        Ok(dbs.times.put(wtxn, &[0xff; 17], &[])?)
    })?;
    let refused = daemon.tallyd::<&str>(&[])?;
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(
        refused.stderr.contains("receive-time index")
            && refused.stderr.contains("is not a 16-byte key")
            && refused.stderr.contains("tallyd check --rebuild-times")
            && !refused.stderr.contains("restore"),
        "{refused:?}"
    );
    let repair = daemon.tallyd(&["check", "--rebuild-times"])?;
    assert_eq!(repair.code, 0, "{repair:?}");
    daemon.restart()?;
    assert_eq!(
        since(&daemon, times[25]).await?,
        expected(&times, times[25])
    );
    Ok(())
}
