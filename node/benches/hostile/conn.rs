//! An honest node's handshakes while one attacker host holds every inbound
//! connection it is allowed, against a real [`kith_node::Node`] with a file-backed
//! (fsynced) store, over loopback.
//!
//! One run (`cargo bench -p kith-node --bench hostile -- conn`, under a minute):
//!
//! 1. quiet: `HANDSHAKES` kith handshakes one at a time (a fresh identity dials
//!    from 127.0.0.1, sends a signed `Request`, waits for the `Pending` ack).
//! 2. hostile: the attacker host (127.0.0.2) keeps `ATTACK_IN_FLIGHT` dials going
//!    at all times, each from a fresh identity, and keeps every connection it gets
//!    open and busy (a stream every few seconds, so the node's idle reaping does not
//!    free them). Once it holds what it can, the same handshakes are measured again.
//!
//! It prints a table with the success rate and p50/p99 of both runs, how many
//! connections the attacker held and how many dials it had refused, and the
//! process's resident memory (node and clients share the process); then one
//! PASS/FAIL line per goal: every honest handshake succeeds under attack, and
//! its p99 stays within 2x the quiet run's. It asserts nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use comfy_table::{Cell, Table, presets};
use kith_keys::{NodeId, NodeKey};
use kith_node::node::{error_chain, now_ms};
use kith_node::transport::tls;
use kith_node::{NodeBuilder, StoreLocation};
use kith_protocol::machine::Config;
use kith_protocol::wire::{Ack, AckStatus, Envelope, Kind, Message};
use rand_core::{OsRng, RngCore};

use crate::common::{Verdicts, addr, exchange, ms, percentile, right, rss_mib, runtime, signed};

/// Honest handshakes per run.
const HANDSHAKES: usize = 400;
/// Untimed handshakes before the quiet run.
const WARMUP: usize = 30;
/// Dials the attacker keeps in flight.
const ATTACK_IN_FLIGHT: usize = 32;
/// How long the attacker gets to take what it can before the hostile run.
const ATTACK_SETTLE: Duration = Duration::from_secs(3);
/// How often the attacker uses each connection it holds.
const ATTACK_KEEP_BUSY: Duration = Duration::from_secs(4);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Goal: p99 under attack within this multiple of the quiet run's.
const TARGET_P99_RATIO: f64 = 2.0;

/// The pending-request bounds lifted: every honest client comes from 127.0.0.1
/// and every handshake must stay pending to be counted.
fn bench_config() -> Config {
    Config {
        max_pending_total: 1_000_000,
        max_pending_per_source: 1_000_000,
        ..Config::default()
    }
}

fn signed_request(key: &NodeKey, to: NodeId) -> Envelope {
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    let kind = Kind::Request {
        justification: "hostile bench".into(),
    };
    signed(key, to, kind, nonce, now_ms())
}

/// One honest handshake from a fresh identity: dial, request, `Pending` ack.
async fn handshake(client: &quinn::Endpoint, to: SocketAddr, to_id: NodeId) -> Result<(), String> {
    let key = NodeKey::generate();
    let identity = tls::Identity::new(&key).map_err(|e| e.to_string())?;
    let conn = tls::dial(client, &identity, to, to_id)
        .await
        .map_err(|e| format!("dial: {}", error_chain(&e)))?;
    let answer = exchange(&conn, &Message::Envelope(signed_request(&key, to_id))).await;
    conn.close(0u32.into(), b"bench");
    match answer? {
        Message::Ack(Ack {
            status: AckStatus::Pending,
        }) => Ok(()),
        other => Err(format!("answered {other:?}")),
    }
}

struct Run {
    samples: Vec<Duration>,
    failures: Vec<String>,
}

impl Run {
    fn success(&self) -> f64 {
        let total = self.samples.len() + self.failures.len();
        100.0 * self.samples.len() as f64 / total.max(1) as f64
    }

    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.samples, p)
    }
}

async fn honest_run(to: SocketAddr, to_id: NodeId, count: usize) -> Run {
    let client = tls::make_endpoint(
        &tls::Identity::new(&NodeKey::generate()).unwrap(),
        addr([127, 0, 0, 1]),
    )
    .unwrap();
    let mut run = Run {
        samples: Vec::new(),
        failures: Vec::new(),
    };
    for _ in 0..count {
        let started = Instant::now();
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&client, to, to_id)).await {
            Ok(Ok(())) => run.samples.push(started.elapsed()),
            Ok(Err(e)) => run.failures.push(e),
            Err(_) => run.failures.push("timed out".into()),
        }
    }
    run
}

#[derive(Default)]
struct Attack {
    held: AtomicUsize,
    most_held: AtomicUsize,
    refused: AtomicUsize,
    stop: AtomicBool,
}

