//! End-to-end cost of a kith handshake over loopback, against a real node with a
//! file-backed (fsynced) store, next to the cost of a bare QUIC/mutual-TLS connect.
//!
//! One run (`cargo bench -p kith-node --bench handshake`, under a minute) measures:
//!
//! 1. raw connect: `tls::dial` with a fresh client identity against a bare
//!    `tls::make_endpoint` server that only accepts connections, until the client
//!    has the connection; then close. p50/p99, one at a time.
//! 2. kith handshake: a fresh identity dials a real [`kith_node::Node`], sends a
//!    signed `Request` envelope on a bi stream and waits for the `Pending` ack (sent
//!    only after the node committed the pending record durably). p50/p99, one at a
//!    time. And the *floor*, measured the same way: the same client against the
//!    least server a durable handshake needs — it reads the request, checks its
//!    signature, writes it with one fdatasync on the serving thread and acks, with
//!    no trust machine and no database (and again without the fdatasync). Printed
//!    under the latency target with how far kith is above it.
//!
//!    These four are taken in turns, in `LATENCY_ROUNDS` rounds, so that the host's
//!    drift over the seconds they take falls on all of them alike. For comparison,
//!    each on its own: raw connects timed until the server has the connection too
//!    (its half of mutual TLS ends later), kith handshakes against a node with an
//!    in-memory store, one durable store commit, one small write + fdatasync.
//! 3. sustained: C concurrent client tasks, each looping fresh identity → dial →
//!    request → `Pending` ack, for a fixed number of handshakes; handshakes per
//!    second, then the store file is reopened after shutdown and must hold one
//!    pending record per handshake. The same loop of raw connects gives the
//!    ceiling the transport alone allows on this machine.
//!
//! The node runs on its own Tokio runtime (built as `kith run` builds it) and the
//! clients on another, so the CPU time of each side can be told apart: on Linux the
//! bench reads every thread's run time from /proc and prints CPU per handshake for
//! the clients and the node (its workers also run the trust machine and commit the store),
//! how busy the whole machine was (other processes included), and how many UDP
//! datagrams the kernel dropped for lack of socket buffer. Both sides share the
//! machine's cores; a node serving remote clients would have them all.
//!
//! 4. relayed handshake: a private node (file store, `--private`: its endpoint
//!    refuses every inbound connection) registered at an in-process relay
//!    (`kith_node::relay::RelayServer`); a fresh identity dials the *relay*, sends
//!    the signed `Request` in a `Forward` and waits for the relay's `Forwarded`
//!    answer carrying the private node's own `Pending` ack (sent after its durable
//!    commit). p50/p99, one at a time, against the direct handshake p50 of the same run.
//! 5. relay forwarding rate: S sender connections with K streams in flight each,
//!    forwarding envelopes through one relay to D sink connections that answer every
//!    push with an ack at once (the sinks stand in for nodes: what is measured is the
//!    relay). Envelopes are signed once per sender, before timing; the relay neither
//!    verifies nor dedupes pushes, so reusing one is the same work for it. Envelopes
//!    per second, and the p50/p99 of one forward (sender → relay → sink → back).
//!
//! It prints tables and a PASS/FAIL line per target and asserts nothing about the
//! figures (a handshake that fails is counted and shown, not a panic).
//!
//! Layout: this file holds the settings, the tables and `main`; `handshake/client.rs`
//! the client identities and one handshake of each kind; `handshake/measure.rs` runs,
//! counters, percentiles and the storage floors; `handshake/servers.rs` the bare and
//! least servers, the node and relay under test, forwarding and raw-until-served runs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets};
use kith_keys::{NodeId, NodeKey};
use kith_node::StoreLocation;
use kith_protocol::relay::RelayConfig;

#[path = "handshake/client.rs"]
mod client;
#[path = "handshake/measure.rs"]
mod measure;
#[path = "handshake/servers.rs"]
mod servers;

use client::Op;
use measure::{Run, drive, fsync_floor, in_turns, percentile, store_commits};
use servers::{
    NodeUnderTest, bare_server, bench_config, forwarding_run, kith_run, least_server,
    raw_until_served, relayed_run, start_relay,
};

