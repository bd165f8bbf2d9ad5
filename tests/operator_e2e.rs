//! End-to-end tests of the operator experience: waiting, deny and allow lists, names,
//! expiry, events, ping, escaping, hooks and `--json` on every listing.

mod common;

use std::time::Duration;

use common::{TestNode, stderr_of, stdout_of};
use serde_json::Value;

/// Starts `kith request --wait` in the background and returns its handle.
fn request_wait(a: &TestNode, ticket: &str, extra: &[&str]) -> std::process::Child {
    let mut args = vec!["request", ticket, "-j", "wait for me", "--wait"];
    args.extend_from_slice(extra);
    a.command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn request_wait_accepted_exits_0_and_prints_the_approve_command() {
    let (a, b) = (TestNode::started(), TestNode::started());
    let child = request_wait(&a, &b.ticket(), &[]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("kith approve {}", a.node_id)),
        "{}",
        stderr_of(&out)
    );
    assert!(stdout_of(&out).contains("accepted"));
}

#[test]
fn request_wait_rejected_exits_3() {
    let (a, b) = (TestNode::started(), TestNode::started());
    let child = request_wait(&a, &b.ticket(), &[]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["reject", &a.node_id, "--reason", "no"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
}

#[test]
fn request_wait_timeout_exits_4_and_stays_pending() {
    let (a, b) = (TestNode::started(), TestNode::started());
    let out = request_wait(&a, &b.ticket(), &["--timeout", "1s"])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
    assert_eq!(
        a.peer_state(&b.node_id).as_deref(),
        Some("outgoing_pending")
    );
    assert_eq!(
        b.peer_state(&a.node_id).as_deref(),
        Some("incoming_pending")
    );
}

#[test]
fn ignore_drops_requests_quietly_until_unignored() {
    let (a, b) = (TestNode::started(), TestNode::started());
    b.run_ok(&["ignore", &a.node_id]);
    let ignored = b.json(&["ignored"]);
    assert_eq!(ignored[0]["node_id"], a.node_id.as_str());

    let sent = a.json(&["request", &b.ticket(), "-j", "let me in"]);
    assert_eq!(sent["delivered"], true);
    assert_eq!(sent["detail"], "pending", "the ignored node learns nothing");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.peer_state(&a.node_id), None);
    assert!(b.json(&["pending"]).as_array().unwrap().is_empty());
    assert!(b.event_kinds(&a.node_id).contains(&"ignored".to_string()));

    // A deny-list entry is found by a prefix of its id, as the help shows.
    b.run_ok(&["unignore", &a.node_id[..8]]);
    assert!(b.json(&["ignored"]).as_array().unwrap().is_empty());
    // A asks again (a new envelope); now it is pending.
    a.run_ok(&["request", &b.ticket(), "-j", "again"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
}

#[test]
fn allowlisted_nodes_are_trusted_without_asking() {
    let (a, b) = (TestNode::started(), TestNode::started());
    b.run_ok(&["allow", &a.node_id, "--name", "ci-runner"]);
    let allowed = b.json(&["allowed"]);
    assert_eq!(allowed[0]["name"], "ci-runner");
    a.run_ok(&["request", &b.ticket(), "-j", "pre-approved"]);
    a.wait_for_state(&b.node_id, "trusted");
    assert_eq!(b.peer_state(&a.node_id).as_deref(), Some("trusted"));
    assert_eq!(b.peer(&a.node_id).unwrap()["name"], "ci-runner");
    assert!(
        b.event_kinds(&a.node_id)
            .contains(&"auto_approved".to_string())
    );
}

#[test]
fn auto_approve_trusts_everyone_and_says_so_loudly() {
    let a = TestNode::started();
    let mut b = TestNode::init();
    b.start_with(&["--auto-approve"]);
    assert!(b.log().contains("--auto-approve is on"), "{}", b.log());
    assert_eq!(b.json(&["status"])["auto_approve"], true);
    a.run_ok(&["request", &b.ticket()]);
    a.wait_for_state(&b.node_id, "trusted");
}

#[test]
fn names_work_wherever_an_id_does() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket()]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&[
        "approve",
        &a.node_id[..13],
        "--name",
        "laptop",
        "--note",
        "alice's",
    ]);
    a.wait_for_state(&b.node_id, "trusted");
    b.run_ok(&["rename", "laptop", "old-laptop"]);
    let peer = b.peer(&a.node_id).unwrap();
    assert_eq!(peer["name"], "old-laptop");
    let pong = b.json(&["ping", "old-laptop"]);
    assert!(pong[0]["rtt_ms"].as_f64().unwrap() > 0.0);
    b.run_ok(&["revoke", "old-laptop"]);
    a.wait_for_state(&b.node_id, "revoked_by_peer");
}

