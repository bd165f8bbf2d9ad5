//! A hostile peer against a real `kith run` daemon: envelopes built and signed by the
//! test itself and sent over real QUIC. Forged, misaddressed, impersonating and
//! replayed envelopes are refused with their own reason and change nothing — also
//! after the daemon restarts.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TestNode;
use common::metrics::{metrics_url, sample, scrape};
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

/// #22 item 10: a waiting stranger that repeats its request hundreds of times
/// must not buy a durable commit per repeat, and none of its repeats can be
/// replayed into reopening the request once decided, also after a restart.
#[test]
fn a_stranger_repeating_its_request_costs_no_commit_per_repeat_nor_reopens_it_later() {
    let mut b = TestNode::init();
    b.start_with(&["--metrics", "127.0.0.1:0"]);
    let url = metrics_url(&b);
    let stranger = NodeKey::generate();
    let b_id = b.node_id.parse().unwrap();
    let stranger_id = stranger.node_id().to_string();
    let stranger_key = stranger.clone();
    let first = request(&stranger, b_id, "let me in", 0);
    match exchange(&stranger, &b, &Message::Envelope(first)) {
        Message::Ack(ack) => assert_eq!(ack.status, AckStatus::Pending),
        other => panic!("{other:?}"),
    }
    b.wait_for_state(&stranger_id, "incoming_pending");
    let commits = || sample(&scrape(&url), "kith_store_commit_seconds_count");
    let before = commits();

    // Eight streams at once, each repeating as fast as it is answered, for two
    // seconds. Each repeat is new to the node (a millisecond above the last one
    // signed); one that overtakes a newer one is refused as stale.
    let start = now_ms();
    let signed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = signed.clone();
    let sign = move |n: u64| {
        let mut env = request(&stranger, b_id, "let me in", 0);
        env.body.nonce[..8].copy_from_slice(&(n + 1).to_le_bytes());
        env.body.timestamp_ms = start + 1 + n;
        let env = Envelope::sign(env.body, &stranger);
        log.lock().unwrap().push(env.clone());
        Some(Message::Envelope(env))
    };
    let began = Instant::now();
    let answers = keep_asking(&stranger_key, &b, 8, Duration::from_secs(2), sign);
    let elapsed = began.elapsed().as_secs_f64();
    let mut applied = 0.0;
    for answer in answers {
        match answer {
            Message::Ack(ack) if ack.status == AckStatus::Pending => applied += 1.0,
            Message::Ack(ack) => assert_eq!(ack.status, AckStatus::Refused(Refusal::Stale)),
            other => panic!("{other:?}"),
        }
    }
    let spent = commits() - before;
    eprintln!("{applied} repeats applied in {elapsed:.1} s, {spent} commits");
    assert!(applied >= 8.0, "only {applied} repeats were applied");
    // Their writes wait for each other, up to a quarter of a second: at most four
    // commits a second however fast they come (before: one commit per repeat).
    assert!(
        spent <= 4.0 * elapsed + 2.0,
        "{spent} commits for {applied} repeats in {elapsed:.1} s"
    );
    assert_eq!(b.json(&["pending"]).as_array().unwrap().len(), 1);

    b.run_ok(&["reject", &stranger_id, "--reason", "no"]);
    b.restart();
    let repeats = signed.lock().unwrap().clone();
    for env in repeats.iter().step_by(repeats.len().div_ceil(10)) {
        // Every repeat's mark was stored before it was answered.
        let answer = exchange(&stranger_key, &b, &Message::Envelope(env.clone()));
        assert_eq!(refused(&answer), Refusal::Stale);
    }
    assert_eq!(b.peer_state(&stranger_id).as_deref(), Some("rejected"));
    assert!(b.json(&["pending"]).as_array().unwrap().is_empty());
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
    let messages = messages.to_vec();
    keep_asking(as_key, to, 1, Duration::MAX, move |n| {
        messages.get(n as usize).cloned()
    });
}

/// Dials `to` as `as_key` once; `senders` tasks each send `next(n)` on a stream of
/// its own and wait for the answer, in turn, until `next` returns `None` or `time`
/// has passed. Returns the answers.
fn keep_asking(
    as_key: &NodeKey,
    to: &TestNode,
    senders: usize,
    time: Duration,
    next: impl Fn(u64) -> Option<Message> + Send + Sync + 'static,
) -> Vec<Message> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = to.listen_addr();
    let next = Arc::new(next);
    runtime.block_on(async {
        let identity = tls::Identity::new(as_key).unwrap();
        let endpoint = tls::make_endpoint(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = tls::dial(&endpoint, &identity, addr, to.node_id.parse().unwrap())
            .await
            .unwrap();
        let until = Instant::now().checked_add(time);
        let count = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..senders {
            let (conn, next, count) = (conn.clone(), next.clone(), count.clone());
            tasks.spawn(async move {
                let mut answers = Vec::new();
                while until.is_none_or(|t| Instant::now() < t) {
                    let Some(message) = next(count.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let (mut send, mut recv) = conn.open_bi().await.unwrap();
                    send.write_all(&encode_frame(&message).unwrap())
                        .await
                        .unwrap();
                    send.finish().unwrap();
                    let bytes = tokio::time::timeout(
                        Duration::from_secs(5),
                        recv.read_to_end(MAX_FRAME_LEN + 4),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                    answers.push(decode_frame::<Message>(&bytes).unwrap().unwrap().0);
                }
                answers
            });
        }
        let answers = tasks.join_all().await.into_iter().flatten().collect();
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        answers
    })
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
