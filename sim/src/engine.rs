//! The deterministic engine: a virtual clock, a virtual network, one seeded
//! RNG, and the protocol's own state machines for every node and relay.
//!
//! Time jumps from event to event (a binary heap ordered by time, then by the
//! order events were scheduled), so an hour of fleet time costs only the work
//! the events do. Every random choice — keys, latencies, losses, workload,
//! faults, the machines' nonces — comes from the one [`StdRng`] seeded with
//! the run's seed, in an order fixed by the event order; nothing iterates a
//! hash map. The same seed therefore replays the same run, event for event.
//!
//! What the engine models around the machines is the daemon's behaviour:
//! delivery with an ack per envelope, a dial (one extra round trip) when no
//! connection is open, retries with exponential backoff for a bounded window,
//! connections served both ways, private nodes reachable only over a
//! connection they opened or through their home relay, relay registration,
//! and crashes that keep the store and lose everything in memory.
//!
//! This module must never change a machine other than through its `handle`,
//! never read the wall clock (only the progress bar does, for display), and
//! never let an invariant check draw from the RNG.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use indicatif::{ProgressBar, ProgressStyle};
use kith_keys::{NodeId, NodeKey};
use kith_protocol::{
    AckStatus, Command, Config, Envelope, EventKind, ForwardResult, Input, Kind, Output, Relay,
    RelayConfig, RelayInput, RelayOutput, Reply, TrustMachine, TrustState,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use zeroize::Zeroizing;

use crate::invariants::{
    self, AGREEMENT, CONSENT, Counts, DECLINE_REACHES, DURABILITY, Decision, Ledger, REPLAY,
    REVOKE_HOLDS, Trace, TraceEvent, Violation, What, ack_name, pair,
};
use crate::node::{SimNode, Store, TrustFlip, durable_view};
use crate::report::{
    FaultReport, HandshakeReport, InvariantReport, LatencyReport, MessageReport, NodesReport,
    Percentiles, RelayReport, Report, Series, TimeReport, TrustReport, ViolationReport,
};
use crate::scenario::{Pattern, Policy, PolicyKind, Scenario};

/// QUIC idle timeout: how long a peer takes to notice a connection is dead.
const IDLE_TIMEOUT_MS: u64 = 30_000;
/// Ticks are rounded up to this grid, so nonce reaping batches up.
const TICK_GRID_MS: u64 = 1_000;
/// Events kept for violation traces.
const TRACE_RING: usize = 65_536;
/// After the drain, how long the engine waits at most for the network to go quiet.
const CLOSING_CAP_MS: u64 = 10 * 60 * 1000;
const NONE: u32 = u32::MAX;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    /// Show a progress bar on stderr (only if it is a terminal).
    pub progress: bool,
}

/// What a run produced.
pub struct Outcome {
    pub report: Report,
    pub violation: Option<Violation>,
    /// Every completed handshake's latency, for the histogram.
    pub latencies: Vec<u64>,
}

/// Runs `scenario` to the end (or to the first invariant violation).
pub fn run(scenario: &Scenario, options: &RunOptions) -> Outcome {
    let mut sim = Sim::new(scenario, options.seed);
    let bar = if options.progress {
        let bar = ProgressBar::new(scenario.total_ms() / 1000);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} simulated s ({elapsed}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(scenario.name.clone());
        Some(bar)
    } else {
        None
    };
    sim.bar = bar;
    sim.run();
    if let Some(bar) = sim.bar.take() {
        bar.finish_and_clear();
    }
    sim.finish()
}

// ----- events ----------------------------------------------------------------

