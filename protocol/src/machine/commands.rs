//! Operator commands: request, approve, reject, revoke, dismiss, cancel,
//! ignore, allow, rename, forget, auto-approve and resend, with the checks of
//! the text an operator gives.
//!
//! Part of the sans-IO trust machine: this module must never read a clock,
//! touch the network or the disk, or block. A failed command changes nothing
//! at all.

use kith_keys::NodeId;
use rand_core::{CryptoRng, RngCore};

use super::consent;
use super::{
    ACCEPT, AllowEntry, AuditAction, Command, CommandError, Consent, Cx, Decider, EventKind,
    MAX_NAME_CHARS, PeerRecord, StoreWrite, TextField, TrustMachine, TrustState, WITHDRAWN_REASON,
    decline, grant, next_timestamp,
};
use crate::validate::{TextError, check_text};
use crate::wire::{Kind, MAX_TEXT_CHARS};

impl TrustMachine {
    // ----- commands --------------------------------------------------------

    pub(super) fn on_command<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        cmd: Command,
    ) -> Result<(), CommandError> {
        let now = cx.now;
        if let Some(peer) = command_peer(&cmd) {
            if peer == self.local {
                return Err(CommandError::SelfPeer);
            }
        }
        match cmd {
            Command::Request {
                to,
                justification,
                address,
            } => {
                text(&justification, MAX_TEXT_CHARS, TextField::Justification)?;
                if self.deny.contains(&to) {
                    return Err(CommandError::Ignored(to));
                }
                let (state, lapsed) = match self.peers.get(&to) {
                    Some(r) if r.lapsed(now) => (Some(TrustState::Expired), true),
                    Some(r) => (Some(r.state), false),
                    None => (None, false),
                };
                match state {
                    Some(TrustState::Trusted) => Err(CommandError::AlreadyTrusted(to)),
                    Some(TrustState::IncomingPending) => {
                        // They already asked: asking back is consent on both sides.
                        let rec = self.peers.get_mut(&to).expect("record exists");
                        grant(rec, now, Decider::Mutual, None);
                        if address.is_some() {
                            rec.address = address;
                        }
                        self.send(cx, to, ACCEPT);
                        cx.event(to, EventKind::MutualTrust);
                        cx.audit(
                            Some(to),
                            AuditAction::Approved {
                                by: Decider::Mutual,
                            },
                            Some(justification),
                        );
                        self.put_peer(cx, to);
                        Ok(())
                    }
                    _ => {
                        if lapsed {
                            self.expire_trust(cx, to);
                        }
                        // A decline of theirs that found no record (see `withdrawn`)
                        // becomes the new record's mark, so it outlives a restart.
                        let withdrawn_ms = self.withdrawn.get(&to);
                        let rec = self.peers.entry(to).or_insert_with(|| {
                            let mut rec = PeerRecord::new(to, TrustState::OutgoingPending, now);
                            rec.high_water_ms = withdrawn_ms;
                            rec
                        });
                        if rec.state != TrustState::OutgoingPending {
                            rec.state = TrustState::OutgoingPending;
                            rec.since_ms = now;
                        }
                        rec.justification = Some(justification.clone());
                        rec.reason = None;
                        rec.expires_at_ms = None;
                        rec.decided_by = Some(Decider::Operator);
                        // A request that already stands keeps its start: an accept
                        // of any of its envelopes answers it.
                        if !matches!(rec.consent, Some(Consent::Asked { .. })) {
                            // Our request's first envelope is timestamped above this.
                            rec.consent = Some(Consent::Asked {
                                at_ms: next_timestamp(rec, self.sent_floor, now),
                            });
                        }
                        if address.is_some() {
                            rec.address = address;
                        }
                        self.send(
                            cx,
                            to,
                            Kind::Request {
                                justification: justification.clone(),
                            },
                        );
                        cx.event(to, EventKind::RequestSent);
                        cx.audit(Some(to), AuditAction::RequestSent, Some(justification));
                        self.put_peer(cx, to);
                        Ok(())
                    }
                }
            }
            Command::Approve {
                peer,
                name,
                note,
                expires_at_ms,
            } => {
                opt_text(&name, MAX_NAME_CHARS, TextField::Name)?;
                opt_text(&note, MAX_TEXT_CHARS, TextField::Note)?;
                if let Some(e) = expires_at_ms {
                    if e <= now {
                        return Err(CommandError::ExpiryInPast {
                            expires_at_ms: e,
                            now_ms: now,
                        });
                    }
                }
                // An expired approval is renewed the same way: the peer's request
                // stood again since our expiry notice, so our accept answers it.
                let lapsed = self.peers.get(&peer).is_some_and(|r| r.lapsed(now));
                match self.peers.get(&peer).map(|r| r.state) {
                    Some(TrustState::Expired) => {}
                    Some(TrustState::Trusted) if lapsed => self.expire_trust(cx, peer),
                    _ => {
                        self.pending_incoming_mut(&peer)?;
                    }
                }
                let rec = self.peers.get_mut(&peer).expect("record exists");
                grant(rec, now, Decider::Operator, expires_at_ms);
                if name.is_some() {
                    rec.name = name;
                }
                if note.is_some() {
                    rec.note = note;
                }
                let detail = rec.justification.clone();
                self.send(cx, peer, ACCEPT);
                cx.event(peer, EventKind::Approved);
                cx.audit(
                    Some(peer),
                    AuditAction::Approved {
                        by: Decider::Operator,
                    },
                    detail,
                );
                self.put_peer(cx, peer);
                Ok(())
            }
            Command::Reject { peer, reason } => {
                text(&reason, MAX_TEXT_CHARS, TextField::Reason)?;
                let rec = self.pending_incoming_mut(&peer)?;
                decline(rec, now, TrustState::Rejected, reason.clone());
                self.send(
                    cx,
                    peer,
                    Kind::Reject {
                        reason: reason.clone(),
                    },
                );
                cx.event(peer, EventKind::Rejected);
                cx.audit(Some(peer), AuditAction::Rejected, Some(reason));
                self.put_peer(cx, peer);
                Ok(())
            }
            Command::Revoke { peer, reason } => {
                text(&reason, MAX_TEXT_CHARS, TextField::Reason)?;
                let rec = self.live_mut(&peer)?;
                if !matches!(rec.state, TrustState::Trusted | TrustState::Expired) {
                    return Err(CommandError::NotTrusted(peer));
                }
                decline(rec, now, TrustState::Revoked, reason.clone());
                self.send(
                    cx,
                    peer,
                    Kind::Revoke {
                        reason: reason.clone(),
                    },
                );
                cx.event(peer, EventKind::Revoked);
                cx.audit(Some(peer), AuditAction::Revoked, Some(reason));
                self.put_peer(cx, peer);
                Ok(())
            }
            Command::Dismiss { peer } => {
                self.pending_incoming_mut(&peer)?;
                // Silently, unless their request came in after a word of ours: that
                // word may still be owed to them (see `Resend`), so a tombstone keeps it.
                self.forget_record(cx, peer);
                cx.event(peer, EventKind::Dismissed);
                cx.audit(Some(peer), AuditAction::Dismissed, None);
                Ok(())
            }
            Command::Cancel { peer } => {
                match self.peers.get(&peer) {
                    Some(r) if r.state == TrustState::OutgoingPending => {
                        self.withdraw_request(cx, peer);
                    }
                    _ => return Err(CommandError::NoOutgoingRequest(peer)),
                }
                cx.event(peer, EventKind::Cancelled);
                cx.audit(Some(peer), AuditAction::Cancelled, None);
                Ok(())
            }
            Command::Ignore { peer } => {
                if self.is_trusted(&peer, now) {
                    return Err(CommandError::AlreadyTrusted(peer));
                }
                if self.deny.contains(&peer) {
                    return Ok(());
                }
                self.deny.insert(peer);
                cx.out.writes.push(StoreWrite::Deny(peer));
                if self.allow.remove(&peer).is_some() {
                    cx.out.writes.push(StoreWrite::Disallow(peer));
                }
                // Ignoring someone means wanting nothing from them either way:
                // their pending request goes quietly, and a request of ours is
                // withdrawn (they are told, as for `cancel`).
                match self.peers.get(&peer).map(|r| r.state) {
                    // As `dismiss`: a tombstone keeps a word we may still owe them.
                    Some(TrustState::IncomingPending) => self.forget_record(cx, peer),
                    Some(TrustState::OutgoingPending) => self.withdraw_request(cx, peer),
                    _ => {}
                }
                cx.audit(Some(peer), AuditAction::Ignored, None);
                Ok(())
            }
            Command::Unignore { peer } => {
                if !self.deny.remove(&peer) {
                    return Err(CommandError::NotIgnored(peer));
                }
                cx.out.writes.push(StoreWrite::Undeny(peer));
                cx.audit(Some(peer), AuditAction::Unignored, None);
                Ok(())
            }
            Command::Allow { peer, name } => {
                opt_text(&name, MAX_NAME_CHARS, TextField::Name)?;
                if self.deny.remove(&peer) {
                    cx.out.writes.push(StoreWrite::Undeny(peer));
                }
                let entry = AllowEntry {
                    name: name.clone(),
                    added_ms: now,
                };
                self.allow.insert(peer, entry.clone());
                cx.out.writes.push(StoreWrite::Allow(peer, entry));
                cx.audit(Some(peer), AuditAction::Allowed, name.clone());
                // A request already waiting is approved by the new entry.
                if let Some(rec) = self.peers.get_mut(&peer) {
                    if rec.state == TrustState::IncomingPending {
                        grant(rec, now, Decider::Allowlist, None);
                        if rec.name.is_none() {
                            rec.name = name;
                        }
                        let detail = rec.justification.clone();
                        self.send(cx, peer, ACCEPT);
                        cx.event(
                            peer,
                            EventKind::AutoApproved {
                                by: Decider::Allowlist,
                            },
                        );
                        cx.audit(
                            Some(peer),
                            AuditAction::Approved {
                                by: Decider::Allowlist,
                            },
                            detail,
                        );
                        self.put_peer(cx, peer);
                    }
                }
                Ok(())
            }
            Command::Disallow { peer } => {
                if self.allow.remove(&peer).is_none() {
                    return Err(CommandError::NotAllowed(peer));
                }
                cx.out.writes.push(StoreWrite::Disallow(peer));
                cx.audit(Some(peer), AuditAction::Disallowed, None);
                Ok(())
            }
            Command::Rename { peer, name, note } => {
                opt_text(&name, MAX_NAME_CHARS, TextField::Name)?;
                opt_text(&note, MAX_TEXT_CHARS, TextField::Note)?;
                let rec = self.live_mut(&peer)?;
                if let Some(name) = name {
                    rec.name = Some(name).filter(|s| !s.is_empty());
                }
                if let Some(note) = note {
                    rec.note = Some(note).filter(|s| !s.is_empty());
                }
                self.put_peer(cx, peer);
                Ok(())
            }
            Command::Forget { peer } => {
                // A peer that trusts us must be told first (revoke, re-sent until
                // acknowledged). A request of ours is withdrawn, and an approval past
                // its expiry (not yet ticked) expires, as the record goes: the
                // tombstone re-sends what the peer has not acknowledged.
                match self.peer(&peer) {
                    None => return Err(CommandError::UnknownPeer(peer)),
                    Some(r) if r.is_trusted(now) => return Err(CommandError::ForgetTrusted(peer)),
                    Some(r) if r.lapsed(now) => self.expire_trust(cx, peer),
                    Some(r) if r.state == TrustState::OutgoingPending => {
                        self.withdraw_request(cx, peer);
                    }
                    Some(_) => {}
                }
                self.forget_record(cx, peer);
                cx.event(peer, EventKind::Forgotten);
                cx.audit(Some(peer), AuditAction::Forgotten, None);
                Ok(())
            }
            Command::SetAutoApprove(on) => {
                if self.config.auto_approve != on {
                    self.config.auto_approve = on;
                    cx.out.writes.push(StoreWrite::AutoApprove(on));
                    cx.audit(None, AuditAction::AutoApproveSet(on), None);
                }
                Ok(())
            }
            Command::Resend { peer } => {
                let rec = self
                    .peers
                    .get(&peer)
                    .ok_or(CommandError::UnknownPeer(peer))?;
                let kind = match rec.state {
                    TrustState::OutgoingPending => Kind::Request {
                        justification: rec.justification.clone().unwrap_or_default(),
                    },
                    TrustState::Trusted if !rec.lapsed(now) => ACCEPT,
                    // A request of theirs came in after a word of ours they have not
                    // acknowledged (a revoke, say, that an older accept overtook):
                    // whatever it was, what stands now is that we do not trust them
                    // and their request waits. `Expire` says exactly that, and never
                    // spends a request they made since (a decline would).
                    TrustState::IncomingPending if rec.last_sent_ms > 0 => Kind::Expire,
                    _ => consent::standing_word(rec).ok_or(CommandError::NothingToResend(peer))?,
                };
                self.send(cx, peer, kind);
                self.put_peer(cx, peer);
                Ok(())
            }
        }
    }

    /// Our request to `peer` stops standing, and the peer is told: the record
    /// becomes `Revoked` (its message is re-sent until acknowledged), so a crossed
    /// accept or request of theirs can never build trust on it.
    fn withdraw_request<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        peer: NodeId,
    ) {
        let rec = self.peers.get_mut(&peer).expect("record exists");
        decline(
            rec,
            cx.now,
            TrustState::Revoked,
            WITHDRAWN_REASON.to_string(),
        );
        self.send(
            cx,
            peer,
            Kind::Revoke {
                reason: WITHDRAWN_REASON.to_string(),
            },
        );
        self.put_peer(cx, peer);
    }

    /// Drops our record of `peer` as the operator sees it. A record we never sent
    /// anything from goes at once; any other becomes a hidden `Forgotten` tombstone
    /// (reaped like a declined record), so that a word of ours the peer has not
    /// acknowledged is still re-sent, and an accept of theirs still gets a revoke.
    fn forget_record<R: ?Sized>(&mut self, cx: &mut Cx<'_, R>, peer: NodeId) {
        let rec = self.peers.get_mut(&peer).expect("record exists");
        if rec.last_sent_ms == 0 {
            self.remove_peer(cx, peer);
            return;
        }
        // Our own reason, if our last word was a no; theirs is not ours to repeat.
        let ours = matches!(rec.state, TrustState::Rejected | TrustState::Revoked)
            && rec.decided_by == Some(Decider::Operator);
        if !ours {
            rec.reason = None;
        }
        rec.state = TrustState::Forgotten;
        rec.since_ms = cx.now;
        rec.name = None;
        rec.note = None;
        rec.justification = None;
        rec.expires_at_ms = None;
        rec.decided_by = Some(Decider::Operator);
        rec.consent = None;
        self.put_peer(cx, peer);
    }

    /// A record the operator can act on: not one we forgot.
    fn live_mut(&mut self, peer: &NodeId) -> Result<&mut PeerRecord, CommandError> {
        self.peers
            .get_mut(peer)
            .filter(|r| r.state != TrustState::Forgotten)
            .ok_or(CommandError::UnknownPeer(*peer))
    }

    fn pending_incoming_mut(&mut self, peer: &NodeId) -> Result<&mut PeerRecord, CommandError> {
        match self
            .peers
            .get_mut(peer)
            .filter(|r| r.state != TrustState::Forgotten)
        {
            None => Err(CommandError::UnknownPeer(*peer)),
            Some(r) if r.state != TrustState::IncomingPending => {
                Err(CommandError::NotPending(*peer))
            }
            Some(r) => Ok(r),
        }
    }
}

fn command_peer(cmd: &Command) -> Option<NodeId> {
    match cmd {
        Command::Request { to, .. } => Some(*to),
        Command::Approve { peer, .. }
        | Command::Reject { peer, .. }
        | Command::Revoke { peer, .. }
        | Command::Dismiss { peer }
        | Command::Cancel { peer }
        | Command::Ignore { peer }
        | Command::Unignore { peer }
        | Command::Allow { peer, .. }
        | Command::Disallow { peer }
        | Command::Rename { peer, .. }
        | Command::Forget { peer }
        | Command::Resend { peer } => Some(*peer),
        Command::SetAutoApprove(_) => None,
    }
}

fn text(s: &str, max: usize, field: TextField) -> Result<(), CommandError> {
    check_text(s, max).map_err(|e| match e {
        TextError::TooLong { chars, max } => CommandError::TextTooLong { field, chars, max },
        TextError::NotPrintable => CommandError::TextNotPrintable { field },
    })
}

fn opt_text(s: &Option<String>, max: usize, field: TextField) -> Result<(), CommandError> {
    s.as_deref().map_or(Ok(()), |s| text(s, max, field))
}
