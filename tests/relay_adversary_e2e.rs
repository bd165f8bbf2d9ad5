//! A hostile relay against a real private node: the test itself plays the node's
//! home relay (speaking the relay wire messages over real QUIC), registers the node,
//! then pushes altered, replayed and stale envelopes. The node refuses each with its
//! own reason and its state does not change; only the untouched envelope is applied.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestNode;
use kith_keys::NodeKey;
use kith_node::ticket::Ticket;
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{AckStatus, Body, Envelope, Kind, Message, Reach, RelayNotice};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn request(from: &NodeKey, to: kith_keys::NodeId, text: &str, nonce: u8, at: u64) -> Envelope {
    Envelope::sign(
        Body {
            kind: Kind::Request {
                justification: text.into(),
            },
            from: from.node_id(),
            to,
            nonce: [nonce; 16],
            timestamp_ms: at,
        },
        from,
    )
}

/// Serves the node's own streams to its "relay": registration, and nothing else.
async fn serve_registration(conn: quinn::Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let observed = conn.remote_address();
        tokio::spawn(async move {
            let Ok(bytes) = recv.read_to_end(MAX_FRAME_LEN + 4).await else {
                return;
            };
            let answer = match decode_frame::<Message>(&bytes) {
                Ok(Some((Message::Register { .. }, _))) => {
                    Message::RelayNotice(RelayNotice::Registered {
                        observed,
                        direct: None,
                    })
                }
                _ => Message::Pong { id: 0 },
            };
            let _ = send.write_all(&encode_frame(&answer).unwrap()).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        });
    }
}

/// Pushes `envelope` to the node as its relay would; the node's answer.
async fn push(conn: &quinn::Connection, envelope: Envelope) -> AckStatus {
    let message = Message::Relayed {
        envelope,
        reach: Reach::default(),
    };
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode_frame(&message).unwrap())
            .await
            .unwrap();
        send.finish().unwrap();
        let bytes = recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
        decode_frame::<Message>(&bytes).unwrap().unwrap().0
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the node answers a push")
    {
        Message::Ack(ack) => ack.status,
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn snapshot(node: &TestNode) -> (serde_json::Value, serde_json::Value) {
    (node.json(&["peers"]), node.json(&["pending"]))
}

#[test]
fn a_relay_that_alters_or_replays_an_envelope_gets_it_refused_and_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay_key = NodeKey::generate();
    let endpoint = runtime
        .block_on(async {
            tls::make_relay_endpoint(
                &tls::Identity::new(&relay_key).unwrap(),
                "127.0.0.1:0".parse().unwrap(),
            )
        })
        .unwrap();
    let addr: SocketAddr = endpoint.local_addr().unwrap();
    let ticket = Ticket::direct(relay_key.node_id(), vec![addr]).to_string();

    // The private node makes the test its home relay.
    let accepted = runtime.spawn({
        let endpoint = endpoint.clone();
        async move {
            let incoming = endpoint.accept().await.expect("the node connects");
            let conn = incoming.await.expect("handshake");
            tokio::spawn(serve_registration(conn.clone()));
            conn
        }
    });
    let mut node = TestNode::init();
    node.start_with(&["--private", "--relay", &ticket]);
    let conn = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), accepted).await })
        .expect("the node dialled its relay")
        .unwrap();
    node.wait_registered(1);
    let node_id = node.node_id.parse().unwrap();
    let sender = NodeKey::generate();
    let before = snapshot(&node);

    // Altered after signing: the justification, the timestamp.
    let mut altered = request(&sender, node_id, "harmless", 1, now_ms());
    altered.body.kind = Kind::Request {
        justification: "changed by the relay".into(),
    };
    assert_eq!(
        runtime.block_on(push(&conn, altered)),
        AckStatus::Refused(Refusal::BadSignature)
    );
    let mut shifted = request(&sender, node_id, "harmless", 2, now_ms());
    shifted.body.timestamp_ms += 1;
    assert_eq!(
        runtime.block_on(push(&conn, shifted)),
        AckStatus::Refused(Refusal::BadSignature)
    );
    // A relay "signing" for someone else.
    let mut forged = request(&relay_key, node_id, "I am the sender", 3, now_ms());
    forged.body.from = sender.node_id();
    assert_eq!(
        runtime.block_on(push(&conn, forged)),
        AckStatus::Refused(Refusal::BadSignature)
    );
    // Held back past the skew window before being delivered.
    let stale = request(&sender, node_id, "old news", 4, now_ms() - 10 * 60 * 1000);
    assert!(matches!(
        runtime.block_on(push(&conn, stale)),
        AckStatus::Refused(Refusal::ClockSkew { .. })
    ));
    assert_eq!(snapshot(&node), before, "no refused push changed anything");

    // The genuine envelope is applied once...
    let genuine = request(&sender, node_id, "please", 5, now_ms());
    assert_eq!(
        runtime.block_on(push(&conn, genuine.clone())),
        AckStatus::Pending
    );
    node.wait_for_state(&sender.node_id().to_string(), "incoming_pending");
    let applied = snapshot(&node);
    assert_ne!(applied, before);

    // ...and a replay of it is refused without touching the state.
    let replayed = runtime.block_on(push(&conn, genuine));
    assert_eq!(replayed, AckStatus::Refused(Refusal::ReplayedNonce));
    assert_eq!(snapshot(&node), applied, "the replay changed nothing");
    let refusals = node
        .run_ok(&["--json", "events"])
        .lines()
        .filter(|l| l.contains("\"refused\""))
        .count();
    assert_eq!(refusals, 5, "each refusal is an event");

    conn.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
    node.stop();
}
