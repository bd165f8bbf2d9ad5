//! Test harness: real `kith` processes, each with its own temporary data dir, on loopback.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod metrics;
pub mod service;

pub fn kith_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kith")
}

/// One node: a data dir and, while running, its daemon process.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub node_id: String,
    /// The arguments of the last start, so a restart keeps them (`--relay`, `--private`, ...).
    pub last_args: Vec<String>,
    /// Run the daemon inside this network namespace (`ip netns exec`); the CLI
    /// commands still run here (the control socket is a path in the data dir).
    pub netns: Option<String>,
    /// Extra environment for every command of this node (the daemon's too).
    pub env: Vec<(String, String)>,
    /// This node's machine state (`KITH_STATE_DIR`: instance secrets), never the real
    /// one. Nodes sharing it are on one machine; a fresh one is another machine.
    pub state: Arc<tempfile::TempDir>,
}

/// A fresh, empty machine state directory.
pub fn new_state() -> Arc<tempfile::TempDir> {
    Arc::new(tempfile::tempdir().expect("state dir"))
}

/// A state dir shared by the commands a test binary runs outside a [`TestNode`].
pub fn shared_state() -> &'static Path {
    static STATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    STATE
        .get_or_init(|| tempfile::tempdir().expect("state dir"))
        .path()
}

/// `kith` with an environment that cannot point at the real passphrase, data dir or
/// machine state: the state is [`shared_state`].
pub fn kith_command() -> Command {
    let mut cmd = Command::new(kith_bin());
    cmd.env_remove("KITH_PASSPHRASE_FILE")
        .env_remove("KITH_DATA_DIR")
        .env("KITH_STATE_DIR", shared_state());
    cmd
}

