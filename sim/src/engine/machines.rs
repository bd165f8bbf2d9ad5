//! The engine's side of the machines: running an input through a node's
//! machine and committing its writes, acting on what it outputs (trust
//! flips, declines), scheduling ticks, and the operator's commands.
//!
//! Like the rest of the engine, this must never change a machine other than
//! through its `handle`, never read the wall clock, and never let an
//! invariant check draw from the RNG.

use kith_protocol::{Command, EventKind, Input, Kind, Output, Reply, TrustMachine};

use crate::invariants::{CONSENT, Decision, REVOKE_HOLDS, What, pair};

use super::{Sim, TICK_GRID_MS, events::Ev};

impl Sim<'_> {
    /// Runs one input through node `i`'s machine and commits its writes.
    pub(super) fn handle(&mut self, i: u32, input: Input) -> Output {
        let node = &mut self.nodes[i as usize];
        let local = node.clock(self.now);
        let machine = node.machine.as_mut().expect("handle on a running node");
        let out = machine.handle(local, input, &node.key, &mut self.rng);
        self.flips.clear();
        node.store.apply(&out.writes, &mut self.flips);
        out
    }

    /// Acts on an output: deliveries, operator reactions, bookkeeping, checks.
    pub(super) fn process(&mut self, i: u32, out: Output) {
        for ev in &out.events {
            let Some(&peer) = self.index.get(&ev.peer) else {
                continue;
            };
            // Anything that happened to a pair is checked once quiet, not only trust flips.
            self.dirty.insert(pair(i, peer));
            match &ev.kind {
                EventKind::RequestReceived { .. } => self.operator_sees_request(i, peer),
                EventKind::TrustExpired => self.approval_expired(i, peer),
                EventKind::AutoApproved { .. } => self.ledger.decide(i, peer, Decision::Policy),
                EventKind::RejectedByPeer { .. } => {
                    self.ledger.spend(i, peer);
                    self.declined(i, peer);
                }
                EventKind::RevokedByPeer { .. }
                | EventKind::Revoked
                | EventKind::Rejected
                | EventKind::Cancelled => self.ledger.spend(i, peer),
                _ => {}
            }
        }
        let flips = std::mem::take(&mut self.flips);
        for f in &flips {
            let Some(&peer) = self.index.get(&f.peer) else {
                continue;
            };
            self.on_flip(i, peer, f.trusted);
        }
        self.flips = flips;
        for env in out.send {
            self.new_delivery(i, env);
        }
        self.schedule_tick(i);
    }

    /// `i`'s request to `peer` was declined: that handshake is over.
    fn declined(&mut self, i: u32, peer: u32) {
        if self.handshakes.remove(&(i, peer)).is_some() {
            self.hs.rejected += 1;
        }
    }

    fn on_flip(&mut self, i: u32, peer: u32, trusted: bool) {
        self.trace(i, peer, What::Trust { trusted });
        self.dirty.insert(pair(i, peer));
        let peer_trusts = self.nodes[peer as usize]
            .store
            .trusts(&self.nodes[i as usize].id);
        if trusted {
            self.counts.add(REVOKE_HOLDS, 1);
            if self.ledger.spent(i, peer) {
                self.violate(
                    REVOKE_HOLDS,
                    format!(
                        "n{i} trusts n{peer} again after a revoke or reject between them, \
                         with no request, approval or policy decision of its own since"
                    ),
                    &[i, peer],
                );
            }
            self.counts.add(CONSENT, 1);
            let auto_i = self.nodes[i as usize].store.auto_approve;
            let auto_p = self.nodes[peer as usize].store.auto_approve;
            if !self.ledger.consents(i, peer, auto_i) {
                self.violate(
                    CONSENT,
                    format!("n{i} trusts n{peer} without its own approval or a policy"),
                    &[i, peer],
                );
            } else if !self.ledger.ever_consented(peer, i, auto_p) {
                self.violate(
                    CONSENT,
                    format!("n{i} trusts n{peer}, which never requested, approved or allowed it"),
                    &[i, peer],
                );
            }
            if peer_trusts {
                self.mutual += 1;
                self.max_mutual = self.max_mutual.max(self.mutual);
            }
            if let Some(h) = self.handshakes.remove(&(i, peer)) {
                let lat = self.now - h.start;
                self.hs.completed += 1;
                self.latencies.push(lat);
                if h.policy {
                    self.latencies_policy.push(lat);
                }
                self.maybe_schedule_revoke(i, peer);
            }
        } else if peer_trusts {
            self.mutual -= 1;
        }
    }

    pub(super) fn schedule_tick(&mut self, i: u32) {
        let node = &self.nodes[i as usize];
        let Some(deadline) = node.machine.as_ref().and_then(TrustMachine::next_deadline) else {
            return;
        };
        let v = node.to_virtual(deadline).max(self.now);
        let rel = v - self.start;
        let v = self.start + rel.div_ceil(TICK_GRID_MS) * TICK_GRID_MS;
        if node.tick_at.is_none_or(|t| v < t) {
            self.nodes[i as usize].tick_at = Some(v);
            self.at(v, Ev::Tick { node: i });
        }
    }

    pub(super) fn on_tick(&mut self, i: u32) {
        let node = &self.nodes[i as usize];
        if node.tick_at != Some(self.now) || !node.up() {
            return;
        }
        self.nodes[i as usize].tick_at = None;
        let out = self.handle(i, Input::Tick);
        self.process(i, out);
    }

    /// Runs an operator command on node `i` about `peer`; returns the reply.
    pub(super) fn command(&mut self, i: u32, peer: u32, cmd: Command, name: &'static str) -> Reply {
        let decision = match &cmd {
            Command::Request { .. } => Some(Decision::Request),
            Command::Approve { .. } => Some(Decision::Approve),
            Command::Reject { .. } => Some(Decision::Reject),
            Command::Revoke { .. } => Some(Decision::Revoke),
            Command::Allow { .. } => Some(Decision::Policy),
            Command::Cancel { .. } | Command::Ignore { .. } | Command::Forget { .. } => {
                Some(Decision::Withdraw)
            }
            _ => None,
        };
        self.dirty.insert(pair(i, peer));
        let out = self.handle(i, Input::Command(cmd));
        let reply = out.reply.clone();
        let result = match &reply {
            Reply::Done => "done",
            Reply::Failed(_) => "failed",
            _ => "?",
        };
        self.trace(i, peer, What::Command { cmd: name, result });
        if reply == Reply::Done {
            if let Some(d) = decision {
                // What was decided is what was sent: a request on a waiting
                // request is an approval (mutual trust).
                let d = match out.send.first().map(|e| &e.body.kind) {
                    Some(Kind::Accept | Kind::AcceptOf { .. }) if d == Decision::Request => {
                        Decision::Approve
                    }
                    _ => d,
                };
                self.ledger.decide(i, peer, d);
            }
        }
        self.process(i, out);
        reply
    }
}
