//! The engine is deterministic: the same seed gives a byte-identical report,
//! a different seed a different one — in the library and through the CLI.

mod common;

use common::{run, shipped};

#[test]
fn same_seed_gives_identical_reports() {
    // Relays, crashes, partitions, skew, loss and the adversary all draw from
    // the one RNG: these two scenarios between them exercise every source.
    for (name, nodes) in [("adversarial", 50), ("partitions-crashes", 40)] {
        let s = shipped(name).with_nodes(nodes);
        let a = run(&s, 11);
        let b = run(&s, 11);
        assert_eq!(a.report.outcome, "clean", "{name}: {:?}", a.violation);
        assert!(
            a.report.handshakes.completed > 50,
            "{name}: too little happened"
        );
        assert_eq!(a.report.to_json(), b.report.to_json(), "{name}");
        assert_eq!(a.latencies, b.latencies, "{name}");
    }
}

#[test]
fn different_seeds_give_different_reports() {
    let s = shipped("private-relays").with_nodes(60);
    let a = run(&s, 1);
    let b = run(&s, 2);
    assert_eq!(a.report.seed, 1);
    assert_ne!(a.report.to_json(), b.report.to_json());
    assert_ne!(a.latencies, b.latencies);
}

#[test]
fn cli_prints_the_seed_and_replays_it_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = common::scenario_path("small-mesh-manual");
    let run_cli = |out: &str, seed: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kith-sim"));
        cmd.arg("run")
            .arg(&scenario)
            .arg("--out")
            .arg(dir.path().join(out))
            .arg("--no-progress");
        if let Some(seed) = seed {
            cmd.args(["--seed", seed]);
        }
        let output = cmd.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    // Without --seed, a seed is drawn and printed first...
    let stdout = run_cli("first", None);
    let first = stdout.lines().next().unwrap();
    let seed = first.strip_prefix("seed: ").expect("the seed comes first");
    seed.parse::<u64>().unwrap();
    // ...and passing it back reproduces the report exactly.
    run_cli("again", Some(seed));
    let a = std::fs::read(dir.path().join("first/report.json")).unwrap();
    let b = std::fs::read(dir.path().join("again/report.json")).unwrap();
    assert_eq!(a, b);
    for plot in ["latency.svg", "trusted_pairs.svg", "relay_queue.svg"] {
        let svg = std::fs::read_to_string(dir.path().join("again").join(plot)).unwrap();
        assert!(svg.contains("<svg"), "{plot}");
    }
}
