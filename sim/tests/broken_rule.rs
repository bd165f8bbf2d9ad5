//! A deliberately broken protocol rule — the test-only
//! `Config::fault_skip_replay_check`, which skips the nonce and high-water
//! checks — must be caught by an invariant, with the seed, the virtual time
//! and the events that led there.

mod common;

use common::{run, shipped};
use kith_sim::invariants::REPLAY;

#[test]
fn skipped_replay_check_is_caught_with_the_seed() {
    let mut s = shipped("adversarial").with_nodes(40);
    s.protocol.fault_skip_replay_check = true;
    let out = run(&s, 5);
    let v = out.violation.expect("the broken rule must be caught");
    assert_eq!(v.invariant, REPLAY);
    assert_eq!(v.seed, 5);
    assert!(!v.trace.is_empty());
    let text = v.to_string();
    assert!(text.contains("INVARIANT VIOLATED: replay"), "{text}");
    assert!(text.contains("seed: 5"), "{text}");
    assert!(text.contains("virtual time: t+"), "{text}");
    assert!(text.contains("--seed 5"), "{text}");
    assert_eq!(out.report.outcome, "violated");
    assert!(out.report.invariants[REPLAY].violated);
    // The same seed finds it at the same moment.
    let again = run(&s, 5).violation.unwrap();
    assert_eq!((again.at_ms, again.detail), (v.at_ms, v.detail));
}

#[test]
fn broken_rule_is_caught_by_redeliveries_alone() {
    // No adversary: the network's own re-deliveries (an ack lost, the
    // envelope sent again) are replays too.
    let mut s = shipped("fleet-1k-auto").with_nodes(60);
    s.network.loss = 0.05;
    s.protocol.fault_skip_replay_check = true;
    let v = run(&s, 3).violation.expect("caught without an adversary");
    assert_eq!(v.invariant, REPLAY);
    assert!(v.detail.contains("re-delivered"), "{}", v.detail);
}

#[test]
fn the_cli_fails_the_run_and_prints_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::scenario_path("adversarial")).unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        format!("{text}\n[protocol]\nfault_skip_replay_check = true\n"),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kith-sim"))
        .arg("run")
        .arg(&path)
        .args(["--seed", "77", "--nodes", "40", "--no-progress", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("INVARIANT VIOLATED: replay"), "{stderr}");
    assert!(stderr.contains("seed: 77"), "{stderr}");
    let report = std::fs::read_to_string(dir.path().join("out/report.json")).unwrap();
    assert!(report.contains("\"outcome\": \"violated\""));
}

#[test]
fn a_lost_retry_queue_is_caught_by_agreement() {
    // Not a protocol switch but the daemon's delivery as it is today: no
    // re-send after a restart. A crash that loses an undelivered approval
    // leaves the pair disagreeing, and the quiet check says so.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios/findings/no-resend-after-restart.toml");
    let s = kith_sim::Scenario::load(&path).unwrap();
    assert!(!s.delivery.resend_on_restart);
    let v = run(&s, 1).violation.expect("the lost approval is found");
    assert_eq!(v.invariant, kith_sim::invariants::AGREEMENT, "{v}");
    assert!(v.trace.iter().any(|l| l.contains("crashes")), "{v}");
}
