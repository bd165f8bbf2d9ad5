//! Helpers for the simulator's tests: shipped scenarios by name, and a run.
#![allow(dead_code)]

use std::path::PathBuf;

use kith_sim::{Outcome, RunOptions, Scenario};

pub fn scenario_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

pub fn shipped(name: &str) -> Scenario {
    Scenario::load(&scenario_path(name)).unwrap()
}

pub fn run(scenario: &Scenario, seed: u64) -> Outcome {
    kith_sim::run(
        scenario,
        &RunOptions {
            seed,
            progress: false,
        },
    )
}

/// Runs and fails the test with the violation (seed, time, trace) if any.
pub fn run_clean(scenario: &Scenario, seed: u64) -> Outcome {
    let out = run(scenario, seed);
    if let Some(v) = &out.violation {
        panic!("{} is not clean:\n{v}", scenario.name);
    }
    assert_eq!(out.report.outcome, "clean");
    out
}
