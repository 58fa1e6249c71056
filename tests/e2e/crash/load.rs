//! Concurrent appenders, each pipelining batches of a fixed size, recording
//! every ack in the [`Ledger`]; after a kill each must have ended because
//! the connection died (never with a daemon error such as `STORAGE_FULL`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure};
use tally_client::ClientError;
use tally_tests::{append_pipelined, wait_until, Daemon};
use tokio::task::JoinHandle;

use super::ledger::Ledger;

/// Requests one connection keeps in flight.
const WINDOW: usize = 2;

/// The appenders of one round.
pub struct Load {
    tasks: Vec<JoinHandle<Result<(), ClientError>>>,
}

impl Load {
    /// One appender per entry of `batches` (its events per request), and
    /// waits until the round's first acks arrived (appends in full flow).
    pub async fn start(
        daemon: &Daemon,
        ledger: &Arc<Ledger>,
        batches: &[u64],
    ) -> anyhow::Result<Load> {
        let before = ledger.count();
        let mut tasks = Vec::new();
        for &batch in batches {
            let mut client = daemon.client().await?;
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let ids = {
                    let ledger = ledger.clone();
                    std::iter::repeat_with(move || ledger.take_ids(batch))
                };
                append_pipelined(&mut client, ids, WINDOW, |ids, acks| {
                    ledger.acked(ids, acks)
                })
                .await
            }));
        }
        let load = Load { tasks };
        let flowing = wait_until(Duration::from_secs(10), || ledger.count() > before).await;
        ensure!(flowing, "no append was acked within 10 s");
        Ok(load)
    }

    /// Waits for every appender to end (after the daemon was killed); each
    /// must have lost its connection, nothing else.
    pub async fn ended(self) -> anyhow::Result<()> {
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(10), task).await?? {
                Err(ClientError::Io(_) | ClientError::Closed) => {}
                other => bail!("an appender ended with {other:?}, not a lost connection"),
            }
        }
        Ok(())
    }
}
