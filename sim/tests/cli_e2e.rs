//! The real `kith-sim` binary as an operator meets it: closed pipes, units, and
//! options that mean nothing in the chosen mode.

mod common;

use std::process::{Command, Output, Stdio};

fn kith_sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kith-sim"))
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_closed_pipe_neither_panics_nor_loses_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = kith_sim()
        .arg("run")
        .arg(common::scenario_path("small-mesh-manual"))
        .args(["--seed", "3", "--no-progress", "--out"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
    assert!(dir.path().join("report.json").exists());
}

#[test]
fn a_duration_without_a_unit_is_refused() {
    let out = kith_sim()
        .arg("run")
        .arg(common::scenario_path("small-mesh-manual"))
        .args(["--duration", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("no unit"), "{}", stderr_of(&out));
}

#[test]
fn speed_is_refused_in_simulated_mode() {
    let out = kith_sim()
        .arg("run")
        .arg(common::scenario_path("small-mesh-manual"))
        .args(["--speed", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("--real"), "{}", stderr_of(&out));
}

#[test]
fn real_mode_shows_the_nodes_that_run_and_counts_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("capped.toml");
    std::fs::write(
        &scenario,
        r#"
        name = "capped"
        duration = "2s"
        [nodes]
        count = 10
        [[policies]]
        kind = "auto"
        fraction = 1.0
        [workload]
        pattern = "mesh"
        rate = 8.0
        [real]
        nodes = 3
        "#,
    )
    .unwrap();
    let out = kith_sim()
        .arg("run")
        .arg(&scenario)
        .args(["--real", "--seed", "1", "--no-progress", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("(3 nodes (of the scenario's 10"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["nodes"]["count"], 3);
    assert!(report["events_processed"].as_u64().unwrap() > 0, "{report}");
}
