//! Real mode: the scenario's fleet as real [`kith_node::Node`]s — QUIC
//! endpoints on 127.0.0.1, each with its own in-memory store —
//! in one process and one Tokio runtime, on the wall clock.
//!
//! The workload is the scenario's (same pattern, rate, policies, operator
//! delays, revocations; `real.speed` plays it faster), mapped onto
//! `Node::request` and `Node::command`; every node's event stream is watched
//! to time handshakes (request command to the requester's `AcceptedByPeer`
//! or `MutualTrust`) and to check the consent invariant as trust appears. When
//! the workload stops and the fleet is quiet, agreement and declines are
//! checked by reading both ends of every pair. The report has the same shape
//! as a simulated run's, with `mode = "real"`, so latencies can be compared.
//!
//! Relays are real [`RelayServer`]s in the same process; private nodes are
//! built with `.private(true)` and their home relay, so they accept no inbound
//! connection and are reached through the relay (or over connections they
//! opened), as in the simulation.
//!
//! What loopback cannot do is listed in the report's `not_applied`: network
//! latency, loss and partitions, clock skew, the adversary, the bad relay and
//! crashes.
//!
//! This module must never make trust decisions itself: it only issues the
//! operator commands the scenario calls for and observes what the nodes do.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kith_keys::{NodeId, NodeKey};
use kith_node::node::LinkState;
use kith_node::relay::{RelayOptions, RelayServer};
use kith_node::ticket::Ticket;
use kith_node::{Delivery, Node, NodeBuilder, StoreLocation};
use kith_protocol::wire::RelayRef;
use kith_protocol::{Command, Event, EventKind, TrustState};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::engine::{Fleet, assign_fleet, protocol_config};
use crate::invariants::{self, AGREEMENT, CONSENT, Counts, DECLINE_REACHES, Decision, Ledger};
use crate::report::{
    HandshakeReport, InvariantReport, LatencyReport, MessageReport, NodesReport, Percentiles,
    RelayReport, Report, Series, TimeReport, TrustReport, ViolationReport,
};
use crate::scenario::{Pattern, Policy, PolicyKind, Scenario};

/// Default cap on real-mode nodes when the scenario does not say.
pub const DEFAULT_REAL_NODES: usize = 200;
/// How long the fleet may take to go quiet after the workload.
const DRAIN_CAP: Duration = Duration::from_secs(60);
/// Quiet means no event for this long and nothing in progress.
const QUIET_FOR: Duration = Duration::from_millis(1500);

pub struct RealOutcome {
    pub report: Report,
    pub latencies: Vec<u64>,
    /// The invariant violation, formatted, if any.
    pub violation: Option<String>,
}

/// Runs `scenario` with real nodes; blocks until done.
pub fn run(scenario: &Scenario, seed: u64, progress: bool) -> anyhow::Result<RealOutcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(scenario, seed, progress))
}

/// The scenario as real mode runs it: at most `real.nodes` nodes (200 by
/// default), the workload scaled with them.
pub fn real_scenario(scenario: &Scenario) -> Scenario {
    let count = scenario
        .real
        .nodes
        .unwrap_or(scenario.nodes.count.min(DEFAULT_REAL_NODES))
        .max(2);
    if count == scenario.nodes.count {
        scenario.clone()
    } else {
        scenario.clone().with_nodes(count)
    }
}

