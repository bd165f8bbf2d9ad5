//! The simulator's benchmark figures (`cargo bench -p kith-sim --bench scale`):
//!
//! 1. The shipped 10,000-node scenario (`scenarios/scale-10k.toml`, over
//!    100,000 handshakes in one simulated hour), simulated in this process on
//!    one thread: wall time, handshakes, events per second. Target: ≤ 60 s on
//!    one core (run under `taskset -c 0` to pin it).
//! 2. With `KITH_SIM_BENCH_REAL=1`: real mode with 200 embedded nodes over
//!    QUIC on loopback (the 1,000-node auto-approve fleet scaled to 200 nodes
//!    and played 4× faster for a minute).
//!
//! Prints figures and PASS/FAIL lines; asserts nothing.

use std::path::PathBuf;
use std::time::Instant;

use kith_sim::{RunOptions, Scenario};

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).expect("shipped scenario")
}

fn main() {
    let seed = std::env::var("KITH_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let s = scenario("scale-10k");
    println!("seed: {seed}");
    println!(
        "simulating {}: {} nodes, {} simulated",
        s.name,
        s.nodes.count,
        kith_sim::dist::Millis((s.total_ms()) as i64)
    );
    let started = Instant::now();
    let out = kith_sim::run(
        &s,
        &RunOptions {
            seed,
            progress: false,
        },
    );
    let wall = started.elapsed().as_secs_f64();
    let r = &out.report;
    println!(
        "  {} in {wall:.2} s wall: {} handshakes completed ({} requested), {} events ({:.0}/s), simulated/wall {:.0}x",
        r.outcome,
        r.handshakes.completed,
        r.handshakes.requested,
        r.events_processed,
        r.events_processed as f64 / wall,
        r.time.run_ms as f64 / 1000.0 / wall
    );
    println!(
        "  handshake latency p50 {} ms, p99 {} ms; invariant checks: {}",
        r.latency_ms.handshake.p50,
        r.latency_ms.handshake.p99,
        r.invariants
            .iter()
            .map(|(k, v)| format!("{k} {}", v.checks))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let pass = wall <= 60.0 && r.handshakes.completed >= 100_000 && r.outcome == "clean";
    println!(
        "{} 10k nodes, >= 100,000 handshakes, <= 60 s",
        if pass { "PASS" } else { "FAIL" }
    );

    if std::env::var_os("KITH_SIM_BENCH_REAL").is_some() {
        let mut s = scenario("fleet-1k-auto").with_nodes(200);
        s.real.speed = 4.0;
        s.real.max_wall = kith_sim::dist::Millis(60_000);
        println!("real mode: {} with 200 nodes over QUIC on loopback", s.name);
        let started = Instant::now();
        match kith_sim::real::run(&s, seed, false) {
            Ok(o) => {
                let r = &o.report;
                println!(
                    "  {} in {:.1} s: {} nodes, {} handshakes completed, latency p50 {} ms p99 {} ms max {} ms",
                    r.outcome,
                    started.elapsed().as_secs_f64(),
                    r.nodes.count,
                    r.handshakes.completed,
                    r.latency_ms.handshake.p50,
                    r.latency_ms.handshake.p99,
                    r.latency_ms.handshake.max
                );
                let pass =
                    r.nodes.count == 200 && r.handshakes.completed > 0 && r.outcome == "clean";
                println!(
                    "{} real mode, 200 nodes in one process",
                    if pass { "PASS" } else { "FAIL" }
                );
            }
            Err(e) => println!("FAIL real mode: {e:#}"),
        }
    }
}