impl TestNode {
    /// `kith init --insecure-no-passphrase` in a fresh data dir.
    pub fn init() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut node = TestNode {
            dir,
            child: None,
            node_id: String::new(),
            last_args: Vec::new(),
            netns: None,
            env: Vec::new(),
            state: new_state(),
        };
        let out = node.run_ok(&[
            "init",
            "--insecure-no-passphrase",
            "--show-phrase-on-stdout",
        ]);
        assert!(!out.is_empty(), "init printed the phrase");
        node.node_id = node.run_ok(&["id"]).lines().next().unwrap().to_string();
        assert_eq!(node.node_id.len(), 52, "node id: {}", node.node_id);
        node
    }

    /// A node for an existing data dir (e.g. a copy of another node's), not running,
    /// on a machine of its own.
    pub fn with_dir(dir: tempfile::TempDir, node_id: String) -> Self {
        Self::with_dir_on(dir, node_id, new_state())
    }

    /// As [`TestNode::with_dir`], on the machine whose state is `state`.
    pub fn with_dir_on(
        dir: tempfile::TempDir,
        node_id: String,
        state: Arc<tempfile::TempDir>,
    ) -> Self {
        TestNode {
            dir,
            child: None,
            node_id,
            last_args: Vec::new(),
            netns: None,
            env: Vec::new(),
            state,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kith_bin());
        self.add_kith_args(&mut cmd, args);
        cmd
    }

    /// This node's data dir, `args`, and an environment that cannot point elsewhere.
    fn add_kith_args(&self, cmd: &mut Command, args: &[&str]) {
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env_remove("KITH_PASSPHRASE_FILE")
            .env_remove("KITH_DATA_DIR")
            .env("KITH_STATE_DIR", self.state.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running kith")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kith {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs a command with `--json`, checks the versioned envelope, returns `data`.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let text = self.run_ok(&full);
        let value: Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(value["version"], 1, "{value}");
        value["data"].clone()
    }

    /// [`init`](Self::init) and [`start`](Self::start).
    pub fn started() -> Self {
        let mut node = Self::init();
        node.start();
        node
    }

    /// The kinds of this node's events about `peer`, oldest first.
    pub fn event_kinds(&self, peer: &str) -> Vec<String> {
        let out = self.run_ok(&["--json", "events"]);
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .inspect(|v| assert_eq!(v["version"], 1))
            .filter(|v| v["data"]["node_id"] == peer)
            .map(|v| v["data"]["kind"].as_str().unwrap().to_string())
            .collect()
    }

    /// Starts `kith run` on a free loopback port and waits until it answers.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts on a given address (e.g. one another node used before).
    pub fn start_with_listen(&mut self, addr: &str) {
        self.spawn_and_wait(&["run", "--listen", addr]);
    }

    pub fn start_with(&mut self, extra: &[&str]) {
        let mut args = vec!["run", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        self.spawn_and_wait(&args);
    }

    /// Starts `kith relay` on a free loopback port and waits until it answers.
    pub fn start_relay(&mut self, extra: &[&str]) {
        let mut args = vec!["relay", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        self.spawn_and_wait(&args);
    }

    /// Starts `kith relay` listening on `addr`.
    pub fn start_relay_at(&mut self, addr: &str) {
        self.spawn_daemon(&["relay", "--listen", addr]);
    }

    /// Starts the daemon with exactly these arguments and waits until it answers.
    pub fn spawn_daemon(&mut self, args: &[&str]) {
        self.spawn_and_wait(args);
    }

    /// Starts `kith run --private --relay <relay's ticket>` on a free loopback port.
    pub fn start_private(&mut self, relay: &TestNode) {
        let ticket = relay.ticket();
        self.start_with(&["--private", "--relay", &ticket]);
    }

    /// `kith status --json`.
    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// The address the daemon listens on.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.status()["listen"].as_str().unwrap().parse().unwrap()
    }

    /// Polls `check` until it holds, or panics after 20 s with `what` and the log.
    pub fn wait_until(&self, what: &str, mut check: impl FnMut(&TestNode) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the node is registered at its home relay (after `min_connects` connections).
    pub fn wait_registered(&self, min_connects: u64) {
        self.wait_until("registration at the relay", |n| {
            let relay = &n.status()["relay"];
            relay["state"] == "registered"
                && relay["connects"].as_u64().unwrap_or(0) >= min_connects
        });
    }

    fn spawn_and_wait(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "already running");
        self.last_args = args.iter().map(|a| a.to_string()).collect();
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, kith_bin()]);
                self.add_kith_args(&mut cmd, args);
                cmd
            }
            None => self.command(args),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning kith run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.run(&["ticket"]).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("kith run exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn ticket(&self) -> String {
        self.run_ok(&["ticket"]).trim().to_string()
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let status = wait_timeout(&mut child, Duration::from_secs(15));
            assert!(
                status.success(),
                "kith run exited with {status}:\n{}",
                self.log()
            );
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops and starts again on the same address, as a real node on its fixed port does,
    /// with the same arguments as the last start.
    pub fn restart(&mut self) {
        let listen = self.json(&["status"])["listen"]
            .as_str()
            .unwrap()
            .to_string();
        self.stop();
        self.start_again_at(&listen);
    }

    /// Starts again with the last start's arguments, listening on `listen`.
    pub fn start_again_at(&mut self, listen: &str) {
        let mut args = self.last_args.clone();
        match args.iter().position(|a| a == "--listen") {
            Some(i) => args[i + 1] = listen.to_string(),
            None if args.is_empty() => args = vec!["run".into(), "--listen".into(), listen.into()],
            None => args.extend(["--listen".to_string(), listen.to_string()]),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn_and_wait(&args);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The peer record for `id`, from `kith peers --json`.
    pub fn peer(&self, id: &str) -> Option<Value> {
        let peers = self.json(&["peers"]);
        peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node_id"] == id)
            .cloned()
    }

    pub fn peer_state(&self, id: &str) -> Option<String> {
        self.peer(id)
            .map(|p| p["state"].as_str().unwrap().to_string())
    }

    /// Waits until `id` is in `state` here, or panics with what it saw.
    pub fn wait_for_state(&self, id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = self.peer_state(id);
            if seen.as_deref() == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {state} (last seen {seen:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("running kill");
    assert!(status.success());
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path inside a temp dir for a passphrase file with `contents`.
pub fn passphrase_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