#[derive(Clone, Debug)]
enum Ev {
    Workload,
    Decide {
        node: u32,
        peer: u32,
    },
    Revoke {
        node: u32,
        peer: u32,
    },
    /// The operator renews an expired approval.
    Renew {
        node: u32,
        peer: u32,
    },
    /// The requester withdraws or drops what it has with the peer.
    Withdraw {
        node: u32,
        peer: u32,
    },
    Attempt {
        del: u64,
    },
    Arrive {
        del: u64,
        attempt: u32,
    },
    AckBack {
        del: u64,
        attempt: u32,
    },
    Fail {
        del: u64,
        attempt: u32,
        why: &'static str,
    },
    Tick {
        node: u32,
    },
    Crash {
        node: u32,
    },
    Restart {
        node: u32,
    },
    PartitionStart {
        index: u32,
    },
    PartitionEnd {
        index: u32,
    },
    Inject,
    Sample,
    EndWorkload,
    RelayArrive {
        del: u64,
        attempt: u32,
    },
    RelayAnswer {
        del: u64,
        attempt: u32,
    },
    Push {
        relay: u32,
        conn: u64,
        env: Box<Envelope>,
    },
    RelayTick {
        relay: u32,
    },
    RelayConnect {
        node: u32,
        relay: u32,
        incarnation: u32,
    },
    RelayDisconnect {
        relay: u32,
        conn: u64,
    },
    RelayAlive {
        relay: u32,
        conn: u64,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap is a max-heap and the earliest event comes first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

// ----- deliveries and relays -------------------------------------------------

/// One envelope a node is trying to deliver (the daemon's outbox entry).
struct Delivery {
    from: u32,
    to: u32,
    env: Envelope,
    incarnation: u32,
    created: u64,
    attempt: u32,
    attempt_started: u64,
    first_fail: Option<u64>,
    backoff: u64,
    /// The ack (direct) or answer (relay) travelling back for this attempt.
    ack: Option<AckStatus>,
    answer: Option<ForwardResult>,
    /// The relay carrying this attempt, if any.
    relay: Option<u32>,
}

struct SimRelay {
    /// The relay's node id, as a node it pushes to sees it (`Input::Envelope::via_relay`).
    id: NodeId,
    machine: Option<Relay>,
    config: RelayConfig,
    tick_at: Option<u64>,
    max_queue: u64,
}

/// A node's connection to a relay.
#[derive(Clone, Copy)]
struct RelayConn {
    node: u32,
    relay: u32,
    incarnation: u32,
}

struct Hs {
    start: u64,
    policy: bool,
}

struct Sim<'s> {
    sc: &'s Scenario,
    seed: u64,
    rng: StdRng,
    start: u64,
    now: u64,
    end_workload: u64,
    end: u64,
    workload_on: bool,
    closing: bool,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    events: u64,

    nodes: Vec<SimNode>,
    index: HashMap<NodeId, u32>,
    policies: Vec<Policy>,
    /// Open direct connections, both ways.
    conns: Vec<BTreeSet<u32>>,
    /// Active partitions: index → which side each node (then relay) is on.
    partitions: BTreeMap<u32, Vec<bool>>,
    relays: Vec<SimRelay>,
    relay_conns: HashMap<u64, RelayConn>,
    /// (node, relay) → the node's live connection to that relay.
    client_conn: HashMap<(u32, u32), u64>,
    /// Relay connections closed by a clean shutdown (pushes on them fail fast).
    closed_cleanly: HashSet<u64>,
    next_conn: u64,

    deliveries: HashMap<u64, Delivery>,
    next_del: u64,
    /// (addressee, nonce) of every envelope an addressee applied.
    applied: HashSet<(u32, [u8; 16])>,
    down: usize,
    /// Relay pushes on their way to their destination.
    pushes: u64,

    // workload
    mesh: Vec<(u32, u32)>,
    requests: u64,
    handshakes: HashMap<(u32, u32), Hs>,

    // adversary
    adversary_key: Option<NodeKey>,
    captured: Vec<Envelope>,
    seen: u64,

    // checks
    ledger: Ledger,
    trace: Trace,
    counts: Counts,
    dirty: BTreeSet<(u32, u32)>,
    violation: Option<Violation>,

    // metrics
    mutual: u64,
    max_mutual: u64,
    latencies: Vec<u64>,
    latencies_policy: Vec<u64>,
    exchange: Vec<u64>,
    hs: HandshakeReport,
    msg: MessageReport,
    relay_rep: RelayReport,
    faults: FaultReport,
    series: Series,
    queue_samples: Vec<u64>,
    bar: Option<ProgressBar>,
    flips: Vec<TrustFlip>,
}

fn node_addr(i: u32, private: bool) -> SocketAddr {
    let [_, a, b, c] = i.to_be_bytes();
    if private {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64 + a, b, c)), 40_000)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, a, b, c)), 7444)
    }
}

