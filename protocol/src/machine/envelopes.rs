//! Envelopes that arrived: validation, then the transitions a peer's
//! `Request`, `Accept`, `Reject`, `Revoke` or `Expire` makes, and the policies
//! (allowlist, auto-approve) that may answer a request for us.
//!
//! Part of the sans-IO trust machine: this module must never read a clock,
//! touch the network or the disk, or block. A refused envelope changes nothing
//! at all, and an `Accept` is honoured only as the answer to a request of ours
//! that still stands.

use std::net::SocketAddr;

use kith_keys::NodeId;
use rand_core::{CryptoRng, RngCore};

use super::consent;
use super::index::SourceNet;
use super::{
    ACCEPT, Applied, AuditAction, Cx, Decider, EventKind, PeerRecord, TrustMachine, TrustState,
    grant,
};
use crate::validate::{Refusal, check_envelope};
use crate::wire::{AckStatus, Envelope, Kind};

impl TrustMachine {
    // ----- envelopes -------------------------------------------------------

    pub(super) fn on_envelope<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        envelope: Envelope,
        transport_peer: Option<NodeId>,
        source: Option<SocketAddr>,
        via_relay: Option<NodeId>,
    ) -> AckStatus {
        let from = envelope.body.from;
        let result = self
            .validate(cx.now, &envelope, transport_peer.as_ref())
            .and_then(|()| self.dispatch(cx, &envelope, source, via_relay));
        let status = match result {
            Ok(Applied::Yes(status)) => {
                self.nonces.insert(
                    from,
                    envelope.body.nonce,
                    cx.now,
                    self.config.nonce_cache_capacity,
                );
                status
            }
            // The mark, stored below, refuses it again: the cache is kept for
            // envelopes that change something.
            Ok(Applied::Repeat(status)) => {
                cx.out.writes_may_wait = true;
                status
            }
            Ok(Applied::Dropped(status)) => return status,
            Err(refusal) => {
                debug_assert!(cx.out.writes.is_empty() && cx.out.send.is_empty());
                cx.event(
                    from,
                    EventKind::Refused {
                        refusal: refusal.clone(),
                    },
                );
                return AckStatus::Refused(refusal);
            }
        };
        if let Some(rec) = self.peers.get_mut(&from) {
            rec.high_water_ms = rec.high_water_ms.max(envelope.body.timestamp_ms);
            self.put_peer(cx, from);
        }
        status
    }

    /// Every rule, stateless then stateful, in the normative order. Pure.
    fn validate(
        &self,
        now_ms: u64,
        envelope: &Envelope,
        transport_peer: Option<&NodeId>,
    ) -> Result<(), Refusal> {
        check_envelope(
            envelope,
            &self.local,
            now_ms,
            self.config.skew_ms,
            transport_peer,
        )?;
        let body = &envelope.body;
        if self.config.fault_skip_replay_check {
            // The test-only deliberate bug: see `Config::fault_skip_replay_check`.
            return Ok(());
        }
        if self.nonces.contains(&body.from, &body.nonce) {
            return Err(Refusal::ReplayedNonce);
        }
        let high_water_ms = match self.peers.get(&body.from) {
            Some(rec) => rec.high_water_ms,
            // The mark of a record reaped early may have been this sender's.
            None => self.reaped_floor_ms,
        }
        // A decline of theirs that found no record outranks anything older, even
        // under a record made since (e.g. by our own request to them).
        .max(self.withdrawn.get(&body.from));
        if body.timestamp_ms <= high_water_ms {
            return Err(Refusal::Stale);
        }
        Ok(())
    }

    /// Acts on a valid envelope. Must return every `Err` before changing anything.
    fn dispatch<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        envelope: &Envelope,
        source: Option<SocketAddr>,
        via_relay: Option<NodeId>,
    ) -> Result<Applied, Refusal> {
        let from = envelope.body.from;
        match &envelope.body.kind {
            Kind::Request { justification } => {
                self.on_request(cx, from, justification.clone(), source, via_relay)
            }
            // An old node's accept names nothing: honoured as before (see on_accept).
            Kind::Accept => self.on_accept(cx, from, u64::MAX),
            Kind::AcceptOf { seen_ms } => self.on_accept(cx, from, *seen_ms),
            Kind::Reject { reason } => self.on_decline(cx, from, reason.clone(), false),
            Kind::Revoke { reason } => self.on_decline(cx, from, reason.clone(), true),
            Kind::Expire => self.on_expire(cx, from),
        }
    }

    fn on_request<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: NodeId,
        justification: String,
        source: Option<SocketAddr>,
        via_relay: Option<NodeId>,
    ) -> Result<Applied, Refusal> {
        if self.deny.contains(&from) {
            // Quietly: the same answer as a request still waiting, and nothing
            // stored, so a denied peer learns nothing and costs nothing.
            cx.event(from, EventKind::Ignored);
            return Ok(Applied::Dropped(AckStatus::Pending));
        }
        let now = cx.now;
        let (state, lapsed) = match self.peers.get(&from) {
            Some(r) if r.lapsed(now) => (Some(TrustState::Expired), true),
            Some(r) => (Some(r.state), false),
            None => (None, false),
        };
        match state {
            Some(TrustState::Trusted) => {
                // They may have lost our accept: say it again. No state change.
                self.send(cx, from, ACCEPT);
                Ok(Applied::Yes(AckStatus::Trusted))
            }
            Some(TrustState::OutgoingPending) if self.peers[&from].consent.is_some() => {
                // Crossed requests: both asked, so both consent. A request of ours
                // they declined no longer stands (their decline spent it), so this
                // arm is only for a request still waiting for their answer.
                let rec = self.peers.get_mut(&from).expect("record exists");
                // A consent that was an approval keeps its expiry (an ask has none).
                let expires_at_ms = rec.expires_at_ms;
                grant(rec, now, Decider::Mutual, expires_at_ms);
                self.send(cx, from, ACCEPT);
                cx.event(from, EventKind::MutualTrust);
                cx.audit(
                    Some(from),
                    AuditAction::Approved {
                        by: Decider::Mutual,
                    },
                    Some(justification),
                );
                Ok(Applied::Yes(AckStatus::Trusted))
            }
            Some(TrustState::IncomingPending) => {
                // Asking again: keep the original time (the TTL is not
                // extended by repeating), take the latest words. The address it
                // came from is kept while on the same network: a stranger's
                // connections from many ports are one place, not a change each.
                let rec = self.peers.get_mut(&from).expect("record exists");
                rec.justification = Some(justification);
                let same_net =
                    |a: &SocketAddr, b: &SocketAddr| SourceNet::of(a) == SourceNet::of(b);
                if let Some(source) = source {
                    if !rec.source.is_some_and(|s| same_net(&s, &source)) {
                        rec.source = Some(source);
                    }
                }
                Ok(Applied::Repeat(AckStatus::Pending))
            }
            _ => {
                if let Some(by) = self.policy_for(&from, state) {
                    if lapsed {
                        self.expire_trust(cx, from);
                    }
                    let allow_name = self.allow.get(&from).and_then(|e| e.name.clone());
                    let rec = self
                        .peers
                        .entry(from)
                        .or_insert_with(|| PeerRecord::new(from, TrustState::Trusted, now));
                    grant(rec, now, by, None);
                    rec.justification = Some(justification.clone());
                    if source.is_some() {
                        rec.source = source;
                    }
                    if rec.name.is_none() {
                        rec.name = allow_name;
                    }
                    self.send(cx, from, ACCEPT);
                    cx.event(from, EventKind::AutoApproved { by });
                    cx.audit(
                        Some(from),
                        AuditAction::Approved { by },
                        Some(justification),
                    );
                    return Ok(Applied::Yes(AckStatus::Trusted));
                }
                // A new pending request: check every bound before touching anything.
                // A relayed one has no source address; it counts against its relay.
                if let Some(net) = source.as_ref().map(SourceNet::of) {
                    if self.index.count_from(net) >= self.config.max_pending_per_source {
                        return Err(Refusal::PendingFull);
                    }
                }
                let relay = via_relay.filter(|_| source.is_none());
                if let Some(relay) = &relay {
                    if self.relayed.count(relay) >= self.config.max_pending_per_relay {
                        return Err(Refusal::PendingFull);
                    }
                }
                if self.config.max_pending_total == 0 {
                    return Err(Refusal::PendingFull);
                }
                if lapsed {
                    self.expire_trust(cx, from);
                }
                while self.pending_incoming() >= self.config.max_pending_total {
                    let Some(oldest) = self.oldest_pending() else {
                        break;
                    };
                    self.remove_peer(cx, oldest);
                    cx.event(oldest, EventKind::PendingEvicted);
                    cx.audit(Some(oldest), AuditAction::PendingEvicted, None);
                }
                let rec = self
                    .peers
                    .entry(from)
                    .or_insert_with(|| PeerRecord::new(from, TrustState::IncomingPending, now));
                rec.state = TrustState::IncomingPending;
                rec.since_ms = now;
                rec.justification = Some(justification.clone());
                rec.source = source;
                rec.reason = None;
                rec.expires_at_ms = None;
                rec.decided_by = None;
                // Their asking is not our consent: our operator decides.
                rec.consent = None;
                self.relayed.set(from, relay);
                cx.event(
                    from,
                    EventKind::RequestReceived {
                        justification,
                        source,
                    },
                );
                Ok(Applied::Yes(AckStatus::Pending))
            }
        }
    }

    /// Which policy, if any, approves a request from `id` in `state` at once.
    ///
    /// Our own negative or time-limited decision (rejected, revoked, expired)
    /// stands against auto-approve, and against the allowlist unless the peer
    /// was allowlisted after that decision: the operator's latest word wins.
    fn policy_for(&self, id: &NodeId, state: Option<TrustState>) -> Option<Decider> {
        let own_decision_stands = matches!(
            state,
            Some(TrustState::Rejected | TrustState::Revoked | TrustState::Expired)
        );
        if let Some(entry) = self.allow.get(id) {
            let decided_at = self.peers.get(id).map_or(0, |r| r.since_ms);
            if !own_decision_stands || entry.added_ms > decided_at {
                return Some(Decider::Allowlist);
            }
        }
        if self.config.auto_approve && !own_decision_stands {
            return Some(Decider::AutoApprove);
        }
        None
    }

    fn oldest_pending(&self) -> Option<NodeId> {
        self.index.oldest()
    }

    /// `seen_ms`: the newest of our timestamps the accepter had applied when it
    /// sent this, so that an accept of an earlier request of ours (one we since
    /// revoked or withdrew before asking again) is not taken for an answer.
    fn on_accept<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: NodeId,
        seen_ms: u64,
    ) -> Result<Applied, Refusal> {
        let now = cx.now;
        let Some(rec) = self.peers.get_mut(&from) else {
            // No record, so no mark to advance: refuse, and create nothing.
            return Err(Refusal::Unsolicited);
        };
        if rec.lapsed(now) {
            return Ok(Applied::Yes(AckStatus::Expired));
        }
        match rec.state {
            // Crossed requests, or a renewed accept: nothing to change.
            TrustState::Trusted => Ok(Applied::Yes(AckStatus::Trusted)),
            TrustState::OutgoingPending
                if rec.consent.is_some_and(|c| consent::answers(c, seen_ms)) =>
            {
                // Their answer to a request of ours that still stands. A consent
                // that was an approval keeps its expiry: the peer's word cannot
                // extend what our operator granted (an ask has no expiry).
                let expires_at_ms = rec.expires_at_ms;
                grant(rec, now, Decider::Peer, expires_at_ms);
                cx.event(from, EventKind::AcceptedByPeer);
                cx.audit(Some(from), AuditAction::AcceptedByPeer, None);
                Ok(Applied::Yes(AckStatus::Trusted))
            }
            // Every accept that does not trust is still applied (the mark
            // advances), so nothing older from them can be applied after it.
            //
            // An accept of an earlier request of ours (one we since withdrew before
            // asking again): they trust us on that. Our current request is what
            // stands, so send it again; their answer to it is what counts.
            TrustState::OutgoingPending => {
                let justification = rec.justification.clone().unwrap_or_default();
                self.send(cx, from, Kind::Request { justification });
                Ok(Applied::Yes(AckStatus::Pending))
            }
            // They trust us, but no request of ours stands: their decline spent it
            // (and the accept crossed that), or they answered a request of ours
            // after asking us themselves. No trust here; tell them so, so that
            // both ends agree.
            TrustState::RejectedByPeer
            | TrustState::RevokedByPeer
            | TrustState::IncomingPending => Ok(Applied::Yes(self.refuse_spent_accept(cx, from))),
            // We said no (or our approval expired) and they trust us: our word
            // did not reach them before their accept (e.g. a withdrawal that
            // overtook the request it withdraws). Say it again; nothing changes here.
            TrustState::Rejected
            | TrustState::Revoked
            | TrustState::Expired
            | TrustState::Forgotten => {
                let state = rec.state;
                let word = consent::standing_word(rec).expect("a decided state has a word");
                self.send(cx, from, word);
                Ok(Applied::Yes(state.ack_status()))
            }
        }
    }

    fn on_decline<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: NodeId,
        reason: String,
        revoke: bool,
    ) -> Result<Applied, Refusal> {
        let now = cx.now;
        let Some(rec) = self.peers.get_mut(&from) else {
            // No record: nothing to decline, and no record is created for it. But
            // the request it withdraws may still arrive (held back by a relay, or
            // replayed): remember the decline's time, so that older request is stale.
            if let Some((sender, at_ms)) = cx.seen.filter(|(s, _)| *s == from) {
                self.withdrawn.note(
                    sender,
                    at_ms,
                    now,
                    self.config.skew_ms,
                    self.config.nonce_cache_capacity,
                );
            }
            return Err(Refusal::Unsolicited);
        };
        match rec.state {
            // We already said no ourselves (or forgot them); that stays the record.
            TrustState::Rejected | TrustState::Revoked | TrustState::Forgotten => {
                Ok(Applied::Yes(rec.state.ack_status()))
            }
            _ => {
                rec.state = if revoke {
                    TrustState::RevokedByPeer
                } else {
                    TrustState::RejectedByPeer
                };
                rec.since_ms = now;
                rec.reason = Some(reason.clone());
                rec.decided_by = Some(Decider::Peer);
                // Their no spends our consent, whatever its origin: trust comes back
                // only through a new decision of ours (a request, an approval).
                rec.consent = None;
                rec.expires_at_ms = None;
                let status = rec.state.ack_status();
                if revoke {
                    cx.event(
                        from,
                        EventKind::RevokedByPeer {
                            reason: reason.clone(),
                        },
                    );
                    cx.audit(Some(from), AuditAction::RevokedByPeer, Some(reason));
                } else {
                    cx.event(
                        from,
                        EventKind::RejectedByPeer {
                            reason: reason.clone(),
                        },
                    );
                    cx.audit(Some(from), AuditAction::RejectedByPeer, Some(reason));
                }
                Ok(Applied::Yes(status))
            }
        }
    }
}
