//! The server: accepting connections and serving the wire protocol.
//!
//! Every transport (the Unix socket, and vsock for guest VMs) hands its
//! streams to [`serve_connection`], so framing, limits and dispatch are one
//! code path. Requests flow one way: the accept loop admits a connection,
//! the connection reads frames, its dispatcher (hello state, roles, the
//! settle gate) picks the handler, and handlers answer from [`Shared`]
//! alone; every refusal is a [`RequestError`], which alone picks the wire's
//! error code.

mod accept;
mod connection;
mod dispatcher;
mod erase;
mod error;
mod fanout;
mod follow;
mod handlers;
mod page;
mod shared;
mod slow_reader;
#[cfg(test)]
mod tests;

pub use accept::{run, Listeners};
pub use connection::serve_connection;
#[cfg(test)]
pub(crate) use dispatcher::record_denial;
pub(crate) use erase::retention;
pub use error::{RequestError, MAX_NONCE_BYTES};
pub use shared::{Anchoring, Shared, SERVER_NAME};
