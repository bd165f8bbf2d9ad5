//! One test per state transition. Each checks the new record, exactly what was
//! sent, the events and the audit entries, and that the store built from the
//! writes matches the machine (outputs are complete).

mod common;

use common::*;
use kith_keys::NodeId;
use kith_protocol::{
    AckStatus, AuditAction, Command, CommandError, Config, DEFAULT_PENDING_TTL_MS, Decider,
    Envelope, EventKind, Kind, MAX_NAME_CHARS, MAX_TEXT_CHARS, Output, Refusal, Reply, StoreWrite,
    TextField, TrustState,
};

fn pair() -> (Node, Node) {
    (
        Node::new(1, Config::default()),
        Node::new(2, Config::default()),
    )
}

fn state(node: &Node, peer: NodeId) -> Option<TrustState> {
    node.m.peer(&peer).map(|r| r.state)
}

fn only_sent(out: &Output) -> Envelope {
    assert_eq!(
        out.send.len(),
        1,
        "expected one envelope, got {:?}",
        out.send
    );
    out.send[0].clone()
}

fn events(out: &Output) -> Vec<EventKind> {
    out.events.iter().map(|e| e.kind.clone()).collect()
}

fn audits(out: &Output) -> Vec<AuditAction> {
    out.writes
        .iter()
        .filter_map(|w| match w {
            StoreWrite::Audit(a) => Some(a.action.clone()),
            _ => None,
        })
        .collect()
}

fn request_cmd(to: NodeId, text: &str) -> Command {
    Command::Request {
        to,
        justification: text.into(),
        address: None,
    }
}

fn approve_cmd(peer: NodeId) -> Command {
    Command::Approve {
        peer,
        name: None,
        note: None,
        expires_at_ms: None,
    }
}

/// `a` asks `b`; the request reaches `b`. Returns the request envelope.
fn ask(a: &mut Node, b: &mut Node, now: u64) -> Envelope {
    let req = only_sent(&a.ok(now, request_cmd(b.id(), "let me in")));
    assert_eq!(b.recv(now, req.clone()).ack(), Some(&AckStatus::Pending));
    req
}

/// Full handshake: `a` asks, `b` approves, `a` receives the accept.
fn handshake(a: &mut Node, b: &mut Node, now: u64) {
    ask(a, b, now);
    let accept = only_sent(&b.ok(now + 1, approve_cmd(a.id())));
    assert_eq!(a.recv(now + 2, accept).ack(), Some(&AckStatus::Trusted));
    assert!(a.m.is_trusted(&b.id(), now + 2) && b.m.is_trusted(&a.id(), now + 2));
}

/// Asserts a failed command changed nothing.
fn fails(node: &mut Node, now: u64, cmd: Command, want: CommandError) {
    let before = node.snapshot();
    let out = node.cmd(now, cmd);
    assert_eq!(out.reply, Reply::Failed(want));
    assert!(out.writes.is_empty() && out.send.is_empty() && out.events.is_empty());
    assert_eq!(node.snapshot(), before);
}

// ----- Request command -------------------------------------------------------

#[test]
fn request_command_creates_outgoing_pending_and_sends_a_signed_request() {
    let (mut a, b) = pair();
    let addr = Some("203.0.113.5:7444".parse().unwrap());
    let out = a.ok(
        T0,
        Command::Request {
            to: b.id(),
            justification: "we met at the meetup".into(),
            address: addr,
        },
    );
    let env = only_sent(&out);
    env.verify().unwrap();
    assert_eq!(env.body.from, a.id());
    assert_eq!(env.body.to, b.id());
    assert_eq!(env.body.timestamp_ms, T0);
    assert_eq!(env.body.kind, request("we met at the meetup"));
    let rec = a.m.peer(&b.id()).unwrap();
    assert_eq!(rec.state, TrustState::OutgoingPending);
    assert_eq!(rec.justification.as_deref(), Some("we met at the meetup"));
    assert_eq!(rec.address, addr);
    assert_eq!(rec.last_sent_ms, T0);
    assert!(rec.consent.is_some());
    assert_eq!(events(&out), vec![EventKind::RequestSent]);
    assert_eq!(audits(&out), vec![AuditAction::RequestSent]);
    a.assert_store_matches();
}

#[test]
fn our_timestamps_strictly_increase_even_within_one_ms_or_backwards() {
    let (mut a, b) = pair();
    let first = only_sent(&a.ok(T0, request_cmd(b.id(), "1")));
    let second = only_sent(&a.ok(T0, request_cmd(b.id(), "2")));
    let third = only_sent(&a.ok(T0 - 5_000, Command::Resend { peer: b.id() }));
    assert_eq!(first.body.timestamp_ms, T0);
    assert_eq!(second.body.timestamp_ms, T0 + 1);
    assert_eq!(third.body.timestamp_ms, T0 + 2);
    assert_ne!(first.body.nonce, second.body.nonce);
    assert_ne!(second.body.nonce, third.body.nonce);
    assert_eq!(a.m.peer(&b.id()).unwrap().last_sent_ms, T0 + 2);
    // Re-requesting keeps the original time of the outgoing request.
    assert_eq!(a.m.peer(&b.id()).unwrap().since_ms, T0);
    a.assert_store_matches();
}

#[test]
fn request_command_errors_change_nothing() {
    let (mut a, mut b) = pair();
    let me = a.id();
    fails(&mut a, T0, request_cmd(me, "me"), CommandError::SelfPeer);
    let long = "x".repeat(MAX_TEXT_CHARS + 1);
    fails(
        &mut a,
        T0,
        request_cmd(b.id(), &long),
        CommandError::TextTooLong {
            field: TextField::Justification,
            chars: MAX_TEXT_CHARS + 1,
            max: MAX_TEXT_CHARS,
        },
    );
    fails(
        &mut a,
        T0,
        request_cmd(b.id(), "\0"),
        CommandError::TextNotPrintable {
            field: TextField::Justification,
        },
    );
    let pest = key(9).node_id();
    a.ok(T0, Command::Ignore { peer: pest });
    fails(
        &mut a,
        T0,
        request_cmd(pest, "hm"),
        CommandError::Ignored(pest),
    );
    handshake(&mut a, &mut b, T0);
    fails(
        &mut a,
        T0 + 5,
        request_cmd(b.id(), "again"),
        CommandError::AlreadyTrusted(b.id()),
    );
}

// ----- incoming Request ------------------------------------------------------

