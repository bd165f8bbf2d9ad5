//! Delivery with retries: the virtual network's direct connections, each
//! attempt (a dial when no connection is open), its arrival, the ack back,
//! and failures with exponential backoff for a bounded window.
//!
//! Like the rest of the engine, this must never change a machine other than
//! through its `handle`, never read the wall clock, and never let an
//! invariant check draw from the RNG.

use kith_keys::NodeId;
use kith_protocol::{AckStatus, Envelope, Input, Kind};

use crate::invariants::{What, ack_name};

use super::{Delivery, Sim, events::Ev, node_addr};

impl Sim<'_> {
    pub(super) fn new_delivery(&mut self, from: u32, env: Envelope) {
        let Some(&to) = self.index.get(&env.body.to) else {
            return;
        };
        *self
            .msg
            .envelopes
            .entry(env.body.kind.name().to_string())
            .or_default() += 1;
        self.msg.envelopes_total += 1;
        let id = self.next_del;
        self.next_del += 1;
        self.deliveries.insert(
            id,
            Delivery {
                from,
                to,
                env,
                incarnation: self.nodes[from as usize].incarnation,
                created: self.now,
                attempt: 0,
                attempt_started: self.now,
                first_fail: None,
                backoff: self.sc.delivery.backoff_min.ms(),
                ack: None,
                answer: None,
                relay: None,
            },
        );
        self.start_attempt(id);
    }

    pub(super) fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partitions.values().any(|side| side[a] != side[b])
    }

    pub(super) fn relay_slot(&self, r: u32) -> usize {
        self.nodes.len() + r as usize
    }

    fn conn_open(&self, a: u32, b: u32) -> bool {
        self.conns[a as usize].contains(&b)
    }

    fn open_conn(&mut self, a: u32, b: u32) {
        self.conns[a as usize].insert(b);
        self.conns[b as usize].insert(a);
    }

    pub(super) fn close_conn(&mut self, a: u32, b: u32) {
        self.conns[a as usize].remove(&b);
        self.conns[b as usize].remove(&a);
    }

    pub(super) fn start_attempt(&mut self, id: u64) {
        let timeout = self.sc.delivery.attempt_timeout.ms();
        let Some(d) = self.deliveries.get_mut(&id) else {
            return;
        };
        d.attempt += 1;
        d.attempt_started = self.now;
        d.ack = None;
        d.answer = None;
        d.relay = None;
        let (from, to, attempt) = (d.from, d.to, d.attempt);
        let kind = d.env.body.kind.name();
        let ts = d.env.body.timestamp_ms;
        self.msg.attempts += 1;
        if attempt > 1 {
            self.msg.retries += 1;
        }
        let direct = !self.nodes[to as usize].private || self.conn_open(from, to);
        let home = self.nodes[to as usize].home_relay;
        if !direct {
            if let Some(r) = home {
                self.trace(
                    from,
                    to,
                    What::Send {
                        kind,
                        ts,
                        attempt,
                        via: "relay",
                    },
                );
                self.send_via_relay(id, from, r, attempt);
                return;
            }
            self.trace(
                from,
                to,
                What::Send {
                    kind,
                    ts,
                    attempt,
                    via: "no route",
                },
            );
            self.at(
                self.now + timeout,
                Ev::Fail {
                    del: id,
                    attempt,
                    why: "private, no route",
                },
            );
            return;
        }
        let dial = !self.conn_open(from, to);
        self.trace(
            from,
            to,
            What::Send {
                kind,
                ts,
                attempt,
                via: if dial { "dial" } else { "direct" },
            },
        );
        let mut delay = 0;
        if dial {
            self.msg.dials += 1;
            delay += self.latency() + self.latency();
            if self.dropped(id, attempt, "dial lost") {
                return;
            }
        }
        delay += self.latency();
        if self.dropped(id, attempt, "lost") {
            return;
        }
        self.at(self.now + delay, Ev::Arrive { del: id, attempt });
    }

    /// The attempt failed at `now` for a reason the sender only learns by
    /// timing out.
    pub(super) fn fail_by_timeout(&mut self, id: u64, attempt: u32, why: &'static str) {
        let started = self
            .deliveries
            .get(&id)
            .map_or(self.now, |d| d.attempt_started);
        let at = (started + self.sc.delivery.attempt_timeout.ms()).max(self.now);
        self.at(
            at,
            Ev::Fail {
                del: id,
                attempt,
                why,
            },
        );
    }

    pub(super) fn on_arrive(&mut self, id: u64, attempt: u32) {
        let Some(d) = self.deliveries.get(&id) else {
            return;
        };
        if d.attempt != attempt {
            return;
        }
        let (from, to) = (d.from, d.to);
        if !self.nodes[to as usize].up() {
            self.fail_by_timeout(id, attempt, "peer down");
            return;
        }
        if self.partitioned(from as usize, to as usize) {
            self.close_conn(from, to);
            self.fail_by_timeout(id, attempt, "partitioned");
            return;
        }
        self.open_conn(from, to);
        let env = self.deliveries[&id].env.clone();
        let source = Some(node_addr(from, self.nodes[from as usize].private));
        let from_id = self.nodes[from as usize].id;
        let status = self.deliver_to_node(from, to, env, Some(from_id), source, None);
        if self.violation.is_some() {
            return;
        }
        if self.lost() {
            self.msg.lost += 1;
            self.fail_by_timeout(id, attempt, "ack lost");
            return;
        }
        if let Some(d) = self.deliveries.get_mut(&id) {
            d.ack = Some(status);
        }
        let back = self.latency();
        self.at(self.now + back, Ev::AckBack { del: id, attempt });
    }

    /// Hands an envelope to node `to` (which is up) and checks the replay
    /// rule if it had already applied it. Returns the ack.
    pub(super) fn deliver_to_node(
        &mut self,
        from: u32,
        to: u32,
        env: Envelope,
        transport_peer: Option<NodeId>,
        source: Option<std::net::SocketAddr>,
        via_relay: Option<NodeId>,
    ) -> AckStatus {
        let via = if via_relay.is_some() {
            "relay"
        } else {
            "direct"
        };
        let key = (to, env.body.nonce);
        let redelivery = self.applied.contains(&key);
        let kind = env.body.kind.name();
        let ts = env.body.timestamp_ms;
        let before = redelivery.then(|| self.replay_snapshot(to, &env.body.from));
        let captured = env.clone();
        let out = self.handle(
            to,
            Input::Envelope {
                envelope: env,
                transport_peer,
                source,
                via_relay,
            },
        );
        let status = out.ack().cloned().unwrap_or(AckStatus::Pending);
        self.trace(
            from,
            to,
            What::Deliver {
                kind,
                ts,
                ack: ack_name(&status),
                via,
                redelivery,
            },
        );
        if let Some(before) = before {
            self.msg.redeliveries += 1;
            self.check_replay(to, &captured, &out, before, "a re-delivered envelope");
        } else if !matches!(status, AckStatus::Refused(_)) {
            self.applied.insert(key);
            self.capture(captured);
        }
        if matches!(status, AckStatus::Revoked) && via == "direct" {
            // The daemon closes a revoked peer's connections at once.
            self.close_conn(from, to);
        }
        self.process(to, out);
        status
    }

    /// The ends of delivery `id` when its answer (for this attempt) can still reach
    /// the sender: it is up and has not restarted since sending. A delivery whose
    /// sender is gone is dropped.
    pub(super) fn answer_ends(&mut self, id: u64, attempt: u32) -> Option<(u32, u32)> {
        let d = self.deliveries.get(&id).filter(|d| d.attempt == attempt)?;
        let (from, to) = (d.from, d.to);
        let sender = &self.nodes[from as usize];
        if sender.incarnation != d.incarnation || !sender.up() {
            self.deliveries.remove(&id);
            return None;
        }
        Some((from, to))
    }

    pub(super) fn on_ack_back(&mut self, id: u64, attempt: u32) {
        let Some((from, to)) = self.answer_ends(id, attempt) else {
            return;
        };
        if self.partitioned(from as usize, to as usize) {
            self.fail_by_timeout(id, attempt, "partitioned");
            return;
        }
        let d = self.deliveries.remove(&id).expect("checked above");
        let status = d.ack.unwrap_or(AckStatus::Pending);
        *self
            .msg
            .acks
            .entry(ack_name(&status).to_string())
            .or_default() += 1;
        if d.attempt == 1 {
            self.exchange.push(self.now - d.created);
        }
        let kind = d.env.body.kind.name();
        self.trace(
            from,
            to,
            What::AckBack {
                kind,
                ack: ack_name(&status),
            },
        );
        if matches!(d.env.body.kind, Kind::Revoke { .. }) {
            self.close_conn(from, to);
        }
    }

    pub(super) fn on_fail(&mut self, id: u64, attempt: u32, why: &'static str) {
        let Some(d) = self.deliveries.get_mut(&id) else {
            return;
        };
        if d.attempt != attempt {
            return;
        }
        let (from, to) = (d.from, d.to);
        let kind = d.env.body.kind.name();
        self.msg.failed_attempts += 1;
        if self.nodes[from as usize].incarnation != d.incarnation {
            self.deliveries.remove(&id);
            return;
        }
        let now = self.now;
        let first = *d.first_fail.get_or_insert(now);
        if now - first >= self.sc.delivery.retry_for.ms() {
            self.deliveries.remove(&id);
            self.msg.gave_up += 1;
            self.trace(from, to, What::GaveUp { kind });
            return;
        }
        let wait = d.backoff;
        d.backoff = (d.backoff * 2).min(self.sc.delivery.backoff_max.ms());
        self.trace(from, to, What::AttemptFailed { kind, why });
        self.at(now + wait, Ev::Attempt { del: id });
    }
}
