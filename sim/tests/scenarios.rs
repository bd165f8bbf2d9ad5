//! Every shipped scenario parses and runs clean. The big ones run scaled
//! down (fewer nodes, the same requests per node and the same faults); the
//! full-size figures come from `cargo bench -p kith-sim --bench scale` and
//! the release-mode commands in sim/README.md.

mod common;

use common::{run_clean, shipped};

const SHIPPED: [&str; 7] = [
    "small-mesh-manual",
    "agreement",
    "fleet-1k-auto",
    "private-relays",
    "partitions-crashes",
    "adversarial",
    "scale-10k",
];

#[test]
fn every_scenario_file_is_listed_here() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    found.sort();
    let mut listed: Vec<String> = SHIPPED.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed);
    for name in SHIPPED {
        shipped(name);
    }
}

#[test]
fn small_mesh_manual_runs_clean() {
    let out = run_clean(&shipped("small-mesh-manual"), 1);
    let r = &out.report;
    assert_eq!(r.handshakes.requested, 28, "every pair of 8 asks once");
    assert!(r.handshakes.operator_decisions > 0);
    assert!(r.invariants["agreement"].checks > 0);
}

#[test]
fn fleet_1k_auto_runs_clean() {
    let out = run_clean(&shipped("fleet-1k-auto").with_nodes(150), 1);
    assert!(out.report.handshakes.completed > 1000);
    assert!(out.report.latency_ms.handshake_policy.count > 0);
}

#[test]
fn private_relays_runs_clean() {
    let out = run_clean(&shipped("private-relays").with_nodes(150), 1);
    let r = &out.report;
    assert!(
        r.messages.relayed > 0,
        "private nodes are reached through relays"
    );
    assert!(r.relays.pushed > 0 && r.relays.registrations > 0);
    assert!(r.handshakes.allowlisted > 0);
}

#[test]
fn partitions_crashes_runs_clean() {
    let out = run_clean(&shipped("partitions-crashes").with_nodes(60), 1);
    let f = &out.report.faults;
    assert!(f.crashes > 0 && f.restarts > 0 && f.partitions == 3);
    assert!(out.report.invariants["durability"].checks >= f.crashes);
    assert!(out.report.messages.retries > 0);
}

#[test]
fn adversarial_runs_clean() {
    let out = run_clean(&shipped("adversarial").with_nodes(60), 1);
    let r = &out.report;
    assert!(r.faults.replays_injected > 100);
    assert!(r.invariants["replay"].checks >= r.faults.replays_injected);
    assert!(
        r.invariants["revoke_holds"].checks > 0,
        "every new trust is checked against earlier revokes"
    );
    assert!(r.relays.delayed_by_bad_relay > 0);
    let outcomes = &r.faults.replay_outcomes;
    assert!(
        outcomes.keys().all(|k| k.starts_with("refused:")),
        "{outcomes:?}"
    );
}

#[test]
fn agreement_runs_clean_through_expiry_renewal_cancel_ignore_and_forget() {
    let out = run_clean(&shipped("agreement"), 1);
    let r = &out.report;
    assert!(r.handshakes.expired > 10, "{:?}", r.handshakes);
    assert!(r.handshakes.renewed > 0, "{:?}", r.handshakes);
    assert!(r.handshakes.withdrawals > 10, "{:?}", r.handshakes);
    assert!(r.invariants["agreement"].checks > r.handshakes.expired);
}

#[test]
fn the_one_sided_expiry_finding_runs_clean_now() {
    // Failed agreement before expiry and withdrawal told the peer (see the file).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios/findings/one-sided-expiry.toml");
    let s = kith_sim::Scenario::load(&path).unwrap();
    let out = run_clean(&s, 1);
    assert!(out.report.handshakes.expired > 10);
}

#[test]
fn scale_10k_runs_clean_scaled_down() {
    let out = run_clean(&shipped("scale-10k").with_nodes(200), 1);
    assert!(out.report.handshakes.completed > 1500);
}