#[test]
fn request_from_a_stranger_becomes_incoming_pending() {
    let (mut a, mut b) = pair();
    let req = only_sent(&a.ok(T0, request_cmd(b.id(), "hello")));
    let src = Some("192.0.2.10:7444".parse().unwrap());
    let out = b.recv_from(T0 + 3, req, Some(a.id()), src);
    assert_eq!(out.ack(), Some(&AckStatus::Pending));
    assert!(out.send.is_empty());
    assert_eq!(
        events(&out),
        vec![EventKind::RequestReceived {
            justification: "hello".into(),
            source: src
        }]
    );
    // A request is not a decision: no audit entry.
    assert!(audits(&out).is_empty());
    let rec = b.m.peer(&a.id()).unwrap();
    assert_eq!(rec.state, TrustState::IncomingPending);
    assert_eq!(rec.since_ms, T0 + 3);
    assert_eq!(rec.high_water_ms, T0);
    assert_eq!(rec.source, src);
    assert_eq!(rec.justification.as_deref(), Some("hello"));
    assert!(rec.consent.is_none());
    assert_eq!(b.m.nonce_cache_len(), 1);
    b.assert_store_matches();
}

#[test]
fn repeated_request_updates_the_pending_one_quietly() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let again = only_sent(&a.ok(T0 + 10, request_cmd(b.id(), "still me")));
    let out = b.recv(T0 + 10, again);
    assert_eq!(out.ack(), Some(&AckStatus::Pending));
    assert!(out.events.is_empty() && out.send.is_empty());
    let rec = b.m.peer(&a.id()).unwrap();
    assert_eq!(rec.justification.as_deref(), Some("still me"));
    assert_eq!(rec.since_ms, T0, "asking again does not extend the TTL");
    assert_eq!(rec.high_water_ms, T0 + 10);
    b.assert_store_matches();
}

#[test]
fn a_peer_may_ask_again_after_any_no() {
    // Reach each "no" state at b, then a new request from a makes it pending again.
    for target in [
        TrustState::Rejected,
        TrustState::Revoked,
        TrustState::Expired,
        TrustState::RejectedByPeer,
        TrustState::RevokedByPeer,
    ] {
        let (mut a, mut b) = pair();
        let mut now = T0;
        match target {
            TrustState::Rejected => {
                ask(&mut a, &mut b, now);
                let rej = only_sent(&b.ok(
                    now,
                    Command::Reject {
                        peer: a.id(),
                        reason: "no".into(),
                    },
                ));
                a.recv(now, rej);
            }
            TrustState::Revoked => {
                handshake(&mut a, &mut b, now);
                let rev = only_sent(&b.ok(
                    now + 5,
                    Command::Revoke {
                        peer: a.id(),
                        reason: "bye".into(),
                    },
                ));
                a.recv(now + 5, rev);
            }
            TrustState::Expired => {
                ask(&mut a, &mut b, now);
                let acc = only_sent(&b.ok(
                    now,
                    Command::Approve {
                        peer: a.id(),
                        name: None,
                        note: None,
                        expires_at_ms: Some(now + 100),
                    },
                ));
                a.recv(now, acc);
                now += 100;
                b.tick(now);
            }
            TrustState::RejectedByPeer => {
                // b asked a; a rejected.
                ask(&mut b, &mut a, now);
                let rej = only_sent(&a.ok(
                    now,
                    Command::Reject {
                        peer: b.id(),
                        reason: "no".into(),
                    },
                ));
                b.recv(now, rej);
            }
            TrustState::RevokedByPeer => {
                handshake(&mut b, &mut a, now);
                let rev = only_sent(&a.ok(
                    now + 5,
                    Command::Revoke {
                        peer: b.id(),
                        reason: "bye".into(),
                    },
                ));
                b.recv(now + 5, rev);
            }
            _ => unreachable!(),
        }
        assert_eq!(state(&b, a.id()), Some(target), "setting up {target}");
        if b.m.peer(&a.id()).unwrap().consent.is_some() {
            // b's own request was declined but still stands; withdraw it, or a's
            // request would be a crossed request (see the test below).
            let out = b.ok(now, Command::Cancel { peer: a.id() });
            assert_eq!(events(&out), vec![EventKind::Cancelled]);
            assert_eq!(state(&b, a.id()), Some(target), "the record stays");
            assert!(b.m.peer(&a.id()).unwrap().consent.is_none());
        }
        // a asks again (signed directly: in some of these states a's own
        // machine would consider itself trusted and not ask).
        now += 10;
        let req = envelope(&a.key, b.id(), request("please, again"), now, 200);
        let out = b.recv(now, req);
        assert_eq!(out.ack(), Some(&AckStatus::Pending), "from {target}");
        assert_eq!(state(&b, a.id()), Some(TrustState::IncomingPending));
        assert!(out.send.is_empty(), "never auto-trusted from {target}");
        assert!(b.m.peer(&a.id()).unwrap().consent.is_none());
        b.assert_store_matches();
    }
}

#[test]
fn a_request_after_their_decline_of_ours_waits_for_our_operator() {
    // b asked a; a rejected, which spent b's request; a now asks b. b's operator
    // decides: a decline of theirs is final on our side until we act.
    let (mut a, mut b) = pair();
    ask(&mut b, &mut a, T0);
    let rej = only_sent(&a.ok(
        T0 + 1,
        Command::Reject {
            peer: b.id(),
            reason: "not yet".into(),
        },
    ));
    b.recv(T0 + 1, rej);
    assert_eq!(state(&b, a.id()), Some(TrustState::RejectedByPeer));
    let req = only_sent(&a.ok(T0 + 2, request_cmd(b.id(), "ok, now")));
    let out = b.recv(T0 + 2, req);
    assert_eq!(out.ack(), Some(&AckStatus::Pending));
    assert!(out.send.is_empty());
    assert_eq!(state(&b, a.id()), Some(TrustState::IncomingPending));
    // b's operator approves: now both trust.
    let acc = only_sent(&b.ok(T0 + 3, approve_cmd(a.id())));
    assert_eq!(a.recv(T0 + 4, acc).ack(), Some(&AckStatus::Trusted));
    assert!(a.m.is_trusted(&b.id(), T0 + 4) && b.m.is_trusted(&a.id(), T0 + 4));
    b.assert_store_matches();
}

