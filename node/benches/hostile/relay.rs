//! Hostile-load bench for the relay: registrations of honest nodes while one attacker
//! host holds every connection the relay allows it, against the same registrations
//! on a quiet relay.
//!
//! The relay runs in process (`RelayServer`, default configuration and per-address
//! cap) on its own runtime. A registration is what a node does when it comes up: a
//! fresh identity dials the relay (relay ALPN, full TLS 1.3 handshake) and sends
//! `Register`; it counts as a success when `Registered` comes back within 10 s, and
//! its latency is dial plus answer. Registrations run one after another from
//! 127.0.0.1. The attacker, from 127.0.0.2 (another host as far as the relay can
//! tell), opens connections with fresh identities until the relay refuses more,
//! holds them, forwards envelopes over each as fast as the relay answers, and keeps
//! trying to open more during the whole hostile run.
//!
//! Prints one table and a PASS/FAIL line per goal: 100% of registrations succeed in
//! both runs, the hostile p99 is within 2× the quiet p99, and the attacker holds no
//! more than the per-address cap. Memory is the bench process's (relay and clients
//! together): resident now and at peak. Runs in well under two minutes
//! (`cargo bench -p kith-node --bench hostile -- relay`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use comfy_table::{Cell, ContentArrangement, Table, presets};
use kith_keys::{NodeId, NodeKey};
use kith_node::node::now_ms;
use kith_node::relay::MAX_PER_ADDRESS;
use kith_node::transport::tls;
use kith_protocol::wire::{Kind, Message, Reach, RelayNotice};
use tokio::runtime::Runtime;

use crate::common::{
    Verdicts, counted_nonce, default_relay, exchange, loopback, ms, peak_rss_mib, percentile,
    right, rss_mib, runtime, signed,
};

/// Registrations per run.
const REGISTRATIONS: usize = 2000;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Goal: hostile p99 within this factor of the quiet p99.
const TARGET_RATIO: f64 = 2.0;

