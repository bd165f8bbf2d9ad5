//! A hostile peer against a real `kith run` daemon: envelopes built and signed by the
//! test itself and sent over real QUIC. Forged, misaddressed, impersonating and
//! replayed envelopes are refused with their own reason and change nothing — also
//! after the daemon restarts.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestNode;
use kith_keys::NodeKey;
use kith_keys::keystore;
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{AckStatus, Body, Envelope, Kind, Message, PROTOCOL_VERSION};

fn node_key(node: &TestNode) -> NodeKey {
    keystore::open(&node.data_dir().join("keystore"), None)
        .unwrap()
        .node_key()
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn request(from: &NodeKey, to: kith_keys::NodeId, justification: &str, nonce: u8) -> Envelope {
    Envelope::sign(
        Body {
            kind: Kind::Request {
                justification: justification.into(),
            },
            from: from.node_id(),
            to,
            nonce: [nonce; 16],
            timestamp_ms: now_ms(),
        },
        from,
    )
}

/// Dials `to` as `as_key`, sends one message, returns the answer.
fn exchange(as_key: &NodeKey, to: &TestNode, message: &Message) -> Message {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let identity = tls::Identity::new(as_key).unwrap();
        let endpoint = tls::make_endpoint(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr: SocketAddr = to.json(&["status"])["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            tls::dial(&endpoint, &identity, addr, to.node_id.parse().unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode_frame(message).unwrap())
            .await
            .unwrap();
        send.finish().unwrap();
        let bytes =
            tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(MAX_FRAME_LEN + 4))
                .await
                .unwrap()
                .unwrap();
        let (answer, _) = decode_frame::<Message>(&bytes).unwrap().unwrap();
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        answer
    })
}