/// Untimed iterations before each one-at-a-time measurement.
const WARMUP: usize = 50;
/// Timed iterations of each one-at-a-time measurement.
const LATENCY_ITERATIONS: usize = 1000;
/// Rounds the one-at-a-time runs that are compared are taken in (see [`in_turns`]).
const LATENCY_ROUNDS: usize = 10;
/// Concurrent client tasks tried for the sustained rate.
const CONCURRENCY: [usize; 4] = [8, 16, 32, 64];
/// The concurrency this bench treats as its default operating point.
const DEFAULT_CONCURRENCY: usize = 16;
/// Handshakes per sustained run (each run gets a fresh node and store).
const SUSTAINED_HANDSHAKES: usize = 10_000;
/// Give up on one handshake after this long (counted as a failure).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Targets, reported as PASS/FAIL.
const TARGET_LATENCY_RATIO: f64 = 2.0;
const TARGET_RATE: f64 = 2_000.0;
/// Relayed handshake p50 against the direct handshake p50 of the same run.
const TARGET_RELAYED_RATIO: f64 = 1.5;
/// Envelopes one relay forwards per second.
const TARGET_FORWARD_RATE: f64 = 20_000.0;

/// Forwarding rate: sender connections, streams in flight on each, sink connections,
/// and envelopes forwarded in the timed run.
const FORWARD_SENDERS: usize = 16;
const FORWARD_IN_FLIGHT: usize = 16;
const FORWARD_SINKS: usize = 4;
const FORWARD_ENVELOPES: usize = 200_000;

/// Thread names, for telling the CPU time of each side apart.
const NODE_THREADS: &str = "kith-node-rt";
const CLIENT_THREADS: &str = "bench-client";
const RELAY_THREADS: &str = "bench-relay";

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn right(s: impl ToString) -> Cell {
    Cell::new(s.to_string()).set_alignment(CellAlignment::Right)
}

