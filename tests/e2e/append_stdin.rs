//! `tally append --stdin` as a streaming producer uses it (issue 13): each
//! line acked while stdin stays open, requests bounded by bytes, a bad or
//! oversized line refused by number without costing the others, typed JSON
//! values and JSON payloads, the empty kind refused, and single-event mode's
//! clear error for a payload over the frame limit.
//!
//! Regressions: a kept-open stdin sent nothing until 1,000 lines or EOF (a
//! killed producer lost 5 of 5 events; with `--batch 1` line n's ack came
//! after line n+8); 1,000 lines of 5 KB made one 5 MB frame and the user saw
//! "Broken pipe"; one invalid line dropped up to 999 valid lines before it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use tally_client::frame::{append_event_len, APPEND_ENVELOPE_BYTES, DEFAULT_MAX_FRAME};
use tally_client::proto::attribute_value::Value as V;
use tally_client::proto::Event;
use tally_tests::{read_range, stored_event, Daemon, DaemonOpts, Run};

/// How long one ack may take on a loaded machine (each is one fsync).
const ACK_WAIT: Duration = Duration::from_secs(20);

/// Exit code of a run that refused some lines and stored the others.
const EXIT_LINES_REFUSED: i32 = 4;

/// A running `tally` with a stdin the test writes to, and its stdout lines
/// as they are printed.
struct Streaming {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Streaming {
    /// Spawns `tally ARGS` against `daemon`, its stdin from `stdin` (None:
    /// a pipe this test writes with [`Streaming::write`]).
    fn spawn(daemon: &Daemon, args: &[&str], stdin: Option<Stdio>) -> Streaming {
        let piped = stdin.is_none();
        let mut child = Command::new(tally_tests::binary("tally").unwrap())
            .args(args)
            .env("TALLY_SOCKET", daemon.socket())
            .stdin(stdin.unwrap_or_else(Stdio::piped))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Streaming {
            stdin: if piped { child.stdin.take() } else { None },
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    fn write(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The next stdout line, or a failure naming the line awaited.
    fn next_line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(ACK_WAIT)
            .unwrap_or_else(|err| panic!("no stdout line within {ACK_WAIT:?} ({what}): {err}"))
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Closes stdin, waits for the exit (killing after 60 s), collects output.
    fn finish(mut self) -> Run {
        drop(self.stdin.take());
        let pid = self.child.id();
        let (done, watchdog) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if watchdog.recv_timeout(Duration::from_secs(60)).is_err() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        });
        let status = self.child.wait().unwrap();
        let _ = done.send(());
        let stderr = self.stderr.take().unwrap().join().unwrap();
        let stdout: Vec<String> = self.lines.iter().collect();
        Run {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join("\n"),
            stderr,
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tally ARGS` with `input` written on stdin by another thread while
/// its output is read (large inputs and many acks never block each other).
fn run_with_input(daemon: &Daemon, args: &[&str], input: String) -> Run {
    let mut run = Streaming::spawn(daemon, args, None);
    let mut stdin = run.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let result = run.finish();
    writer.join().unwrap();
    result
}

/// Parses a "SEQ HASH" ack line.
fn ack_seq(line: &str) -> u64 {
    let (seq, hash) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(hash.len(), 64, "{line:?}");
    seq.parse().unwrap_or_else(|_| panic!("{line:?}"))
}

async fn stored(daemon: &Daemon) -> Vec<Event> {
    let mut client = daemon.client().await.unwrap();
    let size = client.status().await.unwrap().size;
    read_range(&mut client, 0, size)
        .await
        .unwrap()
        .iter()
        .map(|record| stored_event(record).unwrap())
        .collect()
}

fn typed(event: &Event, key: &str) -> Option<V> {
    event
        .typed_attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone()?.value)
}

/// A producer (a real process) writes 5 lines and keeps its stdout open:
/// tally acks all 5 meanwhile; then the whole pipeline is killed (SIGKILL,
/// as a crash or a ^C would) and the 5 events are in the log.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_open_stdin_is_acked_line_by_line_and_a_killed_pipeline_loses_nothing() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let lines: String = (0..5)
        .map(|i| format!("{{\"kind\":\"sidecar\",\"subject\":\"s-{i}\"}}\\n"))
        .collect();
    let mut producer = Command::new("sh")
        .args(["-c", &format!("printf '{lines}'; exec sleep 600")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = Stdio::from(producer.stdout.take().unwrap());
    let mut tally = Streaming::spawn(&daemon, &["append", "--stdin"], Some(pipe));
    for i in 0..5 {
        assert_eq!(ack_seq(&tally.next_line(&format!("ack {i}"))), i);
    }
    assert!(
        producer.try_wait().unwrap().is_none(),
        "the producer still holds stdin open"
    );
    assert!(tally.still_running(), "tally waits for more input");
    producer.kill().unwrap();
    producer.wait().unwrap();
    tally.child.kill().unwrap();
    tally.child.wait().unwrap();
    let events = stored(&daemon).await;
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, ["s-0", "s-1", "s-2", "s-3", "s-4"]);
}

/// Interactive: line n's ack is printed before line n+1 is written, with
/// `--batch 1` and with the default bounds.
#[tokio::test(flavor = "multi_thread")]
async fn each_ack_is_printed_before_the_next_line_is_written() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let mut next_seq = 0;
    for args in [
        &["append", "--stdin", "--batch", "1"][..],
        &["append", "--stdin"],
    ] {
        let mut tally = Streaming::spawn(&daemon, args, None);
        for i in 0..10 {
            tally.write(&format!("{{\"kind\":\"step\",\"subject\":\"{i}\"}}"));
            let line = tally.next_line(&format!("{args:?}: ack of line {}", i + 1));
            assert_eq!(ack_seq(&line), next_seq, "{args:?}");
            next_seq += 1;
        }
        let run = tally.finish();
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "no ack beyond the lines: {run:?}");
    }
    assert_eq!(stored(&daemon).await.len(), 20);
}

/// 1,000 lines of 5 KB are 5 MB, over the 4 MiB frame: all stored, exit 0
/// (one request over the limit would have been refused by the client, or by
/// the daemon, which then closes the connection). Then the same against a
/// daemon with 64 KiB frames, where every request can carry only 12 of the
/// lines. Both daemons linger 50 ms before each commit, so the input queues
/// up behind the 8 requests in flight and the next request takes all of it
/// that the bounds allow: with acks as fast as a tmpfs fsync no batch would
/// grow near the limit, and a missing byte bound would go unnoticed.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_lines_of_5_kb_are_stored_in_requests_under_the_frame_limit() {
    let payload = "p".repeat(5000);
    let input: String = (0..1000)
        .map(|i| {
            format!("{{\"kind\":\"completion\",\"subject\":\"{i}\",\"payload\":\"{payload}\"}}\n")
        })
        .collect();
    assert!(input.len() > DEFAULT_MAX_FRAME);
    for frame in ["", "max_frame_bytes = 65536"] {
        let config = format!("batch_linger_micros = 50000\n{frame}");
        let daemon = Daemon::start(DaemonOpts::with_config(&config)).unwrap();
        let run = run_with_input(&daemon, &["append", "--stdin", "--json"], input.clone());
        assert_eq!(run.code, 0, "{config}: stderr: {}", run.stderr);
        let acks: Vec<Value> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(acks.len(), 1000, "{config}");
        for (i, ack) in acks.iter().enumerate() {
            assert_eq!(ack["seq"], i, "{ack}");
            assert_eq!(ack["line"], i + 1, "{ack}");
        }
        let events = stored(&daemon).await;
        assert_eq!(events.len(), 1000, "{config}");
        assert!(events.iter().all(|e| e.payload.len() == 5000));
        assert!(
            !daemon.stderr().contains("frame too large"),
            "{}",
            daemon.stderr()
        );
    }
}

/// A 5 MiB payload line among good ones: refused naming its line, its
/// encoded size and the limit; the others stored; exit 4 with the summary.
#[tokio::test(flavor = "multi_thread")]
async fn a_line_too_large_for_one_frame_is_refused_by_number_and_size() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let huge = "h".repeat(5 << 20);
    let line = |kind: &str, payload: &str| {
        format!("{{\"kind\":\"{kind}\",\"payload\":\"{payload}\",\"client_time_unix_nanos\":7}}\n")
    };
    let input = [
        line("a", "x"),
        line("b", "y"),
        line("huge", &huge),
        line("c", "z"),
    ]
    .concat();
    let expected = append_event_len(&Event {
        kind: "huge".into(),
        payload: huge.into_bytes(),
        client_time_unix_nanos: 7,
        ..Default::default()
    });
    let run = run_with_input(&daemon, &["append", "--stdin"], input);
    assert_eq!(run.code, EXIT_LINES_REFUSED, "{run:?}");
    let limit = DEFAULT_MAX_FRAME - APPEND_ENVELOPE_BYTES;
    assert!(
        run.stderr.contains(&format!(
            "stdin line 3: the event is {expected} bytes encoded, over the {limit} bytes"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 4 lines refused: line 3"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Broken pipe"), "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().map(ack_seq).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let kinds: Vec<String> = stored(&daemon).await.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["a", "b", "c"]);
}

/// One invalid JSON line in the middle of 1,000: the 999 valid lines are
/// stored, the bad one is named, exit 4.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_line_among_a_thousand_costs_only_itself() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let input: String = (1..=1000)
        .map(|n| match n {
            500 => "{\"kind\":\"broken\",\n".to_owned(),
            n => format!("{{\"kind\":\"ok\",\"subject\":\"{n}\"}}\n"),
        })
        .collect();
    let run = run_with_input(&daemon, &["append", "--stdin"], input);
    assert_eq!(run.code, EXIT_LINES_REFUSED, "{}", run.stderr);
    assert!(
        run.stderr.contains("stdin line 500: not a JSON event"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 1000 lines refused: line 500"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout.lines().count(), 999);
    let events = stored(&daemon).await;
    assert_eq!(events.len(), 999);
    let subjects: Vec<u32> = events.iter().map(|e| e.subject.parse().unwrap()).collect();
    let expected: Vec<u32> = (1..=1000).filter(|&n| n != 500).collect();
    assert_eq!(subjects, expected, "every valid line, in input order");
}

/// Numbers, booleans and arrays become typed attributes (strings stay in
/// the string map); an object payload is stored as its JSON text with
/// content type application/json; `--attr KEY:=JSON` is typed too.
#[tokio::test(flavor = "multi_thread")]
async fn json_values_are_stored_typed_and_object_payloads_as_json() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let line = json!({
        "kind": "chat",
        "attributes": {
            "gen_ai.request.model": "m-1",
            "gen_ai.usage.input_tokens": 812,
            "temperature": 0.5,
            "stream": true,
            "tags": ["a", "b"],
        },
        "payload": {"prompt": "hi", "n": 2},
    });
    let run = run_with_input(&daemon, &["append", "--stdin"], format!("{line}\n"));
    assert_eq!(run.code, 0, "{run:?}");
    let run = daemon
        .tally(&[
            "append",
            "--kind",
            "flags",
            "--attr",
            "tokens:=812",
            "--attr",
            "model=m-2",
            "--attr",
            "ratio:=0.25",
        ])
        .unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    let events = stored(&daemon).await;
    let chat = &events[0];
    assert_eq!(chat.attributes.get("gen_ai.request.model").unwrap(), "m-1");
    assert_eq!(chat.attributes.len(), 1, "{:?}", chat.attributes);
    assert_eq!(
        typed(chat, "gen_ai.usage.input_tokens"),
        Some(V::IntValue(812))
    );
    assert_eq!(typed(chat, "temperature"), Some(V::DoubleValue(0.5)));
    assert_eq!(typed(chat, "stream"), Some(V::BoolValue(true)));
    match typed(chat, "tags") {
        Some(V::ArrayValue(array)) => {
            let values: Vec<_> = array.values.into_iter().map(|v| v.value).collect();
            assert_eq!(
                values,
                [
                    Some(V::StringValue("a".into())),
                    Some(V::StringValue("b".into()))
                ]
            );
        }
        other => panic!("tags: {other:?}"),
    }
    assert_eq!(chat.content_type, "application/json");
    let payload: Value = serde_json::from_slice(&chat.payload).unwrap();
    assert_eq!(payload, json!({"prompt": "hi", "n": 2}));
    assert_eq!(
        chat.payload, br#"{"n":2,"prompt":"hi"}"#,
        "compact JSON text"
    );
    let flags = &events[1];
    assert_eq!(typed(flags, "tokens"), Some(V::IntValue(812)));
    assert_eq!(typed(flags, "ratio"), Some(V::DoubleValue(0.25)));
    assert_eq!(flags.attributes.get("model").unwrap(), "m-2");
}

/// An empty kind is refused by the CLI in both modes; nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_kind_is_refused_in_both_modes() {
    let daemon = Daemon::start(DaemonOpts::default()).unwrap();
    let run = run_with_input(
        &daemon,
        &["append", "--stdin"],
        "{\"kind\":\"\",\"actor\":\"a\"}\n".into(),
    );
    assert_eq!(run.code, EXIT_LINES_REFUSED, "{run:?}");
    assert!(
        run.stderr
            .contains("stdin line 1: the event's kind is empty"),
        "{}",
        run.stderr
    );
    let run = daemon.tally(&["append", "--kind", ""]).unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("kind is empty"), "{}", run.stderr);
    assert!(stored(&daemon).await.is_empty());
}

/// Single-event mode: a payload file over the frame limit is refused by the
/// client with the sizes and what to do, not "Broken pipe"; nothing stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_payload_file_over_the_limit_gets_a_clear_error() {
    let daemon = Daemon::start(DaemonOpts::with_config("max_frame_bytes = 65536")).unwrap();
    let file = daemon.dir().join("big.bin");
    std::fs::write(&file, vec![b'b'; 70_000]).unwrap();
    let run = daemon
        .tally(&[
            "append".as_ref(),
            "--kind".as_ref(),
            "big".as_ref(),
            "--payload-file".as_ref(),
            file.as_os_str(),
        ])
        .unwrap();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("the request is too large for the daemon")
            && run
                .stderr
                .contains("over the daemon's limit of 65536 bytes")
            && run.stderr.contains("max_frame_bytes"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Broken pipe"), "{}", run.stderr);
    assert!(stored(&daemon).await.is_empty());
    assert!(
        !daemon.stderr().contains("frame too large"),
        "refused before it was sent: {}",
        daemon.stderr()
    );
}

/// A producer quiet for longer than the daemon's idle timeout: the daemon
/// closes the connection, and the next line is still sent and acked (tally
/// reconnects) instead of ending the stream with "Broken pipe".
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_producer_outlives_the_daemons_idle_timeout() {
    let daemon = Daemon::start(DaemonOpts::with_config("idle_timeout_secs = 1")).unwrap();
    let mut tally = Streaming::spawn(&daemon, &["append", "--stdin"], None);
    tally.write(r#"{"kind":"before"}"#);
    assert_eq!(ack_seq(&tally.next_line("ack before the pause")), 0);
    std::thread::sleep(Duration::from_millis(2500));
    tally.write(r#"{"kind":"after"}"#);
    assert_eq!(ack_seq(&tally.next_line("ack after the pause")), 1);
    let run = tally.finish();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("reconnecting"), "{}", run.stderr);
    let kinds: Vec<String> = stored(&daemon).await.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["before", "after"]);
}