fn refused(answer: &Message) -> Refusal {
    match answer {
        Message::Ack(ack) => match &ack.status {
            AckStatus::Refused(r) => r.clone(),
            other => panic!("expected a refusal, got {other:?}"),
        },
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn snapshot(node: &TestNode) -> (serde_json::Value, serde_json::Value) {
    (node.json(&["peers"]), node.json(&["pending"]))
}

#[test]
fn forged_misaddressed_and_impersonating_envelopes_change_nothing() {
    let mut b = TestNode::init();
    b.start();
    let b_id = b.node_id.parse().unwrap();
    let mallory = NodeKey::generate();
    let victim = NodeKey::generate();
    let before = snapshot(&b);

    let mut forged = request(&mallory, b_id, "harmless", 1);
    if let Kind::Request { justification } = &mut forged.body.kind {
        *justification = "altered after signing".into();
    }
    assert_eq!(
        refused(&exchange(&mallory, &b, &Message::Envelope(forged))),
        Refusal::BadSignature
    );

    let elsewhere = request(&mallory, NodeKey::generate().node_id(), "not for you", 2);
    assert_eq!(
        refused(&exchange(&mallory, &b, &Message::Envelope(elsewhere))),
        Refusal::WrongAddressee
    );

    // Signed by the victim (say, captured), but sent over Mallory's own connection.
    let theirs = request(&victim, b_id, "I am the victim", 3);
    assert_eq!(
        refused(&exchange(&mallory, &b, &Message::Envelope(theirs))),
        Refusal::SenderMismatch
    );

    let mut old = request(&mallory, b_id, "from the past", 4);
    old.body.timestamp_ms -= 3_600_000;
    let old = Envelope::sign(old.body, &mallory);
    assert!(matches!(
        refused(&exchange(&mallory, &b, &Message::Envelope(old))),
        Refusal::ClockSkew { .. }
    ));

    let mut future = request(&mallory, b_id, "v2", 5);
    future.version = PROTOCOL_VERSION + 1;
    assert_eq!(
        refused(&exchange(&mallory, &b, &Message::Envelope(future))),
        Refusal::UnknownVersion(PROTOCOL_VERSION + 1)
    );

    assert_eq!(
        refused(&exchange(&mallory, &b, &Message::Ping { id: 7 })),
        Refusal::NotTrusted
    );
    assert_eq!(snapshot(&b), before, "no refused message changed B's state");
}

#[test]
fn a_replay_is_refused_before_and_after_restart() {
    let a = TestNode::init();
    let mut b = TestNode::init();
    b.start();
    let a_key = node_key(&a);
    let b_id = b.node_id.parse().unwrap();

    let captured = request(&a_key, b_id, "once only", 9);
    match exchange(&a_key, &b, &Message::Envelope(captured.clone())) {
        Message::Ack(ack) => assert_eq!(ack.status, AckStatus::Pending),
        other => panic!("{other:?}"),
    }
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["reject", &a.node_id, "--reason", "no"]);
    let before = snapshot(&b);

    let again = refused(&exchange(&a_key, &b, &Message::Envelope(captured.clone())));
    assert!(
        matches!(again, Refusal::ReplayedNonce | Refusal::Stale),
        "{again:?}"
    );
    assert_eq!(snapshot(&b), before);

    // The nonce cache is gone after a restart; the persisted high-water mark is not.
    b.restart();
    let after_restart = refused(&exchange(&a_key, &b, &Message::Envelope(captured)));
    assert_eq!(after_restart, Refusal::Stale);
    assert_eq!(b.peer_state(&a.node_id).as_deref(), Some("rejected"));
    assert_eq!(snapshot(&b).1, before.1, "no pending request reappeared");
}

#[test]
fn a_denied_node_changes_nothing_even_with_valid_envelopes() {
    let a = TestNode::init();
    let mut b = TestNode::init();
    b.start();
    b.run_ok(&["ignore", &a.node_id]);
    let before = snapshot(&b);
    let a_key = node_key(&a);
    let answer = exchange(
        &a_key,
        &b,
        &Message::Envelope(request(&a_key, b.node_id.parse().unwrap(), "hi", 1)),
    );
    match answer {
        Message::Ack(ack) => assert_eq!(
            ack.status,
            AckStatus::Pending,
            "denied peers are answered quietly"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&b), before);
}

#[test]
fn garbage_on_a_stream_is_refused_as_malformed() {
    let mut b = TestNode::init();
    b.start();
    let key = NodeKey::generate();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = runtime.block_on(async {
        let identity = tls::Identity::new(&key).unwrap();
        let endpoint = tls::make_endpoint(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr: SocketAddr = b.json(&["status"])["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let conn = tls::dial(&endpoint, &identity, addr, b.node_id.parse().unwrap())
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        send.finish().unwrap();
        let bytes = recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
        decode_frame::<Message>(&bytes).unwrap().unwrap().0
    });
    assert_eq!(refused(&answer), Refusal::Malformed);
    assert!(b.json(&["peers"]).as_array().unwrap().is_empty());
}

/// Dials `to` as `as_key` once and sends each message on its own stream, in turn.
fn flood(as_key: &NodeKey, to: &TestNode, messages: &[Message]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = to.listen_addr();
    runtime.block_on(async {
        let identity = tls::Identity::new(as_key).unwrap();
        let endpoint = tls::make_endpoint(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = tls::dial(&endpoint, &identity, addr, to.node_id.parse().unwrap())
            .await
            .unwrap();
        for message in messages {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&encode_frame(message).unwrap())
                .await
                .unwrap();
            send.finish().unwrap();
            tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(MAX_FRAME_LEN + 4))
                .await
                .unwrap()
                .unwrap();
        }
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    });
}

#[test]
fn a_flood_of_refused_envelopes_is_counted_and_leaves_the_operators_events() {
    let mut a = TestNode::init();
    let mut b = TestNode::init();
    a.start();
    b.start();
    a.run_ok(&[
        "request",
        &b.ticket(),
        "--justification",
        "the one that matters",
    ]);
    b.wait_for_state(&a.node_id, "incoming_pending");

    // More refusals than `kith events` keeps (1,000), each misaddressed.
    let mallory = NodeKey::generate();
    let elsewhere = NodeKey::generate().node_id();
    let flood_size = 1_100u32;
    let messages: Vec<Message> = (0..flood_size)
        .map(|n| {
            let mut env = request(&mallory, elsewhere, "noise", 0);
            env.body.nonce[..4].copy_from_slice(&n.to_le_bytes());
            Message::Envelope(Envelope::sign(env.body, &mallory))
        })
        .collect();
    flood(&mallory, &b, &messages);

    let status = b.status();
    assert_eq!(
        status["refused"]["wrong_addressee"],
        u64::from(flood_size),
        "{status}"
    );
    let human = b.run_ok(&["status"]);
    assert!(human.contains("wrong_addressee 1100"), "{human}");
    let events = b.run_ok(&["--json", "events"]);
    let kinds: Vec<(String, String)> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["data"]["node_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["data"]["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&(a.node_id.clone(), "request_received".into())),
        "the request's event was flushed by the flood"
    );
    let refused = kinds.iter().filter(|(_, k)| k == "refused").count();
    assert!(refused <= 20, "{refused} refused events went through");
}
