//! The workload: requests between random pairs or along the mesh, operators
//! deciding, renewing, withdrawing and revoking, and the end of the workload.
//!
//! Like the rest of the engine, this must never change a machine other than
//! through its `handle`, never read the wall clock, and never let an
//! invariant check draw from the RNG.

use kith_protocol::{Command, Reply, TrustState};
use rand::Rng;

use crate::scenario::{Pattern, PolicyKind};

use super::{Hs, Sim, events::Ev, node_addr};

impl Sim<'_> {
    pub(super) fn on_workload(&mut self) {
        if !self.workload_on {
            return;
        }
        let cap = self.sc.workload.requests.unwrap_or(u64::MAX);
        if self.requests >= cap {
            return;
        }
        let picked = match self.sc.workload.pattern {
            Pattern::Mesh => self.mesh.pop(),
            Pattern::Random => self.pick_random_pair(),
        };
        if let Some((x, y)) = picked {
            if self.nodes[x as usize].up() {
                self.request(x, y);
            } else if self.sc.workload.pattern == Pattern::Mesh {
                // Its operator tries again once the node is back.
                let pos = self.rng.gen_range(0..=self.mesh.len());
                self.mesh.insert(pos, (x, y));
            }
        }
        let more = match self.sc.workload.pattern {
            Pattern::Mesh => !self.mesh.is_empty(),
            Pattern::Random => true,
        };
        if more && self.requests < cap {
            let gap = self.interarrival();
            self.at(self.now + gap, Ev::Workload);
        }
    }

    fn pick_random_pair(&mut self) -> Option<(u32, u32)> {
        let n = self.n();
        for _ in 0..16 {
            let x = self.rng.gen_range(0..n);
            let y = (x + self.rng.gen_range(1..n)) % n;
            let node = &self.nodes[x as usize];
            let Some(m) = node.machine.as_ref() else {
                continue;
            };
            let standing = m.peer(&self.nodes[y as usize].id).map(|r| r.state);
            if matches!(
                standing,
                Some(
                    TrustState::Trusted | TrustState::OutgoingPending | TrustState::IncomingPending
                )
            ) {
                continue;
            }
            return Some((x, y));
        }
        None
    }

    fn request(&mut self, x: u32, y: u32) {
        // An allowlist node may have put the requester on its list beforehand.
        let py = self.nodes[y as usize].policy;
        let mut policy = self.nodes[y as usize].policy_kind == PolicyKind::Auto;
        if self.nodes[y as usize].policy_kind == PolicyKind::Allowlist
            && self.nodes[y as usize].up()
            && self.rng.r#gen::<f64>() < self.policies[py].allowed
        {
            let peer = self.nodes[x as usize].id;
            if self.nodes[y as usize]
                .machine
                .as_ref()
                .is_some_and(|m| m.allowlist().all(|(id, _)| *id != peer))
            {
                let reply = self.command(y, x, Command::Allow { peer, name: None }, "allow");
                if reply == Reply::Done {
                    self.hs.allowlisted += 1;
                }
            }
            policy = true;
        }
        let to = self.nodes[y as usize].id;
        let address = (!self.nodes[y as usize].private).then(|| node_addr(y, false));
        let reply = self.command(
            x,
            y,
            Command::Request {
                to,
                justification: format!("n{x} asks n{y}"),
                address,
            },
            "request",
        );
        self.requests += 1;
        if reply == Reply::Done {
            self.hs.requested += 1;
            self.maybe_schedule_withdraw(x, y);
            let trusts = self.nodes[x as usize].store.trusts(&to);
            if !trusts {
                self.handshakes.insert(
                    (x, y),
                    Hs {
                        start: self.now,
                        policy,
                    },
                );
            }
        }
    }

    pub(super) fn operator_sees_request(&mut self, i: u32, peer: u32) {
        if self.closing {
            return;
        }
        let p = &self.policies[self.nodes[i as usize].policy];
        let (ignore, delay) = (p.ignore, p.delay.clone());
        if ignore > 0.0 && self.rng.r#gen::<f64>() < ignore {
            return;
        }
        let d = delay.sample(&mut self.rng).max(1);
        self.at(self.now + d, Ev::Decide { node: i, peer });
    }

    pub(super) fn on_decide(&mut self, i: u32, peer: u32) {
        if self.closing {
            return;
        }
        let node = &self.nodes[i as usize];
        let Some(m) = node.machine.as_ref() else {
            let back = node.back_at.unwrap_or(self.now) + 1_000;
            self.at(back, Ev::Decide { node: i, peer });
            return;
        };
        let peer_id = self.nodes[peer as usize].id;
        if m.peer(&peer_id).map(|r| r.state) != Some(TrustState::IncomingPending) {
            return;
        }
        let reject = self.policies[node.policy].reject;
        self.hs.operator_decisions += 1;
        if reject > 0.0 && self.rng.r#gen::<f64>() < reject {
            self.command(
                i,
                peer,
                Command::Reject {
                    peer: peer_id,
                    reason: "not now".into(),
                },
                "reject",
            );
        } else {
            let w = &self.sc.workload;
            let expires_at_ms =
                (w.expires > 0.0 && self.rng.r#gen::<f64>() < w.expires).then(|| {
                    let after = w.expires_after.sample(&mut self.rng).max(1);
                    node.clock(self.now) + after
                });
            self.command(
                i,
                peer,
                Command::Approve {
                    peer: peer_id,
                    name: None,
                    note: None,
                    expires_at_ms,
                },
                "approve",
            );
        }
    }

    /// `i`'s approval of `peer` expired: its operator may renew it a little later.
    pub(super) fn approval_expired(&mut self, i: u32, peer: u32) {
        self.hs.expired += 1;
        let w = &self.sc.workload;
        if self.closing || w.renew <= 0.0 || self.rng.r#gen::<f64>() >= w.renew {
            return;
        }
        let p = &self.policies[self.nodes[i as usize].policy];
        let d = p.delay.clone().sample(&mut self.rng).max(1);
        if self.now + d < self.end_workload {
            self.at(self.now + d, Ev::Renew { node: i, peer });
        }
    }

    pub(super) fn on_renew(&mut self, i: u32, peer: u32) {
        let node = &self.nodes[i as usize];
        let Some(m) = node.machine.as_ref() else {
            return;
        };
        let peer_id = self.nodes[peer as usize].id;
        if self.closing || m.peer(&peer_id).map(|r| r.state) != Some(TrustState::Expired) {
            return;
        }
        let cmd = Command::Approve {
            peer: peer_id,
            name: None,
            note: None,
            expires_at_ms: None,
        };
        if self.command(i, peer, cmd, "renew") == Reply::Done {
            self.hs.renewed += 1;
        }
    }

    fn maybe_schedule_withdraw(&mut self, x: u32, y: u32) {
        let w = &self.sc.workload;
        if !self.workload_on || w.withdraw <= 0.0 || self.rng.r#gen::<f64>() >= w.withdraw {
            return;
        }
        let t = self.now + w.withdraw_after.sample(&mut self.rng).max(1);
        if t < self.end_workload {
            self.at(t, Ev::Withdraw { node: x, peer: y });
        }
    }

    /// The requester changes its mind, whatever became of its request: cancel it,
    /// ignore the peer, or forget it (each refused where it does not apply).
    pub(super) fn on_withdraw(&mut self, i: u32, peer: u32) {
        if self.closing || self.nodes[i as usize].machine.is_none() {
            return;
        }
        let peer_id = self.nodes[peer as usize].id;
        let (cmd, name) = match self.rng.gen_range(0..3) {
            0 => (Command::Cancel { peer: peer_id }, "cancel"),
            1 => (Command::Ignore { peer: peer_id }, "ignore"),
            _ => (Command::Forget { peer: peer_id }, "forget"),
        };
        self.hs.withdrawals += 1;
        self.command(i, peer, cmd, name);
    }

    pub(super) fn maybe_schedule_revoke(&mut self, x: u32, y: u32) {
        let w = &self.sc.workload;
        if !self.workload_on || w.revoke <= 0.0 || self.rng.r#gen::<f64>() >= w.revoke {
            return;
        }
        let after = w.revoke_after.sample(&mut self.rng);
        let (a, b) = if self.rng.r#gen::<bool>() {
            (x, y)
        } else {
            (y, x)
        };
        let t = self.now + after;
        if t < self.end_workload {
            self.at(t, Ev::Revoke { node: a, peer: b });
        }
    }

    pub(super) fn on_revoke(&mut self, i: u32, peer: u32) {
        if self.closing {
            return;
        }
        let node = &self.nodes[i as usize];
        let Some(m) = node.machine.as_ref() else {
            let back = node.back_at.unwrap_or(self.now) + 1_000;
            self.at(back, Ev::Revoke { node: i, peer });
            return;
        };
        let peer_id = self.nodes[peer as usize].id;
        let local = node.clock(self.now);
        if !m.is_trusted(&peer_id, local) {
            return;
        }
        let reply = self.command(
            i,
            peer,
            Command::Revoke {
                peer: peer_id,
                reason: "done".into(),
            },
            "revoke",
        );
        if reply == Reply::Done {
            self.hs.revocations += 1;
        }
    }

    pub(super) fn on_end_workload(&mut self) {
        self.workload_on = false;
        // Partitions heal; crashed nodes come back on their own schedule.
        let active: Vec<u32> = self.partitions.keys().copied().collect();
        for index in active {
            self.on_partition_end(index);
        }
    }
}
