//! `tally append --stdin`: JSON lines streamed to the daemon as they are read.
//!
//! Two parts joined by a channel. A reader thread blocks on stdin, turns each
//! line into an event (or a refusal naming the line) and queues it at once.
//! The sender, on the CLI's runtime, takes whatever is queued, up to the
//! request bounds, sends it as one append, and prints acks as they arrive, in
//! input order, with up to [`WINDOW`] requests in flight. Nothing waits for
//! more input to fill a batch: a line is sent as soon as it is read; a batch
//! only gathers lines that were already waiting (a fast producer gets large
//! batches, a slow one gets each line acked before it writes the next).
//!
//! Bounds of one request: its events' encoded sizes sum to at most the
//! daemon's `max_frame_bytes` less [`APPEND_ENVELOPE_BYTES`], and it holds at
//! most the daemon's `max_events_per_append` (or `--batch`, if smaller). The
//! queue between the two parts holds at most [`QUEUE_FRAMES`] frames' worth
//! of encoded events: a producer faster than the daemon is pushed back on.
//!
//! A bad line is reported on stderr with its number and reason and skipped;
//! at the end the run exits [`EXIT_LINES_REFUSED`] with a summary. A failure
//! of the connection or a refusal by the daemon stops the run (exit 2) once
//! the requests in flight are answered, naming the lines not acknowledged.
//! One exception: a send that fails with nothing in flight (the daemon closed
//! an idle connection, e.g. after `idle_timeout_secs` of a quiet producer, or
//! restarted) reconnects and sends again, once: the daemon acts only on
//! whole frames, so a frame whose write failed was not stored.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use tally_client::frame::APPEND_ENVELOPE_BYTES;
use tally_client::proto::{ErrorCode, Event};
use tally_client::{Ack, ClientError};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::line::{self, LineError};
use super::{explain, print_ack};
use crate::cli::connect::{connect, AnyClient, Target};

/// Append requests in flight at once: enough to keep the daemon's group
/// commit fed while acks come back, few enough that the acks of a slow
/// producer are never held behind others'.
pub const WINDOW: usize = 8;

/// Frames' worth of encoded events the reader may queue ahead of the sender.
const QUEUE_FRAMES: usize = 2;

/// A line longer than this many frames cannot be an event that fits one
/// (JSON escapes and base64 make a line at most ~6 times its event's
/// encoding): it is refused without being buffered whole.
const LINE_FRAMES: usize = 8;

/// Exit code when some lines were refused and every other line is stored.
pub const EXIT_LINES_REFUSED: u8 = 4;

/// Line numbers listed in a summary before "and N more".
const LISTED_LINES: usize = 20;

/// What the reader thread hands the sender.
#[derive(Debug)]
enum Item {
    Event {
        line: u64,
        event: Event,
        /// Its share of the request's encoding ([`line::encoded_size`]).
        bytes: usize,
        /// Holds `bytes` of the queue's budget until the event is sent.
        _budget: OwnedSemaphorePermit,
    },
    Refused {
        line: u64,
        reason: LineError,
    },
    /// Stdin failed (not a bad line): nothing after it can be read.
    Failed {
        line: u64,
        err: io::Error,
    },
}

/// Options of a streaming run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `--batch`: most events per request, below the daemon's maximum.
    pub batch: Option<usize>,
    /// Acks as JSON lines (with the input line number).
    pub json: bool,
}

/// Streams stdin's lines to the daemon; see the module's comment.
pub async fn run(
    client: &mut AnyClient,
    target: &Target,
    options: Options,
) -> anyhow::Result<ExitCode> {
    let limits = client.limits();
    let bounds = Bounds {
        bytes: limits.max_frame_bytes.saturating_sub(APPEND_ENVELOPE_BYTES),
        events: options
            .batch
            .unwrap_or(usize::MAX)
            .min(limits.max_events_per_append)
            .max(1),
    };
    let budget = Arc::new(Semaphore::new(QUEUE_FRAMES * limits.max_frame_bytes));
    let (queue, items) = mpsc::unbounded_channel();
    let reader = Reader {
        event_limit: bounds.bytes,
        max_line: LINE_FRAMES.saturating_mul(limits.max_frame_bytes),
        budget: budget.clone(),
        queue,
    };
    std::thread::Builder::new()
        .name("tally-stdin".into())
        .spawn(move || reader.run(io::stdin().lock()))
        .context("cannot start the stdin reader")?;
    let mut sender = Sender {
        client,
        target,
        bounds,
        json: options.json,
        items,
        carry: None,
        input_open: true,
        in_flight: VecDeque::new(),
        lines: 0,
        refused: Vec::new(),
        unacked: Vec::new(),
        last_sent: 0,
        failure: None,
    };
    let result = sender.run().await;
    // Frees a reader blocked on the budget once nothing takes its events.
    budget.close();
    result
}

