//! Clock jumps: a clock that goes back must not make our new envelopes look
//! stale or replayed to a peer that remembers us (and the node says what it
//! did); a clock that leaps forward expires approvals exactly as time would.

mod common;

use common::*;
use kith_protocol::{AckStatus, Command, Config, EventKind, Kind, Output, TrustState};

fn request_to(to: kith_keys::NodeId) -> Command {
    Command::Request {
        to,
        justification: "hi".into(),
        address: None,
    }
}

fn only(out: &Output) -> kith_protocol::Envelope {
    assert_eq!(out.send.len(), 1, "{out:?}");
    out.send[0].clone()
}

fn behind(out: &Output) -> Option<u64> {
    out.events.iter().find_map(|e| match e.kind {
        EventKind::ClockBehind { behind_ms } => Some(behind_ms),
        _ => None,
    })
}

#[test]
fn a_backwards_jump_keeps_our_timestamps_rising_and_says_so() {
    let (mut a, mut b) = (
        Node::new(1, Config::default()),
        Node::new(2, Config::default()),
    );
    let later = T0 + 60_000;
    let req = only(&a.ok(later, request_to(b.id())));
    b.recv(later, req);
    // a's clock goes back a minute; it re-sends its request.
    let out = a.ok(T0, Command::Resend { peer: b.id() });
    let again = only(&out);
    assert!(again.body.timestamp_ms > later, "not stale at b");
    assert!(behind(&out).is_some_and(|ms| ms >= 60_000), "{out:?}");
    assert!(b.recv(T0 + 1, again).refusal().is_none());
}

#[test]
fn a_forgotten_peer_still_sees_our_new_envelopes_as_new() {
    // a asks b, b rejects; a forgets b, and a's clock then stands a minute
    // behind. a's new request must not look stale to b, which remembers a.
    let (mut a, mut b) = (
        Node::new(1, Config::default()),
        Node::new(2, Config::default()),
    );
    let later = T0 + 60_000;
    b.recv(later, only(&a.ok(later, request_to(b.id()))));
    let rej = only(&b.ok(
        later,
        Command::Reject {
            peer: a.id(),
            reason: "no".into(),
        },
    ));
    a.recv(later, rej);
    a.ok(later, Command::Forget { peer: b.id() });
    let out = a.ok(T0, request_to(b.id()));
    let req = only(&out);
    assert!(behind(&out).is_some(), "the node says its clock is behind");
    let ack = b.recv(T0, req);
    assert_eq!(ack.ack(), Some(&AckStatus::Pending), "{ack:?}");
    assert_eq!(
        b.m.peer(&a.id()).map(|r| r.state),
        Some(TrustState::IncomingPending)
    );
}

#[test]
fn a_forward_jump_expires_approvals_with_the_same_events_as_time() {
    let run = |tick_at: u64| {
        let (mut a, mut b) = (
            Node::new(1, Config::default()),
            Node::new(2, Config::default()),
        );
        b.recv(T0, only(&a.ok(T0, request_to(b.id()))));
        let acc = only(&b.ok(
            T0,
            Command::Approve {
                peer: a.id(),
                name: None,
                note: None,
                expires_at_ms: Some(T0 + 3_600_000),
            },
        ));
        a.recv(T0, acc);
        assert!(!b.m.is_trusted(&a.id(), tick_at), "fails closed at once");
        let out = b.tick(tick_at);
        let kinds: Vec<EventKind> = out.events.iter().map(|e| e.kind.clone()).collect();
        let sent: Vec<Kind> = out.send.iter().map(|e| e.body.kind.clone()).collect();
        // The peer hears of it either way.
        let told = a.recv(tick_at, only(&out));
        assert_eq!(told.ack(), Some(&AckStatus::Pending));
        assert_eq!(
            a.m.peer(&b.id()).map(|r| r.state),
            Some(TrustState::OutgoingPending)
        );
        (kinds, sent)
    };
    let on_time = run(T0 + 3_600_000);
    let after_a_jump = run(T0 + 30 * 86_400_000);
    assert_eq!(on_time, after_a_jump);
    assert_eq!(on_time.0, vec![EventKind::TrustExpired]);
    assert_eq!(on_time.1, vec![Kind::Expire]);
}
