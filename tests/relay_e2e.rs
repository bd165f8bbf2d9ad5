//! Relay fallback end to end: real `kith relay` and `kith run` processes on loopback.
//!
//! The private node runs with `--private`: its endpoint refuses every inbound
//! connection and its ticket names only its relay, so anything that reaches it went
//! through the relay (or over a connection it opened itself).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestNode;
use kith_keys::NodeKey;
use kith_node::ticket::Ticket;
use kith_node::transport::tls;

/// A relay, a private node homed there, and a public node.
fn trio() -> (TestNode, TestNode, TestNode) {
    let mut relay = TestNode::init();
    relay.start_relay(&[]);
    let mut private = TestNode::init();
    private.start_private(&relay);
    private.wait_registered(1);
    let mut public = TestNode::init();
    public.start();
    (relay, private, public)
}

/// Dials `addr` expecting `node` with a throwaway identity: Ok if a QUIC connection
/// comes up within 3 s.
fn dial(addr: SocketAddr, node: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
        let endpoint = tls::make_endpoint(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(3),
            tls::dial(&endpoint, &identity, addr, node.parse().unwrap()),
        )
        .await;
        let result = match result {
            Ok(Ok(conn)) => {
                conn.close(0u32.into(), b"done");
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        endpoint.close(0u32.into(), b"done");
        result
    })
}

