//! End-to-end tests of what an operator meets on a bad day, with the real `kith`
//! binary: closed pipes, a daemon that dies, error chains, refusals that name the
//! next command, and messages that say what really happens.

mod common;

use std::io::Read;
use std::process::Stdio;

use common::{TestNode, stderr_of};

fn started() -> TestNode {
    let mut n = TestNode::init();
    n.start();
    n
}

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
    let a = started();
    let b = started();
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
    let mut a = started();
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
    let a = started();
    let mut b = started();
    let ticket = b.ticket();
    b.stop();
    let out = a.run_ok(&["request", &ticket, "-j", "are you there"]);
    assert_eq!(out.matches("cannot reach").count(), 1, "{out}");
}

#[test]
fn granting_trust_needs_13_characters_of_the_id_and_shows_the_full_id() {
    let (a, b) = (started(), started());
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
    let (a, b) = (started(), started());
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
