//! Time passing ([`Input::Tick`](super::Input::Tick)): incoming requests that
//! waited too long, approvals that expire, and declined records that are reaped
//! (by age, or early past [`Config::max_declined`](super::Config::max_declined)).
//!
//! Part of the sans-IO trust machine: this module must never read a clock (the
//! time comes in as `now`), touch the network or the disk, or block.

use kith_keys::NodeId;
use rand_core::{CryptoRng, RngCore};

use super::{AuditAction, Cx, EventKind, TrustMachine, TrustState};
use crate::wire::Kind;

impl TrustMachine {
    // ----- time ------------------------------------------------------------

    pub(super) fn on_tick<R: RngCore + CryptoRng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let now = cx.now;
        let ttl = self.config.pending_ttl_ms;
        let stale: Vec<NodeId> = self
            .peers
            .values()
            .filter(|r| {
                r.state == TrustState::IncomingPending && r.since_ms.saturating_add(ttl) <= now
            })
            .map(|r| r.id)
            .collect();
        for id in stale {
            self.remove_peer(cx, id);
            cx.event(id, EventKind::PendingExpired);
            cx.audit(Some(id), AuditAction::PendingExpired, None);
        }
        let lapsed: Vec<NodeId> = self
            .peers
            .values()
            .filter(|r| r.lapsed(now))
            .map(|r| r.id)
            .collect();
        for id in lapsed {
            self.expire_trust(cx, id);
        }
        // Declined records whose last word is older than the reap time. Forgetting
        // one changes no decision: with or without it, an accept, reject or revoke
        // from that peer changes nothing (without it they are `Unsolicited`), and a
        // request from them is a new pending request (see `reap` for our rejects).
        // Replay: every envelope its high-water mark would refuse is timestamped at
        // or before `last_word`, which is more than the skew window ago, so the skew
        // check refuses it now and at every later time (on a clock that does not go
        // back) — the mark is no longer needed.
        let reap = self.reap();
        while let Some((at, id)) = self.index.oldest_declined(reap.rejected) {
            if at.saturating_add(reap.after_ms) > now {
                break;
            }
            self.remove_peer(cx, id);
        }
        self.nonces.reap(now, self.config.nonce_ttl_ms());
    }

    /// Reaps the oldest declined records past [`Config::max_declined`], however
    /// recent: a stranger can make one per request (ask, then revoke), so only a
    /// hard bound holds them. One reaped within the skew window leaves its mark in
    /// `reaped_floor_ms`, so nothing it refused as stale becomes fresh.
    pub(super) fn bound_declined<R: ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let reap = self.reap();
        while self.index.declined_len(reap.rejected) > self.config.max_declined {
            let Some((_, id)) = self.index.oldest_declined(reap.rejected) else {
                break;
            };
            let mark = self.peers.get(&id).map_or(0, |r| r.high_water_ms);
            // Capped at now: a mark a peer set in our future must not hold up
            // strangers' requests for the whole skew window.
            self.reaped_floor_ms = self.reaped_floor_ms.max(mark.min(cx.now));
            self.remove_peer(cx, id);
        }
    }

    /// Trusted → Expired: our consent lapsed with our approval.
    pub(super) fn expire_trust<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        id: NodeId,
    ) {
        let now = cx.now;
        let rec = self.peers.get_mut(&id).expect("record exists");
        rec.state = TrustState::Expired;
        rec.since_ms = now;
        rec.consent = None;
        // The peer is told, so that both ends agree (it stops trusting us too).
        self.send(cx, id, Kind::Expire);
        cx.event(id, EventKind::TrustExpired);
        cx.audit(Some(id), AuditAction::TrustExpired, None);
        self.put_peer(cx, id);
    }
}