#[test]
fn allowlisted_request_is_trusted_at_once() {
    let (mut a, mut b) = pair();
    b.ok(
        T0,
        Command::Allow {
            peer: a.id(),
            name: Some("laptop".into()),
        },
    );
    let req = only_sent(&a.ok(T0, request_cmd(b.id(), "hi")));
    let out = b.recv(T0 + 1, req);
    assert_eq!(out.ack(), Some(&AckStatus::Trusted));
    assert_eq!(
        events(&out),
        vec![EventKind::AutoApproved {
            by: Decider::Allowlist
        }]
    );
    assert_eq!(
        audits(&out),
        vec![AuditAction::Approved {
            by: Decider::Allowlist
        }]
    );
    let accept = only_sent(&out);
    assert!(matches!(accept.body.kind, Kind::AcceptOf { .. }));
    let rec = b.m.peer(&a.id()).unwrap();
    assert_eq!(rec.state, TrustState::Trusted);
    assert_eq!(rec.decided_by, Some(Decider::Allowlist));
    assert_eq!(rec.name.as_deref(), Some("laptop"));
    assert_eq!(a.recv(T0 + 2, accept).ack(), Some(&AckStatus::Trusted));
    assert!(a.m.is_trusted(&b.id(), T0 + 2));
    b.assert_store_matches();
}

#[test]
fn auto_approve_trusts_on_first_use_but_never_over_our_own_no() {
    let (mut a, mut b) = pair();
    b.ok(T0, Command::SetAutoApprove(true));
    let req = only_sent(&a.ok(T0, request_cmd(b.id(), "hi")));
    let out = b.recv(T0, req);
    assert_eq!(out.ack(), Some(&AckStatus::Trusted));
    assert_eq!(
        events(&out),
        vec![EventKind::AutoApproved {
            by: Decider::AutoApprove
        }]
    );
    a.recv(T0, only_sent(&out));
    // b revokes; a asks again: our revocation stands against the policy.
    let rev = only_sent(&b.ok(
        T0 + 5,
        Command::Revoke {
            peer: a.id(),
            reason: "no more".into(),
        },
    ));
    a.recv(T0 + 5, rev);
    let req = only_sent(&a.ok(T0 + 6, request_cmd(b.id(), "please")));
    let out = b.recv(T0 + 6, req);
    assert_eq!(out.ack(), Some(&AckStatus::Pending));
    assert!(out.send.is_empty());
    // But when *they* revoked, auto-approve applies again.
    let (mut c, mut d) = (
        Node::new(3, Config::default()),
        Node::new(4, Config::default()),
    );
    d.ok(T0, Command::SetAutoApprove(true));
    let req = only_sent(&c.ok(T0, request_cmd(d.id(), "hi")));
    c.recv(T0, only_sent(&d.recv(T0, req)));
    let rev = only_sent(&c.ok(
        T0 + 1,
        Command::Revoke {
            peer: d.id(),
            reason: "oops".into(),
        },
    ));
    d.recv(T0 + 1, rev);
    assert_eq!(state(&d, c.id()), Some(TrustState::RevokedByPeer));
    let req = only_sent(&c.ok(T0 + 2, request_cmd(d.id(), "sorry")));
    assert_eq!(d.recv(T0 + 2, req).ack(), Some(&AckStatus::Trusted));
}

#[test]
fn allowlisting_after_our_revocation_wins() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b, T0);
    let rev = only_sent(&b.ok(
        T0 + 5,
        Command::Revoke {
            peer: a.id(),
            reason: "x".into(),
        },
    ));
    a.recv(T0 + 5, rev);
    b.ok(
        T0 + 6,
        Command::Allow {
            peer: a.id(),
            name: None,
        },
    );
    let req = only_sent(&a.ok(T0 + 7, request_cmd(b.id(), "hi")));
    assert_eq!(b.recv(T0 + 7, req).ack(), Some(&AckStatus::Trusted));
}

#[test]
fn crossed_requests_make_both_sides_trusted() {
    let (mut a, mut b) = pair();
    let ra = only_sent(&a.ok(T0, request_cmd(b.id(), "a→b")));
    let rb = only_sent(&b.ok(T0, request_cmd(a.id(), "b→a")));
    let out_b = b.recv(T0 + 1, ra);
    assert_eq!(out_b.ack(), Some(&AckStatus::Trusted));
    assert_eq!(events(&out_b), vec![EventKind::MutualTrust]);
    assert_eq!(
        audits(&out_b),
        vec![AuditAction::Approved {
            by: Decider::Mutual
        }]
    );
    let out_a = a.recv(T0 + 1, rb);
    assert_eq!(out_a.ack(), Some(&AckStatus::Trusted));
    for (n, peer) in [(&a, b.id()), (&b, a.id())] {
        let rec = n.m.peer(&peer).unwrap();
        assert_eq!(rec.state, TrustState::Trusted);
        assert_eq!(rec.decided_by, Some(Decider::Mutual));
    }
    // Each side's accept arrives at an already-trusting peer: a no-op.
    let before = a.m.peer(&b.id()).unwrap().clone();
    let out = a.recv(T0 + 2, only_sent(&out_b));
    assert_eq!(out.ack(), Some(&AckStatus::Trusted));
    assert!(out.send.is_empty() && out.events.is_empty() && audits(&out).is_empty());
    let after = a.m.peer(&b.id()).unwrap();
    assert_eq!(after.state, before.state);
    assert_eq!(after.since_ms, before.since_ms);
    assert!(after.high_water_ms > before.high_water_ms);
    a.assert_store_matches();
    b.assert_store_matches();
}

#[test]
fn request_command_on_a_waiting_request_is_mutual_consent() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let out = b.ok(T0 + 1, request_cmd(a.id(), "you too"));
    assert!(matches!(only_sent(&out).body.kind, Kind::AcceptOf { .. }));
    assert_eq!(events(&out), vec![EventKind::MutualTrust]);
    assert_eq!(state(&b, a.id()), Some(TrustState::Trusted));
    a.recv(T0 + 1, only_sent(&out));
    assert_eq!(state(&a, b.id()), Some(TrustState::Trusted));
}

