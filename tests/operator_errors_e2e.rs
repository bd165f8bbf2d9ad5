//! End-to-end tests of what an operator meets on a bad day, with the real `kith`
//! binary: closed pipes, a daemon that dies, error chains, refusals that name the
//! next command, and messages that say what really happens.

mod common;

use std::io::Read;
use std::process::Stdio;

use common::{TestNode, stderr_of};

/// Runs `kith args` with its stdout a pipe whose reader is already gone.
fn into_closed_pipe(node: &TestNode, args: &[&str]) -> std::process::Output {
    let mut child = node
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

#[test]
fn a_closed_pipe_ends_every_command_quietly_with_exit_0() {
    let a = TestNode::started();
    let b = TestNode::started();
    a.run_ok(&[
        "request",
        &b.ticket(),
        "-j",
        "so that peers and pending print",
    ]);
    for args in [
        &["status"][..],
        &["ticket"],
        &["peers"],
        &["pending"],
        &["events"],
        &["id"],
        &["--json", "status"],
        &["completions", "bash"],
        &["demo"],
    ] {
        let out = into_closed_pipe(&a, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "kith {args:?} into a closed pipe: {}",
            stderr_of(&out)
        );
        let stderr = stderr_of(&out);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "kith {args:?} into a closed pipe printed: {}",
            stderr_of(&out)
        );
    }
}

