//! Faults: crashes that keep the store and lose everything in memory,
//! restarts, partitions, and the replaying adversary.
//!
//! Like the rest of the engine, this must never change a machine other than
//! through its `handle`, never read the wall clock, and never let an
//! invariant check draw from the RNG.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use kith_keys::NodeId;
use kith_protocol::{AckStatus, Command, Envelope, Input, Relay, Reply};
use rand::Rng;

use crate::invariants::{DURABILITY, What, ack_name};
use crate::node::durable_view;

use super::{IDLE_TIMEOUT_MS, NONE, RelayConn, Sim, events::Ev};

impl Sim<'_> {
    pub(super) fn on_crash(&mut self, i: u32) {
        if !self.workload_on {
            return;
        }
        let n = self.n();
        if i >= n {
            self.crash_relay(i - n);
            return;
        }
        let Some(c) = self.sc.faults.crashes.clone() else {
            return;
        };
        if !self.nodes[i as usize].up() {
            return;
        }
        // Nothing committed may be lost: rebuild from the store and compare.
        self.counts.add(DURABILITY, 1);
        let restored = self.nodes[i as usize].restored();
        let live = self.nodes[i as usize].machine.as_ref().expect("up");
        if let Some(diff) = durable_view(live).first_difference(&durable_view(&restored)) {
            self.violate(
                DURABILITY,
                format!("n{i} crashed and its store lost committed state: {diff}"),
                &[i],
            );
            return;
        }
        self.faults.crashes += 1;
        self.trace(i, NONE, What::Crash);
        let node = &mut self.nodes[i as usize];
        node.machine = None;
        node.incarnation += 1;
        node.tick_at = None;
        let downtime = c.downtime.sample(&mut self.rng).max(1);
        self.nodes[i as usize].back_at = Some(self.now + downtime);
        self.down += 1;
        // Its connections die with it; its retry queue is gone.
        let peers: Vec<u32> = self.conns[i as usize].iter().copied().collect();
        for p in peers {
            self.close_conn(i, p);
        }
        let lost: Vec<u64> = {
            let mut v: Vec<u64> = self
                .deliveries
                .iter()
                .filter(|(_, d)| d.from == i)
                .map(|(id, _)| *id)
                .collect();
            v.sort_unstable();
            v
        };
        self.msg.dropped_by_crash += lost.len() as u64;
        for id in lost {
            self.deliveries.remove(&id);
        }
        for r in 0..self.relays.len() as u32 {
            if c.graceful {
                // A clean shutdown closes its connections: relays know at once.
                if let Some(conn) = self.client_conn.get(&(i, r)).copied() {
                    self.closed_cleanly.insert(conn);
                    self.relay_disconnect(r, conn);
                }
            } else {
                self.drop_relay_conn(i, r);
            }
        }
        self.at(self.now + downtime, Ev::Restart { node: i });
    }

    fn crash_relay(&mut self, r: u32) {
        let Some(c) = self.sc.faults.crashes.clone() else {
            return;
        };
        if !self.relay_up(r) {
            return;
        }
        self.faults.crashes += 1;
        self.relays[r as usize].machine = None;
        self.relays[r as usize].tick_at = None;
        self.trace(self.n() + r, NONE, What::Crash);
        let conns: Vec<(u64, RelayConn)> = {
            let mut v: Vec<(u64, RelayConn)> = self
                .relay_conns
                .iter()
                .filter(|(_, c)| c.relay == r)
                .map(|(id, c)| (*id, *c))
                .collect();
            v.sort_unstable_by_key(|(id, _)| *id);
            v
        };
        for (id, c) in conns {
            self.relay_conns.remove(&id);
            self.client_conn.remove(&(c.node, c.relay));
        }
        self.down += 1;
        let downtime = c.downtime.sample(&mut self.rng).max(1);
        self.at(self.now + downtime, Ev::Restart { node: self.n() + r });
    }

    pub(super) fn on_restart(&mut self, i: u32) {
        let n = self.n();
        if i >= n {
            let r = i - n;
            let config = self.relays[r as usize].config.clone();
            self.relays[r as usize].machine = Some(Relay::new(config));
            self.down -= 1;
            self.faults.restarts += 1;
            self.trace(i, NONE, What::Restart);
            // Its private nodes reconnect.
            for node in 0..n {
                if self.nodes[node as usize].home_relay == Some(r) {
                    self.schedule_relay_reconnect(node, r);
                }
            }
            return;
        }
        let restored = self.nodes[i as usize].restored();
        let node = &mut self.nodes[i as usize];
        node.machine = Some(restored);
        node.back_at = None;
        self.down -= 1;
        self.faults.restarts += 1;
        self.trace(i, NONE, What::Restart);
        self.schedule_tick(i);
        if let Some(r) = self.nodes[i as usize].home_relay {
            self.schedule_relay_reconnect(i, r);
        }
        if self.sc.delivery.resend_on_restart {
            let peers: Vec<NodeId> = self.nodes[i as usize].store.peers.keys().copied().collect();
            for peer in peers {
                let out = self.handle(i, Input::Command(Command::Resend { peer }));
                if out.reply == Reply::Done {
                    self.faults.resent_after_restart += 1;
                }
                self.process(i, out);
            }
        }
    }

    fn schedule_relay_reconnect(&mut self, i: u32, r: u32) {
        let d = self.sc.relay.reconnect.sample(&mut self.rng);
        let incarnation = self.nodes[i as usize].incarnation;
        self.at(
            self.now + d,
            Ev::RelayConnect {
                node: i,
                relay: r,
                incarnation,
            },
        );
    }

    pub(super) fn on_partition_start(&mut self, index: u32) {
        if !self.workload_on {
            return;
        }
        let p = self.sc.network.partitions[index as usize].clone();
        let total = self.nodes.len() + self.relays.len();
        let cut = ((p.fraction * total as f64).round() as usize).min(total);
        let mut side = vec![false; total];
        for k in rand::seq::index::sample(&mut self.rng, total, cut) {
            side[k] = true;
        }
        self.partitions.insert(index, side);
        self.faults.partitions += 1;
        self.trace(
            NONE,
            NONE,
            What::PartitionStart {
                index,
                cut: cut as u32,
            },
        );
        // Connections across the cut die if it outlasts the idle timeout.
        if p.duration.ms() > IDLE_TIMEOUT_MS {
            let n = self.nodes.len();
            for a in 0..n as u32 {
                let cross: Vec<u32> = self.conns[a as usize]
                    .iter()
                    .copied()
                    .filter(|&b| b > a && self.partitioned(a as usize, b as usize))
                    .collect();
                for b in cross {
                    self.close_conn(a, b);
                }
            }
            let mut cross: Vec<(u64, RelayConn)> = self
                .relay_conns
                .iter()
                .filter(|(_, c)| self.partitioned(c.node as usize, self.relay_slot(c.relay)))
                .map(|(id, c)| (*id, *c))
                .collect();
            cross.sort_unstable_by_key(|(id, _)| *id);
            for (_, c) in cross {
                self.drop_relay_conn(c.node, c.relay);
            }
        }
        self.at(self.now + p.duration.ms(), Ev::PartitionEnd { index });
    }

    pub(super) fn on_partition_end(&mut self, index: u32) {
        if self.partitions.remove(&index).is_none() {
            return;
        }
        self.trace(NONE, NONE, What::PartitionEnd { index });
        // Private nodes that lost their relay reconnect.
        for i in 0..self.n() {
            if let Some(r) = self.nodes[i as usize].home_relay {
                if self.nodes[i as usize].up() && !self.client_conn.contains_key(&(i, r)) {
                    self.schedule_relay_reconnect(i, r);
                }
            }
        }
    }

    pub(super) fn capture(&mut self, env: Envelope) {
        let Some(a) = &self.sc.faults.adversary else {
            return;
        };
        let cap = a.capture;
        self.seen += 1;
        if self.captured.len() < cap {
            self.captured.push(env);
        } else {
            let j = self.rng.gen_range(0..self.seen);
            if (j as usize) < cap {
                self.captured[j as usize] = env;
            }
        }
    }

    pub(super) fn on_inject(&mut self) {
        let Some(a) = self.sc.faults.adversary.clone() else {
            return;
        };
        if !self.workload_on {
            return;
        }
        let gap = {
            let mean = 1000.0 / a.rate;
            let u: f64 = self.rng.r#gen();
            ((-(1.0 - u).ln() * mean).round() as u64).max(1)
        };
        self.at(self.now + gap, Ev::Inject);
        if self.captured.is_empty() {
            return;
        }
        let k = self.rng.gen_range(0..self.captured.len());
        let mut env = self.captured[k].clone();
        let Some(&to) = self.index.get(&env.body.to) else {
            return;
        };
        let Some(&from) = self.index.get(&env.body.from) else {
            return;
        };
        if !self.nodes[to as usize].up() {
            return;
        }
        let tamper = a.tamper > 0.0 && self.rng.r#gen::<f64>() < a.tamper;
        let direct = a.direct > 0.0 && self.rng.r#gen::<f64>() < a.direct;
        if tamper {
            let bit = self.rng.gen_range(0..64 * 8);
            env.signature.0[bit / 8] ^= 1 << (bit % 8);
        }
        let (transport_peer, source, how) = if direct {
            let adv = self
                .adversary_key
                .as_ref()
                .expect("adversary key")
                .node_id();
            (
                Some(adv),
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)),
                    7444,
                )),
                if tamper { "direct, tampered" } else { "direct" },
            )
        } else {
            (None, None, if tamper { "relay, tampered" } else { "relay" })
        };
        self.faults.replays_injected += 1;
        let before = self.replay_snapshot(to, &env.body.from);
        let kind = env.body.kind.name();
        let ts = env.body.timestamp_ms;
        let out = self.handle(
            to,
            Input::Envelope {
                envelope: env.clone(),
                transport_peer,
                source,
                via_relay: None,
            },
        );
        let status = out.ack().cloned().unwrap_or(AckStatus::Pending);
        *self
            .faults
            .replay_outcomes
            .entry(ack_name(&status).to_string())
            .or_default() += 1;
        self.trace(
            from,
            to,
            What::Inject {
                kind,
                ts,
                ack: ack_name(&status),
                how,
            },
        );
        self.check_replay(to, &env, &out, before, "an adversary's replay");
        self.process(to, out);
    }
}