/// The bounds of one append request.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Sum of the events' [`line::encoded_size`]s.
    bytes: usize,
    events: usize,
}

/// The reader thread: stdin's lines as [`Item`]s, in order.
#[derive(Debug)]
struct Reader {
    event_limit: usize,
    max_line: usize,
    budget: Arc<Semaphore>,
    queue: mpsc::UnboundedSender<Item>,
}

impl Reader {
    fn run(self, mut input: impl BufRead) {
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            number += 1;
            buf.clear();
            let item = match read_line(&mut input, &mut buf, self.max_line) {
                Ok(Line::End) => return,
                Ok(Line::TooLong) => Item::Refused {
                    line: number,
                    reason: LineError::TooLong { max: self.max_line },
                },
                Ok(Line::Read) => match self.event(number, &buf) {
                    Some(item) => item,
                    None => continue,
                },
                Err(err) => Item::Failed { line: number, err },
            };
            let failed = matches!(item, Item::Failed { .. });
            if self.queue.send(item).is_err() || failed {
                return;
            }
        }
    }

    /// The line as an event holding its share of the budget (waiting for
    /// it), or a refusal; `None` for a blank line, or once the sender is gone.
    fn event(&self, line: u64, bytes: &[u8]) -> Option<Item> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Some(Item::Refused {
                line,
                reason: LineError::NotUtf8,
            });
        };
        if text.trim().is_empty() {
            return None;
        }
        let parsed = line::parse(text).and_then(|event| {
            let size = line::encoded_size(&event, self.event_limit)?;
            Ok((event, size))
        });
        match parsed {
            Err(reason) => Some(Item::Refused { line, reason }),
            Ok((event, bytes)) => {
                // The size is below the frame limit, far below u32::MAX.
                let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
                let budget =
                    futures::executor::block_on(self.budget.clone().acquire_many_owned(permits))
                        .ok()?;
                Some(Item::Event {
                    line,
                    event,
                    bytes,
                    _budget: budget,
                })
            }
        }
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line (without its `\n` or `\r\n`) is in the buffer.
    Read,
    /// The line was longer than the maximum; it was skipped.
    TooLong,
    /// End of input.
    End,
}

/// Reads one line of at most `max` bytes into `buf`; a longer one is
/// consumed to its end without being kept.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let read = Read::take(&mut *input, limit).read_until(b'\n', buf)?;
    if read == 0 {
        return Ok(Line::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Read);
    }
    if read <= max {
        return Ok(Line::Read); // the last line, without a newline
    }
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok(Line::TooLong);
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(end) => {
                input.consume(end + 1);
                return Ok(Line::TooLong);
            }
            None => {
                let len = available.len();
                input.consume(len);
            }
        }
    }
}

/// The sender: batches, pipelined requests, acks printed in order.
struct Sender<'c> {
    client: &'c mut AnyClient,
    /// Where to reconnect when the daemon closed an idle connection.
    target: &'c Target,
    bounds: Bounds,
    json: bool,
    items: mpsc::UnboundedReceiver<Item>,
    /// An item taken while filling a batch that did not fit it: the first of
    /// the next.
    carry: Option<Item>,
    input_open: bool,
    /// Request ids in send order, with the input line of each event.
    in_flight: VecDeque<(u64, Vec<u64>)>,
    /// Event lines seen (not blank), refused or not.
    lines: u64,
    refused: Vec<u64>,
    /// Lines sent or being sent that were not acknowledged.
    unacked: Vec<u64>,
    /// The input line of the last event sent (0: none).
    last_sent: u64,
    /// What stopped the run.
    failure: Option<anyhow::Error>,
}

