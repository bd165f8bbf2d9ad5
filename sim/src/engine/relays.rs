//! Relays: nodes' connections to relays, the relay machines' inputs and
//! outputs, forwarding through a relay, and pushes to private nodes.
//!
//! Like the rest of the engine, this must never change a machine other than
//! through its `handle`, never read the wall clock, and never let an
//! invariant check draw from the RNG.

use kith_protocol::{Envelope, ForwardResult, RelayInput, RelayOutput};
use rand::Rng;

use crate::invariants::What;

use super::{IDLE_TIMEOUT_MS, NONE, RelayConn, Sim, events::Ev, node_addr};

impl Sim<'_> {
    pub(super) fn relay_up(&self, r: u32) -> bool {
        self.relays[r as usize].machine.is_some()
    }

    /// Node `i` opens a connection to relay `r` (registering with it).
    pub(super) fn relay_connect(&mut self, i: u32, r: u32) -> Option<u64> {
        if !self.nodes[i as usize].up() || !self.relay_up(r) {
            return None;
        }
        if self.partitioned(i as usize, self.relay_slot(r)) {
            return None;
        }
        if let Some(&c) = self.client_conn.get(&(i, r)) {
            return Some(c);
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.relay_conns.insert(
            conn,
            RelayConn {
                node: i,
                relay: r,
                incarnation: self.nodes[i as usize].incarnation,
            },
        );
        self.client_conn.insert((i, r), conn);
        let node = self.nodes[i as usize].id;
        let addr = node_addr(i, self.nodes[i as usize].private);
        self.relay_input(r, RelayInput::Connected { conn, node, addr });
        self.client_conn.get(&(i, r)).copied()
    }

    pub(super) fn relay_disconnect(&mut self, r: u32, conn: u64) {
        if let Some(c) = self.relay_conns.remove(&conn) {
            if self.client_conn.get(&(c.node, c.relay)) == Some(&conn) {
                self.client_conn.remove(&(c.node, c.relay));
            }
        }
        if self.relay_up(r) {
            self.relay_input(r, RelayInput::Disconnected { conn });
        }
    }

    /// Node `i`'s connection to relay `r` dies: the node notices at once (it
    /// is the one that crashed or reconnects), the relay after the idle timeout.
    pub(super) fn drop_relay_conn(&mut self, i: u32, r: u32) {
        if let Some(conn) = self.client_conn.remove(&(i, r)) {
            self.at(
                self.now + IDLE_TIMEOUT_MS,
                Ev::RelayDisconnect { relay: r, conn },
            );
        }
    }

    pub(super) fn relay_input(&mut self, r: u32, input: RelayInput) -> Vec<RelayOutput> {
        let relay = &mut self.relays[r as usize];
        let Some(m) = relay.machine.as_mut() else {
            return Vec::new();
        };
        let out = m.handle(self.now, input);
        relay.max_queue = relay.max_queue.max(m.queued() as u64);
        let deadline = m.next_deadline();
        for o in &out {
            match o {
                RelayOutput::Push { conn, envelope } => {
                    self.relay_rep.pushed += 1;
                    let mut delay = self.latency();
                    if let Some(b) = &self.sc.faults.bad_relay {
                        if b.relay == r as usize {
                            if b.drop > 0.0 && self.rng.r#gen::<f64>() < b.drop {
                                self.relay_rep.dropped_by_bad_relay += 1;
                                self.trace(
                                    self.n() + r,
                                    NONE,
                                    What::Relay {
                                        what: "drops a push",
                                    },
                                );
                                continue;
                            }
                            let extra = b.delay.sample(&mut self.rng);
                            if extra > 0 {
                                self.relay_rep.delayed_by_bad_relay += 1;
                                delay += extra;
                            }
                        }
                    }
                    self.pushes += 1;
                    self.at(
                        self.now + delay,
                        Ev::Push {
                            relay: r,
                            conn: *conn,
                            env: Box::new(envelope.clone()),
                        },
                    );
                }
                RelayOutput::Answer { .. } => {}
                RelayOutput::Registered { .. } => self.relay_rep.registrations += 1,
                RelayOutput::Refused { conn, .. } => {
                    self.relay_rep.refused += 1;
                    if let Some(c) = self.relay_conns.get(conn).copied() {
                        if self.client_conn.get(&(c.node, c.relay)) == Some(conn) {
                            self.client_conn.remove(&(c.node, c.relay));
                        }
                        self.relay_conns.remove(conn);
                    }
                }
                RelayOutput::Conflict { .. } => self.relay_rep.conflicts += 1,
                RelayOutput::ConflictOver { .. } => {}
                RelayOutput::Probe { conn } => {
                    // A live connection answers within a round trip.
                    if let Some(c) = self.relay_conns.get(conn).copied() {
                        let alive = self.nodes[c.node as usize].incarnation == c.incarnation
                            && self.nodes[c.node as usize].up();
                        if alive {
                            let rtt = self.latency() + self.latency();
                            self.at(
                                self.now + rtt,
                                Ev::RelayAlive {
                                    relay: r,
                                    conn: *conn,
                                },
                            );
                        }
                    }
                }
                RelayOutput::Close { conn } => {
                    if let Some(c) = self.relay_conns.remove(conn) {
                        if self.client_conn.get(&(c.node, c.relay)) == Some(conn) {
                            self.client_conn.remove(&(c.node, c.relay));
                        }
                    }
                }
                // The real relay tells a connected sender; simulated senders resend anyway.
                RelayOutput::Dropped { .. } => {}
                RelayOutput::Expired { count, .. } => {
                    self.relay_rep.expired += *count as u64;
                    self.trace(
                        self.n() + r,
                        NONE,
                        What::Relay {
                            what: "expires queued envelopes",
                        },
                    );
                }
            }
        }
        if let Some(d) = deadline {
            let relay = &mut self.relays[r as usize];
            if relay.tick_at.is_none_or(|t| d < t) {
                relay.tick_at = Some(d);
                self.at(d, Ev::RelayTick { relay: r });
            }
        }
        out
    }

    pub(super) fn on_relay_tick(&mut self, r: u32) {
        if self.relays[r as usize].tick_at != Some(self.now) {
            return;
        }
        self.relays[r as usize].tick_at = None;
        self.relay_input(r, RelayInput::Tick);
    }

    pub(super) fn send_via_relay(&mut self, id: u64, from: u32, r: u32, attempt: u32) {
        if let Some(d) = self.deliveries.get_mut(&id) {
            d.relay = Some(r);
        }
        self.msg.relayed += 1;
        let mut delay = 0;
        if !self.client_conn.contains_key(&(from, r)) {
            self.msg.dials += 1;
            delay += self.latency() + self.latency();
        }
        delay += self.latency();
        if self.dropped(id, attempt, "lost") {
            return;
        }
        self.at(self.now + delay, Ev::RelayArrive { del: id, attempt });
    }

    pub(super) fn on_relay_arrive(&mut self, id: u64, attempt: u32) {
        let Some(d) = self.deliveries.get(&id) else {
            return;
        };
        if d.attempt != attempt {
            return;
        }
        let (from, r) = (d.from, d.relay.expect("a relayed attempt"));
        if !self.relay_up(r) || self.partitioned(from as usize, self.relay_slot(r)) {
            self.fail_by_timeout(id, attempt, "relay unreachable");
            return;
        }
        if self.nodes[from as usize].incarnation != d.incarnation {
            self.deliveries.remove(&id);
            return;
        }
        let Some(conn) = self.relay_connect(from, r) else {
            self.fail_by_timeout(id, attempt, "relay refused the connection");
            return;
        };
        let env = self.deliveries[&id].env.clone();
        self.relay_rep.forwarded += 1;
        let out = self.relay_input(
            r,
            RelayInput::Forward {
                conn,
                envelope: env,
            },
        );
        let result = out.into_iter().find_map(|o| match o {
            RelayOutput::Answer { result, .. } => Some(result),
            _ => None,
        });
        let Some(result) = result else {
            self.fail_by_timeout(id, attempt, "no answer from relay");
            return;
        };
        match &result {
            ForwardResult::Queued => self.relay_rep.queued += 1,
            ForwardResult::UnknownDestination => self.relay_rep.unknown_destination += 1,
            _ => {}
        }
        if self.lost() {
            self.msg.lost += 1;
            self.fail_by_timeout(id, attempt, "answer lost");
            return;
        }
        if let Some(d) = self.deliveries.get_mut(&id) {
            d.answer = Some(result);
        }
        let back = self.latency();
        self.at(self.now + back, Ev::RelayAnswer { del: id, attempt });
    }

    pub(super) fn on_relay_answer(&mut self, id: u64, attempt: u32) {
        let Some((from, to)) = self.answer_ends(id, attempt) else {
            return;
        };
        let d = &self.deliveries[&id];
        let result = d
            .answer
            .clone()
            .unwrap_or(ForwardResult::UnknownDestination);
        let name = match &result {
            ForwardResult::Delivered => "relay:delivered",
            ForwardResult::Queued => "relay:queued",
            ForwardResult::UnknownDestination => "relay:unknown-destination",
            ForwardResult::Refused(_) => "relay:refused",
        };
        let kind = d.env.body.kind.name();
        self.trace(from, to, What::AckBack { kind, ack: name });
        match result {
            ForwardResult::Delivered | ForwardResult::Queued => {
                let d = self.deliveries.remove(&id).expect("checked above");
                *self.msg.acks.entry(name.to_string()).or_default() += 1;
                if d.attempt == 1 {
                    self.exchange.push(self.now - d.created);
                }
            }
            ForwardResult::UnknownDestination | ForwardResult::Refused(_) => {
                *self.msg.acks.entry(name.to_string()).or_default() += 1;
                self.at(
                    self.now,
                    Ev::Fail {
                        del: id,
                        attempt,
                        why: "relay could not take it",
                    },
                );
            }
        }
    }

    pub(super) fn on_push(&mut self, r: u32, conn: u64, env: Envelope) {
        self.pushes -= 1;
        let Some(c) = self.relay_conns.get(&conn).copied() else {
            if self.closed_cleanly.contains(&conn) {
                // The push fails on a closed connection: like `kith relay`,
                // forward it again now the destination is known offline, so
                // it is queued for its return.
                let from = self.index.get(&env.body.from).copied();
                if let Some(sender) = from.and_then(|f| self.client_conn.get(&(f, r)).copied()) {
                    self.relay_rep.requeued += 1;
                    self.relay_input(
                        r,
                        RelayInput::Forward {
                            conn: sender,
                            envelope: env,
                        },
                    );
                    return;
                }
            }
            self.trace(
                self.n() + r,
                NONE,
                What::Relay {
                    what: "pushes into a closed connection",
                },
            );
            return;
        };
        let to = c.node;
        let alive = self.nodes[to as usize].incarnation == c.incarnation
            && self.nodes[to as usize].up()
            && !self.partitioned(to as usize, self.relay_slot(r));
        let Some(&from) = self.index.get(&env.body.from) else {
            return;
        };
        if !alive {
            self.trace(
                self.n() + r,
                to,
                What::Relay {
                    what: "push lost on a dead connection to",
                },
            );
            return;
        }
        let relay = self.relays[r as usize].id;
        self.deliver_to_node(from, to, env, None, None, Some(relay));
    }
}
