//! End-to-end tests of `kith init`, `kith id` and `kith mnemonic` through the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{TestNode, passphrase_file, stderr_of, stdout_of};
use kith_keys::keystore::Secrets;
use kith_keys::mnemonic::Mnemonic;
use zeroize::Zeroizing;

/// BIP39 test phrase (trezor vectors, entropy 0x7f repeated 32 times).
const PHRASE: &str = "legal winner thank year wave sausage worth useful legal winner thank year \
                      wave sausage worth useful legal winner thank year wave sausage worth title";

fn kith(dir: &std::path::Path) -> std::process::Command {
    let mut cmd = common::kith_command();
    cmd.arg("--data-dir").arg(dir);
    cmd
}

fn run_with_stdin(mut cmd: std::process::Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn expected_id(phrase: &str, index: u32) -> String {
    let secrets = Secrets::new(
        Mnemonic::parse(phrase).unwrap(),
        Zeroizing::new(String::new()),
        index,
    );
    secrets.node_key().unwrap().node_id().to_string()
}

#[test]
fn init_prints_a_24_word_phrase_once_and_id_matches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let out = kith(&dir)
        .args([
            "init",
            "--insecure-no-passphrase",
            "--show-phrase-on-stdout",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let phrase = stdout_of(&out).lines().next().unwrap().to_string();
    assert_eq!(phrase.split_whitespace().count(), 24, "{phrase}");
    assert!(stderr_of(&out).contains("NOT encrypted"));

    let id = kith(&dir).arg("id").output().unwrap();
    assert!(id.status.success());
    let node_id = stdout_of(&id).lines().next().unwrap().to_string();
    assert_eq!(node_id, expected_id(&phrase, 0));

    let again = kith(&dir).arg("mnemonic").output().unwrap();
    assert_eq!(stdout_of(&again).trim(), phrase);
}

#[test]
fn recover_gives_the_same_node_id_every_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for n in 0..2 {
        let dir = tmp.path().join(format!("n{n}"));
        let out = run_with_stdin(
            {
                let mut c = kith(&dir);
                c.args(["init", "--recover", "--insecure-no-passphrase"]);
                c
            },
            PHRASE,
        );
        assert!(out.status.success(), "{}", stderr_of(&out));
        let id = kith(&dir).arg("id").output().unwrap();
        ids.push(stdout_of(&id).lines().next().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], expected_id(PHRASE, 0));

    let dir = tmp.path().join("index7");
    let out = run_with_stdin(
        {
            let mut c = kith(&dir);
            c.args([
                "init",
                "--recover",
                "--index",
                "7",
                "--insecure-no-passphrase",
            ]);
            c
        },
        PHRASE,
    );
    assert!(out.status.success());
    let json = kith(&dir).args(["--json", "id"]).output().unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["version"], 1);
    assert_eq!(value["data"]["index"], 7);
    assert_eq!(value["data"]["node_id"], expected_id(PHRASE, 7));
    assert_ne!(value["data"]["node_id"], ids[0]);
}

#[test]
fn recover_refuses_a_bad_phrase_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let bad = PHRASE.replace("title", "legal");
    let out = run_with_stdin(
        {
            let mut c = kith(&dir);
            c.args(["init", "--recover", "--insecure-no-passphrase"]);
            c
        },
        &bad,
    );
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("checksum"), "{}", stderr_of(&out));
    assert!(!dir.join("keystore").exists());
}

