//! End-to-end tests of application connections through a relay: two private nodes
//! (`--private`: no inbound connection but through a relay, no direct address) homed
//! at one `kith relay`, real daemons on loopback, a TCP echo server as the service.
//! The only path between the nodes is the relay, which carries their QUIC packets
//! opaque: the connection is the same end-to-end QUIC and TLS as a direct one.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::service::{
    OutputReader, connect, echo_server, pattern, round_trip, stream_end_after_revoke,
};
use common::{TestNode, stderr_of};

/// A relay and two private nodes homed there that trust each other; `b` is named
/// "server" at `a` and exposes an echo service.
struct Setup {
    relay: TestNode,
    a: TestNode,
    b: TestNode,
    echo: common::service::Echo,
}

fn setup() -> Setup {
    setup_with(&[])
}

/// [`setup`] with extra arguments for `kith relay`.
fn setup_with(relay_args: &[&str]) -> Setup {
    let mut relay = TestNode::init();
    relay.start_relay(relay_args);
    let mut a = TestNode::init();
    a.start_private(&relay);
    let mut b = TestNode::init();
    b.start_private(&relay);
    a.wait_registered(1);
    b.wait_registered(1);
    let sent = a.json(&["request", &b.ticket(), "-j", "reach the echo service"]);
    assert_eq!(sent["delivered"], true, "{sent}");
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id, "--name", "client"]);
    a.wait_for_state(&b.node_id, "trusted");
    a.run_ok(&["rename", &b.node_id, "server"]);
    let echo = echo_server();
    b.run_ok(&["expose", "echo", "--to", &echo.addr.to_string()]);
    Setup { relay, a, b, echo }
}

fn relay_packets(relay: &TestNode) -> u64 {
    relay.status()["packets_relayed"].as_u64().unwrap_or(0)
}

#[test]
fn ten_megabytes_round_trip_between_private_nodes_through_the_relay() {
    let s = setup();
    let before = relay_packets(&s.relay);
    let data = pattern(10 << 20);
    let got = round_trip(&s.a, "server", "echo", &data);
    assert_eq!(got.len(), data.len(), "every byte came back");
    assert!(got == data, "the bytes came back unchanged");
    assert_eq!(s.echo.accepted.load(Ordering::SeqCst), 1);
    // 20 MB crossed the relay (there and back), as packets of at most ~1.5 kB.
    let relayed = relay_packets(&s.relay) - before;
    assert!(relayed > 10_000, "the relay carried {relayed} packets");
}

#[test]
fn each_sender_is_held_to_the_relays_data_quota() {
    // 1 MiB/s with a 1 MiB burst: 3 MiB cannot pass at once; the relay refuses what
    // is over the quota, QUIC slows down and retransmits, and every byte arrives.
    let s = setup_with(&["--data-rate", "1", "--data-burst", "1"]);
    let data = pattern(3 << 20);
    let got = round_trip(&s.a, "server", "echo", &data);
    assert!(got == data, "the bytes came back unchanged");
    let refused = s.relay.status()["packets_refused"].as_u64().unwrap();
    assert!(refused > 0, "the quota refused nothing");
}

#[test]
fn an_untrusted_node_behind_the_relay_is_refused() {
    let s = setup();
    let mut c = TestNode::init();
    c.start_private(&s.relay);
    c.wait_registered(1);
    // C asked B for trust, and B has not answered.
    c.json(&["request", &s.b.ticket(), "-j", "let me in"]);
    s.b.wait_for_state(&c.node_id, "incoming_pending");
    let out = c.run(&["connect", &s.b.node_id, "echo"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("is not trusted by this node") && err.contains("kith request"),
        "{err}"
    );
    assert_eq!(
        s.echo.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the service"
    );
}

#[test]
fn a_revoke_mid_transfer_ends_the_relayed_stream_within_a_second() {
    let s = setup();
    let took = stream_end_after_revoke(&s.a, &s.b, "server", "echo");
    assert!(
        took < Duration::from_secs(1),
        "the stream ended {took:?} after the revoke"
    );
}

#[test]
fn connections_recover_within_seconds_after_the_relay_restarts() {
    let mut s = setup();
    let first = pattern(1 << 20);
    assert!(round_trip(&s.a, "server", "echo", &first) == first);

    // A transfer that spans the restart: the connection pauses, then carries on.
    // Every wait is bounded, so a stalled transfer fails the test instead of hanging it.
    let mut child = connect(&s.a, "server", "echo");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = OutputReader::new(child.stdout.take().unwrap());
    let data = pattern(4 << 20);
    let half = data.len() / 2;
    stdin.write_all(&data[..half]).unwrap();
    let mut got = out.take(
        half,
        Duration::from_secs(30),
        "the first half, before the restart",
    );

    s.relay.restart();
    let restarted = Instant::now();
    s.a.wait_registered(2);
    s.b.wait_registered(2);
    let rest = data[half..].to_vec();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&rest);
    });
    got.extend(out.take(
        data.len() - half,
        Duration::from_secs(20),
        "the second half, after the restart",
    ));
    assert!(
        got == data,
        "the bytes came back unchanged across the restart"
    );
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(10), "recovery took {took:?}");
    assert!(
        out.rest(Duration::from_secs(10), "the end of the stream")
            .is_empty()
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));

    // And a new connection works too.
    assert!(round_trip(&s.a, "server", "echo", &first) == first);
}

#[test]
fn a_dialler_not_on_the_relays_allow_list_is_told_so() {
    let mut relay = TestNode::init();
    let mut b = TestNode::init();
    let allow = relay.data_dir().join("allow");
    std::fs::write(&allow, format!("{}\n", b.node_id)).unwrap();
    relay.start_relay(&["--allow", allow.to_str().unwrap()]);
    b.start_private(&relay);
    b.wait_registered(1);
    // A public node, not on the list: it may ask b through the relay, and be trusted.
    let a = TestNode::started();
    let sent = a.json(&["request", &b.ticket(), "-j", "reach the echo service"]);
    assert_eq!(sent["delivered"], true, "{sent}");
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id]);
    a.wait_for_state(&b.node_id, "trusted");
    let echo = echo_server();
    b.run_ok(&["expose", "echo", "--to", &echo.addr.to_string()]);

    // But the relay carries no connection for it: the error says why.
    let out = a.run(&["connect", &b.node_id, "echo"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("not on the relay's allow list"), "{err}");
    assert!(!err.contains("is the peer connected"), "{err}");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 0);
}
