//! Erasure over a log of N events (docs/DESIGN.md section 3b): the store's
//! bytes per event with content (data.mdb and the key file), then `tally
//! erase --subject S` (one subject: the cost is the selection's pass over
//! the whole log) against a filtered read of the same subject over the same
//! log in the same run (the daemon's read path examining every record), and
//! an erase of a seq range (the cost per erased record: the deletes, the
//! erasure records, the key overwrite and its fdatasync).
//!
//! The log is ingested through a real tallyd (4 pipelined clients); the
//! load's subjects are `event-<i>` for i < 1,024 (the batch), so one subject
//! is a data subject with N / 1,024 events spread over the whole log.

use std::time::Instant;

use serde::Serialize;
use tally_client::proto::{EraseRequest, Filter, ReadRequest};
use tally_client::Client;

use crate::daemon::{Daemon, Setup};
use crate::format::count;
use crate::load::{self, Load, CLIENT_NAME};
use crate::Options;

#[derive(Debug, Clone)]
pub struct EraseOptions {
    pub events: u64,
    pub payload: usize,
    /// Records the range erase covers.
    pub range: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Erase {
    pub events: u64,
    pub ingest_seconds: f64,
    pub ingest_events_per_sec: f64,
    /// data.mdb's size over the events (LMDB's file, which grows in steps).
    pub data_bytes_per_event: f64,
    /// The key file's size over the events (32 bytes a slot, allocated ahead).
    pub key_bytes_per_event: f64,
    /// The baseline: a filtered read of one subject, every page to the end.
    pub scan_seconds: f64,
    pub scan_events_per_sec: f64,
    /// `erase --subject` of the same subject.
    pub subject_seconds: f64,
    pub subject_events_per_sec: f64,
    pub subject_erased: u64,
    /// The subject erase's rate over the filtered read's.
    pub subject_over_scan: f64,
    /// `erase --from A --to A+range`.
    pub range_erased: u64,
    pub range_seconds: f64,
    pub range_erased_per_sec: f64,
    pub range_erasure_records: usize,
}

const INGEST: Load = Load {
    payload: crate::PAYLOAD_BYTES,
    batch: 1024,
    window: 8,
};

pub fn run(options: &Options, shape: &EraseOptions) -> anyhow::Result<Erase> {
    let temp = super::temp_dir(&options.work_dir, "erase")?;
    let dir = temp.path();
    let daemon = Daemon::start(&options.tallyd, dir, &Setup::default())?;
    let runtime = load::runtime()?;
    let load = Load {
        payload: shape.payload,
        ..INGEST
    };
    let started = Instant::now();
    runtime.block_on(load::ingest(daemon.socket(), shape.events, 4, load))?;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let store = dir.join("data").join("store");
    let size_of = |name: &str| std::fs::metadata(store.join(name)).map_or(0, |m| m.len());
    let per_event = |bytes: u64| bytes as f64 / shape.events.max(1) as f64;
    let data_bytes_per_event = per_event(size_of("data.mdb"));
    let key_bytes_per_event = per_event(size_of("content-keys"));

    let subject = "event-5".to_owned();
    let (scan_seconds, subject_seconds, subject_erased, range) = runtime.block_on(async {
        let mut client = Client::connect(daemon.socket(), CLIENT_NAME).await?;
        let scan_seconds = filtered_read(&mut client, &subject, shape.events).await?;
        let started = Instant::now();
        let reply = client
            .erase(EraseRequest {
                subject: subject.clone(),
                reason: "tally-bench".into(),
                ..EraseRequest::default()
            })
            .await?;
        let subject_seconds = started.elapsed().as_secs_f64();
        let from = shape.events / 4;
        let started = Instant::now();
        let range = client
            .erase(EraseRequest {
                from_seq: Some(from),
                to_seq: from + shape.range.min(shape.events / 2).max(1),
                reason: "tally-bench".into(),
                ..EraseRequest::default()
            })
            .await?;
        let range_seconds = started.elapsed().as_secs_f64();
        anyhow::Ok((
            scan_seconds,
            subject_seconds,
            reply.erased,
            (range, range_seconds),
        ))
    })?;
    let (range, range_seconds) = range;
    let rate = |seconds: f64| shape.events as f64 / seconds.max(1e-9);
    drop(daemon);
    Ok(Erase {
        events: shape.events,
        ingest_seconds,
        ingest_events_per_sec: rate(ingest_seconds),
        data_bytes_per_event,
        key_bytes_per_event,
        scan_seconds,
        scan_events_per_sec: rate(scan_seconds),
        subject_seconds,
        subject_events_per_sec: rate(subject_seconds),
        subject_erased,
        subject_over_scan: scan_seconds / subject_seconds.max(1e-9),
        range_erased: range.erased,
        range_seconds,
        range_erased_per_sec: range.erased as f64 / range_seconds.max(1e-9),
        range_erasure_records: range.erasure_seqs.len(),
    })
}

/// Seconds for a read of `subject`'s records over `[0, events)`, page by
/// page as a client must (each page's scan is bounded by the daemon).
async fn filtered_read(client: &mut Client, subject: &str, events: u64) -> anyhow::Result<f64> {
    let filter = Filter {
        subjects: vec![subject.to_owned()],
        ..Filter::default()
    };
    let started = Instant::now();
    let mut from = 0;
    let mut found = 0;
    while from < events {
        let page = client
            .read_where(ReadRequest {
                from_seq: from,
                to_seq: events,
                filter: Some(filter.clone()),
                ..ReadRequest::default()
            })
            .await?;
        found += page.records.len();
        anyhow::ensure!(
            page.resume_seq > from,
            "the read made no progress at {from}"
        );
        from = page.resume_seq;
    }
    anyhow::ensure!(found > 0, "the subject {subject} matched no record");
    Ok(started.elapsed().as_secs_f64())
}

impl Erase {
    /// The scenario's rows of the text report.
    pub fn rows(&self) -> Vec<[String; 3]> {
        let name = format!("erase ({} events)", count(self.events as f64));
        vec![
            [
                name.clone(),
                "ingest events/s; on disk B/event: data.mdb, key file".into(),
                format!(
                    "{}; {:.0}, {:.0}",
                    count(self.ingest_events_per_sec),
                    self.data_bytes_per_event,
                    self.key_bytes_per_event
                ),
            ],
            [
                name.clone(),
                "erase --subject: events examined/s; / a filtered read of it".into(),
                format!(
                    "{} ({:.2} s, {} erased); {:.2}",
                    count(self.subject_events_per_sec),
                    self.subject_seconds,
                    self.subject_erased,
                    self.subject_over_scan
                ),
            ],
            [
                name,
                "erase --from/--to: erased/s (erasure records)".into(),
                format!(
                    "{} ({} in {:.2} s, {})",
                    count(self.range_erased_per_sec),
                    self.range_erased,
                    self.range_seconds,
                    self.range_erasure_records
                ),
            ],
        ]
    }
}
