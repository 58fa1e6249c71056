//! The slow-reader bound every socket write of the server goes through: a
//! client that does not take its responses within `slow_reader_timeout_secs`
//! is disconnected, so it stalls only itself (DESIGN.md section 6).

use std::time::Duration;

/// Runs a socket write; false when it failed or the client did not take the
/// bytes within `limit` (a stalled reader: the caller disconnects it).
pub(super) async fn within<E>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> bool {
    match tokio::time::timeout(limit, write).await {
        Ok(result) => result.is_ok(),
        Err(_) => {
            tracing::warn!(
                timeout_secs = limit.as_secs(),
                "client is not reading its responses; disconnecting it"
            );
            false
        }
    }
}
