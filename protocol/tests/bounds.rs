//! Bounded state under hostile peers: declined records are reaped after a TTL and
//! under a hard cap without reopening any replay, and requests that arrive through a
//! relay are bounded per relay.

mod common;

use std::net::SocketAddr;

use common::{Node, T0, envelope, request};
use kith_keys::{NodeId, NodeKey};
use kith_protocol::{AckStatus, Command, Config, DEFAULT_SKEW_MS, Kind, Refusal, TrustState};
use zeroize::Zeroizing;

/// A stranger's key: many more than the 256 `common::key` gives.
fn stranger(n: u32) -> NodeKey {
    let mut secret = Zeroizing::new([0xa5u8; 32]);
    secret[..4].copy_from_slice(&n.to_le_bytes());
    NodeKey::from_secret(&secret)
}

fn addr(n: u32) -> SocketAddr {
    SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 7444))
}

fn config() -> Config {
    Config {
        declined_ttl_ms: 60 * 60 * 1000,
        ..Config::default()
    }
}

fn ack(out: &kith_protocol::Output) -> AckStatus {
    out.ack().cloned().expect("an envelope gets an ack")
}

fn revoke(reason: &str) -> Kind {
    Kind::Revoke {
        reason: reason.into(),
    }
}

#[test]
fn strangers_that_ask_then_revoke_leave_at_most_max_declined_records() {
    let mut b = Node::new(
        1,
        Config {
            max_declined: 10,
            ..config()
        },
    );
    for n in 0..50u32 {
        let k = stranger(n);
        let now = T0 + u64::from(n) * 10;
        let out = b.recv_from(
            now,
            envelope(&k, b.id(), request("hi"), now, 1),
            Some(k.node_id()),
            Some(addr(n)),
        );
        assert_eq!(ack(&out), AckStatus::Pending);
        let out = b.recv_from(
            now + 1,
            envelope(&k, b.id(), revoke("bye"), now + 1, 2),
            Some(k.node_id()),
            Some(addr(n)),
        );
        assert_eq!(ack(&out), AckStatus::Revoked);
        assert!(
            b.m.peers().count() <= 10,
            "{} records after {n}",
            b.m.peers().count()
        );
    }
    assert_eq!(b.m.declined_records(), 10);
    // The newest ten are the ones kept.
    assert!(b.m.peer(&stranger(49).node_id()).is_some());
    assert!(b.m.peer(&stranger(39).node_id()).is_none());
    b.assert_store_matches();
}

#[test]
fn declined_records_are_reaped_after_the_ttl_and_not_before() {
    let mut b = Node::new(1, config());
    let ttl = b.m.config().declined_ttl_ms;
    let p = stranger(1);
    b.recv_from(
        T0,
        envelope(&p, b.id(), request("hi"), T0, 1),
        Some(p.node_id()),
        Some(addr(1)),
    );
    b.ok(
        T0,
        Command::Reject {
            peer: p.node_id(),
            reason: "no".into(),
        },
    );
    b.tick(T0 + ttl - 1);
    assert_eq!(
        b.m.next_deadline(),
        Some(T0 + ttl),
        "the reaping is scheduled"
    );
    assert_eq!(
        b.m.peer(&p.node_id()).map(|r| r.state),
        Some(TrustState::Rejected)
    );
    let out = b.tick(T0 + ttl);
    assert!(b.m.peer(&p.node_id()).is_none(), "reaped at its TTL");
    assert!(!out.writes.is_empty());
    assert_eq!(b.m.next_deadline(), None);
    b.assert_store_matches();
}

#[test]
fn a_record_we_rejected_is_kept_while_auto_approve_would_let_the_peer_in() {
    let mut b = Node::new(1, config());
    let ttl = b.m.config().declined_ttl_ms;
    let p = stranger(1);
    b.recv_from(
        T0,
        envelope(&p, b.id(), request("hi"), T0, 1),
        Some(p.node_id()),
        Some(addr(1)),
    );
    b.ok(
        T0,
        Command::Reject {
            peer: p.node_id(),
            reason: "no".into(),
        },
    );
    b.ok(T0, Command::SetAutoApprove(true));
    b.tick(T0 + 10 * ttl);
    assert_eq!(
        b.m.peer(&p.node_id()).map(|r| r.state),
        Some(TrustState::Rejected)
    );
    let now = T0 + 10 * ttl;
    let out = b.recv_from(
        now,
        envelope(&p, b.id(), request("again"), now, 2),
        Some(p.node_id()),
        Some(addr(1)),
    );
    assert_eq!(
        ack(&out),
        AckStatus::Pending,
        "our reject still stands against auto-approve"
    );
}

#[test]
fn a_record_reaped_at_its_ttl_lets_no_old_envelope_back_in() {
    // The shortest TTL there is: the skew window plus 1 ms.
    let mut b = Node::new(
        1,
        Config {
            declined_ttl_ms: 0,
            ..config()
        },
    );
    assert_eq!(b.m.config().declined_reap_after_ms(), DEFAULT_SKEW_MS + 1);
    let p = stranger(1);
    let first = envelope(&p, b.id(), request("hi"), T0, 1);
    let unseen = envelope(&p, b.id(), request("older, never delivered"), T0 - 5, 2);
    b.recv_from(T0, first.clone(), Some(p.node_id()), Some(addr(1)));
    b.ok(
        T0,
        Command::Reject {
            peer: p.node_id(),
            reason: "no".into(),
        },
    );
    let reaped_at = T0 + DEFAULT_SKEW_MS + 1;
    b.tick(reaped_at - 1);
    assert!(
        b.m.peer(&p.node_id()).is_some(),
        "kept while its mark still matters"
    );
    b.tick(reaped_at);
    assert!(b.m.peer(&p.node_id()).is_none());
    for old in [first, unseen] {
        let out = b.recv_from(reaped_at, old, Some(p.node_id()), Some(addr(1)));
        assert!(
            matches!(ack(&out), AckStatus::Refused(Refusal::ClockSkew { .. })),
            "{:?}",
            out.reply
        );
        assert!(b.m.peer(&p.node_id()).is_none(), "no record came back");
    }
}

