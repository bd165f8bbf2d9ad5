//! End-to-end tests of `kith run` and the trust commands: real daemons on loopback,
//! each with its own data dir, driven through the real `kith` binary.

mod common;

use common::{TestNode, stderr_of};

fn pair() -> (TestNode, TestNode) {
    let mut a = TestNode::init();
    let mut b = TestNode::init();
    a.start();
    b.start();
    (a, b)
}

/// A asks B; returns once B lists the request as pending.
fn request(a: &TestNode, b: &TestNode, justification: &str) {
    let sent = a.json(&["request", &b.ticket(), "--justification", justification]);
    assert_eq!(sent["delivered"], true, "{sent}");
    assert_eq!(sent["state"], "outgoing_pending", "{sent}");
    b.wait_for_state(&a.node_id, "incoming_pending");
}

#[test]
fn request_pending_approve_makes_both_sides_trusted() {
    let (a, b) = pair();
    request(&a, &b, "backup target for the laptop");

    let pending = b.json(&["pending"]);
    let entry = pending
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == a.node_id.as_str())
        .expect("A's request is pending at B")
        .clone();
    assert_eq!(entry["direction"], "incoming");
    assert_eq!(entry["justification"], "backup target for the laptop");
    assert!(entry["received_at_ms"].as_u64().unwrap() > 0);
    assert!(entry["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    let human = b.run_ok(&["pending"]);
    assert!(human.contains(&a.node_id[..10]), "{human}");

    let approved = b.json(&["approve", &a.node_id[..13], "--name", "laptop"]);
    assert_eq!(approved["delivered"], true, "{approved}");
    assert_eq!(b.peer_state(&a.node_id).as_deref(), Some("trusted"));
    a.wait_for_state(&b.node_id, "trusted");
    assert_eq!(b.peer(&a.node_id).unwrap()["name"], "laptop");
    assert!(b.json(&["pending"]).as_array().unwrap().is_empty());
    let status = b.json(&["status"]);
    assert_eq!(status["trusted"], 1);
    assert_eq!(status["node_id"], b.node_id.as_str());
}

#[test]
fn reject_is_seen_by_the_requester() {
    let (a, b) = pair();
    request(&a, &b, "please");
    let out = b.json(&["reject", &a.node_id, "--reason", "not today"]);
    assert_eq!(out["state"], "rejected");
    a.wait_for_state(&b.node_id, "rejected_by_peer");
    assert_eq!(a.peer(&b.node_id).unwrap()["reason"], "not today");
}

#[test]
fn revoke_from_either_side_reaches_the_other() {
    for revoker_is_requester in [false, true] {
        let (a, b) = pair();
        request(&a, &b, "x");
        b.run_ok(&["approve", &a.node_id]);
        a.wait_for_state(&b.node_id, "trusted");
        let (revoker, other) = if revoker_is_requester {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let out = revoker.json(&["revoke", &other.node_id, "--reason", "laptop stolen"]);
        assert_eq!(out["state"], "revoked");
        assert_eq!(out["delivered"], true, "{out}");
        other.wait_for_state(&revoker.node_id, "revoked_by_peer");
        assert_eq!(
            other.peer(&revoker.node_id).unwrap()["reason"],
            "laptop stolen"
        );
    }
}

#[test]
fn three_nodes_reach_trust_pairwise() {
    let mut nodes: Vec<TestNode> = (0..3).map(|_| TestNode::init()).collect();
    for n in &mut nodes {
        n.start();
    }
    for (i, j) in [(0, 1), (1, 2), (0, 2)] {
        request(&nodes[i], &nodes[j], &format!("{i} asks {j}"));
        nodes[j].run_ok(&["approve", &nodes[i].node_id]);
        nodes[i].wait_for_state(&nodes[j].node_id, "trusted");
    }
    for n in &nodes {
        assert_eq!(n.json(&["status"])["trusted"], 2);
    }
}

#[test]
fn restarts_keep_every_decision() {
    let (mut a, mut b) = pair();
    request(&a, &b, "keep me");
    b.run_ok(&["approve", &a.node_id, "--name", "kept"]);
    a.wait_for_state(&b.node_id, "trusted");
    a.restart();
    b.restart();
    assert_eq!(a.peer_state(&b.node_id).as_deref(), Some("trusted"));
    assert_eq!(b.peer_state(&a.node_id).as_deref(), Some("trusted"));
    assert_eq!(b.peer(&a.node_id).unwrap()["name"], "kept");

    // After the restart the two still talk: a revoke crosses over.
    b.run_ok(&["revoke", "kept"]);
    a.wait_for_state(&b.node_id, "revoked_by_peer");
}

#[test]
fn an_approval_survives_kill_9_right_after_it_returns() {
    let (a, mut b) = pair();
    request(&a, &b, "durable");
    let listen = b.json(&["status"])["listen"].as_str().unwrap().to_string();
    b.run_ok(&["approve", &a.node_id]);
    b.kill9();
    b.start_with_listen(&listen);
    assert_eq!(b.peer_state(&a.node_id).as_deref(), Some("trusted"));
    a.wait_for_state(&b.node_id, "trusted");
}

#[test]
fn pending_requests_survive_a_restart_of_the_approver() {
    let (a, mut b) = pair();
    request(&a, &b, "wait for me");
    b.restart();
    assert_eq!(
        b.peer_state(&a.node_id).as_deref(),
        Some("incoming_pending")
    );
    b.run_ok(&["approve", &a.node_id]);
    a.wait_for_state(&b.node_id, "trusted");
}

#[test]
fn operator_mistakes_get_one_clear_sentence() {
    let (a, b) = pair();
    let out = a.run(&["approve", "aaaaaaaaaaaa"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no known node id"),
        "{}",
        stderr_of(&out)
    );

    let out = a.run(&["approve", &b.node_id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).starts_with("error: "),
        "{}",
        stderr_of(&out)
    );

    let out = a.run(&["request", "kith1nonsense"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("ticket"), "{}", stderr_of(&out));

    let own = a.ticket();
    let out = a.run(&["request", &own]);
    assert!(stderr_of(&out).contains("itself"), "{}", stderr_of(&out));
    assert!(a.json(&["peers"]).as_array().unwrap().is_empty());
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let mut a = TestNode::init();
    a.start();
    let out = a.run(&["run", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("kith daemon already running"), "{err}");
    // The first daemon is unharmed.
    assert!(a.run(&["status"]).status.success());
}

#[test]
fn a_damaged_store_is_refused_in_one_sentence_and_left_as_it_is() {
    let mut a = TestNode::init();
    a.start();
    a.stop();
    let store = a.data_dir().join("kith.redb");
    let len = std::fs::metadata(&store).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let before = std::fs::read(&store).unwrap();

    let out = a.run(&["run", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains(&store.display().to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), before);
}

#[test]
fn control_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut a = TestNode::init();
    a.start();
    let mode = std::fs::metadata(a.data_dir().join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    a.stop();
    assert!(
        !a.data_dir().join("control.sock").exists(),
        "clean shutdown removes the socket"
    );
}

#[test]
fn an_approval_made_while_the_requester_is_down_survives_a_crash_and_arrives() {
    let (mut a, mut b) = pair();
    request(&a, &b, "I will be back");
    let a_listen = a.json(&["status"])["listen"].as_str().unwrap().to_string();
    let b_listen = b.json(&["status"])["listen"].as_str().unwrap().to_string();
    a.stop();

    let approved = b.json(&["approve", &a.node_id]);
    assert_eq!(approved["delivered"], false, "A is down: {approved}");
    // B crashes before it could deliver; the approval and the debt are on disk.
    b.kill9();
    b.start_with_listen(&b_listen);
    a.start_with_listen(&a_listen);
    // B's resender re-signs and sends the Accept without anyone's help.
    a.wait_for_state(&b.node_id, "trusted");
    assert_eq!(b.peer_state(&a.node_id).as_deref(), Some("trusted"));
}