#[test]
fn ping_is_refused_for_untrusted_peers_with_a_reason() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket()]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    let out = a.run(&["ping", &b.node_id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("not a trusted peer"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn expired_trust_fails_closed() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket()]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id, "--expires", "2s"]);
    a.wait_for_state(&b.node_id, "trusted");
    assert!(
        a.run(&["ping", &b.node_id]).status.success(),
        "trusted before expiry"
    );
    b.wait_for_state(&a.node_id, "expired");
    let out = a.run(&["ping", &b.node_id]);
    assert!(!out.status.success(), "B refuses once A's trust expired");
    assert!(
        stderr_of(&out).contains("refused") || stderr_of(&out).contains("trusted"),
        "{}",
        stderr_of(&out)
    );
    assert!(
        b.event_kinds(&a.node_id)
            .contains(&"trust_expired".to_string())
    );
}

#[test]
fn dismiss_drops_a_pending_request() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket(), "-j", "meh"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["dismiss", &a.node_id]);
    assert!(b.json(&["pending"]).as_array().unwrap().is_empty());
    assert!(b.event_kinds(&a.node_id).contains(&"dismissed".to_string()));
}

#[test]
fn every_transition_emits_an_event() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket(), "-j", "events please"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id]);
    a.wait_for_state(&b.node_id, "trusted");
    a.run_ok(&["revoke", &b.node_id]);
    b.wait_for_state(&a.node_id, "revoked_by_peer");
    assert_eq!(
        b.event_kinds(&a.node_id),
        ["request_received", "approved", "revoked_by_peer"]
    );
    assert_eq!(
        a.event_kinds(&b.node_id),
        ["request_sent", "accepted_by_peer", "revoked"]
    );
}

