//! A node-wide bound on the bytes held by the streams it is reading.
//!
//! QUIC flow control bounds what quinn buffers for one connection (see the
//! windows in [`crate::transport::limits`]), but every byte the node reads out of quinn returns
//! credit to the peer: without a bound here, streams × frame × connections could
//! sit in read buffers at once (8 GiB with 4,096 connections of 32 streams each).
//! Every stream a peer opens is read through [`read_message`], which takes budget
//! before each chunk it reads and holds it until the message has been handled.
//! When the budget is spent, readers wait (their stream's deadline still runs) and
//! stop reading, so quinn's flow control stops the senders.
//!
//! This module must never read a chunk whose budget it has not taken.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::STREAM_TIMEOUT;

/// Bytes all streams being read may hold at once.
pub const MAX_BUFFERED: usize = 32 << 20;
/// Largest read out of quinn at a time, and the budget a reader takes ahead of it
/// (so also what a reader still waiting for data holds: small, so that idle
/// streams do not keep the budget from the ones with data).
const CHUNK: usize = 4 << 10;

/// The node's read budget (see the module doc).
#[derive(Debug)]
pub struct ReadBudget(Arc<Semaphore>);

impl Default for ReadBudget {
    fn default() -> Self {
        ReadBudget::new(MAX_BUFFERED)
    }
}

/// Budget held for a message that was read; returned when dropped.
#[derive(Debug)]
pub struct Held {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ReadBudget {
    pub fn new(bytes: usize) -> Self {
        ReadBudget(Arc::new(Semaphore::new(bytes)))
    }

    /// Reads the stream to its end, at most `limit` bytes, taking budget for each
    /// chunk before reading it. `None` if the stream failed or was too long.
    async fn read(&self, recv: &mut quinn::RecvStream, limit: usize) -> Option<(Vec<u8>, Held)> {
        let mut out = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        loop {
            // One byte past the limit, so a stream that is too long is noticed.
            let want = CHUNK.min(limit + 1 - out.len());
            let mut permit = self
                .0
                .clone()
                .acquire_many_owned(u32::try_from(want).ok()?)
                .await
                .ok()?;
            match recv.read_chunk(want, true).await {
                Ok(Some(chunk)) => {
                    let got = chunk.bytes.len();
                    if out.len() + got > limit {
                        debug!(limit, "stream longer than one frame");
                        return None;
                    }
                    // Give back what the chunk did not use.
                    drop(permit.split(want - got));
                    out.extend_from_slice(&chunk.bytes);
                    match &mut held {
                        Some(h) => h.merge(permit),
                        None => held = Some(permit),
                    }
                }
                Ok(None) => return Some((out, Held { _permit: held })),
                Err(e) => {
                    debug!(error = %e, "stream read failed");
                    return None;
                }
            }
        }
    }
}

/// Reads the one message the other side sends on a stream it opened: at most
/// `limit` bytes, within [`STREAM_TIMEOUT`], within `budget`. A failed, stalled or
/// too long read resets the stream and gives `None`.
pub(crate) async fn read_message(
    budget: &ReadBudget,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Option<(Vec<u8>, Held)> {
    let read = tokio::time::timeout(STREAM_TIMEOUT, budget.read(recv, limit)).await;
    match read {
        Ok(Some(message)) => Some(message),
        Ok(None) | Err(_) => {
            let _ = send.reset(0u32.into());
            let _ = recv.stop(0u32.into());
            None
        }
    }
}