#[test]
fn request_from_a_trusted_peer_resends_accept_and_changes_nothing_else() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b, T0);
    // a lost track (e.g. restored an old backup) and asks again.
    let env = envelope(&a.key, b.id(), request("me again"), T0 + 50, 77);
    let before = b.m.peer(&a.id()).unwrap().clone();
    let out = b.recv(T0 + 50, env);
    assert_eq!(out.ack(), Some(&AckStatus::Trusted));
    assert!(matches!(only_sent(&out).body.kind, Kind::AcceptOf { .. }));
    assert!(out.events.is_empty() && audits(&out).is_empty());
    let after = b.m.peer(&a.id()).unwrap();
    assert_eq!(after.state, TrustState::Trusted);
    assert_eq!(after.since_ms, before.since_ms);
    assert_eq!(after.decided_by, before.decided_by);
    assert_eq!(after.high_water_ms, T0 + 50);
}

// ----- Approve / Reject commands -----------------------------------------------

#[test]
fn approve_trusts_and_sends_accept_with_name_note_and_expiry() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let out = b.ok(
        T0 + 1,
        Command::Approve {
            peer: a.id(),
            name: Some("build box".into()),
            note: Some("until the release".into()),
            expires_at_ms: Some(T0 + 1_000),
        },
    );
    let acc = only_sent(&out);
    assert!(matches!(acc.body.kind, Kind::AcceptOf { .. }));
    assert_eq!(acc.body.to, a.id());
    assert_eq!(events(&out), vec![EventKind::Approved]);
    assert_eq!(
        audits(&out),
        vec![AuditAction::Approved {
            by: Decider::Operator
        }]
    );
    let rec = b.m.peer(&a.id()).unwrap();
    assert_eq!(rec.state, TrustState::Trusted);
    assert_eq!(rec.decided_by, Some(Decider::Operator));
    assert_eq!(rec.name.as_deref(), Some("build box"));
    assert_eq!(rec.note.as_deref(), Some("until the release"));
    assert_eq!(rec.expires_at_ms, Some(T0 + 1_000));
    assert!(rec.consent.is_some());
    b.assert_store_matches();
}

#[test]
fn approve_errors_change_nothing() {
    let (mut a, mut b) = pair();
    let stranger = key(8).node_id();
    fails(
        &mut b,
        T0,
        approve_cmd(stranger),
        CommandError::UnknownPeer(stranger),
    );
    only_sent(&b.ok(T0, request_cmd(stranger, "hi")));
    fails(
        &mut b,
        T0,
        approve_cmd(stranger),
        CommandError::NotPending(stranger),
    );
    ask(&mut a, &mut b, T0);
    fails(
        &mut b,
        T0 + 10,
        Command::Approve {
            peer: a.id(),
            name: None,
            note: None,
            expires_at_ms: Some(T0 + 10),
        },
        CommandError::ExpiryInPast {
            expires_at_ms: T0 + 10,
            now_ms: T0 + 10,
        },
    );
    fails(
        &mut b,
        T0,
        Command::Approve {
            peer: a.id(),
            name: Some("n".repeat(MAX_NAME_CHARS + 1)),
            note: None,
            expires_at_ms: None,
        },
        CommandError::TextTooLong {
            field: TextField::Name,
            chars: MAX_NAME_CHARS + 1,
            max: MAX_NAME_CHARS,
        },
    );
    let me = b.id();
    fails(&mut b, T0, approve_cmd(me), CommandError::SelfPeer);
}

#[test]
fn reject_declines_and_tells_the_peer() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let out = b.ok(
        T0 + 1,
        Command::Reject {
            peer: a.id(),
            reason: "who are you?".into(),
        },
    );
    let rej = only_sent(&out);
    assert_eq!(rej.body.kind, reject("who are you?"));
    assert_eq!(events(&out), vec![EventKind::Rejected]);
    assert_eq!(audits(&out), vec![AuditAction::Rejected]);
    let rec = b.m.peer(&a.id()).unwrap();
    assert_eq!(rec.state, TrustState::Rejected);
    assert_eq!(rec.reason.as_deref(), Some("who are you?"));
    assert_eq!(rec.decided_by, Some(Decider::Operator));
    fails(
        &mut b,
        T0 + 2,
        Command::Reject {
            peer: a.id(),
            reason: "again".into(),
        },
        CommandError::NotPending(a.id()),
    );
    // The peer records it.
    let out = a.recv(T0 + 2, rej);
    assert_eq!(out.ack(), Some(&AckStatus::Rejected));
    assert_eq!(
        events(&out),
        vec![EventKind::RejectedByPeer {
            reason: "who are you?".into()
        }]
    );
    assert_eq!(audits(&out), vec![AuditAction::RejectedByPeer]);
    let rec = a.m.peer(&b.id()).unwrap();
    assert_eq!(rec.state, TrustState::RejectedByPeer);
    assert_eq!(rec.decided_by, Some(Decider::Peer));
    assert!(rec.consent.is_none(), "their no spends our request");
    assert!(!a.m.is_trusted(&b.id(), T0 + 2));
    a.assert_store_matches();
    b.assert_store_matches();
}

// ----- incoming Accept ---------------------------------------------------------

#[test]
fn accept_while_outgoing_pending_trusts() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let acc = only_sent(&b.ok(T0 + 1, approve_cmd(a.id())));
    let out = a.recv(T0 + 2, acc);
    assert_eq!(out.ack(), Some(&AckStatus::Trusted));
    assert!(out.send.is_empty());
    assert_eq!(events(&out), vec![EventKind::AcceptedByPeer]);
    assert_eq!(audits(&out), vec![AuditAction::AcceptedByPeer]);
    let rec = a.m.peer(&b.id()).unwrap();
    assert_eq!(rec.state, TrustState::Trusted);
    assert_eq!(rec.decided_by, Some(Decider::Peer));
    assert_eq!(rec.since_ms, T0 + 2);
    a.assert_store_matches();
}

#[test]
fn accept_crossing_a_reject_is_answered_with_no_and_both_agree() {
    // a asks; b rejects, but a's re-sent request reaches b after that and b
    // approves it. a sees the reject (which spent its request), then the accept:
    // no trust on a's side, and a says so, so b does not trust either.
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let resent = only_sent(&a.ok(T0 + 1, Command::Resend { peer: b.id() }));
    let rej = only_sent(&b.ok(
        T0 + 2,
        Command::Reject {
            peer: a.id(),
            reason: "no".into(),
        },
    ));
    assert_eq!(b.recv(T0 + 3, resent).ack(), Some(&AckStatus::Pending));
    let acc = only_sent(&b.ok(T0 + 4, approve_cmd(a.id())));
    a.recv(T0 + 5, rej);
    assert_eq!(state(&a, b.id()), Some(TrustState::RejectedByPeer));
    let out = a.recv(T0 + 6, acc);
    assert_eq!(out.ack(), Some(&AckStatus::Revoked));
    assert_eq!(state(&a, b.id()), Some(TrustState::Revoked));
    let no = only_sent(&out);
    assert!(matches!(no.body.kind, Kind::Revoke { .. }));
    assert_eq!(b.recv(T0 + 7, no).ack(), Some(&AckStatus::Revoked));
    assert!(!a.m.is_trusted(&b.id(), T0 + 7) && !b.m.is_trusted(&a.id(), T0 + 7));
    a.assert_store_matches();
    b.assert_store_matches();
}

