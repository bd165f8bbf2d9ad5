//! The engine's events and their queue order: by time, then by the order
//! they were scheduled.
//!
//! The order must never depend on anything but the time and the order of
//! scheduling (nothing that varies between runs), so the same seed replays
//! the same run, event for event.

use std::cmp::Ordering;

use kith_protocol::Envelope;

#[derive(Clone, Debug)]
pub(super) enum Ev {
    Workload,
    Decide {
        node: u32,
        peer: u32,
    },
    Revoke {
        node: u32,
        peer: u32,
    },
    /// The operator renews an expired approval.
    Renew {
        node: u32,
        peer: u32,
    },
    /// The requester withdraws or drops what it has with the peer.
    Withdraw {
        node: u32,
        peer: u32,
    },
    Attempt {
        del: u64,
    },
    Arrive {
        del: u64,
        attempt: u32,
    },
    AckBack {
        del: u64,
        attempt: u32,
    },
    Fail {
        del: u64,
        attempt: u32,
        why: &'static str,
    },
    Tick {
        node: u32,
    },
    Crash {
        node: u32,
    },
    Restart {
        node: u32,
    },
    PartitionStart {
        index: u32,
    },
    PartitionEnd {
        index: u32,
    },
    Inject,
    Sample,
    EndWorkload,
    RelayArrive {
        del: u64,
        attempt: u32,
    },
    RelayAnswer {
        del: u64,
        attempt: u32,
    },
    Push {
        relay: u32,
        conn: u64,
        env: Box<Envelope>,
    },
    RelayTick {
        relay: u32,
    },
    RelayConnect {
        node: u32,
        relay: u32,
        incarnation: u32,
    },
    RelayDisconnect {
        relay: u32,
        conn: u64,
    },
    RelayAlive {
        relay: u32,
        conn: u64,
    },
}

pub(super) struct Scheduled {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap is a max-heap and the earliest event comes first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}
