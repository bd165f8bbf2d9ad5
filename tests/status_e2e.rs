//! `kith status` at a glance, with real `kith run` and `kith relay` processes: the
//! home relay's round trip, the requests waiting longest, and peers whose clocks are
//! off (envelopes signed by the test with skewed timestamps, over real QUIC).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestNode;
use kith_keys::{NodeKey, keystore};
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::wire::{AckStatus, Body, Envelope, Kind, Message};

fn node_key(node: &TestNode) -> NodeKey {
    keystore::open(&node.data_dir().join("keystore"), None)
        .unwrap()
        .node_key()
        .unwrap()
}

/// A request from `from` to `to`, stamped `offset_ms` from now, sent over a direct
/// connection; the ack's status.
fn request_stamped(from: &NodeKey, to: &TestNode, offset_ms: i64) -> AckStatus {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let envelope = Envelope::sign(
        Body {
            kind: Kind::Request {
                justification: "my clock is off".into(),
            },
            from: from.node_id(),
            to: to.node_id.parse().unwrap(),
            nonce: rand_nonce(offset_ms),
            timestamp_ms: (now + offset_ms) as u64,
        },
        from,
    );
    let addr: SocketAddr = to.listen_addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let identity = tls::Identity::new(from).unwrap();
        let endpoint = tls::make_endpoint(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = tls::dial(&endpoint, &identity, addr, to.node_id.parse().unwrap())
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode_frame(&Message::Envelope(envelope)).unwrap())
            .await
            .unwrap();
        send.finish().unwrap();
        let bytes =
            tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(MAX_FRAME_LEN + 4))
                .await
                .unwrap()
                .unwrap();
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        match decode_frame::<Message>(&bytes).unwrap().unwrap().0 {
            Message::Ack(ack) => ack.status,
            other => panic!("{other:?}"),
        }
    })
}

fn rand_nonce(seed: i64) -> [u8; 16] {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&seed.to_le_bytes());
    nonce
}

#[test]
fn status_shows_peers_whose_clock_is_off() {
    let b = TestNode::started();
    let a = TestNode::init();
    let a_key = node_key(&a);
    let status = b.status();
    assert_eq!(status["clock_skew_warnings"], 0, "{status}");

    // Two minutes behind: within the window, applied, but worth a warning.
    assert_eq!(request_stamped(&a_key, &b, -120_000), AckStatus::Pending);
    let status = b.status();
    assert_eq!(status["clock_skew_warnings"], 1, "{status}");
    let last = &status["last_clock_skew"];
    assert_eq!(last["node_id"], a.node_id, "{status}");
    assert_eq!(last["refused"], false, "{status}");
    let skew = last["skew_ms"].as_i64().unwrap();
    assert!((-125_000..=-115_000).contains(&skew), "{skew}");
    let human = b.run_ok(&["status"]);
    assert!(human.contains("off this clock"), "{human}");
    assert!(human.contains("s behind this one"), "{human}");

    // Ten minutes ahead: refused, and counted.
    let other = NodeKey::generate();
    assert!(matches!(
        request_stamped(&other, &b, 600_000),
        AckStatus::Refused(_)
    ));
    let status = b.status();
    assert_eq!(status["clock_skew_warnings"], 2, "{status}");
    assert_eq!(
        status["last_clock_skew"]["node_id"],
        other.node_id().to_string()
    );
    assert_eq!(status["last_clock_skew"]["refused"], true, "{status}");
    let human = b.run_ok(&["status"]);
    assert!(human.contains("s ahead of this one, refused"), "{human}");
}

#[test]
fn status_shows_the_requests_waiting_longest_and_the_relays_round_trip() {
    let mut relay = TestNode::init();
    relay.start_relay(&[]);
    let mut a = TestNode::init();
    a.start_private(&relay);
    a.wait_registered(1);
    let b = TestNode::started();
    let c = TestNode::started();
    a.run_ok(&["request", &b.ticket(), "-j", "first"]);
    std::thread::sleep(Duration::from_millis(1100));
    a.run_ok(&["request", &c.ticket(), "-j", "second"]);

    let status = a.status();
    let rtt = status["relay"]["rtt_ms"].as_f64().unwrap();
    assert!(rtt > 0.0, "{status}");
    let waiting = status["longest_waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{status}");
    assert_eq!(waiting[0]["direction"], "outgoing");
    assert_eq!(
        waiting[0]["node_id"], b.node_id,
        "the older request waits longest"
    );
    let human = a.run_ok(&["status"]);
    assert!(human.contains(", rtt "), "{human}");
    assert!(
        human.contains(&format!(
            "longest: {} was asked by this node",
            &b.node_id[..10]
        )),
        "{human}"
    );

    b.wait_for_state(&a.node_id, "incoming_pending");
    let status = b.status();
    assert_eq!(status["longest_waiting"][0]["direction"], "incoming");
    assert_eq!(status["longest_waiting"][0]["node_id"], a.node_id);
    let human = b.run_ok(&["status"]);
    assert!(human.contains("asked this node"), "{human}");
    assert!(human.lines().count() <= 24, "one screen:\n{human}");
}
