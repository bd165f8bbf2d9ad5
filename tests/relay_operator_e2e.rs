//! What an operator meets when a node's relay is wrong or will not have it, with
//! real `kith run` and `kith relay` processes on loopback: startup output and `kith
//! status` say the same thing, say why, and name the next step.

mod common;

use common::TestNode;

/// Waits until the daemon's own output (its log) contains `text`.
fn wait_for_output(node: &TestNode, text: &str) {
    node.wait_until("the startup report", |n| n.log().contains(text));
}

#[test]
fn a_nodes_ticket_given_as_relay_is_named_at_startup_and_in_status_and_not_retried() {
    let not_a_relay = TestNode::started();
    let mut a = TestNode::init();
    a.start_private(&not_a_relay);
    a.wait_until("the link to give up", |n| {
        n.status()["relay"]["state"] == "not_a_relay"
    });
    let status = a.status();
    let summary = status["relay"]["summary"].as_str().unwrap().to_string();
    assert!(summary.contains("not a relay's"), "{summary}");
    assert!(summary.contains(&not_a_relay.node_id), "{summary}");
    assert!(summary.contains("`kith ticket` on the relay"), "{summary}");
    assert!(
        summary.contains("kith run --relay <RELAY-TICKET>"),
        "{summary}"
    );
    assert!(summary.contains("Not retrying"), "{summary}");
    assert_eq!(status["reachability"], "unreachable", "{status}");

    // Startup said the same, and never that the node is reachable through it.
    wait_for_output(&a, &summary);
    assert!(!a.log().contains("reachable through relay"), "{}", a.log());
    let human = a.run_ok(&["status"]);
    assert!(human.contains(&summary), "{human}");
    assert!(human.contains("reachable no"), "{human}");
    assert!(
        a.event_kinds(&not_a_relay.node_id)
            .contains(&"relay_not_a_relay".to_string())
    );

    // It stopped: a retry would move the link to connecting and back.
    let since = status["relay"]["since_ms"].clone();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let later = a.status();
    assert_eq!(later["relay"]["state"], "not_a_relay", "{later}");
    assert_eq!(later["relay"]["since_ms"], since, "{later}");
}

#[test]
fn a_private_node_refused_by_its_relay_says_so_at_startup_and_in_status() {
    let mut relay = TestNode::init();
    let allow = relay.data_dir().join("allow");
    std::fs::write(&allow, format!("{}\n", TestNode::init().node_id)).unwrap();
    relay.start_relay(&["--allow", allow.to_str().unwrap()]);
    let mut stranger = TestNode::init();
    stranger.start_private(&relay);
    stranger.wait_until("the refusal", |n| n.status()["relay"]["state"] == "refused");

    let status = stranger.status();
    let summary = status["relay"]["summary"].as_str().unwrap().to_string();
    assert!(
        summary.contains("refused to register this node"),
        "{summary}"
    );
    assert!(summary.contains("allow list"), "{summary}");
    assert!(summary.contains(&stranger.node_id), "{summary}");
    assert!(summary.contains("kith relay --allow FILE"), "{summary}");
    assert!(
        summary.contains("Peers cannot reach this node"),
        "{summary}"
    );
    assert_eq!(status["reachability"], "unreachable", "{status}");

    wait_for_output(&stranger, &summary);
    assert!(
        !stranger.log().contains("reachable through relay"),
        "{}",
        stranger.log()
    );
    let human = stranger.run_ok(&["status"]);
    assert!(human.contains(&summary), "{human}");
    assert!(!human.contains("relay only"), "{human}");
}

#[test]
fn two_private_nodes_ping_each_other_through_their_relay() {
    let mut relay = TestNode::init();
    relay.start_relay(&[]);
    let mut a = TestNode::init();
    a.start_private(&relay);
    let mut b = TestNode::init();
    b.start_private(&relay);
    a.wait_registered(1);
    b.wait_registered(1);
    a.run_ok(&["request", &b.ticket(), "-j", "hello"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id]);
    a.wait_for_state(&b.node_id, "trusted");

    for (from, to) in [(&a, &b), (&b, &a)] {
        let out = from.run_ok(&["ping", &to.node_id]);
        assert!(out.contains(" ms"), "{out}");
        assert!(
            out.contains(&format!("relayed by relay {}", &relay.node_id[..10])),
            "{out}"
        );
        let pings = from.json(&["ping", &to.node_id]);
        assert_eq!(pings[0]["path"], "relayed", "{pings}");
        assert_eq!(pings[0]["relay"], relay.node_id, "{pings}");
    }

    // A peer that is gone is said to be so, naming the relay's answer.
    b.stop();
    let out = a.run(&["ping", &b.node_id]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::stderr_of(&out);
    assert!(stderr.contains("unknown destination"), "{stderr}");
}

#[test]
fn an_identity_conflict_warning_is_cleared_when_the_copy_stops() {
    let mut relay = TestNode::init();
    relay.start_relay(&[]);
    let mut original = TestNode::init();
    original.start_private(&relay);
    original.wait_registered(1);

    // A copy of the data dir, adopted so it runs, connects from another port.
    let dir = tempfile::tempdir().unwrap();
    for name in ["keystore", "instance.json"] {
        std::fs::copy(original.data_dir().join(name), dir.path().join(name)).unwrap();
    }
    let mut copy = TestNode::with_dir(dir, original.node_id.clone());
    copy.run_ok(&["adopt"]);
    copy.start_private(&relay);
    original.wait_until("the identity conflict", |n| {
        !n.status()["relay"]["conflict"].is_null()
    });

    copy.stop();
    original.wait_until("the conflict to be over", |n| {
        n.status()["relay"]["conflict"].is_null()
    });
    let human = original.run_ok(&["status"]);
    assert!(
        !human.contains("says this node's id is also connected"),
        "{human}"
    );
    let over = original.run_ok(&["events"]);
    assert!(over.contains("identity_conflict_over"), "{over}");
    // Said as the relay's claim, naming it.
    assert!(
        over.contains(&format!(
            "relay {} says this node's id is no longer connected",
            relay.node_id
        )),
        "{over}"
    );
}