impl<'s> Sim<'s> {
    fn new(sc: &'s Scenario, seed: u64) -> Sim<'s> {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = sc.nodes.count;
        let start = sc.start_ms;

        let Fleet {
            policies,
            policy_of,
            private,
        } = assign_fleet(sc, &mut rng);
        let skew = sc.faults.clock_skew.clone();
        let base = protocol_config(sc);
        let relay_count = sc.nodes.relays as u32;
        let mut nodes = Vec::with_capacity(n);
        let mut index = HashMap::with_capacity(n);
        for i in 0..n as u32 {
            let mut secret = Zeroizing::new([0u8; 32]);
            rng.fill(&mut secret[..]);
            let key = NodeKey::from_secret(&secret);
            let id = key.node_id();
            let policy = policy_of[i as usize];
            let kind = policies[policy].kind;
            let mut config = base.clone();
            config.auto_approve = kind == PolicyKind::Auto;
            let skew_ms = match &skew {
                Some(s) if rng.r#gen::<f64>() < s.fraction => s.skew.sample_signed(&mut rng),
                _ => 0,
            };
            let is_private = private[i as usize];
            let home_relay = (is_private && relay_count > 0).then(|| i % relay_count);
            let machine = TrustMachine::new(id, config.clone());
            nodes.push(SimNode {
                index: i,
                key,
                id,
                machine: Some(machine),
                store: Store {
                    auto_approve: config.auto_approve,
                    ..Store::default()
                },
                config,
                skew_ms,
                policy,
                policy_kind: kind,
                private: is_private,
                home_relay,
                incarnation: 0,
                tick_at: None,
                back_at: None,
            });
            index.insert(id, i);
        }
        let relays = (0..relay_count)
            .map(|r| {
                let config = relay_config(sc, n);
                // Not drawn from the run's RNG, so every seed's run stays as it was.
                let mut secret = Zeroizing::new([0x52u8; 32]);
                secret[..4].copy_from_slice(&r.to_le_bytes());
                SimRelay {
                    id: NodeKey::from_secret(&secret).node_id(),
                    machine: Some(Relay::new(config.clone())),
                    config,
                    tick_at: None,
                    max_queue: 0,
                }
            })
            .collect();
        let adversary_key = sc.faults.adversary.as_ref().map(|_| {
            let mut secret = Zeroizing::new([0u8; 32]);
            rng.fill(&mut secret[..]);
            NodeKey::from_secret(&secret)
        });
        let mut sim = Sim {
            sc,
            seed,
            rng,
            start,
            now: start,
            end_workload: start + sc.duration.ms(),
            end: start + sc.total_ms(),
            workload_on: true,
            closing: false,
            queue: BinaryHeap::new(),
            seq: 0,
            events: 0,
            conns: vec![BTreeSet::new(); n],
            nodes,
            index,
            policies,
            partitions: BTreeMap::new(),
            relays,
            relay_conns: HashMap::new(),
            client_conn: HashMap::new(),
            closed_cleanly: HashSet::new(),
            next_conn: 1,
            deliveries: HashMap::new(),
            next_del: 0,
            applied: HashSet::new(),
            down: 0,
            pushes: 0,
            mesh: Vec::new(),
            requests: 0,
            handshakes: HashMap::new(),
            adversary_key,
            captured: Vec::new(),
            seen: 0,
            ledger: Ledger::default(),
            trace: Trace::new(TRACE_RING),
            counts: Counts::default(),
            dirty: BTreeSet::new(),
            violation: None,
            mutual: 0,
            max_mutual: 0,
            latencies: Vec::new(),
            latencies_policy: Vec::new(),
            exchange: Vec::new(),
            hs: HandshakeReport::default(),
            msg: MessageReport::default(),
            relay_rep: RelayReport::default(),
            faults: FaultReport::default(),
            series: Series::default(),
            queue_samples: Vec::new(),
            bar: None,
            flips: Vec::new(),
        };
        sim.schedule_start();
        sim
    }

    fn schedule_start(&mut self) {
        let sc = self.sc;
        let n = self.nodes.len() as u32;
        if sc.workload.pattern == Pattern::Mesh {
            for a in 0..n {
                for b in (a + 1)..n {
                    if self.rng.r#gen::<bool>() {
                        self.mesh.push((a, b));
                    } else {
                        self.mesh.push((b, a));
                    }
                }
            }
            self.mesh.shuffle(&mut self.rng);
            self.mesh.reverse(); // popped from the back
        }
        let first = self.interarrival();
        self.at(self.start + first, Ev::Workload);
        // Private nodes register with their home relay from the start.
        for i in 0..n {
            if let Some(r) = self.nodes[i as usize].home_relay {
                self.relay_connect(i, r);
            }
        }
        if let Some(c) = &sc.faults.crashes {
            let mut population: Vec<u32> = (0..n)
                .filter(|&i| c.private || !self.nodes[i as usize].private)
                .collect();
            if c.relays {
                population.extend(n..n + self.relays.len() as u32);
            }
            if !population.is_empty() {
                for _ in 0..c.count {
                    let t = self.start + self.rng.gen_range(0..sc.duration.ms().max(1));
                    let node = population[self.rng.gen_range(0..population.len())];
                    self.at(t, Ev::Crash { node });
                }
            }
        }
        for (i, p) in sc.network.partitions.iter().enumerate() {
            let at = self.start + p.at.ms();
            self.at(at, Ev::PartitionStart { index: i as u32 });
        }
        if let Some(a) = &sc.faults.adversary {
            let gap = (1000.0 / a.rate).max(1.0) as u64;
            self.at(self.start + gap, Ev::Inject);
        }
        self.at(self.start, Ev::Sample);
        self.at(self.end_workload, Ev::EndWorkload);
    }

    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn interarrival(&mut self) -> u64 {
        let mean = 1000.0 / self.sc.workload.rate;
        let u: f64 = self.rng.r#gen();
        ((-(1.0 - u).ln() * mean).round() as u64).max(1)
    }