#[test]
fn a_record_reaped_early_by_the_cap_lets_no_old_envelope_back_in() {
    let mut b = Node::new(
        1,
        Config {
            max_declined: 1,
            ..config()
        },
    );
    let (p, q) = (stranger(1), stranger(2));
    let p_first = envelope(&p, b.id(), request("hi"), T0, 1);
    let p_unseen = envelope(&p, b.id(), request("older, never delivered"), T0 - 5, 2);
    b.recv_from(T0, p_first.clone(), Some(p.node_id()), Some(addr(1)));
    b.ok(
        T0,
        Command::Reject {
            peer: p.node_id(),
            reason: "no".into(),
        },
    );
    b.recv_from(
        T0 + 10,
        envelope(&q, b.id(), request("hi"), T0 + 10, 1),
        Some(q.node_id()),
        Some(addr(2)),
    );
    b.ok(
        T0 + 10,
        Command::Reject {
            peer: q.node_id(),
            reason: "no".into(),
        },
    );
    assert!(
        b.m.peer(&p.node_id()).is_none(),
        "the cap reaped the older one"
    );
    // The one applied is also in the nonce cache; the one never seen only the floor stops.
    let out = b.recv_from(T0 + 20, p_first, Some(p.node_id()), Some(addr(1)));
    assert!(
        matches!(ack(&out), AckStatus::Refused(_)),
        "{:?}",
        out.reply
    );
    let out = b.recv_from(T0 + 20, p_unseen, Some(p.node_id()), Some(addr(1)));
    assert_eq!(ack(&out), AckStatus::Refused(Refusal::Stale));
    assert!(b.m.peer(&p.node_id()).is_none(), "no record came back");
    // A request signed after the reaping is a new request.
    let now = T0 + 30;
    let out = b.recv_from(
        now,
        envelope(&p, b.id(), request("again"), now, 3),
        Some(p.node_id()),
        Some(addr(1)),
    );
    assert_eq!(ack(&out), AckStatus::Pending);
}

#[test]
fn only_declined_records_are_reaped() {
    let mut b = Node::new(
        1,
        Config {
            max_declined: 0,
            ..config()
        },
    );
    let (asked, asker) = (stranger(1), stranger(2));
    // A request of ours that stands, and one of theirs waiting for our operator.
    b.ok(
        T0,
        Command::Request {
            to: asked.node_id(),
            justification: "hi".into(),
            address: None,
        },
    );
    b.recv_from(
        T0,
        envelope(&asker, b.id(), request("hi"), T0, 1),
        Some(asker.node_id()),
        Some(addr(2)),
    );
    b.tick(T0 + 6 * 24 * 3600 * 1000);
    assert_eq!(
        b.m.peer(&asked.node_id()).map(|r| r.state),
        Some(TrustState::OutgoingPending)
    );
    assert_eq!(
        b.m.peer(&asker.node_id()).map(|r| r.state),
        Some(TrustState::IncomingPending)
    );
    // Their decline spends our request: the record is declined, and goes at once.
    let now = T0 + 6 * 24 * 3600 * 1000 + 1;
    let out = b.recv_from(
        now,
        envelope(
            &asked,
            b.id(),
            Kind::Reject {
                reason: "no".into(),
            },
            now,
            1,
        ),
        Some(asked.node_id()),
        Some(addr(1)),
    );
    assert_eq!(ack(&out), AckStatus::Rejected);
    assert!(
        b.m.peer(&asked.node_id()).is_none(),
        "max_declined 0 keeps none"
    );
    b.assert_store_matches();
}

fn relayed(b: &mut Node, k: &NodeKey, relay: NodeId, now: u64) -> AckStatus {
    let env = envelope(k, b.id(), request("via a relay"), now, 1);
    let out = b.handle(
        now,
        kith_protocol::Input::Envelope {
            envelope: env,
            transport_peer: None,
            source: None,
            via_relay: Some(relay),
        },
    );
    ack(&out)
}

#[test]
fn requests_through_a_relay_are_bounded_per_relay() {
    let mut b = Node::new(
        1,
        Config {
            max_pending_per_relay: 3,
            ..config()
        },
    );
    let (r1, r2) = (stranger(1000).node_id(), stranger(1001).node_id());
    for n in 0..3 {
        assert_eq!(relayed(&mut b, &stranger(n), r1, T0), AckStatus::Pending);
    }
    assert_eq!(
        relayed(&mut b, &stranger(3), r1, T0),
        AckStatus::Refused(Refusal::PendingFull)
    );
    assert!(
        b.m.peer(&stranger(3).node_id()).is_none(),
        "a refusal stores nothing"
    );
    assert_eq!(
        relayed(&mut b, &stranger(4), r2, T0),
        AckStatus::Pending,
        "another relay has its own bucket"
    );
    // A decision frees the slot.
    b.ok(
        T0 + 1,
        Command::Dismiss {
            peer: stranger(0).node_id(),
        },
    );
    assert_eq!(
        relayed(&mut b, &stranger(3), r1, T0 + 2),
        AckStatus::Pending
    );
    assert_eq!(b.m.pending_incoming(), 4);
}
