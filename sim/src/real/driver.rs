//! Real mode's workload driver: the messages the run loop hands it, its state,
//! and how it issues requests and operator commands, watches the nodes' events,
//! times handshakes and checks the invariants as trust appears.
//!
//! This module must never make trust decisions itself: it only issues the
//! operator commands the scenario calls for and observes what the nodes do.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kith_keys::NodeId;
use kith_node::relay::RelayServer;
use kith_node::ticket::Ticket;
use kith_node::{Delivery, Node};
use kith_protocol::{Command, Event, EventKind, TrustState};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;

use crate::invariants::{self, AGREEMENT, CONSENT, Counts, DECLINE_REACHES, Decision, Ledger};
use crate::report::{HandshakeReport, MessageReport, Series};
use crate::scenario::{Pattern, Policy, PolicyKind, Scenario};

pub(super) enum Msg {
    Event(u32, Event, Instant),
    Lagged(u64),
    Decide(u32, u32),
    Revoke(u32, u32),
    Requested {
        from: u32,
        to: u32,
        started: Instant,
        result: Result<Delivery, String>,
    },
    Commanded {
        ok: bool,
        deliveries: Vec<Delivery>,
    },
    Checked {
        pair: (u32, u32),
        a: Option<(TrustState, bool)>,
        b: Option<(TrustState, bool)>,
    },
}

pub(super) struct Driver {
    pub(super) sc: Scenario,
    pub(super) seed: u64,
    pub(super) rng: StdRng,
    pub(super) nodes: Vec<Arc<Node>>,
    pub(super) ids: Vec<NodeId>,
    pub(super) tickets: Vec<Ticket>,
    pub(super) private: Vec<bool>,
    pub(super) relays: Vec<RelayServer>,
    pub(super) index: HashMap<NodeId, u32>,
    pub(super) policies: Vec<Policy>,
    pub(super) policy_of: Vec<usize>,
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) started: Instant,
    pub(super) closing: bool,
    /// Requests and commands on their way (not timers).
    pub(super) in_progress: usize,
    /// Operator decisions and revocations waiting for their time.
    pub(super) timers: usize,
    pub(super) last_activity: Instant,
    pub(super) mesh: Vec<(u32, u32)>,
    pub(super) asked: HashSet<(u32, u32)>,
    pub(super) handshakes: HashMap<(u32, u32), (Instant, bool)>,
    pub(super) trusted: HashSet<(u32, u32)>,
    pub(super) mutual: u64,
    pub(super) max_mutual: u64,
    pub(super) ledger: Ledger,
    pub(super) counts: Counts,
    pub(super) touched: BTreeSet<(u32, u32)>,
    /// (invariant, wall ms since start, detail)
    pub(super) violation: Option<(&'static str, u64, String)>,
    pub(super) latencies: Vec<u64>,
    pub(super) latencies_policy: Vec<u64>,
    pub(super) exchange: Vec<u64>,
    pub(super) hs: HandshakeReport,
    pub(super) msg: MessageReport,
    pub(super) series: Series,
    pub(super) queue_samples: Vec<u64>,
    pub(super) max_queue: Vec<u64>,
    pub(super) lagged: u64,
    /// Messages handled (the nodes' trust events, decisions, revocations, results).
    pub(super) events: u64,
}

impl Driver {
    pub(super) fn interarrival(&mut self, speed: f64) -> Duration {
        let mean = 1.0 / (self.sc.workload.rate * speed);
        let u: f64 = self.rng.r#gen();
        Duration::from_secs_f64((-(1.0 - u).ln() * mean).max(0.0005))
    }

    fn n(&self) -> u32 {
        self.nodes.len() as u32
    }

    fn pick(&mut self) -> Option<(u32, u32)> {
        match self.sc.workload.pattern {
            Pattern::Mesh => self.mesh.pop(),
            Pattern::Random => {
                let n = self.n();
                for _ in 0..16 {
                    let x = self.rng.gen_range(0..n);
                    let y = (x + self.rng.gen_range(1..n)) % n;
                    if self.asked.contains(&(x, y))
                        || self.trusted.contains(&(x, y))
                        || self.asked.contains(&(y, x))
                    {
                        continue;
                    }
                    return Some((x, y));
                }
                None
            }
        }
    }