#[test]
fn passphrase_protects_the_keystore() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let good = passphrase_file(tmp.path(), "good", "correct horse battery staple\n");
    let wrong = passphrase_file(tmp.path(), "wrong", "incorrect horse\n");
    let out = kith(&dir)
        .args(["init", "--show-phrase-on-stdout", "--passphrase-file"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));

    let ok = kith(&dir)
        .args(["id", "--passphrase-file"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr_of(&ok));
    let ok_env = kith(&dir)
        .arg("id")
        .env("KITH_PASSPHRASE_FILE", &good)
        .output()
        .unwrap();
    assert_eq!(stdout_of(&ok), stdout_of(&ok_env));

    let bad = kith(&dir)
        .args(["id", "--passphrase-file"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr_of(&bad);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.to_lowercase().contains("passphrase"), "{err}");
    assert!(stdout_of(&bad).is_empty());

    // No passphrase and no terminal: a clear sentence, not a hang.
    let none = kith(&dir)
        .arg("id")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(
        stderr_of(&none).contains("--passphrase-file"),
        "{}",
        stderr_of(&none)
    );
}

#[test]
fn permissions_are_0700_and_0600() {
    let node = TestNode::init();
    let dir_mode = std::fs::metadata(node.data_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    let key_mode = std::fs::metadata(node.data_dir().join("keystore"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    assert_eq!(key_mode, 0o600);
}

#[test]
fn init_twice_refuses_and_keeps_the_keystore() {
    let node = TestNode::init();
    let before = std::fs::read(node.data_dir().join("keystore")).unwrap();
    let out = node.run(&["init", "--insecure-no-passphrase"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("already initialised"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        std::fs::read(node.data_dir().join("keystore")).unwrap(),
        before
    );
    assert_eq!(node.run_ok(&["id"]).lines().next().unwrap(), node.node_id);
}

#[test]
fn a_corrupted_keystore_fails_cleanly() {
    let node = TestNode::init();
    let path = node.data_dir().join("keystore");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let out = node.run(&["id"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("damaged") || err.contains("corrupt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    std::fs::write(&path, &bytes[..10]).unwrap();
    let out = node.run(&["id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
}

#[test]
fn commands_without_init_or_daemon_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = kith(tmp.path()).arg("id").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("kith init"), "{}", stderr_of(&out));

    let node = TestNode::init();
    let out = node.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no kith daemon is running"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_mistyped_word_is_not_echoed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let typo = PHRASE.replacen("sausage", "sausagf", 1);
    let out = run_with_stdin(
        {
            let mut c = kith(&dir);
            c.args(["init", "--recover", "--insecure-no-passphrase"]);
            c
        },
        &typo,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("word 6"), "{err}");
    assert!(!err.contains("sausag"), "the error repeats the word: {err}");
    assert!(!dir.join("keystore").exists());
}

#[test]
fn init_will_not_print_a_new_phrase_to_a_non_terminal_without_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    for json in [false, true] {
        let mut cmd = kith(&dir);
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .args(["init", "--insecure-no-passphrase"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = stderr_of(&out);
        assert!(err.contains("--show-phrase-on-stdout"), "{err}");
        assert!(stdout_of(&out).is_empty(), "{}", stdout_of(&out));
        assert!(!dir.join("keystore").exists(), "nothing was written");
    }
    // With the flag, JSON carries the phrase; a recovery needs no flag (nothing new to show).
    let out = kith(&dir)
        .args([
            "--json",
            "init",
            "--insecure-no-passphrase",
            "--show-phrase-on-stdout",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let value: serde_json::Value = serde_json::from_str(stdout_of(&out).trim()).unwrap();
    let phrase = value["data"]["mnemonic"].as_str().unwrap();
    assert_eq!(value["data"]["node_id"], expected_id(phrase, 0).as_str());
}

/// The soft and hard core-file limits of `pid`.
fn core_limit(pid: u32) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max core file size"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    Some((fields[4].to_string(), fields[5].to_string()))
}

#[test]
fn init_cannot_dump_core_while_it_holds_a_phrase() {
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    // Waiting for the phrase on stdin: hardening must already be in place.
    let mut child = kith(&tmp.path().join("n"))
        .args(["init", "--recover", "--insecure-no-passphrase"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        seen = core_limit(pid);
        if seen == Some(("0".into(), "0".into())) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(child.stdin.take());
    let _ = child.wait();
    assert_eq!(seen, Some(("0".into(), "0".into())), "core limit of init");
}

#[test]
fn a_passphrase_file_is_used_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let made = tmp.path().join("made");
    let other = tmp.path().join("other");
    std::fs::write(&made, [0xff, 0xfe, 0xfd, b'\n']).unwrap();
    // Also invalid UTF-8: a lossy decoding would turn both into U+FFFD x3.
    std::fs::write(&other, [0x80, 0x81, 0x82]).unwrap();
    let out = run_with_stdin(
        {
            let mut c = kith(&dir);
            c.args(["init", "--recover", "--passphrase-file"])
                .arg(&made);
            c
        },
        PHRASE,
    );
    assert!(out.status.success(), "{}", stderr_of(&out));

    let wrong = kith(&dir)
        .args(["id", "--passphrase-file"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(
        wrong.status.code(),
        Some(1),
        "80 81 82 must not unlock ff fe fd"
    );
    assert!(
        stderr_of(&wrong).contains("passphrase"),
        "{}",
        stderr_of(&wrong)
    );
    // The same bytes with a CRLF line end still unlock: only the line end is stripped.
    std::fs::write(&other, [0xff, 0xfe, 0xfd, b'\r', b'\n']).unwrap();
    let right = kith(&dir)
        .args(["id", "--passphrase-file"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(right.status.success(), "{}", stderr_of(&right));
    assert_eq!(
        stdout_of(&right).lines().next().unwrap(),
        expected_id(PHRASE, 0)
    );
}

#[test]
fn a_bip39_passphrase_file_must_be_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let bip39 = tmp.path().join("bip39");
    std::fs::write(&bip39, [0xff, 0xfe, 0xfd, b'\n']).unwrap();
    let out = run_with_stdin(
        {
            let mut c = kith(&dir);
            c.args(["init", "--recover", "--insecure-no-passphrase"])
                .arg("--bip39-passphrase-file")
                .arg(&bip39);
            c
        },
        PHRASE,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("not UTF-8"), "{err}");
    assert!(!dir.join("keystore").exists());
}
