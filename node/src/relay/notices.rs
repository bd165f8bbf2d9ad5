//! Notices the relay sends a client unasked — an envelope of its that was dropped
//! from the queue, an identity conflict and its end: one sender task per
//! connection, which sends them one after the other, in order, from a queue of
//! [`NOTICES_PER_CONN`].
//!
//! A notice used to be a task of its own. A sender that makes its own queued
//! envelopes drop by the thousand while never reading its notices then held a task
//! and a stream attempt per drop for the whole stream timeout, and two notices to
//! one client (a conflict, then its end) could arrive in either order. Now what
//! does not fit the queue is dropped and counted: notices are advice, and the
//! client that does not read them is the one that misses them.
//!
//! It must never block or await while the relay's state lock is held (queuing is a
//! `try_send`), nor hold anything for a connection the relay has forgotten.

use std::collections::HashMap;

use kith_protocol::wire::{Message, RelayNotice};
use tokio::sync::mpsc;

use super::ConnId;
use crate::node::{STREAM_TIMEOUT, exchange_on};

/// Notices queued for one connection at most, besides the one being sent: as many
/// as a sender may have envelopes queued (`RelayConfig::queue_per_sender`'s
/// default), so an honest sender hears of every one of them that is dropped.
pub const NOTICES_PER_CONN: usize = 256;

/// Each connection's notice queue, and how many notices did not fit.
#[derive(Default)]
pub(super) struct Notices {
    queues: HashMap<ConnId, mpsc::Sender<RelayNotice>>,
    dropped: u64,
}

impl Notices {
    /// Queues `notice` for `conn` (starting its sender on the first one); drops
    /// and counts it if the queue is full. Must run within a Tokio runtime.
    pub(super) fn send(&mut self, id: ConnId, conn: &quinn::Connection, notice: RelayNotice) {
        let queue = self.queues.entry(id).or_insert_with(|| {
            let (queue, notices) = mpsc::channel(NOTICES_PER_CONN);
            tokio::spawn(send_in_order(conn.clone(), notices));
            queue
        });
        if queue.try_send(notice).is_err() {
            self.dropped += 1;
        }
    }

    /// The connection is gone: its sender ends once what was queued is tried.
    pub(super) fn forget(&mut self, id: ConnId) {
        self.queues.remove(&id);
    }

    /// Notices dropped because their connection's queue was full.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Connections with a notice sender.
    pub(super) fn senders(&self) -> usize {
        self.queues.len()
    }
}

async fn send_in_order(conn: quinn::Connection, mut notices: mpsc::Receiver<RelayNotice>) {
    while let Some(notice) = notices.recv().await {
        if conn.close_reason().is_some() {
            continue;
        }
        let _ = exchange_on(&conn, &Message::RelayNotice(notice), STREAM_TIMEOUT).await;
    }
}