    /// Starts one request; false if no pair was free.
    pub(super) fn issue_request(&mut self) -> bool {
        let Some((x, y)) = self.pick() else {
            return false;
        };
        self.asked.insert((x, y));
        self.touched.insert(invariants::pair(x, y));
        let py = self.policy_of[y as usize];
        let mut policy = self.policies[py].kind == PolicyKind::Auto;
        let allow = self.policies[py].kind == PolicyKind::Allowlist
            && self.rng.r#gen::<f64>() < self.policies[py].allowed;
        if allow {
            policy = true;
            self.ledger.decide(y, x, Decision::Policy);
            self.hs.allowlisted += 1;
        }
        self.ledger.decide(x, y, Decision::Request);
        self.hs.requested += 1;
        let (nx, ny) = (
            self.nodes[x as usize].clone(),
            self.nodes[y as usize].clone(),
        );
        let idx = self.ids[x as usize];
        let ticket = self.tickets[y as usize].clone();
        let tx = self.tx.clone();
        self.in_progress += 1;
        let started = Instant::now();
        self.handshakes.insert((x, y), (started, policy));
        tokio::spawn(async move {
            if allow {
                let _ = ny
                    .command(Command::Allow {
                        peer: idx,
                        name: None,
                    })
                    .await;
            }
            let result = nx
                .request(&ticket, &format!("n{x} asks n{y}"))
                .await
                .map_err(|e| e.to_string());
            let _ = tx.send(Msg::Requested {
                from: x,
                to: y,
                started,
                result,
            });
        });
        true
    }

    pub(super) fn on_msg(&mut self, msg: Msg) {
        self.last_activity = Instant::now();
        self.events += 1;
        match msg {
            Msg::Event(i, e, at) => self.on_event(i, e, at),
            Msg::Lagged(k) => self.lagged += k,
            Msg::Decide(i, peer) => {
                self.timers -= 1;
                if !self.closing {
                    self.decide(i, peer);
                }
            }
            Msg::Revoke(i, peer) => {
                self.timers -= 1;
                if !self.closing && self.trusted.contains(&(i, peer)) {
                    self.command(i, peer, Decision::Revoke);
                }
            }
            Msg::Requested {
                from,
                to,
                started,
                result,
            } => {
                self.in_progress -= 1;
                match result {
                    Ok(delivery) => {
                        self.count_delivery(&delivery);
                        if !matches!(delivery, Delivery::Retrying { .. }) {
                            self.exchange.push(started.elapsed().as_millis() as u64);
                        }
                    }
                    Err(_) => {
                        self.handshakes.remove(&(from, to));
                        self.hs.requested -= 1;
                    }
                }
            }
            Msg::Commanded { ok, deliveries } => {
                self.in_progress -= 1;
                if ok {
                    for d in &deliveries {
                        self.count_delivery(d);
                    }
                }
            }
            Msg::Checked { pair, a, b } => self.check_pair(pair, a, b),
        }
    }

    fn count_delivery(&mut self, d: &Delivery) {
        self.msg.attempts += 1;
        let name = match d {
            Delivery::Acked(s) => invariants::ack_name(s).to_string(),
            Delivery::Relayed { ack, .. } => {
                self.msg.relayed += 1;
                match ack {
                    Some(s) => format!("relayed:{}", invariants::ack_name(s)),
                    None => "relayed:no-ack".to_string(),
                }
            }
            Delivery::Queued { .. } => {
                self.msg.relayed += 1;
                "relay:queued".to_string()
            }
            Delivery::Retrying { .. } => {
                self.msg.retries += 1;
                "retrying".to_string()
            }
        };
        *self.msg.acks.entry(name).or_default() += 1;
    }

    fn envelope(&mut self, kind: &str) {
        *self.msg.envelopes.entry(kind.to_string()).or_default() += 1;
        self.msg.envelopes_total += 1;
    }

