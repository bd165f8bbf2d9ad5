//! Clone detection through the real binary: what a copied data dir looks like to
//! `kith run`, and what a moved or re-created one must not look like.
//!
//! The container cases run `kith` in its own mount and UTS namespaces (root only), with
//! `/etc/machine-id` replaced or emptied and its own hostname, as a container has; each
//! test gives every "machine" its own `KITH_STATE_DIR`, never the real one.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestNode, stderr_of};

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `kith --data-dir DIR ARGS` as in a container: its own hostname, `machine_id` (or
/// none: both machine-id files emptied), and the machine state `state`.
fn in_container(
    scratch: &Path,
    machine_id: Option<&str>,
    hostname: &str,
    state: &Path,
    dir: &Path,
    args: &[&str],
) -> Command {
    let id_file = scratch.join(format!("machine-id-{hostname}"));
    std::fs::write(
        &id_file,
        machine_id.map(|m| format!("{m}\n")).unwrap_or_default(),
    )
    .unwrap();
    let script = "mount --bind \"$1\" /etc/machine-id && \
                  { [ ! -e /var/lib/dbus/machine-id ] || mount --bind \"$1\" /var/lib/dbus/machine-id; } && \
                  hostname \"$2\" && shift 2 && exec \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--uts", "--", "sh", "-c", script, "sh"])
        .arg(&id_file)
        .arg(hostname)
        .arg(common::kith_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("KITH_PASSPHRASE_FILE")
        .env_remove("KITH_DATA_DIR")
        .env("KITH_STATE_DIR", state)
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` until it exits or `limit` passes (then kills it: a daemon that started).
fn exits_within(mut cmd: Command, limit: Duration) -> Output {
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

const RUN: &[&str] = &["run", "--listen", "127.0.0.1:0"];
/// Long enough for a refusing daemon (an unencrypted keystore unlocks in milliseconds)
/// to have exited.
const START: Duration = Duration::from_secs(3);

fn init_ok(cmd: Command) {
    let out = exits_within(cmd, Duration::from_secs(20));
    assert!(out.status.success(), "init: {}", stderr_of(&out));
}

const INIT: &[&str] = &[
    "init",
    "--insecure-no-passphrase",
    "--show-phrase-on-stdout",
];

#[test]
fn a_re_created_container_without_a_machine_id_is_not_refused() {
    if !running_as_root() {
        eprintln!("SKIPPED: faking a container's machine id and hostname needs root");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let volume = tempfile::tempdir().unwrap();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init_ok(in_container(
        scratch.path(),
        None,
        "c1",
        first.path(),
        volume.path(),
        INIT,
    ));
    // The container is re-created: the same volume, a new hostname, no state kept.
    let out = exits_within(
        in_container(
            scratch.path(),
            None,
            "c2",
            second.path(),
            volume.path(),
            RUN,
        ),
        START,
    );
    let err = stderr_of(&out);
    assert_eq!(
        out.status.code(),
        None,
        "the daemon must keep running:\n{err}"
    );
    assert!(
        err.contains("no machine id"),
        "the operator is told:\n{err}"
    );
}

#[test]
fn containers_from_one_image_with_a_baked_machine_id_are_refused() {
    if !running_as_root() {
        eprintln!("SKIPPED: faking a container's machine id and hostname needs root");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    // The image: a data dir made while building it, with a machine id baked in.
    let image = tempfile::tempdir().unwrap();
    let build_state = tempfile::tempdir().unwrap();
    let baked = Some("0123456789abcdef0123456789abcdef");
    init_ok(in_container(
        scratch.path(),
        baked,
        "build",
        build_state.path(),
        image.path(),
        INIT,
    ));
    // A container started from it: same path, same machine id, its own (empty) state.
    let state = tempfile::tempdir().unwrap();
    let out = exits_within(
        in_container(
            scratch.path(),
            baked,
            "app1",
            state.path(),
            image.path(),
            RUN,
        ),
        START,
    );
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "a copy must not start:\n{err}");
    assert!(
        err.contains("refusing to start") && err.contains("kith fork"),
        "{err}"
    );
    assert!(err.contains("same machine id"), "{err}");
}

#[test]
fn a_whole_machine_clone_given_a_new_machine_id_is_refused() {
    if !running_as_root() {
        eprintln!("SKIPPED: faking a machine id needs root");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let disk = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    init_ok(in_container(
        scratch.path(),
        Some("aaaa"),
        "vm",
        state.path(),
        disk.path(),
        INIT,
    ));
    // The clone has everything, state included; only its regenerated machine id differs.
    let out = exits_within(
        in_container(
            scratch.path(),
            Some("bbbb"),
            "vm",
            state.path(),
            disk.path(),
            RUN,
        ),
        START,
    );
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("clone of a whole machine"), "{err}");
}

#[test]
fn a_deleted_instance_record_is_recreated_only_with_a_warning() {
    let mut node = TestNode::init();
    std::fs::remove_file(node.data_dir().join("instance.json")).unwrap();
    node.start();
    assert!(
        node.log().contains("had no instance record"),
        "{}",
        node.log()
    );
    assert!(node.data_dir().join("instance.json").exists());
    node.stop();
    // Once re-bound, it is this place's record again: no more warnings.
    node.start();
    assert!(!node.log().contains("instance"), "{}", node.log());
}

#[test]
fn a_copy_on_another_machine_at_the_same_path_is_refused() {
    // The same path (the data dir itself) but another machine's state: a backup
    // restored onto another host with the same layout.
    let mut original = TestNode::init();
    original.start();
    original.stop();
    let mut elsewhere = TestNode::with_dir(tempfile::tempdir().unwrap(), original.node_id.clone());
    std::mem::swap(&mut elsewhere.dir, &mut original.dir);
    let out = exits_within(elsewhere.command(RUN), START);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("kith fork"), "{}", stderr_of(&out));
}

#[test]
fn commands_run_with_another_home_use_the_recorded_state() {
    // `sudo -u kith kith id` may see another $HOME than the service: it must find the
    // secret the daemon bound, not bind another (which would then refuse the daemon).
    let mut node = TestNode::init();
    node.start();
    node.stop();
    let record = std::fs::read_to_string(node.data_dir().join("instance.json")).unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = common::kith_command()
        .env_remove("KITH_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", home.path())
        .arg("--data-dir")
        .arg(node.data_dir())
        .arg("id")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("instance"), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read_to_string(node.data_dir().join("instance.json")).unwrap(),
        record
    );
    assert!(
        !home.path().join(".local").exists(),
        "nothing bound under the other home"
    );
    node.start();
}