/// One registration of a fresh identity: its latency, or why it failed.
async fn register(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    relay_id: NodeId,
) -> Result<Duration, String> {
    let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
    let started = Instant::now();
    let attempt = async {
        let conn = tls::dial_relay(endpoint, &identity, relay, relay_id)
            .await
            .map_err(|e| format!("dial: {e}"))?;
        let answer = exchange(&conn, &Message::Register { dial_back: false }).await;
        conn.close(0u32.into(), b"done");
        match answer? {
            Message::RelayNotice(RelayNotice::Registered { .. }) => Ok(started.elapsed()),
            other => Err(format!("answered {other:?}")),
        }
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

struct Run {
    name: &'static str,
    ok: Vec<Duration>,
    failed: usize,
    first_failure: Option<String>,
    attacker_held: usize,
    attacker_refused: u64,
    attacker_forwards: u64,
}

fn registrations(clients: &Runtime, relay: SocketAddr, relay_id: NodeId) -> Run {
    clients.block_on(async {
        let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
        let endpoint = tls::make_endpoint(&identity, loopback()).unwrap();
        let mut run = Run {
            name: "",
            ok: Vec::new(),
            failed: 0,
            first_failure: None,
            attacker_held: 0,
            attacker_refused: 0,
            attacker_forwards: 0,
        };
        for _ in 0..REGISTRATIONS {
            match register(&endpoint, relay, relay_id).await {
                Ok(d) => run.ok.push(d),
                Err(e) => {
                    run.failed += 1;
                    run.first_failure.get_or_insert(e);
                }
            }
        }
        endpoint.close(0u32.into(), b"done");
        run
    })
}

/// The attacker's counters, read after the hostile run.
#[derive(Default)]
struct Attack {
    stop: AtomicBool,
    held: AtomicU64,
    refused: AtomicU64,
    forwards: AtomicU64,
}

/// Forwards requests to made-up destinations over `conn` until told to stop.
async fn forward_flood(conn: quinn::Connection, key: NodeKey, attack: Arc<Attack>) {
    let mut n = 0u64;
    while !attack.stop.load(Ordering::Relaxed) {
        n += 1;
        let kind = Kind::Request {
            justification: "let me in".into(),
        };
        let to = NodeKey::generate().node_id();
        let envelope = signed(&key, to, kind, counted_nonce(n, 0), now_ms());
        let forward = Message::Forward {
            envelope,
            reach: Reach::default(),
        };
        if exchange(&conn, &forward).await.is_err() {
            return;
        }
        attack.forwards.fetch_add(1, Ordering::Relaxed);
    }
}

/// One host (127.0.0.2): takes every connection it can, floods over them, keeps trying
/// for more until stopped.
async fn attacker(relay: SocketAddr, relay_id: NodeId, attack: Arc<Attack>) {
    let bind = tls::Identity::new(&NodeKey::generate()).unwrap();
    let endpoint = tls::make_endpoint(&bind, "127.0.0.2:0".parse().unwrap()).unwrap();
    let mut held = Vec::new();
    while !attack.stop.load(Ordering::Relaxed) {
        let key = NodeKey::generate();
        let identity = tls::Identity::new(&key).unwrap();
        let dial = tls::dial_relay(&endpoint, &identity, relay, relay_id);
        match tokio::time::timeout(TIMEOUT, dial).await {
            Ok(Ok(conn)) => {
                attack.held.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward_flood(conn.clone(), key, attack.clone()));
                held.push(conn);
            }
            _ => {
                attack.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        held.retain(|c| c.close_reason().is_none());
        attack.held.store(held.len() as u64, Ordering::Relaxed);
    }
    endpoint.close(0u32.into(), b"done");
}

/// Registrations quiet and under attack; whether every goal was met.
pub fn run() -> bool {
    let relay_rt = runtime("bench-relay", 1);
    let clients = runtime("bench-client", 1);
    let attacker_rt = runtime("bench-attacker", 1);
    let relay = default_relay(&relay_rt);
    let (addr, id) = (relay.local_addr(), relay.node_id());
    let rss_idle = rss_mib();

    // Warm up (code paths, allocator), then the quiet run.
    let _ = registrations(&clients, addr, id);
    let mut quiet = registrations(&clients, addr, id);
    quiet.name = "quiet";

    let attack = Arc::new(Attack::default());
    attacker_rt.spawn(attacker(addr, id, attack.clone()));
    // Let the attacker take all it can before measuring.
    let deadline = Instant::now() + Duration::from_secs(20);
    while attack.refused.load(Ordering::Relaxed) < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut hostile = registrations(&clients, addr, id);
    hostile.name = "one attacker host at its cap";
    hostile.attacker_held = attack.held.load(Ordering::Relaxed) as usize;
    hostile.attacker_refused = attack.refused.load(Ordering::Relaxed);
    hostile.attacker_forwards = attack.forwards.load(Ordering::Relaxed);
    let (rss_now, rss_peak) = (rss_mib(), peak_rss_mib());
    let snapshot = relay.snapshot();
    attack.stop.store(true, Ordering::Relaxed);

    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(160)
        .set_header(vec![
            "relay registrations",
            "ok",
            "failed",
            "p50",
            "p99",
            "attacker connections held",
            "attacker connects refused",
            "attacker forwards answered",
        ]);
    for run in [&quiet, &hostile] {
        table.add_row(vec![
            Cell::new(run.name),
            right(run.ok.len()),
            right(run.failed),
            right(ms(percentile(&run.ok, 50.0))),
            right(ms(percentile(&run.ok, 99.0))),
            right(run.attacker_held),
            right(run.attacker_refused),
            right(run.attacker_forwards),
        ]);
    }
    println!("{table}");
    println!(
        "relay during the attack: {} clients, {} registered, {} forwarded, {} refused",
        snapshot.clients, snapshot.registered, snapshot.stats.forwarded, snapshot.stats.refused
    );
    println!(
        "memory (bench process: relay and clients): {rss_idle:.1} MiB idle, \
         {rss_now:.1} MiB under attack, {rss_peak:.1} MiB peak"
    );
    for run in [&quiet, &hostile] {
        if let Some(e) = &run.first_failure {
            println!("first failure ({}): {e}", run.name);
        }
    }

    let all_ok = quiet.failed == 0 && hostile.failed == 0;
    let (q99, h99) = (
        percentile(&quiet.ok, 99.0).as_secs_f64(),
        percentile(&hostile.ok, 99.0).as_secs_f64(),
    );
    let ratio = h99 / q99;
    let capped = hostile.attacker_held <= MAX_PER_ADDRESS;
    let mut verdicts = Verdicts::new();
    verdicts.check(
        "every registration succeeds, quiet and under attack",
        all_ok,
    );
    verdicts.check(
        format!("hostile p99 {ratio:.2}× the quiet p99 (goal ≤ {TARGET_RATIO}×)"),
        ratio <= TARGET_RATIO,
    );
    verdicts.check(
        format!(
            "the attacker holds {} connections (cap {MAX_PER_ADDRESS} per address)",
            hostile.attacker_held
        ),
        capped,
    );
    relay_rt.block_on(relay.shutdown());
    verdicts.all_pass()
}