    fn on_event(&mut self, i: u32, e: Event, at: Instant) {
        let Some(&peer) = self.index.get(&e.peer) else {
            return;
        };
        match e.kind {
            EventKind::RequestSent => self.envelope("request"),
            EventKind::RequestReceived { .. } => {
                if self.closing {
                    return;
                }
                let p = &self.policies[self.policy_of[i as usize]];
                if p.ignore > 0.0 && self.rng.r#gen::<f64>() < p.ignore {
                    return;
                }
                let delay = p.delay.sample(&mut self.rng) as f64 / self.sc.real.speed;
                self.later(
                    Duration::from_secs_f64(delay / 1000.0),
                    Msg::Decide(i, peer),
                );
            }
            EventKind::AutoApproved { .. } => {
                self.envelope("accept");
                self.ledger.decide(i, peer, Decision::Policy);
                self.flip(i, peer, true, at);
            }
            EventKind::Approved | EventKind::MutualTrust => {
                self.envelope("accept");
                self.flip(i, peer, true, at);
            }
            EventKind::AcceptedByPeer => self.flip(i, peer, true, at),
            EventKind::Rejected => self.envelope("reject"),
            EventKind::RejectedByPeer { .. } => self.declined(i, peer),
            EventKind::Revoked => {
                self.envelope("revoke");
                self.flip(i, peer, false, at);
            }
            EventKind::RevokedByPeer { .. } | EventKind::TrustExpired => {
                self.flip(i, peer, false, at)
            }
            _ => {}
        }
    }

    /// `i`'s request to `peer` was declined: that handshake is over.
    fn declined(&mut self, i: u32, peer: u32) {
        if self.handshakes.remove(&(i, peer)).is_some() {
            self.hs.rejected += 1;
        }
    }

    fn flip(&mut self, i: u32, peer: u32, trusted: bool, at: Instant) {
        self.touched.insert(invariants::pair(i, peer));
        let other = self.trusted.contains(&(peer, i));
        if trusted {
            if !self.trusted.insert((i, peer)) {
                return;
            }
            self.counts.add(CONSENT, 1);
            let auto_i = self.policies[self.policy_of[i as usize]].kind == PolicyKind::Auto;
            let auto_p = self.policies[self.policy_of[peer as usize]].kind == PolicyKind::Auto;
            if !self.ledger.consents(i, peer, auto_i)
                || !self.ledger.ever_consented(peer, i, auto_p)
            {
                self.violate(
                    CONSENT,
                    format!("n{i} trusts n{peer} without an approval or policy on both sides"),
                );
            }
            if other {
                self.mutual += 1;
                self.max_mutual = self.max_mutual.max(self.mutual);
            }
            if let Some((start, policy)) = self.handshakes.remove(&(i, peer)) {
                let ms = at.saturating_duration_since(start).as_millis() as u64;
                self.latencies.push(ms);
                if policy {
                    self.latencies_policy.push(ms);
                }
                self.hs.completed += 1;
                self.maybe_revoke(i, peer);
            }
        } else if self.trusted.remove(&(i, peer)) && other {
            self.mutual -= 1;
        }
    }

    fn maybe_revoke(&mut self, x: u32, y: u32) {
        let w = &self.sc.workload;
        if self.closing || w.revoke <= 0.0 || self.rng.r#gen::<f64>() >= w.revoke {
            return;
        }
        let after = w.revoke_after.sample(&mut self.rng) as f64 / self.sc.real.speed;
        let (a, b) = if self.rng.r#gen::<bool>() {
            (x, y)
        } else {
            (y, x)
        };
        self.later(Duration::from_secs_f64(after / 1000.0), Msg::Revoke(a, b));
    }

    fn later(&mut self, after: Duration, msg: Msg) {
        self.timers += 1;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(msg);
        });
    }

    fn decide(&mut self, i: u32, peer: u32) {
        let reject = self.policies[self.policy_of[i as usize]].reject;
        let d = if reject > 0.0 && self.rng.r#gen::<f64>() < reject {
            Decision::Reject
        } else {
            Decision::Approve
        };
        self.hs.operator_decisions += 1;
        self.command(i, peer, d);
    }

    /// Issues an operator command (approve, reject, revoke) without waiting.
    fn command(&mut self, i: u32, peer: u32, d: Decision) {
        let id = self.ids[peer as usize];
        let cmd = match d {
            Decision::Approve => Command::Approve {
                peer: id,
                name: None,
                note: None,
                expires_at_ms: None,
            },
            Decision::Reject => Command::Reject {
                peer: id,
                reason: "not now".into(),
            },
            Decision::Revoke => {
                self.hs.revocations += 1;
                Command::Revoke {
                    peer: id,
                    reason: "done".into(),
                }
            }
            Decision::Request | Decision::Policy | Decision::Withdraw => return,
        };
        self.ledger.decide(i, peer, d);
        let node = self.nodes[i as usize].clone();
        let tx = self.tx.clone();
        self.in_progress += 1;
        tokio::spawn(async move {
            let result = node.command(cmd).await;
            let (ok, deliveries) = match result {
                Ok(d) => (true, d),
                Err(_) => (false, Vec::new()),
            };
            let _ = tx.send(Msg::Commanded { ok, deliveries });
        });
    }

    pub(super) fn check_pair(
        &mut self,
        (a, b): (u32, u32),
        ra: Option<(TrustState, bool)>,
        rb: Option<(TrustState, bool)>,
    ) {
        self.counts.add(AGREEMENT, 1);
        let ta = ra.is_some_and(|r| r.1);
        let tb = rb.is_some_and(|r| r.1);
        let show =
            |r: Option<(TrustState, bool)>| r.map_or("no record".to_string(), |r| r.0.to_string());
        if ta != tb {
            self.violate(
                AGREEMENT,
                format!(
                    "n{a} and n{b} disagree once quiet: n{a} has n{b} as {}, n{b} has n{a} as {}",
                    show(ra),
                    show(rb)
                ),
            );
            return;
        }
        if let Some((actor, d)) = self.ledger.last(a, b) {
            if matches!(d, Decision::Revoke | Decision::Reject) {
                self.counts.add(DECLINE_REACHES, 1);
                let (other, so) = if actor == a { (b, rb) } else { (a, ra) };
                let reached = invariants::shows_decline(so.map(|r| r.0));
                if !reached {
                    self.violate(
                        DECLINE_REACHES,
                        format!(
                            "n{actor}'s decline of n{other} never reached it: n{other} has n{actor} as {}",
                            show(so)
                        ),
                    );
                }
            }
        }
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_some() {
            return;
        }
        self.violation = Some((invariant, self.started.elapsed().as_millis() as u64, detail));
    }
}
