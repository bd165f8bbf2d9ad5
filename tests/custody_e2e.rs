//! Key custody through the real binary: a copied data dir refuses to run until the
//! operator forks it (a new node) or adopts it (the same node, moved); a running
//! daemon cannot dump core.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestNode, stderr_of, stdout_of};
use kith_keys::keystore::Secrets;
use kith_keys::mnemonic::Mnemonic;
use serde_json::Value;
use zeroize::Zeroizing;

/// Copies a (stopped) data dir's files to a new temp dir, as a snapshot or backup would.
fn copy_of(node: &TestNode) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    for name in ["keystore", "kith.redb", "instance.json"] {
        let from = node.data_dir().join(name);
        if from.exists() {
            std::fs::copy(&from, dir.path().join(name)).unwrap();
        }
    }
    TestNode::with_dir(dir, node.node_id.clone())
}

fn id_json(node: &TestNode) -> Value {
    node.json(&["id"])
}

fn derived_id(node: &TestNode, index: u64) -> String {
    let phrase = node.run_ok(&["mnemonic"]);
    let secrets = Secrets::new(
        Mnemonic::parse(phrase.trim()).unwrap(),
        Zeroizing::new(String::new()),
        u32::try_from(index).unwrap(),
    );
    secrets.node_key().unwrap().node_id().to_string()
}

fn run_refuses(node: &TestNode) -> String {
    let out = node.run(&["run", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1), "a copy must not start");
    stderr_of(&out)
}

#[test]
fn a_copied_data_dir_refuses_to_run_and_explains_fork_and_adopt() {
    let original = TestNode::init();
    let copy = copy_of(&original);
    let err = run_refuses(&copy);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(
        err.contains("kith fork") && err.contains("kith adopt"),
        "{err}"
    );
    assert!(err.contains(&original.node_id), "{err}");
    // Read-only commands still work, with the same warning.
    let out = copy.run(&["id"]);
    assert!(out.status.success());
    assert!(stderr_of(&out).contains("kith fork"));
}

#[test]
fn fork_makes_a_new_node_at_a_recorded_random_index_and_keeps_policy() {
    let mut original = TestNode::init();
    let other = TestNode::init();
    original.start();
    original.run_ok(&["allow", &other.node_id, "--name", "friend"]);
    original.run_ok(&["ignore", &TestNode::init().node_id]);
    let mut peer = TestNode::init();
    peer.start();
    peer.run_ok(&["request", &original.ticket()]);
    original.wait_for_state(&peer.node_id, "incoming_pending");
    original.stop();

    let mut copy = copy_of(&original);
    let forked = copy.run_ok(&["fork"]);
    let new_id = forked.lines().next().unwrap().to_string();
    assert_ne!(new_id, original.node_id);
    let id = id_json(&copy);
    assert_eq!(id["node_id"], new_id.as_str());
    let index = id["index"].as_u64().unwrap();
    assert_ne!(index, 0);
    assert!(index < 1 << 31);
    assert_eq!(
        derived_id(&copy, index),
        new_id,
        "the fork's key is the SLIP-0010 derivation at its index"
    );
    assert_eq!(id["parent"]["node_id"], original.node_id.as_str());
    assert!(
        copy.run_ok(&["id"])
            .contains(&format!("forked from: {}", original.node_id))
    );

    copy.node_id = new_id;
    copy.start();
    assert_eq!(copy.json(&["status"])["node_id"], copy.node_id.as_str());
    assert!(
        copy.json(&["peers"]).as_array().unwrap().is_empty(),
        "peers are dropped"
    );
    assert_eq!(
        copy.json(&["allowed"])[0]["name"],
        "friend",
        "the allowlist is kept"
    );
    assert_eq!(
        copy.json(&["ignored"]).as_array().unwrap().len(),
        1,
        "the deny list is kept"
    );
}

#[test]
fn two_forks_of_one_copy_get_different_ids() {
    let original = TestNode::init();
    let a = copy_of(&original);
    let b = copy_of(&original);
    let id_a = a.run_ok(&["fork"]).lines().next().unwrap().to_string();
    let id_b = b.run_ok(&["fork"]).lines().next().unwrap().to_string();
    assert_ne!(id_a, id_b);
    assert_ne!(id_a, original.node_id);
    assert_ne!(id_json(&a)["index"], id_json(&b)["index"]);
}

#[test]
fn adopt_keeps_the_identity_and_lets_it_run() {
    let original = TestNode::init();
    let mut moved = copy_of(&original);
    drop(original); // the old copy is gone
    run_refuses(&moved);
    let adopted = moved.run_ok(&["adopt"]);
    assert_eq!(adopted.lines().next().unwrap(), moved.node_id);
    moved.start();
    assert_eq!(moved.json(&["status"])["node_id"], moved.node_id.as_str());
}