#[test]
fn accept_without_our_consent_never_trusts() {
    // b asked a, then withdrew with a revoke; an "accept" from b must not make
    // a trust b: a never consented. a tells b no, so that both ends agree.
    let (mut a, b) = pair();
    a.recv(T0, envelope(&b.key, a.id(), request("hi"), T0, 1));
    a.recv(
        T0,
        envelope(&b.key, a.id(), revoke("never mind"), T0 + 1, 2),
    );
    assert_eq!(state(&a, b.id()), Some(TrustState::RevokedByPeer));
    let out = a.recv(T0 + 2, envelope(&b.key, a.id(), Kind::Accept, T0 + 2, 3));
    assert_eq!(out.ack(), Some(&AckStatus::Revoked));
    assert!(matches!(only_sent(&out).body.kind, Kind::Revoke { .. }));
    assert_eq!(state(&a, b.id()), Some(TrustState::Revoked));
    assert!(!a.m.is_trusted(&b.id(), T0 + 2));
    // Our own rejection stands as it is, and is said again (their accept shows
    // it had not reached them).
    let (mut c, mut d) = (
        Node::new(3, Config::default()),
        Node::new(4, Config::default()),
    );
    ask(&mut c, &mut d, T0);
    d.ok(
        T0 + 2,
        Command::Reject {
            peer: c.id(),
            reason: "no".into(),
        },
    );
    let stray = envelope(&c.key, d.id(), Kind::Accept, T0 + 3, 10);
    let out = d.recv(T0 + 3, stray);
    assert_eq!(out.ack(), Some(&AckStatus::Rejected));
    assert_eq!(only_sent(&out).body.kind, reject("no"));
    assert!(out.events.is_empty());
    assert_eq!(state(&d, c.id()), Some(TrustState::Rejected));
    // ... and an older request arriving after it is stale.
    let older = envelope(&c.key, d.id(), request("late"), T0 + 2, 11);
    assert_eq!(d.recv(T0 + 4, older).refusal(), Some(&Refusal::Stale));
    d.assert_store_matches();
}

// ----- Revoke ------------------------------------------------------------------

#[test]
fn revoke_ends_trust_and_tells_the_peer() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b, T0);
    let out = a.ok(
        T0 + 10,
        Command::Revoke {
            peer: b.id(),
            reason: "key rotated".into(),
        },
    );
    let rev = only_sent(&out);
    assert_eq!(rev.body.kind, revoke("key rotated"));
    assert_eq!(events(&out), vec![EventKind::Revoked]);
    assert_eq!(audits(&out), vec![AuditAction::Revoked]);
    let rec = a.m.peer(&b.id()).unwrap();
    assert_eq!(rec.state, TrustState::Revoked);
    assert!(rec.consent.is_none());
    assert!(!a.m.is_trusted(&b.id(), T0 + 10));
    let out = b.recv(T0 + 11, rev);
    assert_eq!(out.ack(), Some(&AckStatus::Revoked));
    assert_eq!(
        events(&out),
        vec![EventKind::RevokedByPeer {
            reason: "key rotated".into()
        }]
    );
    assert_eq!(audits(&out), vec![AuditAction::RevokedByPeer]);
    assert_eq!(state(&b, a.id()), Some(TrustState::RevokedByPeer));
    assert!(!b.m.is_trusted(&a.id(), T0 + 11));
    a.assert_store_matches();
    b.assert_store_matches();
}

#[test]
fn revoke_command_works_on_expired_and_fails_on_pending() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    fails(
        &mut b,
        T0,
        Command::Revoke {
            peer: a.id(),
            reason: "x".into(),
        },
        CommandError::NotTrusted(a.id()),
    );
    fails(
        &mut a,
        T0,
        Command::Revoke {
            peer: b.id(),
            reason: "x".into(),
        },
        CommandError::NotTrusted(b.id()),
    );
    let stranger = key(8).node_id();
    fails(
        &mut a,
        T0,
        Command::Revoke {
            peer: stranger,
            reason: "x".into(),
        },
        CommandError::UnknownPeer(stranger),
    );
    b.ok(
        T0,
        Command::Approve {
            peer: a.id(),
            name: None,
            note: None,
            expires_at_ms: Some(T0 + 5),
        },
    );
    b.tick(T0 + 5);
    assert_eq!(state(&b, a.id()), Some(TrustState::Expired));
    let out = b.ok(
        T0 + 6,
        Command::Revoke {
            peer: a.id(),
            reason: "x".into(),
        },
    );
    assert_eq!(only_sent(&out).body.kind, revoke("x"));
    assert_eq!(state(&b, a.id()), Some(TrustState::Revoked));
}

#[test]
fn incoming_revoke_ends_pending_relationships_too() {
    // Outgoing pending at a: b revokes (after approving; the accept was lost).
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let lost_accept = only_sent(&b.ok(T0 + 1, approve_cmd(a.id())));
    let rev = only_sent(&b.ok(
        T0 + 2,
        Command::Revoke {
            peer: a.id(),
            reason: "changed my mind".into(),
        },
    ));
    assert_eq!(a.recv(T0 + 3, rev).ack(), Some(&AckStatus::Revoked));
    assert_eq!(state(&a, b.id()), Some(TrustState::RevokedByPeer));
    // The lost accept arriving late is older than the revoke: stale.
    assert_eq!(a.recv(T0 + 4, lost_accept).refusal(), Some(&Refusal::Stale));
    // Incoming pending at b: a withdraws with a (signed) revoke.
    let (mut c, mut d) = (
        Node::new(3, Config::default()),
        Node::new(4, Config::default()),
    );
    ask(&mut c, &mut d, T0);
    let out = d.recv(T0 + 1, envelope(&c.key, d.id(), revoke("nvm"), T0 + 1, 9));
    assert_eq!(out.ack(), Some(&AckStatus::Revoked));
    assert_eq!(state(&d, c.id()), Some(TrustState::RevokedByPeer));
    assert_eq!(d.m.pending_incoming(), 0);
}