enum Msg {
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

struct Driver {
    sc: Scenario,
    seed: u64,
    rng: StdRng,
    nodes: Vec<Arc<Node>>,
    ids: Vec<NodeId>,
    tickets: Vec<Ticket>,
    private: Vec<bool>,
    relays: Vec<RelayServer>,
    index: HashMap<NodeId, u32>,
    policies: Vec<Policy>,
    policy_of: Vec<usize>,
    tx: mpsc::UnboundedSender<Msg>,
    started: Instant,
    closing: bool,
    /// Requests and commands on their way (not timers).
    in_progress: usize,
    /// Operator decisions and revocations waiting for their time.
    timers: usize,
    last_activity: Instant,
    mesh: Vec<(u32, u32)>,
    asked: HashSet<(u32, u32)>,
    handshakes: HashMap<(u32, u32), (Instant, bool)>,
    trusted: HashSet<(u32, u32)>,
    mutual: u64,
    max_mutual: u64,
    ledger: Ledger,
    counts: Counts,
    touched: BTreeSet<(u32, u32)>,
    /// (invariant, wall ms since start, detail)
    violation: Option<(&'static str, u64, String)>,
    latencies: Vec<u64>,
    latencies_policy: Vec<u64>,
    exchange: Vec<u64>,
    hs: HandshakeReport,
    msg: MessageReport,
    series: Series,
    queue_samples: Vec<u64>,
    max_queue: Vec<u64>,
    lagged: u64,
    /// Messages handled (the nodes' trust events, decisions, revocations, results).
    events: u64,
}

async fn run_async(scenario: &Scenario, seed: u64, progress: bool) -> anyhow::Result<RealOutcome> {
    let sc = real_scenario(scenario);
    let n = sc.nodes.count;
    let mut rng = StdRng::seed_from_u64(seed);
    let Fleet {
        policies,
        policy_of,
        private,
    } = assign_fleet(&sc, &mut rng);
    let mut base = protocol_config(&sc);
    // Every node speaks from 127.0.0.1: the per-source bound on pending
    // requests would otherwise count the whole fleet as one source.
    base.max_pending_per_source = base.max_pending_per_source.max(n + 1);
    base.max_pending_total = base.max_pending_total.max(n + 1);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut relays = Vec::new();
    let mut homes = Vec::new();
    for r in 0..sc.nodes.relays {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill(&mut secret[..]);
        let relay = RelayServer::spawn(
            NodeKey::from_secret(&secret),
            RelayOptions {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                advertise: Vec::new(),
                config: crate::engine::relay_config(&sc, n),
                // Every simulated node dials from loopback.
                max_per_address: usize::MAX,
            },
        )
        .await
        .with_context(|| format!("starting relay {r}"))?;
        homes.push(RelayRef {
            node_id: relay.node_id(),
            addrs: vec![relay.local_addr()],
        });
        relays.push(relay);
    }
    let mut nodes = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut index = HashMap::new();
    for (i, &policy) in policy_of.iter().enumerate() {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill(&mut secret[..]);
        let key = NodeKey::from_secret(&secret);
        let mut config = base.clone();
        config.auto_approve = policies[policy].kind == PolicyKind::Auto;
        let mut builder = NodeBuilder::new(key)
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .store(StoreLocation::InMemory)
            .config(config);
        if private[i] && !homes.is_empty() {
            builder = builder.relay(homes[i % homes.len()].clone()).private(true);
        }
        let node = builder
            .spawn()
            .await
            .with_context(|| format!("starting node {i} of {n}"))?;
        ids.push(node.node_id());
        index.insert(node.node_id(), i as u32);
        let mut events = node.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if tx.send(Msg::Event(i as u32, e, Instant::now())).is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                        let _ = tx.send(Msg::Lagged(k));
                    }
                    Err(_) => return,
                }
            }
        });
        nodes.push(Arc::new(node));
    }
    // Private nodes register with their relay before anyone asks for them.
    let registered_by = Instant::now() + Duration::from_secs(20);
    while Instant::now() < registered_by {
        let waiting = nodes
            .iter()
            .filter(|n| {
                n.relay_status()
                    .is_some_and(|s| s.state != LinkState::Registered)
            })
            .count();
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tickets: Vec<Ticket> = nodes.iter().map(|n| n.ticket()).collect();
    let private: Vec<bool> = nodes.iter().map(|n| n.is_private()).collect();

    let mut d = Driver {
        sc: sc.clone(),
        seed,
        rng,
        nodes,
        ids,
        tickets,
        private,
        relays,
        index,
        policies,
        policy_of,
        tx,
        started: Instant::now(),
        closing: false,
        in_progress: 0,
        timers: 0,
        last_activity: Instant::now(),
        mesh: Vec::new(),
        asked: HashSet::new(),
        handshakes: HashMap::new(),
        trusted: HashSet::new(),
        mutual: 0,
        max_mutual: 0,
        ledger: Ledger::default(),
        counts: Counts::default(),
        touched: BTreeSet::new(),
        violation: None,
        latencies: Vec::new(),
        latencies_policy: Vec::new(),
        exchange: Vec::new(),
        hs: HandshakeReport::default(),
        msg: MessageReport::default(),
        series: Series::default(),
        queue_samples: Vec::new(),
        max_queue: vec![0; sc.nodes.relays],
        lagged: 0,
        events: 0,
    };
    if sc.workload.pattern == Pattern::Mesh {
        for a in 0..n as u32 {
            for b in (a + 1)..n as u32 {
                let p = if d.rng.r#gen::<bool>() {
                    (a, b)
                } else {
                    (b, a)
                };
                d.mesh.push(p);
            }
        }
        d.mesh.shuffle(&mut d.rng);
    }

    let speed = sc.real.speed;
    let workload = Duration::from_secs_f64(sc.duration.ms() as f64 / 1000.0 / speed)
        .min(Duration::from_millis(sc.real.max_wall.ms()));
    let sample_every = Duration::from_secs_f64(sc.sample_every_ms() as f64 / 1000.0 / speed)
        .max(Duration::from_millis(250));
    let bar = if progress {
        let bar = ProgressBar::new(workload.as_secs().max(1));
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} s (real mode)")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(sc.name.clone());
        bar
    } else {
        ProgressBar::hidden()
    };

    d.started = Instant::now();
    let mut next_request = d.started + d.interarrival(speed);
    let mut next_sample = d.started;
    let workload_end = d.started + workload;
    let mut requests_left = sc.workload.requests.unwrap_or(u64::MAX);
    loop {
        let now = Instant::now();
        if now >= next_sample {
            d.sample();
            bar.set_position(d.started.elapsed().as_secs());
            next_sample += sample_every;
        }
        if !d.closing && now >= workload_end {
            d.closing = true;
        }
        if !d.closing && now >= next_request {
            if requests_left > 0 && d.issue_request() {
                requests_left -= 1;
            }
            next_request += d.interarrival(speed);
            if requests_left == 0 || (sc.workload.pattern == Pattern::Mesh && d.mesh.is_empty()) {
                d.closing = true;
            }
        }
        if d.closing {
            let quiet = d.in_progress == 0 && d.last_activity.elapsed() >= QUIET_FOR;
            if quiet || now >= workload_end.max(d.started) + DRAIN_CAP || d.violation.is_some() {
                break;
            }
        }
        let wake = if d.closing {
            now + Duration::from_millis(100)
        } else {
            next_request.min(next_sample)
        };
        tokio::select! {
            msg = rx.recv() => {
                if let Some(msg) = msg {
                    d.on_msg(msg);
                    while let Ok(msg) = rx.try_recv() {
                        d.on_msg(msg);
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    bar.finish_and_clear();
    let quiet = d.in_progress == 0;
    let run_ms = d.started.elapsed().as_millis() as u64;
    d.sample();

    // Final checks: both ends of every pair that saw any traffic.
    if d.violation.is_none() && quiet {
        let pairs: Vec<(u32, u32)> = d.touched.iter().copied().collect();
        for (a, b) in pairs {
            let (na, nb) = (d.nodes[a as usize].clone(), d.nodes[b as usize].clone());
            let (ia, ib) = (d.ids[a as usize], d.ids[b as usize]);
            let tx = d.tx.clone();
            tokio::spawn(async move {
                let ra = na
                    .read(move |m, now| m.peer(&ib).map(|r| (r.state, m.is_trusted(&ib, now))))
                    .await
                    .ok()
                    .flatten();
                let rb = nb
                    .read(move |m, now| m.peer(&ia).map(|r| (r.state, m.is_trusted(&ia, now))))
                    .await
                    .ok()
                    .flatten();
                let _ = tx.send(Msg::Checked {
                    pair: (a, b),
                    a: ra,
                    b: rb,
                });
            });
        }
        let mut left = d.touched.len();
        while left > 0 {
            match rx.recv().await {
                Some(Msg::Checked { pair, a, b }) => {
                    left -= 1;
                    d.check_pair(pair, a, b);
                }
                Some(other) => d.on_msg(other),
                None => break,
            }
        }
    }

    let report = d.report(run_ms, workload.as_millis() as u64, quiet);
    let latencies = std::mem::take(&mut d.latencies);
    let violation = d.violation.take().map(|(invariant, at_ms, detail)| {
        format!(
            "INVARIANT VIOLATED: {invariant} ({})\n  seed: {seed}\n  real mode, wall time: {at_ms} ms\n  {detail}",
            invariants::describe(invariant)
        )
    });
    // Stop every node; a task still holding one only delays its drop.
    let nodes = std::mem::take(&mut d.nodes);
    let relays = std::mem::take(&mut d.relays);
    drop(d);
    let mut stops = Vec::new();
    for node in nodes {
        // `shutdown` takes `&self`: a task still holding a clone cannot keep a node up.
        stops.push(tokio::spawn(async move { node.shutdown().await }));
    }
    for s in stops {
        let _ = s.await;
    }
    for r in relays {
        r.shutdown().await;
    }
    Ok(RealOutcome {
        report,
        latencies,
        violation,
    })
}

impl Driver {
    fn interarrival(&mut self, speed: f64) -> Duration {
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
    fn issue_request(&mut self) -> bool {
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

    fn on_msg(&mut self, msg: Msg) {
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

    fn check_pair(
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

    fn relay_queue(&self) -> u64 {
        self.relays.iter().map(|r| r.snapshot().queued as u64).sum()
    }

    fn relay_report(&mut self) -> RelayReport {
        let mut rep = RelayReport {
            count: self.relays.len(),
            queue_depth: Percentiles::of(&mut self.queue_samples.clone()),
            ..RelayReport::default()
        };
        for r in &self.relays {
            let s = r.snapshot();
            rep.forwarded += s.stats.forwarded;
            rep.pushed += s.stats.delivered + s.stats.delivered_from_queue;
            rep.queued += s.stats.queued;
            rep.expired += s.stats.expired;
            rep.unknown_destination += s.stats.unknown_destination;
            rep.refused += s.stats.refused;
            rep.conflicts += s.stats.conflicts;
            rep.registrations += s.registered as u64;
        }
        rep.max_queue_by_relay = self.max_queue.clone();
        rep
    }

    fn sample(&mut self) {
        self.series
            .t_ms
            .push(self.started.elapsed().as_millis() as u64);
        self.series.trusted_pairs.push(self.mutual);
        self.series
            .pending_requests
            .push(self.handshakes.len() as u64);
        let q = self.relay_queue();
        self.series.relay_queue.push(q);
        if !self.relays.is_empty() {
            self.queue_samples.push(q);
            for (k, r) in self.relays.iter().enumerate() {
                let depth = r.snapshot().queued as u64;
                self.max_queue[k] = self.max_queue[k].max(depth);
            }
        }
        self.series
            .deliveries_in_flight
            .push((self.in_progress + self.timers) as u64);
    }

    fn report(&mut self, run_ms: u64, workload_ms: u64, quiet: bool) -> Report {
        let sc = &self.sc;
        let mut policies = BTreeMap::new();
        for &p in &self.policy_of {
            let name = match self.policies[p].kind {
                PolicyKind::Manual => "manual",
                PolicyKind::Allowlist => "allowlist",
                PolicyKind::Auto => "auto",
            };
            *policies.entry(name.to_string()).or_default() += 1;
        }
        let mut not_applied = Vec::new();
        if sc.nodes.private_fraction > 0.0 && sc.nodes.relays == 0 {
            not_applied.push("private nodes without relays (they are public in real mode)".into());
        }
        if !sc.network.partitions.is_empty() || sc.network.loss > 0.0 {
            not_applied.push("network loss and partitions (loopback)".into());
        }
        not_applied.push("network latency distribution (loopback latency instead)".into());
        if sc.faults.crashes.is_some() {
            not_applied.push("crashes".into());
        }
        if sc.faults.clock_skew.is_some() {
            not_applied.push("clock skew".into());
        }
        if sc.faults.adversary.is_some() {
            not_applied.push("replaying adversary".into());
        }
        if sc.faults.bad_relay.is_some() {
            not_applied.push("bad relay".into());
        }
        if self.lagged > 0 {
            not_applied.push(format!(
                "{} events were missed by the observer (lagging subscriber)",
                self.lagged
            ));
        }
        let mut hs = std::mem::take(&mut self.hs);
        hs.open_at_end = self.handshakes.len() as u64;
        let mut invariants_map = BTreeMap::new();
        for name in invariants::ALL {
            invariants_map.insert(
                name.to_string(),
                InvariantReport {
                    checks: self.counts.checks.get(name).copied().unwrap_or(0),
                    violated: self.violation.as_ref().is_some_and(|v| v.0 == name),
                },
            );
        }
        Report {
            report_version: crate::report::REPORT_VERSION,
            scenario: sc.name.clone(),
            mode: "real".into(),
            seed: self.seed,
            outcome: if self.violation.is_some() {
                "violated"
            } else {
                "clean"
            }
            .into(),
            violation: self
                .violation
                .as_ref()
                .map(|(invariant, at_ms, detail)| ViolationReport {
                    invariant: invariant.to_string(),
                    at_ms: *at_ms,
                    detail: detail.clone(),
                    trace: Vec::new(),
                }),
            nodes: NodesReport {
                count: self.nodes.len(),
                private: self.private.iter().filter(|p| **p).count(),
                relays: self.relays.len(),
                policies,
                skewed: 0,
            },
            time: TimeReport {
                run_ms,
                workload_ms,
                drain_ms: run_ms.saturating_sub(workload_ms),
                quiet_at_end: quiet,
            },
            handshakes: hs,
            latency_ms: LatencyReport {
                handshake: Percentiles::of(&mut self.latencies.clone()),
                handshake_policy: Percentiles::of(&mut self.latencies_policy),
                exchange: Percentiles::of(&mut self.exchange),
            },
            messages: std::mem::take(&mut self.msg),
            relays: self.relay_report(),
            trust: TrustReport {
                trusted_pairs: self.mutual,
                max_trusted_pairs: self.max_mutual,
                records: 0,
                states: BTreeMap::new(),
            },
            faults: Default::default(),
            invariants: invariants_map,
            series: std::mem::take(&mut self.series),
            events_processed: self.events,
            not_applied,
        }
    }
}
