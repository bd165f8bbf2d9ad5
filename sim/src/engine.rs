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
//!
//! This file holds the simulator, its construction and the main loop; the
//! rest is split by concern: `events`, `machines`, `workload`, `delivery`,
//! `relays`, `faults`, `checks`, `metrics` and `fleet`.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use indicatif::{ProgressBar, ProgressStyle};
use kith_keys::{NodeId, NodeKey};
use kith_protocol::{
    AckStatus, Envelope, ForwardResult, Relay, RelayConfig, RelayInput, TrustMachine,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use zeroize::Zeroizing;

use crate::invariants::{Counts, Ledger, Trace, TraceEvent, Violation, What};
use crate::node::{SimNode, Store, TrustFlip};
use crate::report::{FaultReport, HandshakeReport, MessageReport, RelayReport, Report, Series};
use crate::scenario::{Pattern, Policy, PolicyKind, Scenario};

mod checks;
mod delivery;
mod events;
mod faults;
mod fleet;
mod machines;
mod metrics;
mod relays;
mod workload;

use events::{Ev, Scheduled};
pub use fleet::protocol_config;
pub(crate) use fleet::{Fleet, assign_fleet, relay_config};

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
}