    fn latency(&mut self) -> u64 {
        self.sc.network.latency.sample(&mut self.rng).max(1)
    }

    fn lost(&mut self) -> bool {
        let loss = self.sc.network.loss;
        loss > 0.0 && self.rng.r#gen::<f64>() < loss
    }

    /// Draws whether this message is lost; if it is, the sender learns only when
    /// its attempt times out.
    fn dropped(&mut self, id: u64, attempt: u32, why: &'static str) -> bool {
        if !self.lost() {
            return false;
        }
        self.msg.lost += 1;
        let at = self.now + self.sc.delivery.attempt_timeout.ms();
        self.at(
            at,
            Ev::Fail {
                del: id,
                attempt,
                why,
            },
        );
        true
    }

    fn t(&self) -> u64 {
        self.now - self.start
    }

    fn trace(&mut self, a: u32, b: u32, what: What) {
        let t = self.t();
        self.trace.push(TraceEvent { t, a, b, what });
    }

    fn n(&self) -> u32 {
        self.nodes.len() as u32
    }

    // ----- the loop ----------------------------------------------------------

    fn run(&mut self) {
        let cap = self.end + CLOSING_CAP_MS;
        while let Some(s) = self.queue.pop() {
            if self.violation.is_some() {
                break;
            }
            if s.at > self.end && !self.closing {
                self.closing = true;
                self.now = self.end;
                if self.is_quiet() {
                    break;
                }
            }
            if self.closing && (s.at > cap || self.is_quiet()) {
                break;
            }
            self.now = s.at;
            self.events += 1;
            self.dispatch(s.ev);
            if self.sc.checks.when_quiet && !self.dirty.is_empty() && self.is_quiet() {
                self.check_dirty();
            }
        }
        if self.violation.is_none() {
            self.now = self.now.max(self.end);
            self.final_checks();
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Workload => self.on_workload(),
            Ev::Decide { node, peer } => self.on_decide(node, peer),
            Ev::Revoke { node, peer } => self.on_revoke(node, peer),
            Ev::Renew { node, peer } => self.on_renew(node, peer),
            Ev::Withdraw { node, peer } => self.on_withdraw(node, peer),
            Ev::Attempt { del } => self.start_attempt(del),
            Ev::Arrive { del, attempt } => self.on_arrive(del, attempt),
            Ev::AckBack { del, attempt } => self.on_ack_back(del, attempt),
            Ev::Fail { del, attempt, why } => self.on_fail(del, attempt, why),
            Ev::Tick { node } => self.on_tick(node),
            Ev::Crash { node } => self.on_crash(node),
            Ev::Restart { node } => self.on_restart(node),
            Ev::PartitionStart { index } => self.on_partition_start(index),
            Ev::PartitionEnd { index } => self.on_partition_end(index),
            Ev::Inject => self.on_inject(),
            Ev::Sample => self.on_sample(),
            Ev::EndWorkload => self.on_end_workload(),
            Ev::RelayArrive { del, attempt } => self.on_relay_arrive(del, attempt),
            Ev::RelayAnswer { del, attempt } => self.on_relay_answer(del, attempt),
            Ev::Push { relay, conn, env } => self.on_push(relay, conn, *env),
            Ev::RelayTick { relay } => self.on_relay_tick(relay),
            Ev::RelayConnect {
                node,
                relay,
                incarnation,
            } => {
                if self.nodes[node as usize].incarnation == incarnation {
                    self.relay_connect(node, relay);
                }
            }
            Ev::RelayDisconnect { relay, conn } => self.relay_disconnect(relay, conn),
            Ev::RelayAlive { relay, conn } => {
                if self.relay_conns.contains_key(&conn) {
                    self.relay_input(relay, RelayInput::Alive { conn });
                }
            }
        }
    }