#[test]
fn fork_and_adopt_refuse_while_the_daemon_runs() {
    let mut node = TestNode::init();
    node.start();
    for cmd in ["fork", "adopt"] {
        let out = node.run(&[cmd]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr_of(&out).contains("stop it first"),
            "{}",
            stderr_of(&out)
        );
    }
    assert_eq!(node.json(&["status"])["node_id"], node.node_id.as_str());
}

fn proc_field(pid: u32, file: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join(file)).ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
}

#[test]
fn a_running_daemon_cannot_dump_core() {
    let mut node = TestNode::init();
    node.start();
    let line = proc_field(node.pid(), "limits", "Max core file size").expect("limits readable");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max core file size  <soft> <hard> bytes"
    assert_eq!(fields[4], "0", "{line}");
    assert_eq!(fields[5], "0", "{line}");
}

#[test]
fn the_daemon_keeps_its_key_in_locked_memory_where_the_limit_allows() {
    let mut node = TestNode::init();
    node.start();
    let limit = proc_field(node.pid(), "limits", "Max locked memory").expect("limits readable");
    let allowed = match limit.split_whitespace().nth(3) {
        Some("unlimited") => u64::MAX,
        Some(v) => v.parse().unwrap_or(0),
        None => 0,
    };
    let locked = proc_field(node.pid(), "status", "VmLck:").expect("status readable");
    let kib: u64 = locked.split_whitespace().nth(1).unwrap().parse().unwrap();
    let log = node.log();
    if allowed >= 4096 {
        assert!(kib >= 4, "the key's page is locked: {locked}\n{log}");
        assert!(!log.contains("could not lock"), "{log}");
        assert_eq!(node.json(&["status"])["hardened"], true);
    } else {
        eprintln!("RLIMIT_MEMLOCK is {allowed} bytes: checking for the warning instead");
        assert!(log.contains("could not lock the node key"), "{log}");
    }

    // --no-harden turns it all off, and says so.
    let mut debug = TestNode::init();
    debug.start_with(&["--no-harden"]);
    let locked = proc_field(debug.pid(), "status", "VmLck:").unwrap();
    assert!(locked.split_whitespace().nth(1).unwrap() == "0", "{locked}");
    assert!(debug.log().contains("--no-harden"));
}

/// Whether this test process runs as root (reading another process's memory needs it).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Every readable mapping of `pid`, read through /proc/<pid>/mem (as root can, even from
/// a non-dumpable process). Regions that cannot be read (e.g. [vvar]) are skipped.
fn process_memory(pid: u32) -> Vec<(String, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    let proc = Path::new("/proc").join(pid.to_string());
    let maps = std::fs::read_to_string(proc.join("maps")).expect("maps readable as root");
    let mut mem = std::fs::File::open(proc.join("mem")).expect("mem readable as root");
    let mut regions = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; usize::try_from(end - start).unwrap()];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        regions.push((line.to_string(), buf));
    }
    regions
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn a_running_daemon_keeps_no_recovery_entropy_or_passphrase_in_memory() {
    if !running_as_root() {
        eprintln!("SKIPPED: reading another process's memory through /proc needs root");
        return;
    }
    daemon_keeps_no_secrets_in_memory(false);
}

#[test]
fn a_running_relay_keeps_no_recovery_entropy_or_passphrase_in_memory() {
    if !running_as_root() {
        eprintln!("SKIPPED: reading another process's memory through /proc needs root");
        return;
    }
    daemon_keeps_no_secrets_in_memory(true);
}

