//! Messages a peer refused for good: what makes a refusal final, and the record of
//! the ones this node heard, for `kith status` and `kith events`.
//!
//! A refusal is final when resending the same message, re-signed, would be refused
//! again (see [`is_final`]). Only a peer's own acknowledgement over a direct
//! connection, which TLS binds to its id, counts: a relay passes acknowledgements on
//! unsigned, so a relay's word could otherwise end our requests. This module only
//! records: the delivery code decides what to stop sending, and it must never decide
//! trust itself.

use std::collections::VecDeque;
use std::sync::Mutex;

use kith_keys::NodeId;
use kith_protocol::validate::Refusal;
use tokio::sync::broadcast;

/// Final refusals kept for `kith status`.
const KEPT: usize = 8;

/// A message the peer refused for good; it is not resent.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalRefusal {
    pub peer: NodeId,
    /// What was refused (`request`, `accept`, `reject`, `revoke`).
    pub kind: &'static str,
    pub refusal: Refusal,
    pub at_ms: u64,
    /// It was our request to the peer, and it was withdrawn.
    pub withdrawn: bool,
}

impl FinalRefusal {
    /// One sentence for the operator: what happened and what was done about it.
    pub fn detail(&self) -> String {
        if self.withdrawn {
            format!(
                "{}; resending cannot change that answer, so the request was withdrawn",
                self.refusal
            )
        } else {
            format!(
                "our {} was refused: {}; resending cannot change that answer, so it is no longer resent",
                self.kind, self.refusal
            )
        }
    }
}

/// Whether a peer's refusal of a message of ours is its last word: resending the
/// same message (re-signed) would be refused again. A skewed clock or a full
/// pending queue at the peer can change; these cannot.
pub fn is_final(refusal: &Refusal) -> bool {
    matches!(
        refusal,
        Refusal::Malformed
            | Refusal::UnknownVersion(_)
            | Refusal::WrongAddressee
            | Refusal::TextTooLong { .. }
            | Refusal::TextNotPrintable
            | Refusal::FromSelf
            | Refusal::SenderMismatch
            | Refusal::BadSignature
    )
}

/// The latest final refusals and their live stream.
pub(super) struct FinalRefusals {
    recent: Mutex<Recent>,
    tx: broadcast::Sender<FinalRefusal>,
    /// Subscribed at construction, so the first subscriber (the daemon) also sees
    /// what the resender heard in the node's first moments.
    first: Mutex<Option<broadcast::Receiver<FinalRefusal>>>,
}

#[derive(Default)]
struct Recent {
    total: u64,
    latest: VecDeque<FinalRefusal>,
}

impl FinalRefusals {
    pub(super) fn new() -> Self {
        let (tx, first) = broadcast::channel(KEPT * 4);
        FinalRefusals {
            recent: Mutex::default(),
            tx,
            first: Mutex::new(Some(first)),
        }
    }

    pub(super) fn note(&self, refusal: FinalRefusal) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.total += 1;
        if recent.latest.len() == KEPT {
            recent.latest.pop_front();
        }
        recent.latest.push_back(refusal.clone());
        let _ = self.tx.send(refusal);
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<FinalRefusal> {
        self.first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| self.tx.subscribe())
    }

    /// How many since the node started, and the latest few, oldest first.
    pub(super) fn recent(&self) -> (u64, Vec<FinalRefusal>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        (recent.total, recent.latest.iter().cloned().collect())
    }
}

impl super::Node {
    /// Messages of ours that peers refused for good, as they happen. The first call
    /// gets every one since the node started.
    pub fn subscribe_final_refusals(&self) -> broadcast::Receiver<FinalRefusal> {
        self.shared.final_refusals.subscribe()
    }

    /// How many messages peers refused for good since the node started, and the
    /// latest few, oldest first.
    pub fn final_refusals(&self) -> (u64, Vec<FinalRefusal>) {
        self.shared.final_refusals.recent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_are_kept_and_all_are_counted() {
        let records = FinalRefusals::new();
        let mut rx = records.subscribe();
        let peer = kith_keys::NodeKey::generate().node_id();
        for at_ms in 0..20 {
            records.note(FinalRefusal {
                peer,
                kind: "request",
                refusal: Refusal::UnknownVersion(9),
                at_ms,
                withdrawn: true,
            });
        }
        let (total, latest) = records.recent();
        assert_eq!(total, 20);
        assert_eq!(latest.len(), KEPT);
        assert_eq!(latest.last().unwrap().at_ms, 19);
        assert_eq!(
            rx.try_recv().unwrap().at_ms,
            0,
            "the first subscriber sees the first"
        );
    }

    #[test]
    fn only_refusals_no_resend_can_change_are_final() {
        assert!(is_final(&Refusal::UnknownVersion(2)));
        assert!(is_final(&Refusal::BadSignature));
        assert!(!is_final(&Refusal::ClockSkew { skew_ms: 1 }));
        assert!(!is_final(&Refusal::PendingFull));
        assert!(!is_final(&Refusal::NotTrusted));
        assert!(!is_final(&Refusal::Stale));
    }
}