/// One attacker dialler: dials from a fresh identity again and again; a connection
/// it gets is kept open and busy until the node closes it or the attack stops.
async fn attacker(attack: Arc<Attack>, client: quinn::Endpoint, to: SocketAddr, to_id: NodeId) {
    while !attack.stop.load(Ordering::Relaxed) {
        let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
        let dialled =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, tls::dial(&client, &identity, to, to_id)).await;
        let Ok(Ok(conn)) = dialled else {
            attack.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // A connection turned away after its handshake is closed at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if conn.close_reason().is_some() {
            attack.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let held = attack.held.fetch_add(1, Ordering::Relaxed) + 1;
        attack.most_held.fetch_max(held, Ordering::Relaxed);
        while !attack.stop.load(Ordering::Relaxed) && conn.close_reason().is_none() {
            let _ = exchange(&conn, &Message::Ping { id: 1 }).await;
            tokio::time::sleep(ATTACK_KEEP_BUSY).await;
        }
        attack.held.fetch_sub(1, Ordering::Relaxed);
        conn.close(0u32.into(), b"bench");
    }
}

/// Honest handshakes quiet and under attack; whether both goals were met.
pub fn run() -> bool {
    let node_rt = runtime("kith-node-rt", 2);
    let clients = runtime("bench-client", 1);
    let attack_rt = runtime("bench-attacker", 1);
    let dir = tempfile::tempdir().unwrap();
    let node = node_rt.block_on(async {
        NodeBuilder::new(NodeKey::generate())
            .listen(addr([127, 0, 0, 1]))
            .store(StoreLocation::File(dir.path().join("kith.redb")))
            .config(bench_config())
            .spawn()
            .await
            .expect("starting the node")
    });
    let (to, to_id) = (node.local_addr(), node.node_id());
    let rss_start = rss_mib();

    clients.block_on(honest_run(to, to_id, WARMUP));
    let quiet = clients.block_on(honest_run(to, to_id, HANDSHAKES));
    let rss_quiet = rss_mib();

    let attack = Arc::new(Attack::default());
    let attack_client = attack_rt.block_on(async {
        tls::make_endpoint(
            &tls::Identity::new(&NodeKey::generate()).unwrap(),
            addr([127, 0, 0, 2]),
        )
        .unwrap()
    });
    for _ in 0..ATTACK_IN_FLIGHT {
        attack_rt.spawn(attacker(attack.clone(), attack_client.clone(), to, to_id));
    }
    std::thread::sleep(ATTACK_SETTLE);
    let held_before = attack.held.load(Ordering::Relaxed);
    let hostile = clients.block_on(honest_run(to, to_id, HANDSHAKES));
    let held_after = attack.held.load(Ordering::Relaxed);
    let rss_hostile = rss_mib();
    attack.stop.store(true, Ordering::Relaxed);

    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY).set_header(vec![
        "run",
        "handshakes",
        "success",
        "p50",
        "p99",
        "attacker held",
        "process RSS",
    ]);
    t.add_row(vec![
        Cell::new("quiet"),
        right(HANDSHAKES),
        right(format!("{:.1}%", quiet.success())),
        right(ms(quiet.percentile(50.0))),
        right(ms(quiet.percentile(99.0))),
        right("-"),
        right(format!("{rss_quiet:.1} MiB")),
    ]);
    t.add_row(vec![
        Cell::new("one attacker host"),
        right(HANDSHAKES),
        right(format!("{:.1}%", hostile.success())),
        right(ms(hostile.percentile(50.0))),
        right(ms(hostile.percentile(99.0))),
        right(format!(
            "{held_before}..{held_after} (most {})",
            attack.most_held.load(Ordering::Relaxed)
        )),
        right(format!("{rss_hostile:.1} MiB")),
    ]);
    println!(
        "\nhonest handshakes while one host (127.0.0.2) holds all it may (RSS at start: {rss_start:.1} MiB)"
    );
    println!("{t}");
    println!(
        "attacker: {ATTACK_IN_FLIGHT} dials in flight from fresh identities, {} dials refused",
        attack.refused.load(Ordering::Relaxed)
    );
    for failure in hostile.failures.iter().chain(&quiet.failures).take(5) {
        println!("  failure: {failure}");
    }
    let ratio = hostile.percentile(99.0).as_secs_f64() / quiet.percentile(99.0).as_secs_f64();
    let mut verdicts = Verdicts::new();
    verdicts.check(
        format!(
            "success under attack: {:.1}% (goal 100%)",
            hostile.success()
        ),
        hostile.failures.is_empty(),
    );
    verdicts.check(
        format!("p99 under attack: {ratio:.2}x the quiet run's (goal <= {TARGET_P99_RATIO}x)"),
        ratio <= TARGET_P99_RATIO,
    );
    node_rt.block_on(node.shutdown());
    verdicts.all_pass()
}
