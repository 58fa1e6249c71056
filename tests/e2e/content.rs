//! Content committed, not chained (docs/DESIGN.md section 3b), on the real
//! daemon: an event's payload and personal attributes leave the hashed
//! record (which commits to them) and come back with a read, and no file of
//! the data directory holds them in the clear: not LMDB, not the ack journal,
//! not the key file. The records still chain as before.

use std::path::Path;

use tally_client::proto::Event;
use tally_tests::{check_records, event, read_range, stored_event, Daemon, DaemonOpts};

/// Distinctive bytes no other part of the data directory can hold by chance.
const PAYLOAD: &[u8] = b"PATIENT-7731 asked: is my biopsy result malignant?";
const EMAIL: &str = "jane.roe.7731@example.invalid";

/// Every file under `dir`, recursively, whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_and_personal_attributes_are_served_but_never_on_disk_in_the_clear(
) -> anyhow::Result<()> {
    let daemon = Daemon::start(DaemonOpts::with_config(
        "[content]\npersonal_attribute_prefixes = [\"user.\"]\n",
    ))?;
    let mut client = daemon.client().await?;
    let secret = Event {
        payload: PAYLOAD.to_vec(),
        attributes: [
            ("user.email".to_string(), EMAIL.to_string()),
            ("model".to_string(), "m-77".to_string()),
        ]
        .into(),
        ..event(1)
    };
    // A lone client's append goes to the ack journal first; a second, larger
    // one straight to LMDB: both paths are searched below.
    client.append(vec![event(0), secret.clone()]).await?;
    client
        .append(
            (2..300)
                .map(|i| Event {
                    payload: vec![b'z'; 300_000 / 300],
                    ..event(i)
                })
                .collect(),
        )
        .await?;
    let records = read_range(&mut client, 0, 300).await?;
    check_records(&records, 0)?;
    let served = &records[1];
    assert!(!served.content.is_empty(), "the read carries the opening");
    // stored_event checks the opening against the record's commitment.
    assert_eq!(stored_event(served)?, secret);
    let hashed = tally_client::record::decode(&served.record)?.body;
    assert_eq!(hashed.content_commitment.len(), 32);
    let hashed_event = hashed.event.unwrap();
    assert!(
        hashed_event.payload.is_empty(),
        "the payload left the hashed record"
    );
    assert!(!hashed_event.attributes.contains_key("user.email"));
    assert_eq!(
        hashed_event.attributes["model"], "m-77",
        "other attributes stay"
    );

    // While the daemon runs (journal frames and LMDB pages written) and
    // after a clean stop, the payload and the email are in no file.
    let data = daemon.data_dir();
    assert!(data.join("store").join("content-keys").exists());
    for needle in [PAYLOAD, &PAYLOAD[..16], EMAIL.as_bytes()] {
        let found = files_containing(&data, needle);
        assert!(
            found.is_empty(),
            "{:?} in the clear in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    let mut daemon = daemon;
    daemon.terminate()?;
    for needle in [PAYLOAD, EMAIL.as_bytes()] {
        assert!(files_containing(&data, needle).is_empty());
    }
    // The non-personal attribute is in the hashed record, on disk: the
    // search does find what is there.
    assert!(
        !files_containing(&data, b"m-77").is_empty(),
        "the search sees stored bytes"
    );
    Ok(())
}
