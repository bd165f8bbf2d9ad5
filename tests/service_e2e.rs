//! End-to-end tests of services: `kith expose` on one node, `kith connect` on
//! another, real daemons on loopback, a real TCP echo server as the service, and a
//! scripted QUIC client for what a stranger could try.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::service::{
    OutputReader, connect, echo_server, pattern, round_trip, stream_end_after_revoke,
};
use common::{TestNode, stderr_of};
use serde_json::Value;

/// Two running nodes that trust each other; `b` is named "server" at `a`.
fn trusted_pair() -> (TestNode, TestNode) {
    let mut a = TestNode::init();
    let mut b = TestNode::init();
    a.start();
    b.start();
    let sent = a.json(&["request", &b.ticket(), "-j", "reach the echo service"]);
    assert_eq!(sent["delivered"], true, "{sent}");
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id, "--name", "client"]);
    a.wait_for_state(&b.node_id, "trusted");
    a.run_ok(&["rename", &b.node_id, "server"]);
    (a, b)
}

#[test]
fn a_trusted_peer_round_trips_ten_megabytes_through_kith_connect() {
    let (a, b) = trusted_pair();
    let echo = echo_server();
    let exposed = b.json(&["expose", "echo", "--to", &echo.addr.to_string()]);
    assert_eq!(exposed["name"], "echo", "{exposed}");
    let status = b.status();
    assert_eq!(status["services"][0]["name"], "echo", "{status}");
    assert!(b.run_ok(&["status"]).contains("echo ->"), "status lists it");

    let data = pattern(10 << 20);
    let got = round_trip(&a, "server", "echo", &data);
    assert_eq!(got.len(), data.len(), "every byte came back");
    assert!(got == data, "the bytes came back unchanged");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
}

/// An interactive client (ssh through `ProxyCommand`) sends, waits for the answer,
/// and sends again, its input open all along: every answer must reach it. `kith
/// connect` once copied the peer's bytes to its output with `std::io::copy`, which
/// on Linux is splice(2) from the socket into the output pipe; the kernel can hold
/// spliced bytes in the pipe, out of the reader's reach, until more arrive on the
/// socket, so an answer with nothing after it never came out.
#[test]
fn kith_connect_hands_over_every_answer_while_its_input_stays_open() {
    let (a, b) = trusted_pair();
    let echo = echo_server();
    b.run_ok(&["expose", "echo", "--to", &echo.addr.to_string()]);
    let mut child = connect(&a, "server", "echo");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = OutputReader::new(child.stdout.take().unwrap());
    // 128 KiB to 1 MiB a round: more than the output pipe holds.
    for round in 0..16 {
        let data = pattern((128 << 10) << (round % 4));
        stdin.write_all(&data).unwrap();
        let got = out.take(
            data.len(),
            Duration::from_secs(10),
            &format!("the echo of round {round}"),
        );
        assert!(got == data, "round {round} came back unchanged");
    }
    drop(stdin);
    assert!(out.rest(Duration::from_secs(10), "the end").is_empty());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn peers_that_are_not_trusted_are_refused_with_the_next_step() {
    let (_a, mut b) = trusted_pair();
    let echo = echo_server();
    b.run_ok(&["expose", "echo", "--to", &echo.addr.to_string()]);

    // C asked B for trust, and B has not answered: C refuses to connect itself.
    let mut c = TestNode::init();
    c.start();
    c.json(&["request", &b.ticket(), "-j", "let me in"]);
    b.wait_for_state(&c.node_id, "incoming_pending");
    let out = c.run(&["connect", &b.node_id, "echo"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("is not trusted by this node") && err.contains("kith request"),
        "{err}"
    );
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the service"
    );
    b.stop();
}

#[test]
fn unknown_services_and_dead_targets_say_what_to_do() {
    let (a, b) = trusted_pair();
    let out = a.run(&["connect", "server", "nosuch"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("has no service named \"nosuch\"") && err.contains("kith expose nosuch"),
        "{err}"
    );

    // A target nobody listens on: bind a port, then free it.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    b.run_ok(&["expose", "gone", "--to", &dead.to_string()]);
    let out = a.run(&["connect", "server", "gone"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("could not connect its service \"gone\"") && err.contains(&dead.to_string()),
        "{err}"
    );

    // Limited to another peer: A is trusted but not admitted.
    let other = TestNode::init();
    let echo = echo_server();
    b.run_ok(&["allow", &other.node_id, "--name", "other"]);
    b.run_ok(&[
        "expose",
        "private",
        "--to",
        &echo.addr.to_string(),
        "--peer",
        "other",
    ]);
    let out = a.run(&["connect", "server", "private"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("limited to other peers"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 0);

    // Bad names and targets never reach the store.
    let out = b.run(&["expose", "Bad Name", "--to", "127.0.0.1:1"]);
    assert!(stderr_of(&out).contains("a service name is 1 to 64 characters"));
    let out = b.run(&["expose", "x", "--to", "127.0.0.1"]);
    assert!(stderr_of(&out).contains("HOST:PORT"));
    let names: Vec<String> = b.status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["gone", "private"]);

    // Services are kept in the store: a restart serves them again.
    let (mut a, mut b) = (a, b);
    b.restart();
    a.restart();
    let kept: Vec<Value> = b.status()["services"].as_array().unwrap().clone();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[1]["peers"][0], other.node_id.as_str());
    b.run_ok(&["unexpose", "gone"]);
    let out = a.run(&["connect", "server", "gone"]);
    assert!(
        stderr_of(&out).contains("has no service named \"gone\""),
        "{}",
        stderr_of(&out)
    );
    let out = b.run(&["unexpose", "gone"]);
    assert!(stderr_of(&out).contains("no service named \"gone\" is exposed"));
}

#[test]
fn a_revoke_mid_transfer_ends_the_stream_at_once() {
    let (a, b) = trusted_pair();
    let echo = echo_server();
    b.run_ok(&["expose", "echo", "--to", &echo.addr.to_string()]);

    let took = stream_end_after_revoke(&a, &b, "server", "echo");
    assert!(
        took < Duration::from_secs(1),
        "the stream ended {took:?} after the revoke"
    );

    a.wait_for_state(&b.node_id, "revoked_by_peer");
    let out = a.run(&["connect", "server", "echo"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("is not trusted by this node"),
        "{}",
        stderr_of(&out)
    );
}

/// A stranger that dials the service protocol directly (a scripted QUIC client with a
/// fresh identity) gets its connection closed as not trusted, and the service never
/// sees a byte of what it sent.
#[test]
fn a_stranger_speaking_the_service_protocol_is_closed_before_anything_flows() {
    use kith::keys::NodeKey;
    use kith::node::node::close_code;
    use kith::node::{service::SERVICE_ALPN, transport::tls};

    let (_a, b) = trusted_pair();
    let echo = echo_server();
    b.run_ok(&["expose", "echo", "--to", &echo.addr.to_string()]);
    let target = b.listen_addr();
    let b_id = b.node_id.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let closed = runtime.block_on(async move {
        let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
        let endpoint = tls::make_endpoint(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = tls::dial_app(&endpoint, &identity, target, b_id, SERVICE_ALPN)
            .await
            .expect("the handshake itself completes: trust is checked after it");
        // Try to open a stream and name the service anyway.
        if let Ok((mut send, _recv)) = conn.open_bi().await {
            let _ = send.write_all(b"\x05\x00\x00\x00\x04echo").await;
        }
        tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("the node closed the connection")
    });
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(close_code::NOT_TRUSTED)
            );
        }
        other => panic!("closed for another reason: {other}"),
    }
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the service"
    );
}
