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