#[test]
fn events_follow_streams_new_events() {
    let (a, b) = (TestNode::started(), TestNode::started());
    let mut follower = b
        .command(&["--json", "events", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    a.run_ok(&["request", &b.ticket(), "-j", "live"]);
    let stdout = follower.stdout.take().unwrap();
    // Read on a thread so that a regression fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
    follower.kill().unwrap();
    follower.wait().unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["version"], 1);
    assert_eq!(event["data"]["kind"], "request_received");
    assert_eq!(event["data"]["detail"], "live");
}

#[test]
fn terminal_escapes_in_a_justification_are_printed_harmlessly() {
    let (a, b) = (TestNode::started(), TestNode::started());
    let evil = "\u{1b}[2J\u{1b}[31mhi\u{7}\u{202e}there";
    a.run_ok(&["request", &b.ticket(), "-j", evil]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    for args in [&["pending"][..], &["events"][..]] {
        let out = b.run_ok(args);
        assert!(!out.contains('\u{1b}'), "raw ESC in {args:?}: {out:?}");
        assert!(
            !out.contains('\u{7}') && !out.contains('\u{202e}'),
            "{out:?}"
        );
        assert!(out.contains("hi"), "{out}");
    }
    // The exact text is kept, and JSON carries it faithfully (escaped by JSON itself).
    let pending = b.json(&["pending"]);
    assert_eq!(pending[0]["justification"], evil);
}

#[test]
fn on_request_runs_the_hook_with_the_details() {
    let a = TestNode::started();
    let mut b = TestNode::init();
    let out_file = b.data_dir().join("hook.out");
    let hook = format!(
        "printf '%s|%s|%s' \"$KITH_PEER_ID\" \"$KITH_JUSTIFICATION\" \"$KITH_SOURCE_ADDR\" > {0}.tmp && mv {0}.tmp {0}",
        out_file.display()
    );
    b.start_with(&["--on-request", &hook]);
    a.run_ok(&["request", &b.ticket(), "-j", "hook me"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !out_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "hook never ran: {}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The hook renames its output into place, so it is never read half-written.
    let text = std::fs::read_to_string(&out_file).unwrap();
    let parts: Vec<&str> = text.split('|').collect();
    assert_eq!(parts[0], a.node_id);
    assert_eq!(parts[1], "hook me");
    assert!(parts[2].starts_with("127.0.0.1:"), "{text}");
}

#[test]
fn a_known_address_with_a_new_key_is_refused_loudly() {
    let a = TestNode::started();
    let mut b = TestNode::started();
    a.run_ok(&["request", &b.ticket()]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id]);
    a.wait_for_state(&b.node_id, "trusted");
    let addr = b.json(&["status"])["listen"].as_str().unwrap().to_string();
    b.stop();
    // Another machine (new key) now answers at B's address.
    let mut impostor = TestNode::init();
    impostor.start_with_listen(&addr);
    let out = a.run(&["request", &impostor.ticket()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("DIFFERENT KEY"), "{err}");
    assert!(err.contains("kith forget"), "{err}");
    assert_eq!(impostor.peer_state(&a.node_id), None, "nothing was sent");
}

#[test]
fn every_listing_speaks_versioned_json() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket()]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    for args in [
        &["status"][..],
        &["ticket"],
        &["pending"],
        &["peers"],
        &["ignored"],
        &["allowed"],
        &["id"],
    ] {
        let data = b.json(args);
        assert!(!data.is_null(), "{args:?}");
    }
    let peers = b.json(&["peers"]);
    for field in ["node_id", "name", "state", "since_ms"] {
        assert!(peers[0].get(field).is_some(), "peers lack {field}: {peers}");
    }
    let pending = b.json(&["pending"]);
    for field in ["node_id", "justification", "received_at_ms", "address"] {
        assert!(
            pending[0].get(field).is_some(),
            "pending lacks {field}: {pending}"
        );
    }
}

#[test]
fn help_has_examples_and_completions_work() {
    let a = TestNode::init();
    for cmd in [
        "init",
        "id",
        "mnemonic",
        "run",
        "status",
        "ticket",
        "request",
        "pending",
        "approve",
        "reject",
        "revoke",
        "peers",
        "dismiss",
        "forget",
        "ignore",
        "unignore",
        "ignored",
        "allow",
        "disallow",
        "allowed",
        "rename",
        "ping",
        "events",
        "completions",
        "demo",
    ] {
        let help = a.run_ok(&[cmd, "--help"]);
        assert!(
            help.contains("Example"),
            "`kith {cmd} --help` has no examples:\n{help}"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = a.run_ok(&["completions", shell]);
        assert!(
            script.contains("approve"),
            "{shell} completions lack subcommands"
        );
    }
}

#[test]
fn the_demo_walks_through_every_step_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::kith_bin())
        .arg("demo")
        .env("HOME", tmp.path())
        .env_remove("KITH_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    for expected in [
        "sees bob as trusted",
        "refused, as it should be",
        "without waiting for an operator",
        "revoked by peer",
        "delivered through the relay",
        "sees dave as trusted",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the demo writes nothing"
    );
}

#[test]
fn pending_ttl_forget_and_disallow_through_the_binary() {
    let a = TestNode::started();
    let mut b = TestNode::init();
    b.start_with(&["--pending-ttl", "2s"]);
    a.run_ok(&["request", &b.ticket(), "-j", "soon stale"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    // Unanswered past the TTL: dropped, with an event.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while b.peer_state(&a.node_id).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        b.event_kinds(&a.node_id)
            .contains(&"pending_expired".to_string())
    );

    // forget: every record of a peer goes, and nothing is sent to it.
    assert!(a.peer(&b.node_id).is_some());
    a.run_ok(&["forget", &b.node_id]);
    assert_eq!(a.peer(&b.node_id), None);
    assert!(a.run(&["ping", &b.node_id]).status.code() == Some(1));

    // disallow: the allowlist entry goes; the next request waits for an operator.
    // An allowlist entry is found by the name it was given, as the help shows.
    b.run_ok(&["allow", &a.node_id, "--name", "temp"]);
    b.run_ok(&["disallow", "temp"]);
    assert!(b.json(&["allowed"]).as_array().unwrap().is_empty());
    a.run_ok(&["request", &b.ticket(), "-j", "ask again"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
}
