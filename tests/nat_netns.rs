//! A real NAT: network namespaces joined by veth pairs, a router namespace doing
//! NAT with nftables (masquerade, and a forward filter that lets in only replies),
//! a node behind it, and a relay and a public node outside.
//!
//! ```text
//!  lan ns                 rtr ns (NAT)                     wan ns
//!  private node  ──veth──  10.231.1.1 | 10.231.2.1  ──veth──  relay       10.231.2.2:7445
//!  10.231.1.2:7444        masquerade out of the wan side      public node 10.231.2.3:7444
//!  lan2 ns                    |
//!  second node   ──veth──  10.231.3.1   (lan and lan2 cannot reach each other)
//!  10.231.3.2:7444
//! ```
//!
//! The private node runs *without* `--private`: only the NAT keeps it from being
//! dialled. The test checks that dialling it from outside fails (at its own address
//! and at the address its relay sees), that its relay's dial-back says so ("relay
//! only"), and that handshakes through the relay succeed both ways.
//!
//! It needs root, `ip` and `nft` (`scripts/install-test-deps.sh` installs them in
//! CI); elsewhere it prints a SKIPPED line and passes. The namespaces (named after
//! this process's pid) are deleted by a guard, also when the test fails. Addresses
//! are from 10.231.0.0/16 and exist only inside the namespaces the test creates.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::TestNode;
use common::service::{pattern, round_trip};

const LAN_NODE: &str = "10.231.1.2";
const LAN_ROUTER: &str = "10.231.1.1";
const LAN2_NODE: &str = "10.231.3.2";
const LAN2_ROUTER: &str = "10.231.3.1";
const WAN_ROUTER: &str = "10.231.2.1";
const RELAY: &str = "10.231.2.2";
const PUBLIC: &str = "10.231.2.3";

/// The test's namespaces; deleted on drop (which also deletes their veths).
struct Netns {
    lan: String,
    lan2: String,
    rtr: String,
    wan: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.lan, &self.lan2, &self.rtr, &self.wan] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Netns {
    /// Builds the topology; on error the guard removes whatever was made.
    /// `tag` (one letter) tells apart the namespaces of tests running side by side.
    fn build(tag: char) -> Result<Netns, String> {
        let pid = format!("{}{tag}", std::process::id());
        let ns = Netns {
            lan: format!("kith-nat-{pid}-lan"),
            lan2: format!("kith-nat-{pid}-lan2"),
            rtr: format!("kith-nat-{pid}-rtr"),
            wan: format!("kith-nat-{pid}-wan"),
        };
        let (lan, lan2, rtr, wan) = (
            ns.lan.as_str(),
            ns.lan2.as_str(),
            ns.rtr.as_str(),
            ns.wan.as_str(),
        );
        // veth names: at most 15 characters.
        let (l0, l1, w0, w1, m0, m1) = (
            format!("kn{pid}l0"),
            format!("kn{pid}l1"),
            format!("kn{pid}w0"),
            format!("kn{pid}w1"),
            format!("kn{pid}m0"),
            format!("kn{pid}m1"),
        );
        for n in [lan, lan2, rtr, wan] {
            run(&["ip", "netns", "add", n])?;
            run(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        // Both ends are created inside the namespaces: nothing touches the host's.
        run(&[
            "ip", "-n", lan, "link", "add", &l0, "type", "veth", "peer", "name", &l1, "netns", rtr,
        ])?;
        run(&[
            "ip", "-n", rtr, "link", "add", &w0, "type", "veth", "peer", "name", &w1, "netns", wan,
        ])?;
        run(&[
            "ip", "-n", lan2, "link", "add", &m0, "type", "veth", "peer", "name", &m1, "netns", rtr,
        ])?;
        let lan2_cidr = format!("{LAN2_NODE}/24");
        let lan2_router = format!("{LAN2_ROUTER}/24");
        run(&["ip", "-n", lan2, "addr", "add", &lan2_cidr, "dev", &m0])?;
        run(&["ip", "-n", lan2, "link", "set", &m0, "up"])?;
        run(&[
            "ip",
            "-n",
            lan2,
            "route",
            "add",
            "default",
            "via",
            LAN2_ROUTER,
        ])?;
        run(&["ip", "-n", rtr, "addr", "add", &lan2_router, "dev", &m1])?;
        run(&["ip", "-n", rtr, "link", "set", &m1, "up"])?;
        let lan_cidr = format!("{LAN_NODE}/24");
        let lan_router = format!("{LAN_ROUTER}/24");
        let wan_router = format!("{WAN_ROUTER}/24");
        let relay = format!("{RELAY}/24");
        let public = format!("{PUBLIC}/24");
        run(&["ip", "-n", lan, "addr", "add", &lan_cidr, "dev", &l0])?;
        run(&["ip", "-n", lan, "link", "set", &l0, "up"])?;
        run(&[
            "ip", "-n", lan, "route", "add", "default", "via", LAN_ROUTER,
        ])?;
        run(&["ip", "-n", rtr, "addr", "add", &lan_router, "dev", &l1])?;
        run(&["ip", "-n", rtr, "addr", "add", &wan_router, "dev", &w0])?;
        run(&["ip", "-n", rtr, "link", "set", &l1, "up"])?;
        run(&["ip", "-n", rtr, "link", "set", &w0, "up"])?;
        run(&["ip", "-n", wan, "addr", "add", &relay, "dev", &w1])?;
        run(&["ip", "-n", wan, "addr", "add", &public, "dev", &w1])?;
        run(&["ip", "-n", wan, "link", "set", &w1, "up"])?;
        // The wan side has no route to 10.231.1.0/24: the lan is reachable only via NAT.
        run(&[
            "ip",
            "netns",
            "exec",
            rtr,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ])?;
        let ruleset = format!(
            "table ip kith_nat {{
                chain postrouting {{
                    type nat hook postrouting priority srcnat; policy accept;
                    oifname \"{w0}\" masquerade
                }}
                chain forward {{
                    type filter hook forward priority filter; policy drop;
                    ct state established,related accept
                    iifname \"{l1}\" oifname \"{w0}\" accept
                    iifname \"{m1}\" oifname \"{w0}\" accept
                }}
            }}"
        );
        let file = std::env::temp_dir().join(format!("kith-nat-{pid}.nft"));
        std::fs::write(&file, ruleset).map_err(|e| e.to_string())?;
        let loaded = run(&[
            "ip",
            "netns",
            "exec",
            rtr,
            "nft",
            "-f",
            file.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&file);
        loaded?;
        Ok(ns)
    }
}

/// Says why the test did not run. Written to the process's stderr directly, not
/// with `eprintln!`, which the test harness captures (and hides) for passing tests.
fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: real-NAT test (tests/nat_netns.rs): {why}"
    );
}

