//! Where our consent to trust a peer comes from, and the messages that keep both
//! ends of a pair in agreement when one side's consent ends without a "no"
//! (an approval expiring).
//!
//! Our consent has an origin: a request of ours that still stands
//! ([`Consent::Asked`]), or our operator's or a policy's approval of their
//! request ([`Consent::Approved`]). A peer's `Reject` or `Revoke` spends it, so
//! trust comes back only through a new decision of ours. An `Accept` answers a
//! request of ours that still stands, and nothing else.
//!
//! This module must never read a clock or do I/O (it is part of the sans-IO
//! machine), and never grant trust on a peer's word alone.

use kith_keys::NodeId;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::{Applied, AuditAction, Cx, Decider, EventKind, PeerRecord, TrustMachine, TrustState};
use crate::validate::Refusal;
use crate::wire::{AckStatus, Kind};

/// Why our side consents to trusting a peer. `None` on a record: it does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consent {
    /// We asked them for trust at `at_ms`; the request stands until we withdraw
    /// it or they decline it.
    Asked { at_ms: u64 },
    /// `by` approved their request at `at_ms` (our operator, a policy, or both
    /// sides asking). The approval's expiry is the record's `expires_at_ms`.
    Approved { by: Decider, at_ms: u64 },
}

/// Whether an accept that had seen our messages up to `seen_ms` (our clock)
/// answers our consent: a request of ours is answered only by an accept sent
/// after the accepter saw it, never by one of an earlier request.
pub(super) fn answers(consent: Consent, seen_ms: u64) -> bool {
    match consent {
        Consent::Asked { at_ms } => seen_ms >= at_ms,
        Consent::Approved { .. } => true,
    }
}

/// What our side said last and still stands by, when it is a no (a reject, a
/// revoke) or an expiry notice: what `Resend` re-sends, and what an accept that
/// crossed it is answered with.
pub(super) fn standing_word(rec: &PeerRecord) -> Option<Kind> {
    match rec.state {
        TrustState::Rejected => Some(Kind::Reject {
            reason: rec.reason.clone().unwrap_or_default(),
        }),
        TrustState::Revoked => Some(Kind::Revoke {
            reason: rec.reason.clone().unwrap_or_default(),
        }),
        TrustState::Expired => Some(Kind::Expire),
        // We forgot them: whatever we said last, what stands is that we want
        // nothing of them.
        TrustState::Forgotten => Some(Kind::Revoke {
            reason: rec
                .reason
                .clone()
                .unwrap_or_else(|| FORGOTTEN_REASON.to_string()),
        }),
        _ => None,
    }
}

/// The reason of the revoke a forgotten record re-sends when we had given no reason.
pub const FORGOTTEN_REASON: &str = "forgotten";

/// The reason sent back for an accept that answers no request of ours that
/// stands (a decline of theirs spent it, or it crossed): they may ask again.
pub const SPENT_REASON: &str = "no request of ours stands for this accept; ask again";

impl TrustMachine {
    /// `Expire` from `from`: their approval of us lapsed, or (re-sent for a word we
    /// have not acknowledged) they do not trust us and a request of ours waits with
    /// them. Unlike a decline it does not spend our consent: a request of ours stands
    /// again, waiting for them to renew (`approve`) or for us to ask again.
    pub(super) fn on_expire<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: NodeId,
    ) -> Result<Applied, Refusal> {
        let now = cx.now;
        let Some(rec) = self.peers.get_mut(&from) else {
            return Err(Refusal::Unsolicited);
        };
        if rec.state != TrustState::Trusted {
            // Nothing of theirs to lose: applied (the mark advances), no change.
            return Ok(Applied::Yes(rec.state.ack_status()));
        }
        if let Some(consent) = rec.consent {
            rec.state = TrustState::OutgoingPending;
            // Our consent stands as a request. Any accept of theirs from now on is
            // newer than this expiry notice, so it answers that request.
            let at_ms = match consent {
                Consent::Asked { at_ms } => at_ms,
                Consent::Approved { .. } => 0,
            };
            rec.consent = Some(Consent::Asked { at_ms });
        } else {
            // Trusted without our consent cannot happen; fail closed if it did.
            rec.state = TrustState::RevokedByPeer;
        }
        rec.since_ms = now;
        rec.decided_by = Some(Decider::Peer);
        cx.event(from, EventKind::ExpiredByPeer);
        cx.audit(Some(from), AuditAction::ExpiredByPeer, None);
        Ok(Applied::Yes(self.peers[&from].state.ack_status()))
    }

    /// An accept no request of ours stands behind: they trust us on a request
    /// their decline already spent, or crossed with their own. Say no (our record
    /// becomes `Revoked`, re-sent until acknowledged) so that both ends agree.
    pub(super) fn refuse_spent_accept<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: NodeId,
    ) -> AckStatus {
        let now = cx.now;
        let rec = self.peers.get_mut(&from).expect("record exists");
        super::decline(rec, now, TrustState::Revoked, SPENT_REASON.to_string());
        self.send(
            cx,
            from,
            Kind::Revoke {
                reason: SPENT_REASON.to_string(),
            },
        );
        cx.event(from, EventKind::Revoked);
        cx.audit(
            Some(from),
            AuditAction::Revoked,
            Some(SPENT_REASON.to_string()),
        );
        AckStatus::Revoked
    }
}
