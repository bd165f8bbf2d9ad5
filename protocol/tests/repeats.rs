//! A stranger repeating its waiting request (#22 item 10): the repeats take no
//! replay-cache slot, so they evict no other peer's nonces, and their writes may
//! wait for a later commit (`Output::writes_may_wait`), so they cost no commit of
//! their own. Their mark is still stored, so none of them can be replayed into
//! meaning something later — after a decision, after a restart.

mod common;

use common::{Node, T0, request};
use kith_keys::NodeKey;
use kith_protocol::{AckStatus, Body, Command, Config, Envelope, Refusal, TrustState};

/// A signed request with a nonce of its own for every `n`.
fn repeat(from: &NodeKey, to: kith_keys::NodeId, words: &str, at_ms: u64, n: u32) -> Envelope {
    let mut nonce = [0x5au8; 16];
    nonce[..4].copy_from_slice(&n.to_le_bytes());
    Envelope::sign(
        Body {
            kind: request(words),
            from: from.node_id(),
            to,
            nonce,
            timestamp_ms: at_ms,
        },
        from,
    )
}

fn ack(out: &kith_protocol::Output) -> AckStatus {
    out.ack().cloned().expect("an envelope gets an ack")
}

fn approve(b: &mut Node, peer: &NodeKey, now: u64) -> kith_protocol::Output {
    b.ok(
        now,
        Command::Approve {
            peer: peer.node_id(),
            name: None,
            note: None,
            expires_at_ms: None,
        },
    )
}

#[test]
fn repeats_of_a_waiting_request_take_no_cache_slot_and_may_wait_for_a_commit() {
    let mut b = Node::new(1, Config::default());
    let (friend, stranger) = (common::key(2), common::key(3));
    // A trusted friend's envelope sits in the replay cache.
    b.recv(T0, repeat(&friend, b.id(), "hi", T0, 0));
    approve(&mut b, &friend, T0);
    let friends = repeat(&friend, b.id(), "hi again", T0 + 1, 1);
    let out = b.recv(T0 + 1, friends.clone());
    assert_eq!(ack(&out), AckStatus::Trusted);
    assert!(
        !out.writes_may_wait,
        "a trusted peer's envelope is no repeat"
    );
    let cached = b.m.nonce_cache_len();

    // The stranger asks: a new request is committed before it is acknowledged.
    let out = b.recv(T0 + 2, repeat(&stranger, b.id(), "let me in", T0 + 2, 0));
    assert_eq!(ack(&out), AckStatus::Pending);
    assert!(!out.writes_may_wait, "a new request must not wait");
    let cached = cached + 1;

    // Then it repeats itself more times than the cache holds, half of them with
    // new words (which are still stored: the operator reads the latest).
    let repeats = 20_000u32;
    for n in 1..=repeats {
        let at = T0 + 2 + u64::from(n);
        let words = if n % 2 == 0 { "let me in" } else { "please" };
        let out = b.recv(at, repeat(&stranger, b.id(), words, at, n));
        assert_eq!(ack(&out), AckStatus::Pending, "repeat {n}");
        assert!(out.writes_may_wait, "repeat {n}");
        assert!(out.send.is_empty() && out.events.is_empty(), "repeat {n}");
    }
    assert_eq!(b.m.nonce_cache_len(), cached, "repeats took cache slots");
    assert_eq!(b.m.pending_incoming(), 1);
    // So the friend's envelope is still refused by the cache as a replay.
    assert_eq!(
        ack(&b.recv(T0 + 3, friends)),
        AckStatus::Refused(Refusal::ReplayedNonce)
    );
    b.assert_store_matches();
}

/// Without the cache, the stored mark refuses every repeat again: while the
/// request waits, once it is decided, and after a restart.
#[test]
fn a_replayed_repeat_is_refused_while_waiting_after_a_decision_and_after_a_restart() {
    for decide in [None, Some(true), Some(false)] {
        let mut b = Node::new(1, Config::default());
        let s = common::key(3);
        b.recv(T0, repeat(&s, b.id(), "let me in", T0, 0));
        let repeats: Vec<Envelope> = (1..=5)
            .map(|n| repeat(&s, b.id(), "let me in", T0 + u64::from(n) * 10, n))
            .collect();
        for env in &repeats {
            assert!(b.recv(env.body.timestamp_ms, env.clone()).writes_may_wait);
        }
        let now = T0 + 100;
        let state = match decide {
            None => TrustState::IncomingPending,
            Some(true) => {
                approve(&mut b, &s, now);
                TrustState::Trusted
            }
            Some(false) => {
                b.ok(
                    now,
                    Command::Reject {
                        peer: s.node_id(),
                        reason: "no".into(),
                    },
                );
                TrustState::Rejected
            }
        };
        for restarted in [false, true] {
            if restarted {
                b.m = b.restored();
            }
            for env in &repeats {
                let before = b.snapshot();
                let out = b.recv(now + 1, env.clone());
                assert_eq!(
                    ack(&out),
                    AckStatus::Refused(Refusal::Stale),
                    "{decide:?}, restarted {restarted}"
                );
                assert!(out.writes.is_empty() && out.send.is_empty());
                assert_eq!(b.snapshot(), before);
                assert_eq!(b.m.peer(&s.node_id()).unwrap().state, state);
            }
        }
    }
}

#[test]
fn a_repeat_from_another_port_of_the_same_network_keeps_the_first_address() {
    let mut b = Node::new(1, Config::default());
    let s = common::key(3);
    let first = "192.0.2.7:40000".parse().unwrap();
    b.recv_from(
        T0,
        repeat(&s, b.id(), "hi", T0, 0),
        Some(s.node_id()),
        Some(first),
    );
    for port in 40001..40010u16 {
        let at = T0 + u64::from(port);
        let out = b.recv_from(
            at,
            repeat(&s, b.id(), "hi", at, u32::from(port)),
            Some(s.node_id()),
            Some(std::net::SocketAddr::from(([192, 0, 2, 7], port))),
        );
        assert_eq!(ack(&out), AckStatus::Pending);
    }
    assert_eq!(b.m.peer(&s.node_id()).unwrap().source, Some(first));
    // Another network is news: the record follows it.
    let elsewhere = "198.51.100.9:40000".parse().unwrap();
    b.recv_from(
        T0 + 50_000,
        repeat(&s, b.id(), "hi", T0 + 50_000, 99),
        Some(s.node_id()),
        Some(elsewhere),
    );
    assert_eq!(b.m.peer(&s.node_id()).unwrap().source, Some(elsewhere));
    b.assert_store_matches();
}