fn node_in(ns: &str) -> TestNode {
    let mut node = TestNode::init();
    node.netns = Some(ns.to_string());
    node
}

/// The namespaces, or `None` (after saying why) where the test cannot run.
fn namespaces(tag: char) -> Option<Netns> {
    if !is_root() {
        skip("needs root (network namespaces)");
        return None;
    }
    for tool in ["ip", "nft"] {
        if !have(tool) {
            skip(&format!(
                "`{tool}` is not installed (scripts/install-test-deps.sh installs it)"
            ));
            return None;
        }
    }
    match Netns::build(tag) {
        Ok(ns) => Some(ns),
        Err(e) => {
            skip(&format!("cannot build the namespaces: {e}"));
            None
        }
    }
}

#[test]
fn handshakes_cross_a_real_nat_through_the_relay_both_ways() {
    // Declared first so it is dropped last, after the nodes are stopped.
    let Some(ns) = namespaces('h') else { return };

    let mut relay = node_in(&ns.wan);
    relay.start_relay_at(&format!("{RELAY}:7445"));
    let relay_ticket = relay.ticket();

    let mut private = node_in(&ns.lan);
    private.spawn_daemon(&[
        "run",
        "--listen",
        &format!("{LAN_NODE}:7444"),
        "--relay",
        &relay_ticket,
    ]);
    private.wait_registered(1);
    let status = private.status();
    let observed = status["relay"]["observed"].as_str().unwrap().to_string();
    assert!(
        observed.starts_with(WAN_ROUTER),
        "the relay sees the NAT's address: {status}"
    );
    assert_eq!(
        status["relay"]["direct"], false,
        "the relay's dial-back did not get through the NAT: {status}"
    );
    assert_eq!(status["reachability"], "relay only", "{status}");

    let mut public = node_in(&ns.wan);
    public.spawn_daemon(&["run", "--listen", &format!("{PUBLIC}:7444")]);

    // Direct dialling of the node behind the NAT fails: at its own address and at
    // the address the relay sees. (A throwaway node outside asks with a ticket that
    // carries only those addresses, no relay.)
    let mut prober = node_in(&ns.wan);
    prober.spawn_daemon(&["run", "--listen", &format!("{PUBLIC}:7555")]);
    let direct_only = kith_node::ticket::Ticket::direct(
        private.node_id.parse().unwrap(),
        vec![
            format!("{LAN_NODE}:7444").parse().unwrap(),
            observed.parse().unwrap(),
        ],
    );
    let probe = prober.json(&["request", &direct_only.to_string(), "-j", "direct?"]);
    assert_eq!(probe["delivered"], false, "{probe}");
    prober.stop();
    assert_eq!(private.peer(&prober.node_id), None, "nothing got through");

    // Outside → behind the NAT: the ticket's direct address fails, the relay carries it.
    let sent = public.json(&["request", &private.ticket(), "-j", "across the NAT"]);
    assert_eq!(sent["delivered"], true, "{sent}");
    assert_eq!(sent["path"], "relayed", "{sent}");
    private.wait_for_state(&public.node_id, "incoming_pending");
    private.run_ok(&["approve", &public.node_id]);
    public.wait_for_state(&private.node_id, "trusted");
    assert_eq!(
        private.peer_state(&public.node_id).as_deref(),
        Some("trusted")
    );

    // Behind the NAT → outside: the node dials out; the answer comes back through
    // the relay once that connection is gone (here: the node restarted).
    let mut second = node_in(&ns.wan);
    second.spawn_daemon(&["run", "--listen", &format!("{PUBLIC}:7666")]);
    let sent = private.json(&["request", &second.ticket(), "-j", "from behind the NAT"]);
    assert_eq!(sent["delivered"], true, "{sent}");
    second.wait_for_state(&private.node_id, "incoming_pending");
    private.restart();
    private.wait_registered(1);
    let approved = second.json(&["approve", &private.node_id]);
    assert_eq!(approved["delivered"], true, "{approved}");
    assert_eq!(approved["path"], "relayed", "{approved}");
    private.wait_for_state(&second.node_id, "trusted");

    second.stop();
    public.stop();
    private.stop();
    relay.stop();
    drop(ns);
}

