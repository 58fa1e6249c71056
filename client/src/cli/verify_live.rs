//! `tally verify --live`: the daemon's log streamed into the verifier
//! (tally_client::export::live) on a thread of its own, so the verifier
//! runs here, blocking, while the stream is read on that thread's runtime.

use std::sync::mpsc::sync_channel;

use anyhow::Context as _;
use serde_json::{json, Value};
use tally_attest::anchor::FreshAttestation;
use tally_attest::verify::VerifyError;
use tally_attest::Report;
use tally_client::export::live::{stream_live, LiveError, LiveFrom, LiveSections, CHANNEL_PAGES};

use crate::cli::connect::{connect, Target};

/// Connects, streams and runs `verify` over the stream (with the fresh
/// attestation the stream brought, when `from.nonce` asked for one).
/// `Err` only when the daemon cannot be reached or refuses to start the
/// stream; a stream that fails later is the verifier's `VerifyError`.
pub fn verify(
    target: &Target,
    from: LiveFrom,
    verify: impl FnOnce(&mut LiveSections, Option<&FreshAttestation>) -> Result<Report, VerifyError>,
) -> anyhow::Result<Result<Report, VerifyError>> {
    let (tx, rx) = sync_channel(CHANNEL_PAGES);
    let target = target.clone();
    let producer = std::thread::Builder::new()
        .name("tally-live".into())
        .spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let mut client = connect(&target).await?;
                stream_live(&mut client, from, tx).await;
                Ok(())
            })
        })
        .context("cannot start the stream's thread")?;
    let opened = LiveSections::open(rx);
    let (mut sections, fresh) = match opened {
        Ok(opened) => opened,
        Err(LiveError::Cut(_)) => {
            // The producer ended before the header: its error says why
            // (no daemon at the socket, refused, ...).
            return match producer.join() {
                Ok(Err(error)) => Err(error),
                _ => Err(anyhow::anyhow!(
                    "the daemon's stream ended before it started"
                )),
            };
        }
        Err(error) => return Err(error.into()),
    };
    let result = verify(&mut sections, fresh.as_ref());
    // Hang up first: a producer blocked on a full channel (the verifier
    // stopped at damage) sees the closed channel and returns.
    drop(sections);
    match producer.join() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => anyhow::bail!("the stream's thread panicked"),
    }
    Ok(result)
}

/// `source` in `--json` (docs/VERIFY-JSON.md).
pub fn source_json(target: &Target, trusted: Option<(u64, u64)>) -> Value {
    let mut source = match target.vsock {
        Some((cid, port)) => json!({"kind": "daemon", "vsock": format!("{cid}:{port}")}),
        None => json!({"kind": "daemon", "socket": target.socket.display().to_string()}),
    };
    source["from_seq"] = json!(trusted.map_or(0, |(_, size)| size));
    source["trusted_counter"] = json!(trusted.map(|(counter, _)| counter));
    source
}

/// The `source:` line of the text output.
pub fn source_line(target: &Target, trusted: Option<(u64, u64)>) -> String {
    let daemon = match target.vsock {
        Some((cid, port)) => format!("the daemon at vsock {cid}:{port}"),
        None => format!("the daemon at {}", target.socket.display()),
    };
    match trusted {
        Some((counter, size)) => format!(
            "{daemon}, live: the records from seq {size} and the anchors from counter {counter} (your trusted anchor); nothing before it was read"
        ),
        None => format!("{daemon}, live (no bundle file)"),
    }
}
