//! Filters evaluated by the daemon (issue 14, item 2): each field of
//! `proto::Filter` against a log of known content, `newest` and `to_seq`,
//! a filtered follower and where it resumes, the bytes on the wire of a
//! selective filter, and the bound on one request's scan.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tally_client::attributes::attribute;
use tally_client::proto::{
    self, attribute_value::Value as V, request, response, AttributeMatch, Event, Filter,
    ReadRequest, Request, Response, StoredRecord,
};
use tally_client::{filter, Client};
use tally_tests::raw::RawConn;
use tally_tests::{check_records, Daemon, DaemonOpts};
use tokio::io::AsyncReadExt;

const KINDS: [&str; 3] = ["model.load", "prompt", "output"];
const COUNT: u64 = 60;

/// Event `i` of the known log: kind by i % 3, actor by i % 2, subject by
/// i % 5, string attribute host by i % 4, typed tokens = 10 i and cached =
/// (i even).
fn known(i: u64) -> Event {
    Event {
        kind: KINDS[(i % 3) as usize].into(),
        actor: format!("svc-{}", i % 2),
        subject: format!("host-{}", i % 5),
        attributes: BTreeMap::from([("host".to_owned(), format!("gpu-{}", i % 4))]),
        typed_attributes: vec![
            attribute("tokens", V::IntValue(i as i64 * 10)),
            attribute("cached", V::BoolValue(i.is_multiple_of(2))),
        ],
        ..Default::default()
    }
}

