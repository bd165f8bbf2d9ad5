//! Real mode: a handful of real nodes over QUIC on loopback run a short
//! workload and write the same report as a simulated run.

use kith_sim::Scenario;

#[test]
fn a_small_real_fleet_runs_and_reports() {
    let s = Scenario::parse(
        r#"
        name = "real-smoke"
        duration = "3s"
        [nodes]
        count = 6
        [[policies]]
        kind = "auto"
        fraction = 0.5
        [[policies]]
        kind = "manual"
        fraction = 0.5
        delay = { const = "200ms" }
        [workload]
        pattern = "mesh"
        rate = 8.0
        "#,
        "inline",
    )
    .unwrap();
    let out = kith_sim::real::run(&s, 9, false).unwrap();
    assert!(out.violation.is_none(), "{:?}", out.violation);
    let r = &out.report;
    assert_eq!(r.mode, "real");
    assert_eq!(r.nodes.count, 6);
    assert_eq!(r.handshakes.requested, 15, "every pair of 6 asks once");
    assert!(r.handshakes.completed >= 10, "{:?}", r.handshakes);
    assert!(r.latency_ms.handshake.count > 0);
    assert!(r.invariants["agreement"].checks > 0);
    assert!(r.time.quiet_at_end);
}