#[test]
fn a_decline_after_our_own_decline_keeps_our_record() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b, T0);
    a.ok(
        T0 + 10,
        Command::Revoke {
            peer: b.id(),
            reason: "mine".into(),
        },
    );
    let theirs = only_sent(&b.ok(
        T0 + 10,
        Command::Revoke {
            peer: a.id(),
            reason: "theirs".into(),
        },
    ));
    let out = a.recv(T0 + 11, theirs);
    assert_eq!(out.ack(), Some(&AckStatus::Revoked));
    assert!(out.events.is_empty() && audits(&out).is_empty());
    let rec = a.m.peer(&b.id()).unwrap();
    assert_eq!(rec.state, TrustState::Revoked);
    assert_eq!(rec.reason.as_deref(), Some("mine"));
    assert_eq!(rec.high_water_ms, T0 + 10, "applied: the mark advances");
}

// ----- time ----------------------------------------------------------------------

#[test]
fn tick_expires_pending_requests_after_the_ttl() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    assert_eq!(
        b.m.next_deadline(),
        Some(T0 + Config::default().nonce_ttl_ms())
    );
    b.tick(T0 + Config::default().nonce_ttl_ms());
    assert_eq!(b.m.nonce_cache_len(), 0, "nonces reaped after 2 x skew");
    assert_eq!(b.m.next_deadline(), Some(T0 + DEFAULT_PENDING_TTL_MS));
    let early = b.tick(T0 + DEFAULT_PENDING_TTL_MS - 1);
    assert!(early.writes.is_empty() && early.events.is_empty());
    assert_eq!(early.reply, Reply::None);
    let out = b.tick(T0 + DEFAULT_PENDING_TTL_MS);
    assert_eq!(events(&out), vec![EventKind::PendingExpired]);
    assert_eq!(audits(&out), vec![AuditAction::PendingExpired]);
    assert!(out.writes.contains(&StoreWrite::RemovePeer(a.id())));
    assert_eq!(state(&b, a.id()), None);
    assert_eq!(b.m.next_deadline(), None);
    b.assert_store_matches();
    // Outgoing requests have no TTL.
    assert_eq!(state(&a, b.id()), Some(TrustState::OutgoingPending));
    a.tick(T0 + 100 * DEFAULT_PENDING_TTL_MS);
    assert_eq!(state(&a, b.id()), Some(TrustState::OutgoingPending));
}

#[test]
fn expired_trust_fails_closed_before_the_tick_and_a_new_handshake_restores_it() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let expiry = T0 + 60_000;
    let acc = only_sent(&b.ok(
        T0,
        Command::Approve {
            peer: a.id(),
            name: None,
            note: None,
            expires_at_ms: Some(expiry),
        },
    ));
    a.recv(T0, acc);
    assert!(b.m.is_trusted(&a.id(), expiry - 1));
    assert!(
        !b.m.is_trusted(&a.id(), expiry),
        "fails closed at the expiry"
    );
    b.tick(T0 + 1_000); // reap nothing relevant
    assert_eq!(b.m.next_deadline(), Some(expiry));
    let out = b.tick(expiry);
    assert_eq!(events(&out), vec![EventKind::TrustExpired]);
    assert_eq!(audits(&out), vec![AuditAction::TrustExpired]);
    let rec = b.m.peer(&a.id()).unwrap();
    assert_eq!(rec.state, TrustState::Expired);
    assert!(rec.consent.is_none());
    assert!(
        b.m.next_deadline().is_none_or(|d| d > expiry),
        "a lapsed trust is no longer a deadline"
    );
    // Accept from a no longer restores anything.
    let stray = envelope(&a.key, b.id(), Kind::Accept, expiry + 1, 42);
    assert_eq!(b.recv(expiry + 1, stray).ack(), Some(&AckStatus::Expired));
    assert_eq!(state(&b, a.id()), Some(TrustState::Expired));
    // The expired side asks; the other side, still trusting, re-sends its accept.
    let req = only_sent(&b.ok(expiry + 2, request_cmd(a.id(), "renew")));
    let out = a.recv(expiry + 2, req);
    assert_eq!(out.ack(), Some(&AckStatus::Trusted));
    b.recv(expiry + 3, only_sent(&out));
    assert!(b.m.is_trusted(&a.id(), expiry + 3));
    b.assert_store_matches();
}

#[test]
fn a_request_from_a_peer_whose_trust_lapsed_before_a_tick_is_pending() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    b.ok(
        T0,
        Command::Approve {
            peer: a.id(),
            name: None,
            note: None,
            expires_at_ms: Some(T0 + 10),
        },
    );
    let req = envelope(&a.key, b.id(), request("renew"), T0 + 20, 5);
    let out = b.recv(T0 + 20, req);
    assert_eq!(out.ack(), Some(&AckStatus::Pending));
    assert_eq!(
        events(&out)[..2],
        [
            EventKind::TrustExpired,
            EventKind::RequestReceived {
                justification: "renew".into(),
                source: None
            }
        ]
    );
    assert_eq!(state(&b, a.id()), Some(TrustState::IncomingPending));
    b.assert_store_matches();
}

#[test]
fn the_oldest_pending_request_is_evicted_at_the_total_bound() {
    let mut b = Node::new(
        2,
        Config {
            max_pending_total: 2,
            ..Config::default()
        },
    );
    let peers: Vec<_> = (10..13).map(key).collect();
    for (i, p) in peers.iter().enumerate() {
        let now = T0 + i as u64;
        let out = b.recv(now, envelope(p, b.id(), request("hi"), now, 1));
        assert_eq!(out.ack(), Some(&AckStatus::Pending));
        if i == 2 {
            assert!(
                out.events
                    .iter()
                    .any(|e| e.kind == EventKind::PendingEvicted && e.peer == peers[0].node_id())
            );
            assert_eq!(audits(&out), vec![AuditAction::PendingEvicted]);
            assert!(
                out.writes
                    .contains(&StoreWrite::RemovePeer(peers[0].node_id()))
            );
        }
    }
    assert_eq!(b.m.pending_incoming(), 2);
    assert_eq!(b.m.peer(&peers[0].node_id()), None);
    b.assert_store_matches();
}

