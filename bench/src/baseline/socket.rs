//! Baseline (d): round trips over a Unix socket pair between two threads: a
//! request the size of a one-event append, a short reply. With (b') it bounds
//! a lone client from above: a daemon behind a socket that makes each ack
//! durable with one write + fdatasync still pays one socket round trip per
//! ack, so it cannot beat 1 / (fdatasync + round trip).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use serde::Serialize;

use super::{Shape, Timed};

/// The reply's size (an append reply with one ack is about this long).
const REPLY_BYTES: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct SocketBaseline {
    pub request_bytes: usize,
    pub seconds: f64,
    pub round_trips: u64,
    pub round_trips_per_sec: f64,
    /// Latency of one round trip, p50 and p99.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl SocketBaseline {
    pub fn from(timed: &Timed, request_bytes: usize) -> SocketBaseline {
        SocketBaseline {
            request_bytes,
            seconds: timed.seconds,
            round_trips: timed.commits,
            round_trips_per_sec: timed.commits as f64 / timed.seconds,
            p50_ms: timed.ms(0.5),
            p99_ms: timed.ms(0.99),
        }
    }
}

/// One slice: a fresh socket pair and echo thread.
pub fn measure(request_bytes: usize, duration: Duration) -> anyhow::Result<Timed> {
    let (mut client, mut server) = UnixStream::pair()?;
    let echo = thread::Builder::new().name("bench-echo".into()).spawn(
        move || -> std::io::Result<()> {
            let mut request = vec![0u8; request_bytes];
            let reply = [0u8; REPLY_BYTES];
            // Ends when the client closes its end (read fails with EOF).
            while server.read_exact(&mut request).is_ok() {
                server.write_all(&reply)?;
            }
            Ok(())
        },
    )?;
    let request = vec![b'x'; request_bytes];
    let mut reply = [0u8; REPLY_BYTES];
    let shape = Shape {
        record_bytes: request_bytes as f64,
        batch: 1,
    };
    let timed = super::timed(duration, shape, request_bytes, |_| {
        client.write_all(&request)?;
        client.read_exact(&mut reply)?;
        Ok(true)
    });
    drop(client);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    timed
}