fn table(header: Vec<&str>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(180)
        .set_header(header);
    table
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The node's runtime is built as `kith run` builds it (one worker per core); the
    // clients get their own runtime with as many workers. All of them share the same
    // cores.
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(NODE_THREADS)
        .build()
        .expect("building the node runtime");
    let clients = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(cores)
        .thread_name(CLIENT_THREADS)
        .build()
        .expect("building the client runtime");
    // The relay gets a runtime of its own too, as `kith relay` builds it.
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(RELAY_THREADS)
        .build()
        .expect("building the relay runtime");
    let dir = tempfile::Builder::new()
        .prefix("kith-handshake-bench-")
        // The target dir, not /tmp: /tmp may be a tmpfs, where fsync costs nothing.
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a temporary directory");
    let bench_started = Instant::now();

    // 1-2. One at a time, in turns: raw QUIC + mutual-TLS connects, kith handshakes
    // with a store file, and the measured floor, synced and not.
    let bare_key = NodeKey::generate();
    let bare = bare_server(&node_rt, &bare_key, None);
    let bare_target = (
        Op::Raw,
        bare.local_addr().expect("bare server address"),
        bare_key.node_id(),
    );
    let node = NodeUnderTest::start(
        &node_rt,
        &clients,
        StoreLocation::File(dir.path().join("kith.redb")),
        WARMUP,
    );
    let floor_servers: Vec<(quinn::Endpoint, (Op, SocketAddr, NodeId))> = [true, false]
        .into_iter()
        .map(|sync| {
            let key = NodeKey::generate();
            let file = dir.path().join(if sync {
                "floor.bin"
            } else {
                "floor-nosync.bin"
            });
            let server = least_server(&node_rt, &key, &file, sync);
            let addr = server.local_addr().expect("floor server address");
            (server, (Op::Kith, addr, key.node_id()))
        })
        .collect();
    let floor_targets = floor_servers.iter().map(|(_, target)| *target);
    // The node was warmed up as it started; the other servers are warmed up here.
    for (op, addr, id) in std::iter::once(bare_target).chain(floor_targets.clone()) {
        drive(&clients, op, addr, id, 1, 0, WARMUP);
    }
    let mut targets = vec![bare_target, node.target()];
    targets.extend(floor_targets);
    let mut turns = in_turns(&clients, &targets, LATENCY_ITERATIONS).into_iter();
    let mut next_run = |name: &str| Run {
        name: name.into(),
        ..turns.next().expect("one run per target")
    };
    let raw = next_run("raw QUIC connect (mutual TLS)");
    let mut direct = next_run("kith direct handshake");
    let floor = next_run("floor: check + 1 fdatasync, no state");
    let floor_unsynced = next_run("  same, without the fdatasync");
    node.finish(&node_rt, &mut direct);
    for (server, _) in floor_servers {
        server.close(0u32.into(), b"done");
    }

    let raw_served = raw_until_served(&node_rt, &clients, LATENCY_ITERATIONS);

    // The same with an in-memory store; the store commit and one fdatasync on
    // their own.
    let in_memory = Run {
        name: "  same, in-memory store".into(),
        ..kith_run(
            &node_rt,
            &clients,
            StoreLocation::InMemory,
            1,
            WARMUP,
            LATENCY_ITERATIONS,
        )
    };
    let commits = store_commits(&dir.path().join("commits.redb"), LATENCY_ITERATIONS);
    let fsync = fsync_floor(&dir.path().join("fsync.bin"), LATENCY_ITERATIONS);

    // 4. Relayed handshakes, one at a time, to a private node homed at a relay, and
    // the relay's forwarding rate. The relay runs with the default config except the
    // per-sender rate limit, lifted as the pending bounds are for the node.
    let relay = start_relay(
        &relay_rt,
        RelayConfig {
            rate_burst: 0,
            ..RelayConfig::default()
        },
    );
    let relayed = Run {
        name: "kith relayed handshake".into(),
        ..relayed_run(
            &node_rt,
            &clients,
            &relay,
            StoreLocation::File(dir.path().join("relayed.redb")),
            WARMUP,
            LATENCY_ITERATIONS,
        )
    };
    let forwarding = Run {
        name: format!(
            "relay forwarding, {FORWARD_SENDERS}×{FORWARD_IN_FLIGHT} → {FORWARD_SINKS} sinks"
        ),
        ..forwarding_run(
            &clients,
            &relay,
            FORWARD_SENDERS,
            FORWARD_IN_FLIGHT,
            FORWARD_SINKS,
            FORWARD_ENVELOPES,
        )
    };
    relay_rt.block_on(relay.shutdown());

    // 3. Sustained: raw connects (the transport's ceiling), then kith handshakes with
    // one fresh node per concurrency level.
    let raw_sustained = Run {
        name: format!("raw QUIC connect, C = {DEFAULT_CONCURRENCY}"),
        ..drive(
            &clients,
            Op::Raw,
            bare_target.1,
            bare_target.2,
            DEFAULT_CONCURRENCY,
            0,
            SUSTAINED_HANDSHAKES,
        )
    };
    bare.close(0u32.into(), b"done");
    let sustained: Vec<Run> = CONCURRENCY
        .iter()
        .map(|&c| Run {
            name: format!("kith sustained, C = {c}"),
            ..kith_run(
                &node_rt,
                &clients,
                StoreLocation::File(dir.path().join(format!("sustained-{c}.redb"))),
                c,
                0,
                SUSTAINED_HANDSHAKES,
            )
        })
        .collect();
    let best = sustained
        .iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .map(|r| r.concurrency);

    let all: Vec<&Run> = [
        &raw,
        &raw_served,
        &direct,
        &in_memory,
        &commits,
        &fsync,
        &floor,
        &floor_unsynced,
        &relayed,
        &forwarding,
    ]
    .into_iter()
    .chain([&raw_sustained])
    .chain(&sustained)
    .collect();
    let mut results = table(vec![
        "measurement",
        "ok",
        "p50",
        "p99",
        "dial p50",
        "wall",
        "rate",
        "notes",
    ]);
    for run in &all {
        let mut notes = Vec::new();
        if let Some((in_node, in_file)) = &run.pending {
            notes.push(match in_file {
                Some(Ok(n)) => {
                    format!("{in_node} pending in node, {n} in store file after shutdown")
                }
                Some(Err(e)) => format!("{in_node} pending in node, store file unreadable: {e}"),
                None => format!("{in_node} pending in node (not durable)"),
            });
            if !run.counts_match() {
                notes.push("MISMATCH".into());
            }
        }
        if std::ptr::eq(*run, &forwarding) {
            notes.push("per forward: sender → relay → sink ack → relay answer".into());
        } else if std::ptr::eq(*run, &commits) {
            notes.push("Store::apply of one pending record, on the bench's main thread".into());
        } else if std::ptr::eq(*run, &fsync) {
            notes.push("preallocated file, 1 ms after the last: this disk's floor".into());
        } else if std::ptr::eq(*run, &floor) {
            notes.push("kith's client; the server checks, writes, syncs, acks".into());
        } else if std::ptr::eq(*run, &raw_served) {
            notes.push("dial p50: until the client has it (as the raw row)".into());
        }
        if run.failures > 0 {
            notes.push(format!(
                "{} FAILED, first: {}",
                run.failures,
                run.first_failure.as_deref().unwrap_or("?")
            ));
        }
        if run.pending.is_some() && run.concurrency > 1 {
            if Some(run.concurrency) == best {
                notes.push("best".into());
            }
            if run.concurrency == DEFAULT_CONCURRENCY {
                notes.push("default".into());
            }
        }
        results.add_row(vec![
            Cell::new(&run.name),
            right(run.ok()),
            right(ms(run.p(50.0))),
            right(ms(run.p(99.0))),
            right(if run.dials.is_empty() {
                "-".to_string()
            } else {
                ms(percentile(&run.dials, 50.0))
            }),
            right(format!("{:.2} s", run.elapsed.as_secs_f64())),
            right(format!("{:.0}/s", run.rate())),
            Cell::new(notes.join("; ")),
        ]);
    }

    let mut cpu = table(vec![
        "CPU per handshake",
        "clients",
        "node",
        "relay",
        "total (bench)",
        "bench busy",
        "machine busy",
        "UDP drops",
    ]);
    let share = |t: Duration, run: &Run| {
        format!(
            "{:.0}%",
            100.0 * t.as_secs_f64() / (run.elapsed.as_secs_f64() * cores as f64).max(1e-9)
        )
    };
    for run in &all {
        let c = &run.counters;
        cpu.add_row(vec![
            Cell::new(&run.name),
            right(us(run.cpu_per(c.get("clients")))),
            right(us(run.cpu_per(c.get("node")))),
            right(us(run.cpu_per(c.get("relay")))),
            right(us(run.cpu_per(c.own()))),
            right(share(c.own(), run)),
            right(share(c.machine_busy, run)),
            right(c.udp_rcvbuf_drops),
        ]);
    }

    println!();
    println!("{results}");
    println!("{cpu}");
    println!(
        "notes: loopback, release build, {cores} cores shared by the clients and the node \
         (node: Tokio runtime as `kith run` builds it, its workers also committing the \
         store; clients: a \
         second runtime with {cores} workers). Store: a redb file under {} (one durable \
         commit per batch of inputs, before any ack). Node Config: defaults except \
         max_pending_total = {} and max_pending_per_source = {} (the defaults, 1024 and 16 \
         per source network, would evict or refuse: every client is 127.0.0.1). p50/p99: \
         per handshake, from dial to established connection (raw) or to the Pending ack \
         (kith); {WARMUP} untimed warm-up handshakes before each one-at-a-time run; raw, \
         kith direct and the two floors taken in turns over {LATENCY_ROUNDS} rounds; a fresh \
         client identity per handshake, its key and certificate built untimed (a node builds \
         its certificate once, at start). CPU: per-thread schedstat; \"machine busy\" above \"bench \
         busy\" is other processes competing for the cores; UDP drops: kernel \
         RcvbufErrors (a lost handshake packet costs a ~1 s retransmit).",
        env!("CARGO_TARGET_TMPDIR"),
        bench_config().max_pending_total,
        bench_config().max_pending_per_source,
    );
    println!();

    let ratio = direct.p(50.0).as_secs_f64() / raw.p(50.0).as_secs_f64();
    let latency_ok = direct.durable() && ratio <= TARGET_LATENCY_RATIO;
    println!(
        "{}: kith handshake p50 {} = {ratio:.2}× raw connect p50 {} (target ≤ {TARGET_LATENCY_RATIO}×)",
        if latency_ok { "PASS" } else { "FAIL" },
        ms(direct.p(50.0)),
        ms(raw.p(50.0)),
    );
    // What the target leaves room for: the same client against a server that does
    // only what no durable handshake can skip.
    println!(
        "      floor: {} = {:.2}× raw connect p50 — measured: a server that only checks \
         the request's signature, writes it with one fdatasync and acks ({} without the \
         fdatasync); kith spends {} beyond it on the trust machine, the redb commit (its \
         CPU and the pages it syncs beyond one) and waking the tasks of a batch",
        ms(floor.p(50.0)),
        floor.p(50.0).as_secs_f64() / raw.p(50.0).as_secs_f64(),
        ms(floor_unsynced.p(50.0)),
        us(direct.p(50.0).saturating_sub(floor.p(50.0))),
    );
    for run in sustained
        .iter()
        .filter(|r| Some(r.concurrency) == best || r.concurrency == DEFAULT_CONCURRENCY)
    {
        let rate_ok = run.durable() && run.rate() >= TARGET_RATE;
        let label = match (
            Some(run.concurrency) == best,
            run.concurrency == DEFAULT_CONCURRENCY,
        ) {
            (true, true) => "best, default",
            (true, false) => "best",
            _ => "default",
        };
        let node_cpu = run.cpu_per(run.counters.get("node"));
        println!(
            "{}: {:.0} durable handshakes/s at C = {} ({label}) (target ≥ {TARGET_RATE:.0}/s; {}; \
             raw connects alone: {:.0}/s; the node's own CPU, {} per handshake, would allow \
             ~{:.0}/s on {cores} dedicated cores — extrapolated, not measured)",
            if rate_ok { "PASS" } else { "FAIL" },
            run.rate(),
            run.concurrency,
            if run.durable() {
                format!("all {} pending records in the reopened store", run.ok())
            } else {
                "failures or a store count mismatch".to_string()
            },
            raw_sustained.rate(),
            us(node_cpu),
            cores as f64 / node_cpu.as_secs_f64().max(1e-9),
        );
    }
    let relayed_ratio = relayed.p(50.0).as_secs_f64() / direct.p(50.0).as_secs_f64();
    let relayed_ok = relayed.durable() && relayed_ratio <= TARGET_RELAYED_RATIO;
    println!(
        "{}: relayed handshake p50 {} (p99 {}) = {relayed_ratio:.2}× direct handshake p50 {} \
         (target ≤ {TARGET_RELAYED_RATIO}×; {})",
        if relayed_ok { "PASS" } else { "FAIL" },
        ms(relayed.p(50.0)),
        ms(relayed.p(99.0)),
        ms(direct.p(50.0)),
        if relayed.durable() {
            format!("all {} pending records in the reopened store", relayed.ok())
        } else {
            "failures or a store count mismatch".to_string()
        },
    );
    let forward_ok = forwarding.failures == 0 && forwarding.rate() >= TARGET_FORWARD_RATE;
    println!(
        "{}: relay forwarding {:.0} envelopes/s with {} streams in flight (target ≥ \
         {TARGET_FORWARD_RATE:.0}/s; {} failures; relay CPU {} per envelope; p50 {}, p99 {})",
        if forward_ok { "PASS" } else { "FAIL" },
        forwarding.rate(),
        forwarding.concurrency,
        forwarding.failures,
        us(forwarding.cpu_per(forwarding.counters.get("relay"))),
        ms(forwarding.p(50.0)),
        ms(forwarding.p(99.0)),
    );
    println!(
        "total bench time {:.1} s",
        bench_started.elapsed().as_secs_f64()
    );
}