// ----- list and housekeeping commands -------------------------------------------

#[test]
fn dismiss_drops_a_waiting_request_silently() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let out = b.ok(T0 + 1, Command::Dismiss { peer: a.id() });
    assert!(out.send.is_empty());
    assert_eq!(events(&out), vec![EventKind::Dismissed]);
    assert_eq!(audits(&out), vec![AuditAction::Dismissed]);
    assert_eq!(state(&b, a.id()), None);
    fails(
        &mut b,
        T0 + 1,
        Command::Dismiss { peer: a.id() },
        CommandError::UnknownPeer(a.id()),
    );
    b.assert_store_matches();
}

#[test]
fn cancel_withdraws_our_request_and_tells_the_peer() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let out = a.ok(T0 + 1, Command::Cancel { peer: b.id() });
    let withdrawn = only_sent(&out);
    assert_eq!(
        withdrawn.body.kind,
        revoke(kith_protocol::machine::WITHDRAWN_REASON)
    );
    assert_eq!(events(&out), vec![EventKind::Cancelled]);
    assert_eq!(audits(&out), vec![AuditAction::Cancelled]);
    assert_eq!(state(&a, b.id()), Some(TrustState::Revoked));
    // The peer's waiting request is gone: it can no longer be approved.
    assert_eq!(b.recv(T0 + 2, withdrawn).ack(), Some(&AckStatus::Revoked));
    assert_eq!(state(&b, a.id()), Some(TrustState::RevokedByPeer));
    fails(
        &mut b,
        T0 + 2,
        approve_cmd(a.id()),
        CommandError::NotPending(a.id()),
    );
    fails(
        &mut a,
        T0 + 1,
        Command::Cancel { peer: b.id() },
        CommandError::NoOutgoingRequest(b.id()),
    );
    // An acceptance that crossed the withdrawal answers nothing: a stays where it is.
    let acc = envelope(&b.key, a.id(), Kind::AcceptOf { seen_ms: T0 }, T0 + 1, 77);
    assert_eq!(a.recv(T0 + 3, acc).ack(), Some(&AckStatus::Revoked));
    assert!(!a.m.is_trusted(&b.id(), T0 + 3));
    a.assert_store_matches();
    b.assert_store_matches();
}

#[test]
fn ignore_drops_pending_requests_and_unignore_undoes_it() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    b.ok(
        T0,
        Command::Allow {
            peer: a.id(),
            name: None,
        },
    );
    assert_eq!(state(&b, a.id()), Some(TrustState::Trusted));
    fails(
        &mut b,
        T0,
        Command::Ignore { peer: a.id() },
        CommandError::AlreadyTrusted(a.id()),
    );
    let (mut c, mut d) = (
        Node::new(3, Config::default()),
        Node::new(4, Config::default()),
    );
    ask(&mut c, &mut d, T0);
    d.ok(
        T0,
        Command::Allow {
            peer: key(30).node_id(),
            name: None,
        },
    );
    let out = d.ok(T0 + 1, Command::Ignore { peer: c.id() });
    assert!(out.writes.contains(&StoreWrite::Deny(c.id())));
    assert!(out.writes.contains(&StoreWrite::RemovePeer(c.id())));
    assert_eq!(audits(&out), vec![AuditAction::Ignored]);
    assert_eq!(state(&d, c.id()), None);
    assert_eq!(d.m.denylist().collect::<Vec<_>>(), vec![&c.id()]);
    // Ignoring twice is fine and writes nothing.
    assert!(
        d.ok(T0 + 1, Command::Ignore { peer: c.id() })
            .writes
            .is_empty()
    );
    // Ignoring an allowlisted peer takes it off the allowlist.
    let out = d.ok(
        T0 + 1,
        Command::Ignore {
            peer: key(30).node_id(),
        },
    );
    assert!(
        out.writes
            .contains(&StoreWrite::Disallow(key(30).node_id()))
    );
    let out = d.ok(T0 + 2, Command::Unignore { peer: c.id() });
    assert!(out.writes.contains(&StoreWrite::Undeny(c.id())));
    assert_eq!(audits(&out), vec![AuditAction::Unignored]);
    fails(
        &mut d,
        T0 + 2,
        Command::Unignore { peer: c.id() },
        CommandError::NotIgnored(c.id()),
    );
    // Requests count again.
    let req = envelope(&c.key, d.id(), request("hi again"), T0 + 3, 8);
    assert_eq!(d.recv(T0 + 3, req).ack(), Some(&AckStatus::Pending));
    assert_eq!(state(&d, c.id()), Some(TrustState::IncomingPending));
    d.assert_store_matches();
}

#[test]
fn allow_approves_a_waiting_request_and_disallow_keeps_existing_trust() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    b.ok(
        T0,
        Command::Ignore {
            peer: key(31).node_id(),
        },
    );
    let out = b.ok(
        T0 + 1,
        Command::Allow {
            peer: a.id(),
            name: Some("ci".into()),
        },
    );
    assert!(matches!(only_sent(&out).body.kind, Kind::AcceptOf { .. }));
    assert_eq!(
        audits(&out),
        vec![
            AuditAction::Allowed,
            AuditAction::Approved {
                by: Decider::Allowlist
            }
        ]
    );
    let rec = b.m.peer(&a.id()).unwrap();
    assert_eq!(rec.state, TrustState::Trusted);
    assert_eq!(rec.name.as_deref(), Some("ci"));
    // Allowing a denied peer takes it off the deny list.
    let out = b.ok(
        T0 + 1,
        Command::Allow {
            peer: key(31).node_id(),
            name: None,
        },
    );
    assert!(out.writes.contains(&StoreWrite::Undeny(key(31).node_id())));
    let out = b.ok(T0 + 2, Command::Disallow { peer: a.id() });
    assert_eq!(out.writes.len(), 2);
    assert!(out.writes.contains(&StoreWrite::Disallow(a.id())));
    assert!(
        b.m.is_trusted(&a.id(), T0 + 2),
        "disallowing is not revoking"
    );
    fails(
        &mut b,
        T0 + 2,
        Command::Disallow { peer: a.id() },
        CommandError::NotAllowed(a.id()),
    );
    b.assert_store_matches();
}

