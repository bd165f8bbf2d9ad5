//! End-to-end tests with the real binary: both ends of a pair agree after an
//! approval expires or a request is withdrawn, and the commands offer a way back.

mod common;

use common::{TestNode, stderr_of};

#[test]
fn an_expired_approval_tells_the_peer_and_approve_renews_it() {
    let (e, f) = (TestNode::started(), TestNode::started());
    e.run_ok(&["request", &f.ticket(), "-j", "for a while"]);
    f.wait_for_state(&e.node_id, "incoming_pending");
    f.run_ok(&["approve", &e.node_id, "--expires", "3s"]);
    e.wait_for_state(&f.node_id, "trusted");
    f.wait_for_state(&e.node_id, "expired");
    // E is told: it no longer shows F as trusted, and its request stands again.
    e.wait_for_state(&f.node_id, "outgoing_pending");
    assert!(
        e.event_kinds(&f.node_id)
            .contains(&"expired_by_peer".to_string()),
        "{:?}",
        e.event_kinds(&f.node_id)
    );
    // F renews with the command the operator would try first.
    f.run_ok(&["approve", &e.node_id]);
    e.wait_for_state(&f.node_id, "trusted");
    f.wait_for_state(&e.node_id, "trusted");
    let ping = e.run(&["ping", &f.node_id]);
    assert!(ping.status.success(), "{}", stderr_of(&ping));
}

#[test]
fn an_expired_peer_may_ask_again() {
    let (e, f) = (TestNode::started(), TestNode::started());
    e.run_ok(&["request", &f.ticket()]);
    f.wait_for_state(&e.node_id, "incoming_pending");
    f.run_ok(&["approve", &e.node_id, "--expires", "2s"]);
    e.wait_for_state(&f.node_id, "trusted");
    e.wait_for_state(&f.node_id, "outgoing_pending");
    // Asking again reaches F as a new request for its operator.
    e.run_ok(&["request", &f.ticket(), "-j", "again please"]);
    f.wait_for_state(&e.node_id, "incoming_pending");
    f.run_ok(&["approve", &e.node_id]);
    e.wait_for_state(&f.node_id, "trusted");
}

#[test]
fn ignore_withdraws_our_request_and_the_peer_is_told() {
    let (b, c) = (TestNode::started(), TestNode::started());
    b.run_ok(&["request", &c.ticket(), "-j", "hello"]);
    c.wait_for_state(&b.node_id, "incoming_pending");
    b.run_ok(&["ignore", &c.node_id]);
    // C learns the request was withdrawn: nothing left to approve.
    c.wait_for_state(&b.node_id, "revoked_by_peer");
    let approve = c.run(&["approve", &b.node_id]);
    assert!(!approve.status.success());
    // C asks B itself: B ignores it quietly, and nobody trusts anybody.
    let out = c.run(&["request", &b.ticket()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    c.wait_for_state(&b.node_id, "outgoing_pending");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        c.peer_state(&b.node_id).as_deref(),
        Some("outgoing_pending")
    );
    assert_ne!(b.peer_state(&c.node_id).as_deref(), Some("trusted"));
}

/// `forget` of a peer that has not yet heard our revoke (it was away): the revoke is
/// still delivered when the peer is back, so it stops trusting us. Before, the forget
/// dropped the queued revoke with the record and the peer kept showing us as trusted.
#[test]
fn a_revoke_queued_for_a_peer_that_is_away_survives_forget() {
    let (mut a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket(), "-j", "hello"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id]);
    a.wait_for_state(&b.node_id, "trusted");
    let listen = a.json(&["status"])["listen"].as_str().unwrap().to_string();
    a.stop();
    b.run_ok(&["revoke", &a.node_id, "--reason", "retired"]);
    b.run_ok(&["forget", &a.node_id]);
    assert!(
        b.peer(&a.node_id).is_none(),
        "forgotten as the operator sees it"
    );
    // Past the first delivery attempt's dial (5 s): only the resender can reach A now.
    std::thread::sleep(std::time::Duration::from_secs(7));
    a.start_again_at(&listen);
    a.wait_for_state(&b.node_id, "revoked_by_peer");
    assert!(b.peer(&a.node_id).is_none());
}