#[test]
fn events_follow_fails_when_the_daemon_goes_away() {
    let mut a = TestNode::started();
    let follower = a
        .command(&["events", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the follower connect before the daemon dies.
    std::thread::sleep(std::time::Duration::from_millis(500));
    a.kill9();
    let out = follower.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("the daemon went away"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn each_cause_of_an_error_is_printed_once() {
    let a = TestNode::init();
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = a.run(&["run", "--no-harden", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains(&addr), "{stderr}");
    assert_eq!(stderr.matches("os error 98").count(), 1, "{stderr}");
}

#[test]
fn a_request_to_a_stopped_node_says_cannot_reach_once() {
    let a = TestNode::started();
    let mut b = TestNode::started();
    let ticket = b.ticket();
    b.stop();
    let out = a.run_ok(&["request", &ticket, "-j", "are you there"]);
    assert_eq!(out.matches("cannot reach").count(), 1, "{out}");
}

#[test]
fn granting_trust_needs_13_characters_of_the_id_and_shows_the_full_id() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket(), "-j", "me"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    // `kith pending` tells the operator the command with the full id.
    let pending = b.run_ok(&["pending"]);
    assert!(
        pending.contains(&format!("kith approve {}", a.node_id)),
        "{pending}"
    );
    for short in [&a.node_id[..8], &a.node_id[..12]] {
        let out = b.run(&["approve", short]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("13 characters"),
            "{}",
            stderr_of(&out)
        );
        assert_eq!(
            b.peer_state(&a.node_id).as_deref(),
            Some("incoming_pending")
        );
        let out = b.run(&["allow", short]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        assert!(b.json(&["allowed"]).as_array().unwrap().is_empty());
    }
    let out = b.run_ok(&["approve", &a.node_id[..13]]);
    assert!(out.contains(&a.node_id), "the full id is shown: {out}");
    assert_eq!(b.peer_state(&a.node_id).as_deref(), Some("trusted"));
    // Commands that grant nothing still take the short prefix.
    b.run_ok(&["rename", &a.node_id[..8], "laptop"]);
}

#[test]
fn names_are_resolved_and_kept_unique_with_clear_refusals() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket(), "-j", "me"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id, "--name", "laptop"]);

    for args in [&["rename", "desk", "x"][..], &["ping", "nosuchname"]] {
        let out = b.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr_of(&out).contains("no peer is named"),
            "{args:?}: {}",
            stderr_of(&out)
        );
    }

    // Same name again: nothing changed, and it says so.
    let out = b.run_ok(&["rename", "laptop", "laptop"]);
    assert!(out.contains("nothing changed"), "{out}");

    // A name another node already has is refused, and nothing changes.
    let other = TestNode::init();
    b.run_ok(&["allow", &other.node_id, "--name", "build-01"]);
    let out = b.run(&["rename", "laptop", "build-01"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("already"), "{}", stderr_of(&out));
    assert_eq!(b.peer(&a.node_id).unwrap()["name"], "laptop");
    let out = b.run(&["allow", &TestNode::init().node_id, "--name", "laptop"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
}

/// `kith` with a data dir and a clean environment, not through a [`TestNode`].
fn kith_in(dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(common::kith_bin());
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("KITH_PASSPHRASE_FILE")
        .env_remove("KITH_DATA_DIR")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn before_init_every_command_says_to_run_kith_init() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["status"][..], &["peers"], &["events", "--follow"]] {
        let out = kith_in(dir.path(), args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains("run `kith init` first"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("kith run"), "{args:?}: {stderr}");
    }
}

#[test]
fn init_without_a_passphrase_or_terminal_names_both_ways_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = kith_in(
        &dir.path().join("node"),
        &["init", "--show-phrase-on-stdout"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("--passphrase-file"), "{stderr}");
    assert!(stderr.contains("--insecure-no-passphrase"), "{stderr}");
    assert!(!stderr.contains("the keystore is encrypted"), "{stderr}");
}

#[test]
fn init_insecure_with_a_passphrase_file_in_the_environment_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = common::passphrase_file(dir.path(), "pass", "correct horse");
    let node = dir.path().join("node");
    let out = kith_in(&node, &["init", "--insecure-no-passphrase"])
        .env("KITH_PASSPHRASE_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("KITH_PASSPHRASE_FILE is set"),
        "{}",
        stderr_of(&out)
    );
    assert!(!node.join("keystore").exists() && !node.exists());
}

#[test]
fn a_control_socket_that_cannot_be_bound_names_the_path_and_the_fix() {
    // Too long for a Unix socket address.
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("d".repeat(100));
    kith_in(
        &long,
        &[
            "init",
            "--insecure-no-passphrase",
            "--show-phrase-on-stdout",
        ],
    )
    .output()
    .unwrap();
    let out = kith_in(&long, &["run", "--no-harden", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("control.sock"), "{stderr}");
    assert!(stderr.contains("use a shorter --data-dir"), "{stderr}");

    // Something that is not a socket is in the way and cannot simply be removed.
    let node = TestNode::init();
    std::fs::create_dir(node.data_dir().join("control.sock")).unwrap();
    std::fs::write(node.data_dir().join("control.sock/x"), "x").unwrap();
    let out = node.run(&["run", "--no-harden", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("control.sock"), "{stderr}");
    assert!(stderr.contains("remove it yourself"), "{stderr}");
}

#[test]
fn a_request_to_a_relays_ticket_says_so_and_leaves_nothing_pending() {
    let mut relay = TestNode::init();
    relay.start_relay(&[]);
    let a = TestNode::started();
    let out = a.run(&["request", &relay.ticket(), "-j", "hello?"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("that ticket is a relay's"), "{stderr}");
    assert!(stderr.contains("kith run --relay"), "{stderr}");
    // The refusal is final: the request is withdrawn, not left pending.
    assert_ne!(
        a.peer_state(&relay.node_id).as_deref(),
        Some("outgoing_pending")
    );
    assert!(a.json(&["pending"]).as_array().unwrap().is_empty());
    let events = a.run_ok(&["events"]);
    assert!(events.contains("request_refused"), "{events}");
}

#[test]
fn a_request_to_a_stopped_node_says_what_really_happens() {
    let a = TestNode::started();
    let mut b = TestNode::started();
    let ticket = b.ticket();
    b.stop();
    let out = a.run_ok(&["request", &ticket, "-j", "later"]);
    assert!(!out.contains("will be resent until it answers"), "{out}");
    assert!(out.contains("for up to 7 days"), "{out}");
    assert!(out.contains("after a restart"), "{out}");
}

#[test]
fn refusals_name_the_next_command() {
    let (a, b) = (TestNode::started(), TestNode::started());
    a.run_ok(&["request", &b.ticket(), "-j", "me"]);
    b.wait_for_state(&a.node_id, "incoming_pending");

    // Revoking a peer that has only asked: reject or dismiss.
    let out = b.run(&["revoke", &a.node_id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("kith reject"),
        "{}",
        stderr_of(&out)
    );
    assert!(
        stderr_of(&out).contains("kith dismiss"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        b.peer_state(&a.node_id).as_deref(),
        Some("incoming_pending")
    );

    // `pending` says the outgoing request was sent, not received.
    let pending = a.run_ok(&["pending"]);
    assert!(pending.contains("sent "), "{pending}");
    assert!(!pending.contains("received"), "{pending}");

    // A ticket where a peer is expected names its node.
    let other = TestNode::init();
    let mut other_running = other;
    other_running.start();
    b.run_ok(&["ignore", &other_running.ticket()]);
    assert_eq!(
        b.json(&["ignored"])[0]["node_id"],
        other_running.node_id.as_str()
    );
    let ignored = b.run_ok(&["ignored"]);
    assert!(
        !ignored.contains("added"),
        "no column that is always '-': {ignored}"
    );

    // Approving twice: already trusted.
    b.run_ok(&["approve", &a.node_id, "--name", "laptop", "--expires", "3d"]);
    let out = b.run(&["approve", &a.node_id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("already trusted"),
        "{}",
        stderr_of(&out)
    );

    // The peers table shows the expiry; ping shows the name; -c 0 is refused.
    let peers = b.run_ok(&["peers"]);
    assert!(
        peers.contains("expires") && peers.contains("in 2d"),
        "{peers}"
    );
    a.wait_for_state(&b.node_id, "trusted");
    let pong = b.run_ok(&["ping", "laptop"]);
    assert!(pong.starts_with("laptop ("), "{pong}");
    let out = b.run(&["ping", "laptop", "-c", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
}

#[test]
fn a_rejection_shows_its_reason_in_wait_and_in_peers() {
    let (a, b) = (TestNode::started(), TestNode::started());
    let child = a
        .command(&["request", &b.ticket(), "-j", "me", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["reject", &a.node_id, "--reason", "unknown machine"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    let stdout = common::stdout_of(&out);
    assert!(stdout.contains("unknown machine"), "{stdout}");
    let peers = a.run_ok(&["peers"]);
    assert!(
        peers.contains("reason") && peers.contains("unknown machine"),
        "{peers}"
    );
}

#[test]
fn daemon_logs_into_a_file_carry_no_colour_codes() {
    let mut a = TestNode::init();
    a.start_with(&["-v"]);
    a.stop();
    let log = a.log();
    assert!(log.contains("kith node running"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");
}

#[test]
fn json_errors_are_json_on_stderr_with_the_same_exit_codes() {
    let a = TestNode::init();
    for (args, code) in [
        (&["--json", "status"][..], 1),
        (&["--json", "ping", "x", "-c", "0"], 2),
        (&["--json", "no-such-command"], 2),
    ] {
        let out = a.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr_of(&out)
        );
        let line = stderr_of(&out);
        let value: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}"));
        assert_eq!(value["version"], 1, "{value}");
        assert!(!value["error"]["message"].as_str().unwrap().is_empty());
        assert_eq!(value["error"]["exit_code"], code);
    }
}

#[test]
fn an_identity_conflict_is_told_once_with_the_data_dir_in_the_advice() {
    let mut relay = TestNode::init();
    relay.start_relay(&[]);
    let mut original = TestNode::init();
    original.start_private(&relay);
    original.wait_registered(1);
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
    let advice = original.status()["relay"]["conflict"]["advice"]
        .as_str()
        .unwrap()
        .to_string();
    let with_dir = format!("kith --data-dir {} fork", original.data_dir().display());
    assert!(advice.contains(&with_dir), "{advice}");
    let events = original.run_ok(&["events"]);
    let line = events
        .lines()
        .find(|l| l.contains("identity_conflict"))
        .unwrap_or_else(|| panic!("{events}"));
    let other = original.status()["relay"]["conflict"]["others"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(line.matches(&other).count(), 1, "{line}");
}

#[test]
fn ticket_inspect_shows_what_a_ticket_says_without_a_daemon() {
    let mut relay = TestNode::init();
    relay.start_relay(&[]);
    let mut b = TestNode::init();
    b.start_private(&relay);
    let ticket = b.ticket();
    let reader = TestNode::init();
    let shown = reader.json(&["ticket", "inspect", &ticket]);
    assert_eq!(shown["node_id"], b.node_id.as_str());
    assert!(shown["addrs"].as_array().unwrap().is_empty(), "{shown}");
    assert_eq!(shown["relay"]["node_id"], relay.node_id.as_str());
    let human = reader.run_ok(&["ticket", "inspect", &ticket]);
    assert!(
        human.contains(&b.node_id) && human.contains(&relay.node_id),
        "{human}"
    );
    let out = reader.run(&["ticket", "inspect", "kith1garbage"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
}

#[test]
fn read_only_commands_answer_from_the_store_while_the_daemon_is_stopped() {
    let (a, mut b) = (TestNode::started(), TestNode::started());
    let c = TestNode::init();
    a.run_ok(&["request", &b.ticket(), "-j", "while you sleep"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["allow", &c.node_id, "--name", "build-01"]);
    b.run_ok(&["ignore", &TestNode::init().node_id]);
    b.stop();
    let store = b.data_dir().join("kith.redb");
    let before = std::fs::read(&store).unwrap();

    let peers = b.json(&["peers"]);
    assert_eq!(peers[0]["node_id"], a.node_id.as_str(), "{peers}");
    assert_eq!(peers[0]["state"], "incoming_pending");
    let pending = b.json(&["pending"]);
    assert_eq!(pending[0]["justification"], "while you sleep");
    assert_eq!(b.json(&["allowed"])[0]["name"], "build-01");
    assert_eq!(b.json(&["ignored"]).as_array().unwrap().len(), 1);
    let human = b.run(&["peers"]);
    assert!(stderr_of(&human).contains("no kith daemon is running"));
    let events = b.run_ok(&["--json", "events"]);
    assert!(events.contains("\"allowed\""), "{events}");
    let out = b.run(&["ticket"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("kith run"), "{}", stderr_of(&out));
    // Commands that change something still need the daemon.
    assert_eq!(b.run(&["approve", &a.node_id]).status.code(), Some(1));

    assert_eq!(
        std::fs::read(&store).unwrap(),
        before,
        "the store was not touched"
    );
    // Nothing was left locked: the daemon starts again and agrees.
    b.start();
    assert_eq!(
        b.peer_state(&a.node_id).as_deref(),
        Some("incoming_pending")
    );
}
