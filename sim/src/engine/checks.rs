//! The invariant checks run as the engine goes and at the end, and
//! recording a violation with its trace.
//!
//! Like the rest of the engine, this must never change a machine other than
//! through its `handle`, never read the wall clock, and never let an
//! invariant check draw from the RNG.

use std::collections::BTreeSet;

use kith_keys::NodeId;
use kith_protocol::{Envelope, Output, TrustState};

use crate::invariants::{
    self, AGREEMENT, DECLINE_REACHES, DURABILITY, Decision, REPLAY, Violation, ack_name, pair,
};
use crate::node::durable_view;

use super::{NONE, Sim};

impl Sim<'_> {
    pub(super) fn replay_snapshot(&self, to: u32, from: &NodeId) -> ReplaySnapshot {
        let m = self.nodes[to as usize].machine.as_ref().expect("up");
        ReplaySnapshot {
            record: m.peer(from).cloned(),
            nonces: m.nonce_cache_len(),
        }
    }

    pub(super) fn check_replay(
        &mut self,
        to: u32,
        env: &Envelope,
        out: &Output,
        before: ReplaySnapshot,
        what: &str,
    ) {
        self.counts.add(REPLAY, 1);
        let m = self.nodes[to as usize].machine.as_ref().expect("up");
        let record = m.peer(&env.body.from).cloned();
        let changed = if !out.writes.is_empty() {
            Some(format!("it wrote {} record(s)", out.writes.len()))
        } else if !out.send.is_empty() {
            Some(format!(
                "it made the node send {}",
                out.send[0].body.kind.name()
            ))
        } else if record != before.record {
            Some("it changed the sender's record".to_string())
        } else if m.nonce_cache_len() != before.nonces {
            Some("it changed the replay cache".to_string())
        } else {
            None
        };
        if let Some(how) = changed {
            let from = self.index.get(&env.body.from).copied().unwrap_or(NONE);
            let status = out.ack().map(ack_name).unwrap_or("-");
            self.violate(
                REPLAY,
                format!(
                    "{what} of n{from}'s {} (timestamp {}) to n{to} was accepted ({status}) and {how}",
                    env.body.kind.name(),
                    invariants::fmt_t(env.body.timestamp_ms.saturating_sub(self.start)),
                ),
                &[from, to],
            );
        }
    }

    fn check_pair(&mut self, a: u32, b: u32) {
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        let (Some(ma), Some(mb)) = (na.machine.as_ref(), nb.machine.as_ref()) else {
            return;
        };
        self.counts.add(AGREEMENT, 1);
        let ta = ma.is_trusted(&nb.id, na.clock(self.now));
        let tb = mb.is_trusted(&na.id, nb.clock(self.now));
        let sa = ma.peer(&nb.id).map(|r| r.state);
        let sb = mb.peer(&na.id).map(|r| r.state);
        if (sa == Some(TrustState::Trusted) && !ta) || (sb == Some(TrustState::Trusted) && !tb) {
            // An approval past its expiry whose tick has not run yet: the tick
            // tells the peer (and marks the pair for another check).
            return;
        }
        let show = |s: Option<TrustState>| s.map_or("no record".to_string(), |s| s.to_string());
        if ta != tb {
            let detail = format!(
                "n{a} and n{b} disagree once quiet: n{a} has n{b} as {}, n{b} has n{a} as {}",
                show(sa),
                show(sb)
            );
            self.violate(AGREEMENT, detail, &[a, b]);
            return;
        }
        if let Some((actor, d)) = self.ledger.last(a, b) {
            if matches!(d, Decision::Revoke | Decision::Reject) {
                self.counts.add(DECLINE_REACHES, 1);
                let (other, so) = if actor == a { (b, sb) } else { (a, sa) };
                let reached = invariants::shows_decline(so);
                if !reached {
                    let verb = if d == Decision::Revoke {
                        "revocation"
                    } else {
                        "rejection"
                    };
                    self.violate(
                        DECLINE_REACHES,
                        format!(
                            "n{actor}'s {verb} of n{other} never reached it: n{other} has n{actor} as {}",
                            show(so)
                        ),
                        &[a, b],
                    );
                }
            }
        }
    }

    pub(super) fn check_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for (a, b) in dirty {
            self.check_pair(a, b);
            if self.violation.is_some() {
                return;
            }
        }
    }

    pub(super) fn final_checks(&mut self) {
        let quiet = self.is_quiet();
        if !quiet {
            // The drain was too short, or something keeps retrying: the
            // pairs still in motion are not checked, everything else is.
            let busy: BTreeSet<(u32, u32)> = self
                .deliveries
                .values()
                .map(|d| pair(d.from, d.to))
                .collect();
            self.dirty.retain(|p| !busy.contains(p));
        }
        self.check_dirty();
        if self.violation.is_some() {
            return;
        }
        // Every pair with a record, and every node's store against its machine.
        for i in 0..self.n() {
            let Some(m) = self.nodes[i as usize].machine.as_ref() else {
                continue;
            };
            self.counts.add(DURABILITY, 1);
            let restored = self.nodes[i as usize].restored();
            if let Some(diff) = durable_view(m).first_difference(&durable_view(&restored)) {
                self.violate(
                    DURABILITY,
                    format!("n{i}'s store does not hold what its machine holds: {diff}"),
                    &[i],
                );
                return;
            }
        }
        if quiet {
            let mut pairs = BTreeSet::new();
            for (i, node) in self.nodes.iter().enumerate() {
                for id in node.store.peers.keys() {
                    if let Some(&j) = self.index.get(id) {
                        pairs.insert(pair(i as u32, j));
                    }
                }
            }
            for (a, b) in pairs {
                self.check_pair(a, b);
                if self.violation.is_some() {
                    return;
                }
            }
        }
    }

    pub(super) fn violate(&mut self, invariant: &'static str, detail: String, involved: &[u32]) {
        if self.violation.is_some() {
            return;
        }
        let n = self.n();
        let trace = self
            .trace
            .about(involved, self.sc.checks.trace)
            .into_iter()
            .map(|e| e.render(n, self.start))
            .collect();
        self.violation = Some(Violation {
            invariant,
            seed: self.seed,
            at_ms: self.t(),
            detail,
            trace,
        });
    }
}

pub(super) struct ReplaySnapshot {
    record: Option<kith_protocol::PeerRecord>,
    nonces: usize,
}