/// `kith events --json`: one versioned envelope per line.
fn events(node: &TestNode) -> Vec<serde_json::Value> {
    node.run_ok(&["--json", "events"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["data"].clone())
        .collect()
}

fn path_to(node: &TestNode, peer: &TestNode) -> Option<String> {
    node.peer(&peer.node_id)
        .and_then(|p| p["path"].as_str().map(str::to_string))
}

#[test]
fn a_private_node_is_asked_and_approves_only_through_its_relay() {
    let (relay, private, public) = trio();

    // Its ticket names the relay and no direct address; it cannot be dialled.
    let ticket: Ticket = private.ticket().parse().unwrap();
    assert!(ticket.addrs.is_empty(), "{ticket:?}");
    assert_eq!(
        ticket.relay.as_ref().unwrap().node_id.to_string(),
        relay.node_id
    );
    let err = dial(private.listen_addr(), &private.node_id).unwrap_err();
    assert!(
        err.contains("refused") || err.contains("timed out"),
        "{err}"
    );
    let status = private.status();
    assert_eq!(status["reachability"], "relay only", "{status}");
    assert_eq!(status["private"], true);
    assert_eq!(status["relay"]["state"], "registered", "{status}");
    assert!(status["relay"]["observed"].as_str().is_some(), "{status}");
    assert!(
        private.run_ok(&["status"]).contains("relay only"),
        "human status says how it is reached"
    );

    let sent = public.json(&[
        "request",
        &private.ticket(),
        "--justification",
        "through the relay",
    ]);
    assert_eq!(sent["delivered"], true, "{sent}");
    assert_eq!(sent["path"], "relayed", "{sent}");
    assert_eq!(
        sent["detail"], "pending",
        "the private node's own ack came back"
    );
    private.wait_for_state(&public.node_id, "incoming_pending");
    let pending = private.json(&["pending"]);
    assert_eq!(pending[0]["justification"], "through the relay");

    let approved = private.json(&["approve", &public.node_id]);
    assert_eq!(approved["delivered"], true, "{approved}");
    public.wait_for_state(&private.node_id, "trusted");
    assert_eq!(
        private.peer_state(&public.node_id).as_deref(),
        Some("trusted")
    );
    assert_eq!(path_to(&public, &private).as_deref(), Some("relayed"));
    let peers = public.run_ok(&["peers"]);
    assert!(peers.contains("relayed"), "{peers}");

    let relay_status = relay.status();
    assert_eq!(relay_status["role"], "relay");
    assert!(
        relay_status["delivered"].as_u64().unwrap() >= 1,
        "{relay_status}"
    );
}

#[test]
fn a_private_node_asks_a_public_one_and_hears_back_through_its_relay() {
    let (_relay, mut private, public) = trio();
    let sent = private.json(&["request", &public.ticket(), "-j", "from behind NAT"]);
    assert_eq!(sent["delivered"], true, "{sent}");
    assert_eq!(
        sent["path"], "direct",
        "a private node may dial out: {sent}"
    );
    public.wait_for_state(&private.node_id, "incoming_pending");

    // Hours later: no connection between them any more (the private node restarted),
    // and the public node cannot dial it. The approval goes through the relay.
    private.restart();
    private.wait_registered(1);
    let approved = public.json(&["approve", &private.node_id]);
    assert_eq!(approved["delivered"], true, "{approved}");
    assert_eq!(approved["path"], "relayed", "{approved}");
    private.wait_for_state(&public.node_id, "trusted");
    assert_eq!(path_to(&public, &private).as_deref(), Some("relayed"));

    // Revocations travel the same path.
    let revoked = public.json(&["revoke", &private.node_id, "--reason", "moved on"]);
    assert_eq!(revoked["delivered"], true, "{revoked}");
    private.wait_for_state(&public.node_id, "revoked_by_peer");
    assert_eq!(private.peer(&public.node_id).unwrap()["reason"], "moved on");
}

#[test]
fn a_rejection_reaches_a_public_requester_from_a_private_node() {
    let (_relay, private, public) = trio();
    public.run_ok(&["request", &private.ticket(), "-j", "may I?"]);
    private.wait_for_state(&public.node_id, "incoming_pending");
    let rejected = private.json(&["reject", &public.node_id, "--reason", "no"]);
    assert_eq!(rejected["delivered"], true, "{rejected}");
    public.wait_for_state(&private.node_id, "rejected_by_peer");
    assert_eq!(public.peer(&private.node_id).unwrap()["reason"], "no");
}

#[test]
fn a_message_queued_while_the_node_is_offline_is_delivered_when_it_reconnects() {
    let (relay, mut private, public) = trio();
    let ticket = private.ticket();
    let listen = private.listen_addr().to_string();
    private.stop();

    let sent = public.json(&["request", &ticket, "-j", "wait for me"]);
    assert_eq!(sent["queued"], true, "{sent}");
    assert_eq!(sent["delivered"], false, "{sent}");
    assert!(
        sent["detail"].as_str().unwrap().contains("offline"),
        "{sent}"
    );
    assert_eq!(relay.status()["queued"], 1);

    private.start_again_at(&listen);
    private.wait_for_state(&public.node_id, "incoming_pending");
    assert_eq!(relay.status()["queued"], 0);
    private.run_ok(&["approve", &public.node_id]);
    public.wait_for_state(&private.node_id, "trusted");
}

#[test]
fn both_nodes_survive_a_relay_restart_without_help() {
    let (mut relay, private, public) = trio();
    relay.restart();
    // The private node reconnects on its own (backoff with jitter) and registers again.
    private.wait_registered(2);

    public.run_ok(&["request", &private.ticket(), "-j", "after the restart"]);
    private.wait_for_state(&public.node_id, "incoming_pending");
    private.run_ok(&["approve", &public.node_id]);
    public.wait_for_state(&private.node_id, "trusted");

    // And again, for the way back from the private node.
    relay.restart();
    private.wait_registered(3);
    let revoked = public.json(&["revoke", &private.node_id]);
    assert_eq!(revoked["delivered"], true, "{revoked}");
    private.wait_for_state(&public.node_id, "revoked_by_peer");
}

#[test]
fn relay_events_and_status_are_reported() {
    let (mut relay, private, _public) = trio();
    let seen = events(&private);
    let kinds: Vec<&str> = seen.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"relay_connected"), "{seen:?}");
    assert!(kinds.contains(&"relay_registered"), "{seen:?}");
    let listen = relay.listen_addr().to_string();
    relay.stop();
    private.wait_until("the relay connection to drop", |n| {
        n.status()["relay"]["state"] != "registered"
    });
    let human = private.run_ok(&["status"]);
    assert!(
        human.contains("relay ") && human.contains("last error"),
        "{human}"
    );
    assert!(
        events(&private)
            .iter()
            .any(|e| e["kind"] == "relay_disconnected")
    );
    relay.start_again_at(&listen);
    private.wait_registered(2);
}

#[test]
fn an_allow_list_limits_who_may_register_but_not_who_may_ask() {
    let mut relay = TestNode::init();
    let mut member = TestNode::init();
    let mut stranger = TestNode::init();
    let allow = relay.data_dir().join("allow");
    std::fs::write(&allow, format!("# members\n{}\n", member.node_id)).unwrap();
    relay.start_relay(&["--allow", allow.to_str().unwrap()]);
    member.start_private(&relay);
    member.wait_registered(1);

    stranger.start_private(&relay);
    stranger.wait_until("the refusal", |n| n.status()["relay"]["state"] == "refused");
    let status = stranger.status();
    assert!(
        status["relay"]["refusal"]
            .as_str()
            .unwrap()
            .contains("allow list"),
        "{status}"
    );

    // The stranger may still ask the member through the relay.
    let sent = stranger.json(&["request", &member.ticket(), "-j", "hello"]);
    assert_eq!(sent["delivered"], true, "{sent}");
    member.wait_for_state(&stranger.node_id, "incoming_pending");
}

