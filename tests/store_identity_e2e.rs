//! A node's database belongs to one identity, through the real binary: a new identity
//! in a data dir never inherits the peers another identity was approved by, a fork
//! says what became of the copied database, and an empty database is refused as
//! damaged rather than started afresh.

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestNode, stderr_of};

/// `kith run` that must exit on its own (a refusal); a daemon that starts instead is
/// killed after 20 s and the test fails, rather than hanging.
fn run_must_exit(node: &TestNode) -> Output {
    let mut child = node
        .command(&["run", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("kith run started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A asks B, B approves; both stop. Returns (a, b) with B's data dir holding trust in A.
fn trusted_pair() -> (TestNode, TestNode) {
    let mut a = TestNode::init();
    let mut b = TestNode::init();
    a.start();
    b.start();
    a.run_ok(&["request", &b.ticket(), "--justification", "pair"]);
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id]);
    a.wait_for_state(&b.node_id, "trusted");
    a.stop();
    b.stop();
    (a, b)
}

fn remove_identity(node: &TestNode) {
    for name in ["keystore", "instance.json"] {
        std::fs::remove_file(node.data_dir().join(name)).unwrap();
    }
}

#[test]
fn init_refuses_a_data_dir_whose_database_belongs_to_another_identity() {
    let (a, b) = trusted_pair();
    remove_identity(&b);
    let out = b.run(&[
        "init",
        "--insecure-no-passphrase",
        "--show-phrase-on-stdout",
    ]);
    assert_eq!(out.status.code(), Some(1), "init must refuse");
    let err = stderr_of(&out);
    assert!(err.contains(&b.node_id), "names the owner: {err}");
    assert!(
        err.contains("keystore"),
        "says to restore the keystore: {err}"
    );
    assert!(
        err.contains("aside"),
        "says to move the database aside: {err}"
    );
    assert!(
        !b.data_dir().join("keystore").exists(),
        "no keystore written"
    );
    drop(a);
}

#[test]
fn run_refuses_a_database_of_another_identity_and_starts_fresh_once_it_is_moved() {
    let (a, mut b) = trusted_pair();
    let store = b.data_dir().join("kith.redb");
    let kept = b.data_dir().join("kith.redb.of-b");
    // The operator loses B's keystore, makes a new identity, then puts the old database back.
    remove_identity(&b);
    std::fs::rename(&store, &kept).unwrap();
    let new_id = b.run_ok(&[
        "init",
        "--insecure-no-passphrase",
        "--show-phrase-on-stdout",
    ]);
    assert!(!new_id.is_empty());
    std::fs::rename(&kept, &store).unwrap();
    let new_id = b.run_ok(&["id"]).lines().next().unwrap().to_string();
    assert_ne!(new_id, b.node_id);

    let out = run_must_exit(&b);
    assert_eq!(out.status.code(), Some(1), "run must refuse");
    let err = stderr_of(&out);
    assert!(err.contains(&b.node_id) && err.contains(&new_id), "{err}");
    assert!(err.contains("aside"), "{err}");

    // Following the advice: the new identity starts with no peers, A is not trusted.
    std::fs::rename(&store, &kept).unwrap();
    b.node_id = new_id;
    b.start();
    assert!(b.json(&["peers"]).as_array().unwrap().is_empty());
    assert_eq!(b.peer_state(&a.node_id), None);
}

#[test]
fn an_empty_database_is_refused_as_damaged_not_started_afresh() {
    let (a, b) = trusted_pair();
    let store = b.data_dir().join("kith.redb");
    std::fs::write(&store, b"").unwrap();
    let out = run_must_exit(&b);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("is damaged") && err.contains("empty"), "{err}");
    assert_eq!(
        std::fs::metadata(&store).unwrap().len(),
        0,
        "left as it was"
    );
    drop(a);
}

#[test]
fn fork_gives_the_database_to_the_new_identity_without_the_old_peers() {
    let (a, mut b) = trusted_pair();
    let out = b.run(&["fork"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let new_id = common::stdout_of(&out).lines().next().unwrap().to_string();
    let said = stderr_of(&out);
    assert!(said.contains("database now belongs to"), "{said}");
    assert!(said.contains("1 peer record(s) were dropped"), "{said}");

    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().unwrap());
    let mut fork = TestNode::with_dir_on(dir, new_id.clone(), b.state.clone());
    fork.start();
    assert_eq!(fork.status()["node_id"], new_id.as_str());
    assert_eq!(
        fork.peer_state(&a.node_id),
        None,
        "A approved B, not the fork"
    );
}
