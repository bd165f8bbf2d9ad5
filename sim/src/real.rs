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

mod collect;
mod driver;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kith_keys::NodeKey;
use kith_node::node::LinkState;
use kith_node::relay::{RelayOptions, RelayServer};
use kith_node::ticket::Ticket;
use kith_node::{NodeBuilder, StoreLocation};
use kith_protocol::wire::RelayRef;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::engine::{Fleet, assign_fleet, protocol_config};
use crate::invariants::{self, Counts, Ledger};
use crate::report::{HandshakeReport, MessageReport, Report, Series};
use crate::scenario::{Pattern, PolicyKind, Scenario};

use driver::{Driver, Msg};

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