/// What the sender waits for next.
enum Next {
    Input(Option<Item>),
    Acks(Result<Vec<Ack>, ClientError>),
}

impl Sender<'_> {
    async fn run(&mut self) -> anyhow::Result<ExitCode> {
        loop {
            let can_send =
                self.input_open && self.failure.is_none() && self.in_flight.len() < WINDOW;
            if !can_send && self.in_flight.is_empty() {
                break;
            }
            let next = match (can_send, self.carry.take()) {
                (true, Some(item)) => Next::Input(Some(item)),
                (false, Some(item)) => {
                    self.carry = Some(item);
                    Next::Acks(self.recv_front().await)
                }
                (_, None) => {
                    let front = self.in_flight.front().map(|(id, _)| *id);
                    tokio::select! {
                        item = self.items.recv(), if can_send => Next::Input(item),
                        acks = self.client.recv_append(front.unwrap_or_default()), if front.is_some() => Next::Acks(acks),
                    }
                }
            };
            match next {
                Next::Input(None) => self.input_open = false,
                Next::Input(Some(item)) => self.take(item).await,
                Next::Acks(acks) => self.acked(acks)?,
            }
        }
        self.finish()
    }

    async fn recv_front(&mut self) -> Result<Vec<Ack>, ClientError> {
        let id = self
            .in_flight
            .front()
            .map(|(id, _)| *id)
            .unwrap_or_default();
        self.client.recv_append(id).await
    }

    /// An item from the reader: a refusal is reported; an event starts a
    /// batch that takes every event already queued, within the bounds, and
    /// is sent at once.
    async fn take(&mut self, item: Item) {
        let (line, event, bytes) = match item {
            Item::Event {
                line, event, bytes, ..
            } => (line, event, bytes),
            Item::Refused { line, reason } => return self.refuse(line, &reason),
            Item::Failed { line, err } => {
                self.fail(anyhow!(err).context(format!("cannot read stdin line {line}")));
                return;
            }
        };
        self.lines += 1;
        let mut lines = vec![line];
        let mut events = vec![event];
        let mut total = bytes;
        while events.len() < self.bounds.events {
            let Ok(item) = self.items.try_recv() else {
                break;
            };
            match item {
                Item::Event {
                    line, event, bytes, ..
                } if total + bytes <= self.bounds.bytes => {
                    self.lines += 1;
                    total += bytes;
                    lines.push(line);
                    events.push(event);
                }
                Item::Refused { line, reason } => self.refuse(line, &reason),
                other => {
                    self.carry = Some(other);
                    break;
                }
            }
        }
        match self.send(events).await {
            Ok(id) => {
                self.last_sent = line_of_last(&lines);
                self.in_flight.push_back((id, lines));
            }
            Err(err) => {
                self.unacked.extend(lines);
                self.fail(err);
            }
        }
    }

    /// Sends one append; with nothing in flight, a connection the daemon
    /// closed is reopened and the append sent again (once).
    async fn send(&mut self, events: Vec<Event>) -> anyhow::Result<u64> {
        if !self.in_flight.is_empty() {
            return self.client.send_append(events).await.map_err(explain);
        }
        let again = events.clone();
        let err = match self.client.send_append(events).await {
            Ok(id) => return Ok(id),
            Err(err) if closed(&err) => err,
            Err(err) => return Err(explain(err)),
        };
        eprintln!("tally: reconnecting: {}", tally_client::error_text(&err));
        *self.client = connect(self.target).await?;
        self.client.send_append(again).await.map_err(explain)
    }

    fn refuse(&mut self, line: u64, reason: &LineError) {
        self.lines += 1;
        self.refused.push(line);
        eprintln!("tally: stdin line {line}: {reason}");
    }

    /// The answer to the oldest request in flight.
    fn acked(&mut self, acks: Result<Vec<Ack>, ClientError>) -> anyhow::Result<()> {
        let Some((_, lines)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let acks = match acks {
            Ok(acks) if acks.len() == lines.len() => acks,
            Ok(acks) => {
                self.unacked.extend(lines.iter().copied());
                let err = anyhow!(
                    "the daemon answered {} events with {} acks",
                    lines.len(),
                    acks.len()
                );
                self.fail(err);
                return Ok(());
            }
            Err(err) => {
                self.unacked.extend(lines);
                self.fail(explain(err));
                return Ok(());
            }
        };
        let stdout = io::stdout();
        let mut out = stdout.lock();
        for (ack, line) in acks.iter().zip(&lines) {
            print_ack(&mut out, ack, Some(*line), self.json)?;
        }
        out.flush()?;
        Ok(())
    }

    /// Stops taking input; the requests in flight are still answered. The
    /// first failure is kept, unless a later one is the daemon's own error
    /// (its reason for closing says more than the write that failed).
    fn fail(&mut self, err: anyhow::Error) {
        let daemon_said = |e: &anyhow::Error| {
            e.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<ClientError>(),
                    Some(ClientError::Server { .. })
                )
            })
        };
        match &self.failure {
            Some(first) if daemon_said(first) || !daemon_said(&err) => {}
            _ => self.failure = Some(err),
        }
    }

    fn finish(&mut self) -> anyhow::Result<ExitCode> {
        let refused = (!self.refused.is_empty()).then(|| {
            format!(
                "{} of {} lines refused: {}",
                self.refused.len(),
                self.lines,
                line_list(&self.refused)
            )
        });
        if let Some(failure) = self.failure.take() {
            if let Some(refused) = &refused {
                eprintln!("tally: {refused}");
            }
            let unacked = match self.unacked.is_empty() {
                true => String::new(),
                false => format!(
                    "; not acknowledged (check `tally tail` before sending them again): {}",
                    line_list(&self.unacked)
                ),
            };
            return Err(failure.context(format!(
                "stopped: the events acked above are stored{unacked}; nothing after line {} was sent",
                self.last_sent
            )));
        }
        match refused {
            Some(refused) => {
                eprintln!("tally: {refused}");
                Ok(ExitCode::from(EXIT_LINES_REFUSED))
            }
            None => Ok(ExitCode::SUCCESS),
        }
    }
}

