//! The `--on-request` hook under a flood: a real `kith run` whose hook is slow gets
//! more requests from fresh identities than its hook can run or queue, and the
//! hook is still told, in one summary run, how many it did not see.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TestNode;
use kith_keys::{NodeId, NodeKey};
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, encode_frame};
use kith_protocol::wire::{Body, Envelope, Kind, Message};

/// More than the hook's 4 running and 64 queued.
const FLOOD: usize = 100;

/// Sends one request to `to` from a fresh identity, from `from`.
async fn request_from_stranger(from: SocketAddr, to: SocketAddr, to_id: NodeId) {
    let key = NodeKey::generate();
    let identity = tls::Identity::new(&key).unwrap();
    let endpoint = tls::make_endpoint(&identity, from).unwrap();
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let envelope = Envelope::sign(
        Body {
            kind: Kind::Request {
                justification: "flood".into(),
            },
            from: key.node_id(),
            to: to_id,
            nonce: [1; 16],
            timestamp_ms: at_ms,
        },
        &key,
    );
    let conn = tls::dial(&endpoint, &identity, to, to_id).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&Message::Envelope(envelope)).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
}

#[test]
fn a_flood_of_requests_is_summarised_to_a_slow_hook() {
    let mut b = TestNode::init();
    let log = b.data_dir().join("hook.log");
    let hook = format!(
        "echo \"$KITH_EVENT ${{KITH_DROPPED:-0}}\" >> '{}'; sleep 5",
        log.display()
    );
    b.start_with(&["--on-request", &hook]);
    let to = b.listen_addr();
    let to_id: NodeId = b.node_id.parse().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for i in 0..FLOOD {
            // A node takes 16 pending requests per /24: spread the strangers out.
            let from = SocketAddr::from(([127, 0, 20 + (i / 16) as u8, 1], 0));
            request_from_stranger(from, to, to_id).await;
        }
    });
    let pending = b.json(&["pending"]).as_array().unwrap().len();
    assert_eq!(pending, FLOOD, "every request is pending");

    // The first hooks run for 5 s; the next free slot runs the summary.
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("requests_dropped ")) {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the hook was never told of the dropped requests; it saw:\n{text}\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let dropped: usize = summary["requests_dropped ".len()..].parse().unwrap();
    // 4 running and 64 queued were not dropped; hooks that ended during the flood
    // freed room, so at most that many.
    assert!(
        (1..=FLOOD - 68).contains(&dropped),
        "{dropped} dropped of {FLOOD}"
    );
    let runs = std::fs::read_to_string(&log).unwrap();
    assert!(
        runs.lines()
            .filter(|l| l.starts_with("request_received "))
            .count()
            >= 4,
        "{runs}"
    );
}