/// A daemon holding the known log, appended in three groups of 20 with a
/// pause between them (so the groups' receive times differ), and the
/// receive time of every record by seq.
async fn known_log(config: &str) -> anyhow::Result<(Daemon, Vec<i64>)> {
    let daemon = Daemon::start(DaemonOpts::with_config(config))?;
    let mut client = daemon.client().await?;
    for group in 0..3 {
        client
            .append((group * 20..group * 20 + 20).map(known).collect())
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times = Vec::new();
    let mut next = 0;
    while next < COUNT {
        for record in client.read(next, 0).await? {
            times.push(
                tally_client::record::decode(&record.record)?
                    .body
                    .receive_time_unix_nanos,
            );
            next = record.seq + 1;
        }
    }
    Ok((daemon, times))
}

/// Every matching record of the log, page by page as a client loops:
/// forward from `resume_seq`, or (newest) backward to it. Each record is
/// checked: its entry hash is recomputed and the filter re-evaluated.
async fn read_all(
    client: &mut Client,
    filter: &Filter,
    newest: bool,
    max_records: u32,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let size = client.status().await?.size;
    let (mut from, mut to) = (0, size);
    let mut pages: Vec<Vec<StoredRecord>> = Vec::new();
    while from < to {
        let page = client
            .read_where(ReadRequest {
                from_seq: from,
                max_records,
                filter: Some(filter.clone()),
                to_seq: to,
                newest,
            })
            .await?;
        if newest {
            anyhow::ensure!(page.resume_seq < to, "no progress at {to}");
            to = page.resume_seq;
        } else {
            anyhow::ensure!(page.resume_seq > from, "no progress at {from}");
            from = page.resume_seq;
        }
        pages.push(page.records);
    }
    if newest {
        pages.reverse();
    }
    let count = pages.len();
    let records: Vec<StoredRecord> = pages.into_iter().flatten().collect();
    for record in &records {
        let decoded = tally_client::record::decode(&record.record)?;
        anyhow::ensure!(
            tally_attest::entry_hash(&record.record).as_slice() == record.entry_hash.as_ref(),
            "seq {}: entry hash",
            record.seq
        );
        anyhow::ensure!(
            filter::matches(filter, &decoded.body),
            "seq {} does not match the filter it was sent for",
            record.seq
        );
    }
    Ok((records.iter().map(|r| r.seq).collect(), count))
}

fn model(want: impl Fn(u64) -> bool) -> Vec<u64> {
    (0..COUNT).filter(|&i| want(i)).collect()
}

fn attr(key: &str, value: &str) -> AttributeMatch {
    AttributeMatch {
        key: key.into(),
        value: value.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_field_selects_exactly_the_known_records() -> anyhow::Result<()> {
    let (daemon, times) = known_log("").await?;
    let mut client = daemon.client().await?;
    assert!(
        client.server_hello().read_filters,
        "the hello must say read_filters"
    );
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The start of the second and third groups: the daemon's own times.
    let (t20, t40) = (times[20], times[40]);
    assert!(
        times[19] < t20 && times[39] < t40,
        "the groups' times overlap: {times:?}"
    );
    let cases: Vec<(&str, Filter, Vec<u64>)> = vec![
        (
            "kind",
            Filter {
                kinds: strings(&["prompt"]),
                ..Default::default()
            },
            model(|i| i % 3 == 1),
        ),
        (
            "any of two kinds",
            Filter {
                kinds: strings(&["prompt", "output"]),
                ..Default::default()
            },
            model(|i| i % 3 != 0),
        ),
        (
            "actor",
            Filter {
                actors: strings(&["svc-1"]),
                ..Default::default()
            },
            model(|i| i % 2 == 1),
        ),
        (
            "subject",
            Filter {
                subjects: strings(&["host-3"]),
                ..Default::default()
            },
            model(|i| i % 5 == 3),
        ),
        (
            "string attr",
            Filter {
                attributes: vec![attr("host", "gpu-2")],
                ..Default::default()
            },
            model(|i| i % 4 == 2),
        ),
        (
            "int attr",
            Filter {
                attributes: vec![attr("tokens", "370")],
                ..Default::default()
            },
            vec![37],
        ),
        (
            "bool attr",
            Filter {
                attributes: vec![attr("cached", "true")],
                ..Default::default()
            },
            model(|i| i % 2 == 0),
        ),
        (
            "two attrs, both must",
            Filter {
                attributes: vec![attr("cached", "true"), attr("host", "gpu-1")],
                ..Default::default()
            },
            vec![],
        ),
        (
            "since",
            Filter {
                since_unix_nanos: Some(t20),
                ..Default::default()
            },
            model(|i| i >= 20),
        ),
        (
            "until",
            Filter {
                until_unix_nanos: Some(t40),
                ..Default::default()
            },
            model(|i| i < 40),
        ),
        (
            "since and until and kind",
            Filter {
                since_unix_nanos: Some(t20),
                until_unix_nanos: Some(t40),
                kinds: strings(&["model.load"]),
                ..Default::default()
            },
            model(|i| (20..40).contains(&i) && i % 3 == 0),
        ),
        (
            "kind and actor and subject",
            Filter {
                kinds: strings(&["output"]),
                actors: strings(&["svc-0"]),
                subjects: strings(&["host-2", "host-4"]),
                ..Default::default()
            },
            model(|i| i % 3 == 2 && i % 2 == 0 && (i % 5 == 2 || i % 5 == 4)),
        ),
        (
            "nothing",
            Filter {
                kinds: strings(&["absent"]),
                ..Default::default()
            },
            vec![],
        ),
        ("empty filter", Filter::default(), model(|_| true)),
    ];
    for (name, filter, want) in cases {
        let (got, _) = read_all(&mut client, &filter, false, 0).await?;
        assert_eq!(got, want, "{name}");
        let (got, _) = read_all(&mut client, &filter, true, 7).await?;
        assert_eq!(got, want, "{name}, newest first in pages of 7");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_is_the_last_n_in_seq_order_also_across_pages_and_to_seq_bounds(
) -> anyhow::Result<()> {
    // Pages of 4 records: the page limit, not the caller, splits the reads.
    let (daemon, _) = known_log("read_page_records = 4").await?;
    let mut client = daemon.client().await?;
    let prompts = Filter {
        kinds: vec!["prompt".into()],
        ..Default::default()
    };
    // The newest 3 prompts, one request.
    let page = client
        .read_where(ReadRequest {
            max_records: 3,
            filter: Some(prompts.clone()),
            newest: true,
            ..Default::default()
        })
        .await?;
    let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [52, 55, 58]);
    assert_eq!(page.resume_seq, 52);
    // The newest 10 across pages of 4: 4 + 4 + 2, in seq order.
    let mut newest: Vec<u64> = Vec::new();
    let mut to = 0;
    while newest.len() < 10 {
        let page = client
            .read_where(ReadRequest {
                filter: Some(prompts.clone()),
                to_seq: to,
                newest: true,
                ..Default::default()
            })
            .await?;
        assert!(page.records.len() <= 4, "the page limit is 4");
        let mut seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
        // A page is in seq order: its newest are its last.
        let keep = 10 - newest.len();
        if seqs.len() > keep {
            seqs.drain(..seqs.len() - keep);
        }
        seqs.extend(newest);
        newest = seqs;
        to = page.resume_seq;
    }
    let want: Vec<u64> = model(|i| i % 3 == 1)
        .into_iter()
        .rev()
        .take(10)
        .rev()
        .collect();
    assert_eq!(newest, want);
    // to_seq ends the scan, exclusive, in both directions.
    let (got, pages) = {
        let mut seqs = Vec::new();
        let mut from = 5;
        let mut pages = 0;
        while from < 17 {
            let page = client
                .read_where(ReadRequest {
                    from_seq: from,
                    to_seq: 17,
                    ..Default::default()
                })
                .await?;
            check_records(&page.records, from)?;
            seqs.extend(page.records.iter().map(|r| r.seq));
            from = page.resume_seq;
            pages += 1;
        }
        (seqs, pages)
    };
    assert_eq!(got, (5..17).collect::<Vec<_>>());
    assert_eq!(pages, 3, "12 records in pages of 4");
    let page = client
        .read_where(ReadRequest {
            from_seq: 5,
            to_seq: 17,
            newest: true,
            filter: Some(prompts),
            ..Default::default()
        })
        .await?;
    let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [7, 10, 13, 16]);
    // An unfiltered plain read reports where it stopped too.
    let page = client
        .read_where(ReadRequest {
            from_seq: 58,
            ..Default::default()
        })
        .await?;
    assert_eq!(page.records.len(), 2);
    assert_eq!(page.resume_seq, COUNT);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_follower_gets_only_its_kind_and_resumes_without_gaps_or_repeats(
) -> anyhow::Result<()> {
    let (daemon, _) = known_log("").await?;
    let loads = Filter {
        kinds: vec!["model.load".into()],
        ..Default::default()
    };
    let mut follow = daemon
        .client()
        .await?
        .follow_where(0, loads.clone())
        .await?;
    let mut got = Vec::new();
    // The backlog's loads (0, 3, ..., 57), then new ones as they commit.
    let mut appender = daemon.client().await?;
    appender
        .append((COUNT..COUNT + 30).map(known).collect())
        .await?;
    while got.len() < 25 {
        let record = next(&mut follow).await?;
        let body = tally_client::record::decode(&record.record)?.body;
        assert_eq!(
            body.event.map(|e| e.kind).as_deref(),
            Some("model.load"),
            "seq {}",
            record.seq
        );
        got.push(record.seq);
    }
    let want: Vec<u64> = (0..COUNT + 30).filter(|i| i % 3 == 0).take(25).collect();
    assert_eq!(got, want);
    // Resumed where the first follow stood: the next load, no repeat.
    // (it may stand past the last load returned: the daemon examined the
    // records after it and said so; none of those is a load)
    let resume = follow.resume_seq();
    let last = got[got.len() - 1];
    assert!(resume > last, "resume {resume} after {last}");
    assert!(
        (last + 1..resume).all(|i| i % 3 != 0),
        "resume {resume} skips a load"
    );
    drop(follow);
    appender
        .append((COUNT + 30..COUNT + 40).map(known).collect())
        .await?;
    let mut follow = daemon.client().await?.follow_where(resume, loads).await?;
    let mut rest = Vec::new();
    while rest.len() < 5 {
        rest.push(next(&mut follow).await?.seq);
    }
    let want: Vec<u64> = (resume..COUNT + 40)
        .filter(|i| i % 3 == 0)
        .take(5)
        .collect();
    assert_eq!(rest, want);
    Ok(())
}

/// The follower's next record, or a failure after 10 s.
async fn next(follow: &mut tally_client::Follow) -> anyhow::Result<StoredRecord> {
    Ok(tokio::time::timeout(Duration::from_secs(10), follow.next()).await??)
}

/// Reads one frame off a raw connection: its length on the wire (header
/// included) and the response.
async fn frame(conn: &mut RawConn) -> anyhow::Result<(usize, Response)> {
    let read = async {
        let mut len = [0u8; 4];
        conn.stream.read_exact(&mut len).await?;
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.stream.read_exact(&mut payload).await?;
        anyhow::Ok((4 + payload.len(), Response::decode(payload.as_slice())?))
    };
    tokio::time::timeout(Duration::from_secs(10), read).await?
}

fn records_of(response: Response) -> proto::Records {
    match response.body {
        Some(response::Body::Records(records)) => records,
        other => panic!("expected records, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selective_filter_sends_bytes_in_proportion_to_the_matches() -> anyhow::Result<()> {
    //! Counted on the wire: the frames a raw connection receives.
    const LOG: u64 = 3_000;
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut client = daemon.client().await?;
    // 1 in 100 is "rare"; every event carries 512 payload bytes.
    let events: Vec<Event> = (0..LOG)
        .map(|i| Event {
            kind: if i % 100 == 7 { "rare" } else { "common" }.into(),
            payload: vec![b'p'; 512],
            ..Default::default()
        })
        .collect();
    for chunk in events.chunks(1_000) {
        client.append(chunk.to_vec()).await?;
    }
    let wire_bytes = |filter: Filter| {
        let socket = daemon.socket();
        async move {
            let mut conn = RawConn::greeted(&socket).await?;
            let (mut bytes, mut records, mut from, mut id) = (0, 0, 0, 10);
            while from < LOG {
                let read = ReadRequest {
                    from_seq: from,
                    filter: Some(filter.clone()),
                    ..Default::default()
                };
                conn.send(&Request {
                    id,
                    body: Some(request::Body::Read(read)),
                })
                .await?;
                id += 1;
                let (len, response) = frame(&mut conn).await?;
                let page = records_of(response);
                bytes += len;
                records += page.records.len();
                from = page.resume_seq;
            }
            anyhow::Ok((bytes, records))
        }
    };
    let (all_bytes, all) = wire_bytes(Filter::default()).await?;
    let rare = Filter {
        kinds: vec!["rare".into()],
        ..Default::default()
    };
    let (rare_bytes, rare_count) = wire_bytes(rare.clone()).await?;
    assert_eq!((all, rare_count), (3_000, 30));
    // Each record costs the same on the wire (~600 bytes): the filtered
    // read sends its 30 and a few frames' overhead, not the log.
    let per_record = all_bytes / all;
    assert!(per_record > 512, "{per_record}");
    assert!(
        rare_bytes <= 30 * per_record + 64,
        "30 matches cost {rare_bytes} bytes on the wire ({per_record} per record)"
    );
    // The same for a follower: its stream holds the 30 and nothing else.
    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    let follow = proto::FollowRequest {
        from_seq: 0,
        filter: Some(rare),
    };
    conn.send(&Request {
        id: 5,
        body: Some(request::Body::Follow(follow)),
    })
    .await?;
    let (mut bytes, mut seqs) = (0, Vec::new());
    while seqs.len() < 30 {
        let (len, response) = frame(&mut conn).await?;
        bytes += len;
        seqs.extend(records_of(response).records.iter().map(|r| r.seq));
    }
    assert_eq!(seqs, (0..LOG).filter(|i| i % 100 == 7).collect::<Vec<_>>());
    assert!(
        bytes <= 30 * per_record + 64,
        "the follower got {bytes} bytes"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_matching_nothing_is_bounded_per_request_and_the_loop_ends() -> anyhow::Result<()>
{
    //! One request examines at most 100,000 records (or 50 ms): a filter
    //! that matches nothing must not pin a worker for the whole log.
    const LOG: u64 = 130_000;
    let daemon = Daemon::start(DaemonOpts::default())?;
    let mut client = daemon.client().await?;
    for first in (0..LOG).step_by(10_000) {
        let batch = (first..first + 10_000)
            .map(|_| Event {
                kind: "k".into(),
                ..Default::default()
            })
            .collect();
        client.append(batch).await?;
    }
    let none = Filter {
        kinds: vec!["absent".into()],
        ..Default::default()
    };
    let first = client
        .read_where(ReadRequest {
            filter: Some(none.clone()),
            ..Default::default()
        })
        .await?;
    assert!(first.records.is_empty());
    assert!(
        first.resume_seq > 0 && first.resume_seq <= 100_000,
        "the first request examined [0, {})",
        first.resume_seq
    );
    let (seqs, pages) = read_all(&mut client, &none, false, 0).await?;
    assert!(seqs.is_empty());
    assert!(pages >= 2, "{pages} pages");
    let (seqs, pages) = read_all(&mut client, &none, true, 0).await?;
    assert!(seqs.is_empty());
    assert!(pages >= 2, "{pages} pages newest first");
    // A follower with that filter hears where the daemon got to: empty
    // pages, at least one every 10,000 skipped records.
    let mut conn = RawConn::greeted(&daemon.socket()).await?;
    let follow = proto::FollowRequest {
        from_seq: 0,
        filter: Some(none),
    };
    conn.send(&Request {
        id: 5,
        body: Some(request::Body::Follow(follow)),
    })
    .await?;
    // The last up to 10,000 skipped records are not reported until more
    // are skipped: the follower stands within that much of the end.
    let mut resume = 0;
    let mut frames = 0;
    while resume + 10_000 <= LOG {
        let page = records_of(frame(&mut conn).await?.1);
        assert!(page.records.is_empty());
        assert!(page.resume_seq > resume, "progress must advance");
        resume = page.resume_seq;
        frames += 1;
    }
    assert!(resume <= LOG);
    assert!(
        (2..=14).contains(&frames),
        "{frames} progress frames for {LOG} records"
    );
    Ok(())
}