/// Starts `kith run` (or `kith relay`) on a passphrase-protected keystore made from a
/// known phrase and BIP39 passphrase, then reads its whole memory through /proc.
fn daemon_keeps_no_secrets_in_memory(relay: bool) {
    use std::io::Write;
    use std::process::Stdio;
    // Distinctive secrets, so a hit cannot be a coincidence.
    let mut entropy = [0u8; 32];
    for (i, b) in entropy.iter_mut().enumerate() {
        *b = 0xA5 ^ (i as u8).wrapping_mul(37);
    }
    let mnemonic = Mnemonic::from_entropy(&entropy).unwrap();
    let keystore_pass = "keystore-pass-Qz7#custody-probe";
    let bip39_pass = "bip39-pass-Wx4$custody-probe";

    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let pass_file = common::passphrase_file(files.path(), "pass", &format!("{keystore_pass}\n"));
    let bip39_file = common::passphrase_file(files.path(), "bip39", &format!("{bip39_pass}\n"));
    let mut node = TestNode::with_dir(dir, String::new());
    let mut init = node
        .command(&[
            "init",
            "--recover",
            "--passphrase-file",
            pass_file.to_str().unwrap(),
            "--bip39-passphrase-file",
            bip39_file.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    init.stdin
        .take()
        .unwrap()
        .write_all(mnemonic.phrase().as_bytes())
        .unwrap();
    let out = init.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));

    // The daemon is read once it answers: the secrets must be gone by the time it
    // serves, not just eventually.
    let pass_arg = ["--passphrase-file", pass_file.to_str().unwrap()];
    if relay {
        node.start_relay(&pass_arg);
    } else {
        node.start_with(&pass_arg);
        assert!(node.json(&["status"])["node_id"].is_string());
    }
    let phrase = mnemonic.phrase();
    let needles: [(&str, &[u8]); 4] = [
        ("the recovery entropy", &entropy),
        ("the recovery phrase", phrase.as_bytes()),
        ("the BIP39 passphrase", bip39_pass.as_bytes()),
        ("the keystore passphrase", keystore_pass.as_bytes()),
    ];
    let regions = process_memory(node.pid());
    assert!(
        regions.iter().any(|(line, _)| line.contains("[heap]")),
        "the daemon's heap was read"
    );
    let mut found = Vec::new();
    for (what, needle) in needles {
        for (line, bytes) in &regions {
            if let Some(at) = find(bytes, needle) {
                found.push(format!("{what} at offset {at:#x} of {line}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "secrets left in the daemon's memory:\n{}",
        found.join("\n")
    );
}

/// Runs `cmd` to its end, or kills it after `limit` (a daemon that should have refused
/// to start), and returns what it printed.
fn exits_within(mut cmd: std::process::Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// A local user made for one test and removed after it (root only).
struct ThrowawayUser {
    name: String,
}

impl ThrowawayUser {
    fn create(tag: &str) -> ThrowawayUser {
        let name = format!("kt{}{tag}", std::process::id() % 100_000);
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .status()
            .expect("running useradd");
        assert!(status.success(), "useradd {name}");
        ThrowawayUser { name }
    }

    fn chown(&self, path: &Path) {
        let status = std::process::Command::new("chown")
            .arg(&self.name)
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", path.display());
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .status();
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_data_dir_keystore_or_store_owned_by_another_user_is_refused() {
    if !running_as_root() {
        eprintln!("SKIPPED: making files owned by another user needs root");
        return;
    }
    let other = ThrowawayUser::create("own");

    // init into someone else's directory: refused, and the directory left as it was.
    let tmp = tempfile::tempdir().unwrap();
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    set_mode(&theirs, 0o755);
    other.chown(&theirs);
    let out = common::kith_command()
        .arg("--data-dir")
        .arg(&theirs)
        .args([
            "init",
            "--insecure-no-passphrase",
            "--show-phrase-on-stdout",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("belongs to user"), "{err}");
    assert!(!theirs.join("keystore").exists());
    assert_eq!(mode(&theirs), 0o755, "not tightened: it is not ours");

    // A keystore, then a store, handed to another user: every unlock refuses.
    for name in ["keystore", "kith.redb", "instance.json"] {
        let mut node = TestNode::init();
        node.start();
        node.stop();
        let file = node.data_dir().join(name);
        other.chown(&file);
        for args in [&["id"][..], &["run", "--listen", "127.0.0.1:0"]] {
            let out = exits_within(node.command(args), Duration::from_secs(10));
            assert_eq!(out.status.code(), Some(1), "{name}: {args:?}");
            let err = stderr_of(&out);
            assert!(
                err.contains("belongs to user") && err.contains(name),
                "{name}: {err}"
            );
        }
    }
}

#[test]
fn an_unencrypted_keystore_is_refused_when_a_passphrase_is_given() {
    // Someone swaps a passphrase-protected keystore for an unencrypted one of theirs.
    let files = tempfile::tempdir().unwrap();
    let pass = common::passphrase_file(files.path(), "pass", "a real passphrase\n");
    let victim = TestNode::with_dir(tempfile::tempdir().unwrap(), String::new());
    let out = victim
        .command(&["init", "--show-phrase-on-stdout", "--passphrase-file"])
        .arg(&pass)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let theirs = TestNode::init();
    std::fs::copy(
        theirs.data_dir().join("keystore"),
        victim.data_dir().join("keystore"),
    )
    .unwrap();
    let out = victim
        .command(&["id", "--passphrase-file"])
        .arg(&pass)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains("not encrypted"), "{err}");
    assert!(stdout_of(&out).is_empty());
}

#[test]
fn the_store_is_created_0600_and_modes_are_tightened_at_every_start() {
    let mut node = TestNode::init();
    set_mode(node.data_dir(), 0o755);
    set_mode(&node.data_dir().join("keystore"), 0o644);
    node.start();
    assert_eq!(mode(node.data_dir()), 0o700);
    assert_eq!(mode(&node.data_dir().join("keystore")), 0o600);
    assert_eq!(mode(&node.data_dir().join("kith.redb")), 0o600);
}