#[test]
fn one_identity_connected_twice_is_reported_to_both_as_a_conflict() {
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
    assert_eq!(
        copy.run_ok(&["id"]).lines().next().unwrap(),
        original.node_id
    );
    copy.start_private(&relay);

    for node in [&original, &copy] {
        node.wait_until("the identity conflict", |n| {
            !n.status()["relay"]["conflict"].is_null()
        });
        let status = node.status();
        let advice = status["relay"]["conflict"]["advice"].as_str().unwrap();
        assert!(
            advice.contains(" fork`") && advice.contains(" adopt`"),
            "{advice}"
        );
        // An unsigned notice: shown as the relay's claim, naming the relay.
        let claim = format!(
            "relay {} says this node's id is also connected",
            relay.node_id
        );
        let human = node.run_ok(&["status"]);
        assert!(human.contains(&claim), "{human}");
        assert!(!human.contains("IDENTITY CONFLICT"), "{human}");
        assert!(human.contains("has not verified it"), "{human}");
        assert_eq!(status["relay"]["conflict"]["reported_by"], relay.node_id);
        let events = events(node);
        assert!(
            events.iter().any(|e| e["kind"] == "identity_conflict"
                && e["detail"].as_str().unwrap().contains(&claim)),
            "{events:?}"
        );
    }
    assert!(relay.status()["conflicts"].as_u64().unwrap() >= 1);
}

/// A private node advertises no direct address, so an `--advertise` beside
/// `--private` would be silently dropped: it is a usage error instead, and no daemon
/// starts.
#[test]
fn private_with_advertise_is_a_usage_error() {
    let node = TestNode::init();
    let mut child = node
        .command(&["run", "--private", "--advertise", "192.0.2.1:7444"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("`kith run --private --advertise` started a daemon");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = common::stderr_of(&out);
    assert!(
        stderr.contains("--private") && stderr.contains("--advertise"),
        "{stderr}"
    );
    assert!(!node.data_dir().join("control.sock").exists());
}

/// One host opens connection after connection to an allow-listed relay, each with a
/// fresh identity, and holds them. An allowed private node still registers; a second
/// member, over the relay's member limit, is told in `kith status` that the relay is full.
#[test]
fn one_host_with_fresh_identities_cannot_keep_members_out_of_a_relay() {
    let mut relay = TestNode::init();
    let mut member = TestNode::init();
    let mut second = TestNode::init();
    let allow = relay.data_dir().join("allow");
    std::fs::write(&allow, format!("{}\n{}\n", member.node_id, second.node_id)).unwrap();
    relay.start_relay(&["--allow", allow.to_str().unwrap(), "--max-clients", "1"]);
    let ticket: Ticket = relay.ticket().parse().unwrap();
    let addr = ticket.addrs[0];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The attacker: another loopback address, one endpoint, 60 identities.
    let (endpoint, held) = runtime.block_on(async {
        let bind = tls::Identity::new(&NodeKey::generate()).unwrap();
        let endpoint = tls::make_endpoint(&bind, "127.0.0.2:0".parse().unwrap()).unwrap();
        let mut held = Vec::new();
        for _ in 0..60 {
            let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
            let dial = tls::dial_relay(&endpoint, &identity, addr, ticket.node_id);
            if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(3), dial).await {
                held.push(conn);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        held.retain(|c| c.close_reason().is_none());
        (endpoint, held)
    });
    assert!(
        held.len() <= kith_node::relay::MAX_PER_ADDRESS,
        "one address holds {} connections",
        held.len()
    );

    member.start_private(&relay);
    member.wait_registered(1);

    second.start_private(&relay);
    second.wait_until("the relay saying it is full", |n| {
        n.status()["relay"]["refusal"] == "the relay has too many clients"
    });
    let human = second.run_ok(&["status"]);
    assert!(human.contains("the relay is full"), "{human}");

    drop(held);
    endpoint.close(0u32.into(), b"done");
}