/// The echo server a service test runs inside a namespace: this test binary again,
/// started with `ip netns exec` and `KITH_TEST_ECHO_ADDR`; without that variable
/// (a plain `--ignored` run) it returns at once.
#[test]
#[ignore = "a helper that the NAT service test runs inside a namespace"]
fn echo_server_in_a_namespace() {
    let Ok(addr) = std::env::var("KITH_TEST_ECHO_ADDR") else {
        return;
    };
    let listener = std::net::TcpListener::bind(addr).unwrap();
    println!("listening");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        std::thread::spawn(move || {
            let mut reader = stream.try_clone().unwrap();
            let _ = std::io::copy(&mut reader, &mut stream);
            let _ = stream.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// The echo helper's process, killed on drop.
struct EchoInNs(Child);

impl Drop for EchoInNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_in(ns: &str, addr: &str) -> EchoInNs {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args([
            "--exact",
            "echo_server_in_a_namespace",
            "--ignored",
            "--nocapture",
        ])
        .env("KITH_TEST_ECHO_ADDR", addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let echo = EchoInNs(child);
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("listening"));
    assert!(listening, "the echo server in {ns} did not start");
    echo
}

#[test]
fn a_service_between_two_nodes_behind_nats_shows_the_relay_only_ciphertext() {
    let Some(ns) = namespaces('s') else { return };
    let tap_dir = tempfile::tempdir().unwrap();
    let tap = tap_dir.path().join("relay.tap");

    let mut relay = node_in(&ns.wan);
    relay
        .env
        .push(("KITH_RELAY_TAP".into(), tap.display().to_string()));
    relay.start_relay_at(&format!("{RELAY}:7445"));
    let relay_ticket = relay.ticket();
    // Both private, each behind the NAT on its own network: the relay is the only path.
    let mut a = node_in(&ns.lan);
    a.spawn_daemon(&[
        "run",
        "--listen",
        &format!("{LAN_NODE}:7444"),
        "--private",
        "--relay",
        &relay_ticket,
    ]);
    let mut b = node_in(&ns.lan2);
    b.spawn_daemon(&[
        "run",
        "--listen",
        &format!("{LAN2_NODE}:7444"),
        "--private",
        "--relay",
        &relay_ticket,
    ]);
    a.wait_registered(1);
    b.wait_registered(1);
    let sent = a.json(&["request", &b.ticket(), "-j", "a service across two NATs"]);
    assert_eq!(sent["delivered"], true, "{sent}");
    b.wait_for_state(&a.node_id, "incoming_pending");
    b.run_ok(&["approve", &a.node_id]);
    a.wait_for_state(&b.node_id, "trusted");

    let _echo = echo_in(&ns.lan2, "127.0.0.1:7777");
    b.run_ok(&["expose", "echo", "--to", "127.0.0.1:7777"]);
    let marker = format!("kith-plaintext-marker-{}", std::process::id());
    let mut data = Vec::new();
    for chunk in pattern(1 << 20).chunks(4096) {
        data.extend_from_slice(marker.as_bytes());
        data.extend_from_slice(chunk);
    }
    let got = round_trip(&a, &b.node_id, "echo", &data);
    assert!(
        got == data,
        "the bytes came back unchanged across both NATs"
    );

    let tapped = std::fs::read(&tap).unwrap();
    assert!(
        tapped.len() > 2 * data.len(),
        "the relay carried the data both ways ({} bytes tapped, {} sent)",
        tapped.len(),
        data.len()
    );
    assert!(
        !tapped.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the relay saw the plaintext"
    );

    b.stop();
    a.stop();
    relay.stop();
    drop(ns);
}