#[test]
fn rename_and_forget() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b, T0);
    b.ok(
        T0,
        Command::Rename {
            peer: a.id(),
            name: Some("alice".into()),
            note: Some("from work".into()),
        },
    );
    b.ok(
        T0,
        Command::Rename {
            peer: a.id(),
            name: None,
            note: Some(String::new()),
        },
    );
    let rec = b.m.peer(&a.id()).unwrap();
    assert_eq!(rec.name.as_deref(), Some("alice"), "None leaves it");
    assert_eq!(rec.note, None, "empty clears it");
    fails(
        &mut b,
        T0,
        Command::Rename {
            peer: a.id(),
            name: Some("\x1b\x1b".into()),
            note: None,
        },
        CommandError::TextNotPrintable {
            field: TextField::Name,
        },
    );
    // A trusted peer must be told first: forget names the command that does.
    fails(
        &mut b,
        T0 + 1,
        Command::Forget { peer: a.id() },
        CommandError::ForgetTrusted(a.id()),
    );
    b.ok(
        T0 + 1,
        Command::Revoke {
            peer: a.id(),
            reason: "bye".into(),
        },
    );
    let out = b.ok(T0 + 1, Command::Forget { peer: a.id() });
    assert!(out.send.is_empty());
    assert_eq!(events(&out), vec![EventKind::Forgotten]);
    assert_eq!(audits(&out), vec![AuditAction::Forgotten]);
    assert!(!b.m.is_trusted(&a.id(), T0 + 1));
    assert_eq!(b.m.peers().count(), 0);
    fails(
        &mut b,
        T0 + 1,
        Command::Forget { peer: a.id() },
        CommandError::UnknownPeer(a.id()),
    );
    b.assert_store_matches();
}

#[test]
fn set_auto_approve_is_written_and_audited() {
    let mut b = Node::new(2, Config::default());
    let out = b.ok(T0, Command::SetAutoApprove(true));
    assert_eq!(
        out.writes,
        vec![
            StoreWrite::AutoApprove(true),
            StoreWrite::Audit(kith_protocol::AuditEntry {
                at_ms: T0,
                peer: None,
                action: AuditAction::AutoApproveSet(true),
                detail: None,
            })
        ]
    );
    assert!(b.m.config().auto_approve);
    assert!(b.ok(T0, Command::SetAutoApprove(true)).writes.is_empty());
    b.assert_store_matches();
}

#[test]
fn resend_re_signs_what_our_state_implies() {
    let (mut a, mut b) = pair();
    let stranger = key(8).node_id();
    fails(
        &mut a,
        T0,
        Command::Resend { peer: stranger },
        CommandError::UnknownPeer(stranger),
    );
    ask(&mut a, &mut b, T0);
    let out = a.ok(T0 + 1, Command::Resend { peer: b.id() });
    assert_eq!(only_sent(&out).body.kind, request("let me in"));
    fails(
        &mut b,
        T0,
        Command::Resend { peer: a.id() },
        CommandError::NothingToResend(a.id()),
    );
    b.ok(T0 + 1, approve_cmd(a.id()));
    let out = b.ok(T0 + 2, Command::Resend { peer: a.id() });
    assert!(matches!(only_sent(&out).body.kind, Kind::AcceptOf { .. }));
    assert!(out.events.is_empty() && audits(&out).is_empty());
    b.ok(
        T0 + 3,
        Command::Revoke {
            peer: a.id(),
            reason: "r".into(),
        },
    );
    let out = b.ok(T0 + 4, Command::Resend { peer: a.id() });
    assert_eq!(only_sent(&out).body.kind, revoke("r"));
    b.assert_store_matches();
}

#[test]
fn every_decision_is_audited_with_its_detail() {
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let out = b.ok(
        T0 + 1,
        Command::Reject {
            peer: a.id(),
            reason: "not now".into(),
        },
    );
    let entry = out
        .writes
        .iter()
        .find_map(|w| match w {
            StoreWrite::Audit(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(entry.at_ms, T0 + 1);
    assert_eq!(entry.peer, Some(a.id()));
    assert_eq!(entry.action, AuditAction::Rejected);
    assert_eq!(entry.detail.as_deref(), Some("not now"));
    assert_eq!(b.store.audit.len(), 1);
}

#[test]
fn a_decline_spends_our_request_so_a_later_accept_does_not_trust() {
    // a asks, b rejects: a's request is spent. A later accept from b (b's
    // operator changing its mind) does not make a trust b: a must ask again.
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let rej = only_sent(&b.ok(
        T0 + 1,
        Command::Reject {
            peer: a.id(),
            reason: "no".into(),
        },
    ));
    a.recv(T0 + 1, rej);
    assert!(a.m.peer(&b.id()).unwrap().consent.is_none());
    fails(
        &mut a,
        T0 + 2,
        Command::Cancel { peer: b.id() },
        CommandError::NoOutgoingRequest(b.id()),
    );
    let acc = envelope(
        &b.key,
        a.id(),
        Kind::AcceptOf { seen_ms: T0 + 5 },
        T0 + 3,
        50,
    );
    assert_eq!(a.recv(T0 + 3, acc).ack(), Some(&AckStatus::Revoked));
    assert!(!a.m.is_trusted(&b.id(), T0 + 3));
    // Asking again is the way back.
    let req = only_sent(&a.ok(T0 + 4, request_cmd(b.id(), "again")));
    assert!(matches!(req.body.kind, Kind::Request { .. }));
    a.assert_store_matches();
}

#[test]
fn a_decline_spends_our_approval_too() {
    // b approved a for one day. a declines, then "accepts": b's approval was spent
    // by a's decline, so no trust comes back without b's operator.
    let (mut a, mut b) = pair();
    ask(&mut a, &mut b, T0);
    let day = 86_400_000;
    let accept = only_sent(&b.ok(
        T0 + 1,
        Command::Approve {
            peer: a.id(),
            name: None,
            note: None,
            expires_at_ms: Some(T0 + day),
        },
    ));
    a.recv(T0 + 2, accept);
    b.recv(T0 + 3, envelope(&a.key, b.id(), reject("bye"), T0 + 3, 40));
    assert!(!b.m.is_trusted(&a.id(), T0 + 4));
    b.recv(T0 + 4, envelope(&a.key, b.id(), Kind::Accept, T0 + 4, 41));
    assert!(!b.m.is_trusted(&a.id(), T0 + 5));
    assert_eq!(b.m.peer(&a.id()).unwrap().consent, None);
    let _ = day;
    b.assert_store_matches();
}
