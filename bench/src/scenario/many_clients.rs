//! Many clients: N connections (100 and 1,000), each sending one event and
//! waiting for its ack before the next: a pool of worker processes that each
//! log one event and wait. Compared with 10 pipelined clients (the
//! throughput scenario's shape) against the same daemon in the same run, and
//! optionally with a second tallyd binary (`--ab-tallyd`), alternating.
//!
//! The load generator must not be the limit: one current-thread tokio runtime
//! (one core at most, no cross-thread wake-ups), raw frames encoded once
//! (each request is one `write`, each ack normally one `read`), a fixed read
//! buffer per connection and one latency sample (4 bytes) per event. Its CPU
//! time is measured and printed beside tallyd's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use prost::Message;
use serde::Serialize;
use tally_client::proto::{self, request, response, ErrorCode, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::daemon::{CpuMeter, CpuUse, Daemon, Setup};
use crate::format::count;
use crate::load::{self, Load};
use crate::target::Target;
use crate::Options;

/// What the scenario runs.
#[derive(Debug, Clone)]
pub struct ManyClientsOptions {
    /// Connection counts, one measured slice each per round.
    pub connections: Vec<usize>,
    /// Length of each slice (the pipelined one too).
    pub slice: Duration,
    pub payload: usize,
    /// Rounds; with `ab_tallyd`, each round runs both binaries, alternating.
    pub rounds: usize,
    /// A second tallyd (e.g. the previous commit's) measured the same way.
    pub ab_tallyd: Option<PathBuf>,
}

/// The targets (issue 17): events/s and ack p99 per connection count.
pub const TARGETS: &[(usize, f64, f64)] = &[(100, 150_000.0, 5.0), (1000, 100_000.0, 20.0)];

/// Pipelined clients of the reference shape (as the throughput scenario).
const PIPELINED_CLIENTS: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct ManyClients {
    pub payload_bytes: usize,
    pub rounds: usize,
    pub slice_seconds: f64,
    /// The binary under test, then (optionally) the A/B one.
    pub binaries: Vec<Binary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Binary {
    pub tallyd: String,
    /// The config it ran with ("" for the defaults).
    pub config: String,
    /// 10 pipelined clients (batch 256, window 8) against the same daemon.
    pub pipelined_events_per_sec: f64,
    pub shapes: Vec<Shape>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub connections: usize,
    /// Connections greeted, over every round.
    pub admitted: usize,
    /// Connections refused (BUSY) at hello, over every round; absent: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub refused: usize,
    pub seconds: f64,
    pub events: u64,
    pub events_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// LMDB transactions per slice (ack-journal commits are not counted:
    /// see `journal_commits_note`).
    pub lmdb_commits: u64,
    /// `events_per_sec` over the pipelined rate of the same binary.
    pub over_pipelined: f64,
    /// tallyd's cores and the load generator's (`bench_cores`).
    pub cpu: CpuUse,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

/// Runs the scenario.
pub fn run(options: &Options, shape: &ManyClientsOptions) -> anyhow::Result<ManyClients> {
    let mut binaries = vec![(options.tallyd.clone(), String::new())];
    if let Some(ab) = &shape.ab_tallyd {
        // A binary from before the new defaults refuses 1,000 one-uid
        // connections: it is measured with the limits raised, so the A/B
        // compares the request path, not the admission.
        binaries.push((
            ab.clone(),
            "max_connections = 4096\nmax_connections_per_peer = 4096\n".into(),
        ));
    }
    let mut acc: Vec<Acc> = binaries
        .iter()
        .map(|_| Acc::new(&shape.connections))
        .collect::<anyhow::Result<_>>()?;
    for round in 0..shape.rounds.max(1) {
        for (index, (tallyd, config)) in binaries.iter().enumerate() {
            eprintln!(
                "tally-bench: many-clients round {} on {}",
                round + 1,
                tallyd.display()
            );
            one_round(options, shape, tallyd, config, &mut acc[index])?;
        }
    }
    Ok(ManyClients {
        payload_bytes: shape.payload,
        rounds: shape.rounds.max(1),
        slice_seconds: shape.slice.as_secs_f64(),
        binaries: binaries
            .iter()
            .zip(acc)
            .map(|((tallyd, config), acc)| acc.finish(tallyd, config))
            .collect(),
    })
}

/// What one binary's rounds add up to.
struct Acc {
    pipelined_events: u64,
    pipelined_seconds: f64,
    shapes: Vec<ShapeAcc>,
}

struct ShapeAcc {
    connections: usize,
    admitted: usize,
    refused: usize,
    seconds: f64,
    events: u64,
    commits: u64,
    latency_us: Histogram<u64>,
    cpu: CpuMeter,
    cpu_use: Option<CpuUse>,
}

impl Acc {
    fn new(connections: &[usize]) -> anyhow::Result<Acc> {
        let shapes = connections
            .iter()
            .map(|&connections| {
                Ok(ShapeAcc {
                    connections,
                    admitted: 0,
                    refused: 0,
                    seconds: 0.0,
                    events: 0,
                    commits: 0,
                    latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                        .map_err(|err| anyhow!("histogram: {err:?}"))?,
                    cpu: CpuMeter::default(),
                    cpu_use: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Acc {
            pipelined_events: 0,
            pipelined_seconds: 0.0,
            shapes,
        })
    }

    fn finish(self, tallyd: &Path, config: &str) -> Binary {
        let pipelined = self.pipelined_events as f64 / self.pipelined_seconds.max(1e-9);
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Binary {
            tallyd: tallyd.display().to_string(),
            config: config.to_owned(),
            pipelined_events_per_sec: pipelined,
            shapes: self
                .shapes
                .into_iter()
                .map(|s| {
                    let rate = s.events as f64 / s.seconds.max(1e-9);
                    Shape {
                        connections: s.connections,
                        admitted: s.admitted,
                        refused: s.refused,
                        seconds: s.seconds,
                        events: s.events,
                        events_per_sec: rate,
                        p50_ms: ms(&s.latency_us, 0.5),
                        p99_ms: ms(&s.latency_us, 0.99),
                        max_ms: s.latency_us.max() as f64 / 1e3,
                        lmdb_commits: s.commits,
                        over_pipelined: rate / pipelined.max(1e-9),
                        cpu: s.cpu_use.unwrap_or(CpuUse {
                            tallyd_cores: 0.0,
                            tallyd_threads: Default::default(),
                            bench_cores: 0.0,
                        }),
                    }
                })
                .collect(),
        }
    }
}

/// One fresh daemon: a warm-up, the pipelined slice, then each connection count.
fn one_round(
    options: &Options,
    shape: &ManyClientsOptions,
    tallyd: &Path,
    config: &str,
    acc: &mut Acc,
) -> anyhow::Result<()> {
    let temp = super::temp_dir(&options.work_dir, "many-clients")?;
    let setup = Setup {
        tpm: None,
        config: (!config.is_empty()).then(|| config.to_owned()),
    };
    let mut daemon = Daemon::start(tallyd, temp.path(), &setup)?;
    let pipelined = Load {
        payload: shape.payload,
        batch: 256,
        window: 8,
    };
    let multi = load::runtime()?;
    load::run_pipelined(
        &multi,
        daemon.socket(),
        PIPELINED_CLIENTS,
        pipelined,
        Instant::now() + shape.slice / 4,
    )?;
    let started = Instant::now();
    acc.pipelined_events += load::run_pipelined(
        &multi,
        daemon.socket(),
        PIPELINED_CLIENTS,
        pipelined,
        started + shape.slice,
    )?;
    acc.pipelined_seconds += started.elapsed().as_secs_f64();
    drop(multi);
    // The generator's runtime: one thread, so its CPU is at most one core
    // and no ack crosses a thread to reach the task that waits for it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let frames = Frames::new(shape.payload);
    for s in &mut acc.shapes {
        let (conns, refused) =
            runtime.block_on(connect_all(daemon.socket(), s.connections, &frames))?;
        s.admitted += conns.len();
        s.refused += refused;
        let txn_before = daemon.last_txn_id()?;
        s.cpu.resume(&daemon)?;
        let started = Instant::now();
        let until = started + shape.slice;
        let samples = runtime.block_on(drive(conns, &frames, until))?;
        s.seconds += started.elapsed().as_secs_f64();
        s.cpu.pause(&daemon)?;
        s.commits += daemon.last_txn_id()?.saturating_sub(txn_before);
        for sample in samples {
            s.events += 1;
            s.latency_us.saturating_record(u64::from(sample.max(1)));
        }
        if daemon.stderr_text().contains("ERROR") {
            bail!("tallyd logged an error:\n{}", daemon.stderr_text());
        }
    }
    for s in &mut acc.shapes {
        // Cumulative over every slice so far: the last round's call wins.
        s.cpu_use = Some(s.cpu.stop(&daemon)?);
    }
    Ok(())
}

/// The two requests a worker sends, encoded once with their length prefix.
struct Frames {
    hello: Vec<u8>,
    append: Vec<u8>,
}

/// The request id of every append (each connection has one in flight).
const APPEND_ID: u64 = 2;

impl Frames {
    fn new(payload: usize) -> Frames {
        let framed = |request: Request| {
            let body = request.encode_to_vec();
            let mut out = Vec::with_capacity(4 + body.len());
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
            out
        };
        Frames {
            hello: framed(Request {
                id: 1,
                body: Some(request::Body::Hello(proto::Hello {
                    protocol_version: tally_client::PROTOCOL_VERSION,
                    client_name: load::CLIENT_NAME.into(),
                })),
            }),
            append: framed(Request {
                id: APPEND_ID,
                body: Some(request::Body::Append(proto::AppendRequest {
                    events: load::events(1, payload),
                })),
            }),
        }
    }
}

/// A greeted connection and its read buffer.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data not yet consumed.
    filled: usize,
}

impl Conn {
    /// Reads one response frame.
    async fn recv(&mut self) -> anyhow::Result<Response> {
        loop {
            if self.filled >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if self.filled >= 4 + len {
                    let response = Response::decode(&self.buf[4..4 + len])?;
                    self.buf.copy_within(4 + len..self.filled, 0);
                    self.filled -= 4 + len;
                    return Ok(response);
                }
                if self.buf.len() < 4 + len {
                    self.buf.resize(4 + len, 0);
                }
            }
            let read = self.stream.read(&mut self.buf[self.filled..]).await?;
            if read == 0 {
                bail!("tallyd closed the connection");
            }
            self.filled += read;
        }
    }
}

/// Opens `count` connections, one after another (a burst of 1,000 connects
/// would overflow the listen backlog, which is not what is measured), and
/// says hello on each. Returns the greeted ones and how many were refused.
async fn connect_all(
    socket: &Path,
    count: usize,
    frames: &Frames,
) -> anyhow::Result<(Vec<Conn>, usize)> {
    let mut conns = Vec::with_capacity(count);
    let mut refused = 0;
    for _ in 0..count {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let mut conn = Conn {
            stream,
            buf: vec![0; 512],
            filled: 0,
        };
        conn.stream.write_all(&frames.hello).await?;
        match conn.recv().await {
            Ok(Response {
                body: Some(response::Body::Hello(_)),
                ..
            }) => conns.push(conn),
            Ok(Response {
                body: Some(response::Body::Error(error)),
                ..
            }) if error.code == ErrorCode::Busy as i32 => refused += 1,
            Ok(other) => bail!("unexpected reply to hello: {other:?}"),
            // A refused connection may be closed before its BUSY is read.
            Err(_) => refused += 1,
        }
    }
    Ok((conns, refused))
}

/// Every connection appends one event at a time until `until`; returns each
/// acked event's latency in microseconds.
async fn drive(conns: Vec<Conn>, frames: &Frames, until: Instant) -> anyhow::Result<Vec<u32>> {
    let append: std::sync::Arc<[u8]> = frames.append.clone().into();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        tasks.spawn(worker(conn, append.clone(), until));
    }
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        samples.extend(done.context("worker task failed")??);
    }
    Ok(samples)
}

/// One worker: append, wait for the ack (checking it is one ack, at a seq
/// above the last one), repeat.
async fn worker(
    mut conn: Conn,
    append: std::sync::Arc<[u8]>,
    until: Instant,
) -> anyhow::Result<Vec<u32>> {
    let mut samples = Vec::with_capacity(4096);
    let mut last_seq = None;
    loop {
        let sent = Instant::now();
        if sent >= until {
            return Ok(samples);
        }
        conn.stream.write_all(&append).await?;
        let response = conn.recv().await?;
        let elapsed = sent.elapsed();
        let seq = match response {
            Response {
                id: APPEND_ID,
                body: Some(response::Body::Append(reply)),
            } if reply.acks.len() == 1 => reply.acks[0].seq,
            other => bail!("unexpected reply to an append: {other:?}"),
        };
        if last_seq.is_some_and(|last| seq <= last) {
            bail!("ack at seq {seq} after one at {last_seq:?}");
        }
        last_seq = Some(seq);
        samples.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
    }
}

/// The table's rows.
pub fn rows(many: &ManyClients, push: &mut dyn FnMut(&str, &str, String)) {
    for (index, binary) in many.binaries.iter().enumerate() {
        let label = if index == 0 { "" } else { " [A/B]" };
        let name = format!("many-clients{label}");
        if index > 0 {
            push(
                &name,
                "tallyd (config)",
                format!(
                    "{} ({})",
                    binary.tallyd,
                    binary.config.trim().replace('\n', ", ")
                ),
            );
        }
        push(
            &name,
            &format!("{PIPELINED_CLIENTS} pipelined clients, events/s"),
            count(binary.pipelined_events_per_sec),
        );
        for s in &binary.shapes {
            let conns = format!("{} conns", s.connections);
            push(
                &name,
                &format!("{conns}: events/s (x pipelined), refused"),
                format!(
                    "{} ({:.3}), {} BUSY",
                    count(s.events_per_sec),
                    s.over_pipelined,
                    s.refused
                ),
            );
            push(
                &name,
                &format!("{conns}: ack p50 / p99 / max ms"),
                format!("{:.2} / {:.2} / {:.1}", s.p50_ms, s.p99_ms, s.max_ms),
            );
            push(
                &name,
                &format!("{conns}: CPU cores"),
                format!(
                    "tallyd {:.2}, load generator {:.2}",
                    s.cpu.tallyd_cores, s.cpu.bench_cores
                ),
            );
        }
    }
    if let [new, old] = &many.binaries[..] {
        for (a, b) in new.shapes.iter().zip(&old.shapes) {
            push(
                "many-clients A/B",
                &format!("{} conns: events/s new / old", a.connections),
                format!("{:.2}", a.events_per_sec / b.events_per_sec.max(1e-9)),
            );
        }
        push(
            "many-clients A/B",
            "pipelined: events/s new / old",
            format!(
                "{:.2}",
                new.pipelined_events_per_sec / old.pipelined_events_per_sec.max(1e-9)
            ),
        );
    }
}

/// The targets, judged on the binary under test.
pub fn targets(many: &ManyClients, targets: &mut Vec<Target>) {
    let Some(binary) = many.binaries.first() else {
        return;
    };
    for &(connections, rate, p99) in TARGETS {
        let Some(s) = binary.shapes.iter().find(|s| s.connections == connections) else {
            continue;
        };
        let met = s.events_per_sec >= rate && s.p99_ms <= p99 && s.refused == 0;
        targets.push(Target {
            name: if connections == 100 {
                "100 one-event connections"
            } else {
                "1,000 one-event connections"
            },
            value: s.events_per_sec,
            unit: "events/s",
            baseline: Some(format!(
                "{PIPELINED_CLIENTS} pipelined clients {} events/s",
                count(binary.pipelined_events_per_sec)
            )),
            ratio: Some(s.over_pipelined),
            required: format!(
                ">= {} events/s, ack p99 <= {p99} ms (was {:.2}), no BUSY (was {})",
                count(rate),
                s.p99_ms,
                s.refused
            ),
            met,
            margin: (s.events_per_sec / rate).min(p99 / s.p99_ms.max(1e-9)),
        });
    }
}
