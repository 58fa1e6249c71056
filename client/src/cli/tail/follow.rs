//! `tally tail -f`: follow the log, and outlive the daemon. When the
//! connection is lost (a restart, a shutdown), one notice goes to stderr,
//! the follower reconnects with a bounded backoff for as long as it takes,
//! checks it reached the same log, and resumes at `Follow::resume_seq`:
//! the first seq not yet shown or examined, so nothing is missed or shown
//! twice. Ctrl-C ends it with exit 0: stopping is what was asked for, and
//! the position (with --cursor) is saved after every batch, so nothing is
//! left undone that a nonzero code would report.

use std::time::Duration;

use anyhow::bail;
use tally_client::proto::{ErrorCode, Filter};
use tally_client::{ClientError, Follow};

use super::{Cursor, Shown};
use crate::cli::connect::{connect, AnyClient, Target};

/// The first wait before reconnecting, doubled after each failed attempt.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts: a restarted daemon is seen within 2 s.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Follows from `from` until Ctrl-C, reconnecting as needed.
pub async fn run(
    target: &Target,
    client: AnyClient,
    from: u64,
    filter: Filter,
    mut shown: Shown,
    cursor: Option<&Cursor>,
) -> anyhow::Result<()> {
    let log_id = client.server_hello().log_id.clone();
    let following = follow(target, client, from, &filter, &mut shown, cursor, &log_id);
    let ended = tokio::select! {
        result = following => Some(result),
        interrupted = tokio::signal::ctrl_c() => {
            interrupted?;
            None
        }
    };
    match ended {
        Some(result) => result,
        // Ctrl-C: what was printed since the last batch's end goes out
        // now, and the cursor moves past it.
        None => {
            shown.sink.flush()?;
            if let Some(cursor) = cursor {
                cursor.save(shown.next.max(shown.saved))?;
            }
            Ok(())
        }
    }
}

async fn follow(
    target: &Target,
    mut client: AnyClient,
    mut from: u64,
    filter: &Filter,
    shown: &mut Shown,
    cursor: Option<&Cursor>,
    log_id: &[u8],
) -> anyhow::Result<()> {
    loop {
        // Lost before the stream started (the daemon went away between the
        // connect and the request) or while it ran: reconnect either way.
        let lost = match client.follow_where(from, filter.clone()).await {
            Ok(stream) => {
                let (lost, resume) = stream_until_lost(stream, shown, cursor).await?;
                from = resume;
                lost
            }
            Err(err) if is_lost(&err) => err,
            Err(err) => return Err(err.into()),
        };
        eprintln!("tally: lost the daemon ({lost}); reconnecting");
        client = reconnect(target, log_id).await?;
        eprintln!("tally: resumed at seq {from}");
    }
}

/// Shows what `stream` sends until the connection is lost; returns why,
/// and the seq to resume at.
async fn stream_until_lost(
    mut stream: Follow<Box<dyn crate::cli::connect::Stream>>,
    shown: &mut Shown,
    cursor: Option<&Cursor>,
) -> anyhow::Result<(ClientError, u64)> {
    let mut unflushed = false;
    let lost = loop {
        // After a record, take the ones already received without waiting,
        // then flush and save once for the batch.
        let next = if unflushed {
            match tokio::time::timeout(Duration::ZERO, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    end_batch(shown, cursor, stream.resume_seq())?;
                    unflushed = false;
                    continue;
                }
            }
        } else {
            stream.next().await
        };
        match next {
            Ok(stored) => {
                shown.show(&stored)?;
                unflushed = true;
            }
            Err(err) if is_lost(&err) => break err,
            Err(err) => return Err(err.into()),
        }
    };
    let resume = stream.resume_seq();
    if unflushed {
        end_batch(shown, cursor, resume)?;
    }
    Ok((lost, resume))
}

fn end_batch(shown: &mut Shown, cursor: Option<&Cursor>, next: u64) -> anyhow::Result<()> {
    shown.sink.flush()?;
    if let Some(cursor) = cursor {
        cursor.save(next)?;
        shown.saved = next;
    }
    Ok(())
}

/// The connection ended under the follower (the daemon stopped or is
/// restarting), as opposed to a refusal that a retry would meet again.
fn is_lost(err: &ClientError) -> bool {
    match err {
        ClientError::Io(_) | ClientError::Closed => true,
        ClientError::Server { code, .. } => {
            matches!(code, ErrorCode::ShuttingDown | ErrorCode::Busy)
        }
        _ => false,
    }
}

/// Connects again, waiting 100 ms, then twice as long after each failure up
/// to 2 s, for as long as it takes; refuses a daemon of another log (the
/// seq to resume at would mean nothing there).
async fn reconnect(target: &Target, log_id: &[u8]) -> anyhow::Result<AnyClient> {
    let mut wait = BACKOFF_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        if let Ok(client) = connect(target).await {
            let now = &client.server_hello().log_id;
            if now.as_slice() != log_id {
                bail!(
                    "the daemon now serves another log ({}, was {}); not resuming",
                    hex::encode(now),
                    hex::encode(log_id)
                );
            }
            return Ok(client);
        }
        wait = (wait * 2).min(BACKOFF_MAX);
    }
}