    /// No delivery in progress, nothing queued at relays, every node up,
    /// no partition: what was sent has arrived or been given up.
    fn is_quiet(&self) -> bool {
        self.deliveries.is_empty()
            && self.pushes == 0
            && self.down == 0
            && self.partitions.is_empty()
            && self
                .relays
                .iter()
                .all(|r| r.machine.as_ref().is_some_and(|m| m.queued() == 0))
    }

    // ----- machines ------------------------------------------------------------

    /// Runs one input through node `i`'s machine and commits its writes.
    fn handle(&mut self, i: u32, input: Input) -> Output {
        let node = &mut self.nodes[i as usize];
        let local = node.clock(self.now);
        let machine = node.machine.as_mut().expect("handle on a running node");
        let out = machine.handle(local, input, &node.key, &mut self.rng);
        self.flips.clear();
        node.store.apply(&out.writes, &mut self.flips);
        out
    }

    /// Acts on an output: deliveries, operator reactions, bookkeeping, checks.
    fn process(&mut self, i: u32, out: Output) {
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

    fn schedule_tick(&mut self, i: u32) {
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

    fn on_tick(&mut self, i: u32) {
        let node = &self.nodes[i as usize];
        if node.tick_at != Some(self.now) || !node.up() {
            return;
        }
        self.nodes[i as usize].tick_at = None;
        let out = self.handle(i, Input::Tick);
        self.process(i, out);
    }

    /// Runs an operator command on node `i` about `peer`; returns the reply.
    fn command(&mut self, i: u32, peer: u32, cmd: Command, name: &'static str) -> Reply {
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

    // ----- workload ------------------------------------------------------------

    fn on_workload(&mut self) {
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

    fn operator_sees_request(&mut self, i: u32, peer: u32) {
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

    fn on_decide(&mut self, i: u32, peer: u32) {
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
    fn approval_expired(&mut self, i: u32, peer: u32) {
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

    fn on_renew(&mut self, i: u32, peer: u32) {
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
    fn on_withdraw(&mut self, i: u32, peer: u32) {
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

    fn maybe_schedule_revoke(&mut self, x: u32, y: u32) {
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

    fn on_revoke(&mut self, i: u32, peer: u32) {
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

    fn on_end_workload(&mut self) {
        self.workload_on = false;
        // Partitions heal; crashed nodes come back on their own schedule.
        let active: Vec<u32> = self.partitions.keys().copied().collect();
        for index in active {
            self.on_partition_end(index);
        }
    }

    // ----- delivery ------------------------------------------------------------

    fn new_delivery(&mut self, from: u32, env: Envelope) {
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

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partitions.values().any(|side| side[a] != side[b])
    }

    fn relay_slot(&self, r: u32) -> usize {
        self.nodes.len() + r as usize
    }

    fn conn_open(&self, a: u32, b: u32) -> bool {
        self.conns[a as usize].contains(&b)
    }

    fn open_conn(&mut self, a: u32, b: u32) {
        self.conns[a as usize].insert(b);
        self.conns[b as usize].insert(a);
    }

    fn close_conn(&mut self, a: u32, b: u32) {
        self.conns[a as usize].remove(&b);
        self.conns[b as usize].remove(&a);
    }

    fn start_attempt(&mut self, id: u64) {
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
    fn fail_by_timeout(&mut self, id: u64, attempt: u32, why: &'static str) {
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

    fn on_arrive(&mut self, id: u64, attempt: u32) {
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
    fn deliver_to_node(
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
    fn answer_ends(&mut self, id: u64, attempt: u32) -> Option<(u32, u32)> {
        let d = self.deliveries.get(&id).filter(|d| d.attempt == attempt)?;
        let (from, to) = (d.from, d.to);
        let sender = &self.nodes[from as usize];
        if sender.incarnation != d.incarnation || !sender.up() {
            self.deliveries.remove(&id);
            return None;
        }
        Some((from, to))
    }

    fn on_ack_back(&mut self, id: u64, attempt: u32) {
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

    fn on_fail(&mut self, id: u64, attempt: u32, why: &'static str) {
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

    // ----- relays ----------------------------------------------------------------

    fn relay_up(&self, r: u32) -> bool {
        self.relays[r as usize].machine.is_some()
    }

    /// Node `i` opens a connection to relay `r` (registering with it).
    fn relay_connect(&mut self, i: u32, r: u32) -> Option<u64> {
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

    fn relay_disconnect(&mut self, r: u32, conn: u64) {
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
    fn drop_relay_conn(&mut self, i: u32, r: u32) {
        if let Some(conn) = self.client_conn.remove(&(i, r)) {
            self.at(
                self.now + IDLE_TIMEOUT_MS,
                Ev::RelayDisconnect { relay: r, conn },
            );
        }
    }

    fn relay_input(&mut self, r: u32, input: RelayInput) -> Vec<RelayOutput> {
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

    fn on_relay_tick(&mut self, r: u32) {
        if self.relays[r as usize].tick_at != Some(self.now) {
            return;
        }
        self.relays[r as usize].tick_at = None;
        self.relay_input(r, RelayInput::Tick);
    }

    fn send_via_relay(&mut self, id: u64, from: u32, r: u32, attempt: u32) {
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

    fn on_relay_arrive(&mut self, id: u64, attempt: u32) {
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

    fn on_relay_answer(&mut self, id: u64, attempt: u32) {
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

    fn on_push(&mut self, r: u32, conn: u64, env: Envelope) {
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

    // ----- faults ------------------------------------------------------------------

    fn on_crash(&mut self, i: u32) {
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

    fn on_restart(&mut self, i: u32) {
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

    fn on_partition_start(&mut self, index: u32) {
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

    fn on_partition_end(&mut self, index: u32) {
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

    fn capture(&mut self, env: Envelope) {
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

    fn on_inject(&mut self) {
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

    // ----- checks ------------------------------------------------------------------

    fn replay_snapshot(&self, to: u32, from: &NodeId) -> ReplaySnapshot {
        let m = self.nodes[to as usize].machine.as_ref().expect("up");
        ReplaySnapshot {
            record: m.peer(from).cloned(),
            nonces: m.nonce_cache_len(),
        }
    }

    fn check_replay(
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

    fn check_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for (a, b) in dirty {
            self.check_pair(a, b);
            if self.violation.is_some() {
                return;
            }
        }
    }

    fn final_checks(&mut self) {
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

    fn violate(&mut self, invariant: &'static str, detail: String, involved: &[u32]) {
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

    // ----- metrics and report ---------------------------------------------------------

    fn on_sample(&mut self) {
        let q: u64 = self
            .relays
            .iter()
            .map(|r| r.machine.as_ref().map_or(0, |m| m.queued() as u64))
            .sum();
        self.series.t_ms.push(self.t());
        self.series.trusted_pairs.push(self.mutual);
        self.series
            .pending_requests
            .push(self.handshakes.len() as u64);
        self.series.relay_queue.push(q);
        self.series
            .deliveries_in_flight
            .push(self.deliveries.len() as u64);
        if !self.relays.is_empty() {
            self.queue_samples.push(q);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.t() / 1000);
        }
        if self.now < self.end {
            let every = self.sc.sample_every_ms();
            self.at(self.now + every, Ev::Sample);
        }
    }

    fn finish(mut self) -> Outcome {
        let sc = self.sc;
        let mut report = Report {
            report_version: crate::report::REPORT_VERSION,
            scenario: sc.name.clone(),
            mode: "sim".into(),
            seed: self.seed,
            events_processed: self.events,
            ..Report::default()
        };
        let mut policies = BTreeMap::new();
        for node in &self.nodes {
            let name = match node.policy_kind {
                PolicyKind::Manual => "manual",
                PolicyKind::Allowlist => "allowlist",
                PolicyKind::Auto => "auto",
            };
            *policies.entry(name.to_string()).or_default() += 1;
        }
        report.nodes = NodesReport {
            count: self.nodes.len(),
            private: self.nodes.iter().filter(|n| n.private).count(),
            relays: self.relays.len(),
            policies,
            skewed: self.nodes.iter().filter(|n| n.skew_ms != 0).count(),
        };
        report.time = TimeReport {
            run_ms: self.t(),
            workload_ms: sc.duration.ms(),
            drain_ms: sc.drain.ms(),
            quiet_at_end: self.is_quiet(),
        };
        self.hs.open_at_end = self.handshakes.len() as u64;
        report.handshakes = std::mem::take(&mut self.hs);
        report.latency_ms = LatencyReport {
            handshake: Percentiles::of(&mut self.latencies.clone()),
            handshake_policy: Percentiles::of(&mut self.latencies_policy),
            exchange: Percentiles::of(&mut self.exchange),
        };
        report.messages = std::mem::take(&mut self.msg);
        self.relay_rep.count = self.relays.len();
        self.relay_rep.queue_depth = Percentiles::of(&mut self.queue_samples);
        self.relay_rep.max_queue_by_relay = self.relays.iter().map(|r| r.max_queue).collect();
        report.relays = std::mem::take(&mut self.relay_rep);
        let mut states = BTreeMap::new();
        let mut records = 0;
        for node in &self.nodes {
            for r in node.store.peers.values() {
                records += 1;
                *states.entry(r.state.to_string()).or_default() += 1;
            }
        }
        report.trust = TrustReport {
            trusted_pairs: self.mutual,
            max_trusted_pairs: self.max_mutual,
            records,
            states,
        };
        report.faults = std::mem::take(&mut self.faults);
        for name in invariants::ALL {
            report.invariants.insert(
                name.to_string(),
                InvariantReport {
                    checks: self.counts.checks.get(name).copied().unwrap_or(0),
                    violated: self.violation.as_ref().is_some_and(|v| v.invariant == name),
                },
            );
        }
        report.series = std::mem::take(&mut self.series);
        report.outcome = if self.violation.is_some() {
            "violated"
        } else {
            "clean"
        }
        .into();
        report.violation = self.violation.as_ref().map(|v| ViolationReport {
            invariant: v.invariant.to_string(),
            at_ms: v.at_ms,
            detail: v.detail.clone(),
            trace: v.trace.clone(),
        });
        Outcome {
            report,
            violation: self.violation,
            latencies: self.latencies,
        }
    }
}

struct ReplaySnapshot {
    record: Option<kith_protocol::PeerRecord>,
    nonces: usize,
}

/// Which policy each node has and which nodes are private.
pub(crate) struct Fleet {
    /// The scenario's policies, then the default (manual) one.
    pub policies: Vec<Policy>,
    pub policy_of: Vec<usize>,
    pub private: Vec<bool>,
}

/// Draws the fleet's make-up from the run's RNG: policies by shuffling the
/// node indices and cutting them by fraction, then an independent random
/// subset of private nodes.
pub(crate) fn assign_fleet(sc: &Scenario, rng: &mut StdRng) -> Fleet {
    let n = sc.nodes.count;
    let mut policies = sc.policies.clone();
    policies.push(Policy {
        kind: PolicyKind::Manual,
        fraction: 0.0,
        delay: crate::dist::Dist::Lognormal {
            median: crate::dist::Millis(30_000),
            sigma: 1.0,
        },
        reject: 0.0,
        ignore: 0.0,
        allowed: 1.0,
    });
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(rng);
    let mut policy_of = vec![policies.len() - 1; n];
    let mut cursor = 0usize;
    for (pi, p) in sc.policies.iter().enumerate() {
        let take = ((p.fraction * n as f64).round() as usize).min(n - cursor);
        for &i in &order[cursor..cursor + take] {
            policy_of[i as usize] = pi;
        }
        cursor += take;
    }
    let private_count = (sc.nodes.private_fraction * n as f64).round() as usize;
    let mut private = vec![false; n];
    for i in rand::seq::index::sample(rng, n, private_count) {
        private[i] = true;
    }
    Fleet {
        policies,
        policy_of,
        private,
    }
}

/// The machine config every node starts from.
pub fn protocol_config(sc: &Scenario) -> Config {
    let p = &sc.protocol;
    let mut c = Config::default();
    if let Some(s) = p.skew_window {
        c.skew_ms = s.ms();
    }
    if let Some(v) = p.nonce_cache_capacity {
        c.nonce_cache_capacity = v;
    }
    if let Some(v) = p.max_pending_total {
        c.max_pending_total = v;
    }
    if let Some(v) = p.max_pending_per_source {
        c.max_pending_per_source = v;
    }
    c.fault_skip_replay_check = p.fault_skip_replay_check;
    c
}

pub(crate) fn relay_config(sc: &Scenario, nodes: usize) -> RelayConfig {
    let r = &sc.relay;
    let mut c = RelayConfig {
        // A relay for a fleet is sized for it.
        max_clients: (nodes + 16).max(RelayConfig::default().max_clients),
        ..RelayConfig::default()
    };
    if let Some(v) = r.queue_per_destination {
        c.queue_per_destination = v;
    }
    if let Some(v) = r.queue_total {
        c.queue_total = v;
    }
    if let Some(v) = r.queue_ttl {
        c.queue_ttl_ms = v.ms();
    }
    c
}