/// True when a send failed because the daemon had closed the connection
/// (its write failed, or the daemon said it was busy or idle and closed).
fn closed(err: &ClientError) -> bool {
    match err {
        ClientError::Io(_) | ClientError::Closed => true,
        ClientError::Server { code, .. } => *code == ErrorCode::Busy,
        _ => false,
    }
}

fn line_of_last(lines: &[u64]) -> u64 {
    lines.last().copied().unwrap_or_default()
}

/// "line 3" or "lines 3, 17, 40", the first [`LISTED_LINES`] then "and N more".
fn line_list(lines: &[u64]) -> String {
    let shown: Vec<String> = lines
        .iter()
        .take(LISTED_LINES)
        .map(u64::to_string)
        .collect();
    let more = match lines.len().saturating_sub(LISTED_LINES) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let noun = if lines.len() == 1 { "line" } else { "lines" };
    format!("{noun} {}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        let mut reader = io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let line = read_line(&mut reader, &mut buf, max).unwrap();
            if line == Line::End {
                return out;
            }
            out.push((line, buf));
        }
    }

    #[test]
    fn lines_are_split_and_an_overlong_one_is_skipped_whole() {
        let got = lines_of(b"abc\r\n0123456789\n\nxyz12\nlast", 5);
        assert_eq!(
            got,
            vec![
                (Line::Read, b"abc".to_vec()),
                (Line::TooLong, b"012345".to_vec()),
                (Line::Read, Vec::new()),
                (Line::Read, b"xyz12".to_vec()),
                (Line::Read, b"last".to_vec()),
            ]
        );
        assert_eq!(lines_of(b"123456", 5)[0].0, Line::TooLong);
        assert_eq!(lines_of(b"12345", 5), vec![(Line::Read, b"12345".to_vec())]);
    }

    #[test]
    fn a_summary_lists_lines_then_counts_the_rest() {
        assert_eq!(line_list(&[3]), "line 3");
        assert_eq!(line_list(&[3, 17]), "lines 3, 17");
        let many: Vec<u64> = (1..=25).collect();
        assert!(line_list(&many).ends_with("19, 20 and 5 more"));
    }
}
