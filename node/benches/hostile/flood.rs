//! Hostile load: a flood of requests from fresh identities against a real daemon
//! with its default bounds, directly and through a relay, with the operator's
//! control socket measured while it lasts.
//!
//! `cargo bench -p kith-node --bench hostile -- flood` (a few minutes on 2 cores). Each
//! scenario starts `kith run` in-process (`daemon::run`: node, file store and control
//! socket, on its own runtime, default [`Config`]), then `HOSTILE_IDENTITIES` fresh
//! identities (default 10,000) each dial once and send `HOSTILE_REQUESTS /
//! HOSTILE_IDENTITIES` signed requests (default 100,000 in all), then a revoke — the
//! cheapest way for a stranger to leave a declined record behind. Sixty-four of them
//! run at once, each of the 64 client tasks from its own loopback address
//! (127.0.1.1–64), as strangers on many hosts would be. Through the relay, the
//! daemon is `--private` and homed at an in-process `RelayServer` (its own runtime),
//! and each identity dials the relay and sends `Forward`s.
//!
//! Meanwhile a prober asks the control socket for `status` every 20 ms (latency
//! p50/p99), lists `peers` every half second (record count; the largest seen), and
//! reads the process's VmRSS. Everything runs in this one process, so the memory
//! figure is the growth of the whole process's RSS over the scenario (peak VmRSS
//! minus VmRSS before the daemon started): the node plus the clients, and the relay
//! too in the relayed row — an upper bound on what the node (and relay) took. After
//! the scenario the daemon stops and the store file is reopened for the audit log's
//! length and the file's size.
//!
//! Set `HOSTILE_IDENTITIES` and `HOSTILE_REQUESTS` to scale it. It prints a table and
//! a PASS/FAIL line per bound; nothing here asserts on the figures. Scenarios are one
//! function each returning a [`Row`]; more can be added to the list in [`run`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use comfy_table::{Cell, ContentArrangement, Table, presets};
use kith_keys::{NodeId, NodeKey};
use kith_node::control::{self, Request, Response};
use kith_node::daemon::{self, DaemonOptions};
use kith_node::datadir::DataDir;
use kith_node::node::{error_chain, now_ms};
use kith_node::store::{MAX_AUDIT_ENTRIES, Store};
use kith_node::transport::tls;
use kith_protocol::machine::Config;
use kith_protocol::relay::ForwardResult;
use kith_protocol::wire::{Ack, AckStatus, Kind, Message, Reach, RelayRef};
use tokio::runtime::Runtime;

use crate::common::{
    Verdicts, counted_nonce, default_relay, exchange, loopback, ms, percentile, right, rss_kib,
    runtime, signed,
};

/// Hostile identities sending at once.
const CONCURRENCY: usize = 64;
/// How often the prober asks for `status`, and lists `peers`.
const PROBE_EVERY: Duration = Duration::from_millis(20);
const LIST_EVERY: Duration = Duration::from_millis(500);
/// The control socket's goal under the flood.
const CONTROL_P99_GOAL: Duration = Duration::from_millis(100);
/// The memory goal: growth of the process's RSS over one scenario.
const RSS_GOAL_MIB: f64 = 256.0;

/// How big the flood is.
#[derive(Clone, Copy)]
struct Scale {
    identities: usize,
    requests_per_identity: usize,
}

impl Scale {
    fn from_env() -> Scale {
        let read = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or(default)
        };
        let identities = read("HOSTILE_IDENTITIES", 10_000).max(1);
        let requests = read("HOSTILE_REQUESTS", 100_000).max(identities);
        Scale {
            identities,
            requests_per_identity: requests / identities,
        }
    }

    fn requests(&self) -> usize {
        self.identities * self.requests_per_identity
    }
}

/// What one scenario measured.
struct Row {
    scenario: &'static str,
    /// Envelopes sent (requests and revokes) and how they were answered.
    sent: usize,
    answers: BTreeMap<String, usize>,
    elapsed: Duration,
    rss_growth_mib: f64,
    records_peak: usize,
    records_end: usize,
    audit_entries: u64,
    store_bytes: u64,
    control: Vec<Duration>,
    control_failures: usize,
    /// `kith status`'s refused counters at the end.
    refused: BTreeMap<String, u64>,
}

/// A daemon as `kith run` runs it, in this process.
struct Daemon {
    dir: tempfile::TempDir,
    data_dir: DataDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl Daemon {
    fn start(rt: &Runtime, relay: Option<RelayRef>) -> Daemon {
        let dir = tempfile::tempdir().expect("a temp dir");
        let data_dir = DataDir::new(dir.path());
        data_dir.create().expect("creating the data dir");
        let options = DaemonOptions {
            listen: loopback(),
            advertise: Vec::new(),
            config: Config::default(),
            keystore_encrypted: false,
            hardened: false,
            on_request: None,
            private: relay.is_some(),
            relay,
            metrics: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(daemon::run(
            data_dir.clone(),
            NodeKey::generate(),
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        let daemon = Daemon {
            dir,
            data_dir,
            stop: Some(stop),
            task,
        };
        let started = Instant::now();
        while daemon.call(rt, &Request::Status).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn call(&self, rt: &Runtime, request: &Request) -> Result<serde_json::Value, String> {
        let socket = self.data_dir.control_socket();
        match rt.block_on(control::call(&socket, self.data_dir.path(), request)) {
            Ok(Response::Ok { data }) => Ok(data),
            Ok(Response::Error { message }) => Err(message),
            Err(e) => Err(error_chain(&e)),
        }
    }

    fn status(&self, rt: &Runtime) -> serde_json::Value {
        self.call(rt, &Request::Status).expect("status")
    }

    fn store_path(&self) -> PathBuf {
        self.data_dir.store()
    }

    /// Stops the daemon and waits for it to close its store; returns its data dir,
    /// removed when dropped.
    fn stop(mut self, rt: &Runtime) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match rt.block_on(&mut self.task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the daemon failed: {}", error_chain(&e)),
            Err(e) => panic!("the daemon task failed: {e}"),
        }
        self.dir
    }
}

/// What the prober saw while the flood ran.
#[derive(Default)]
struct Probed {
    control: Vec<Duration>,
    failures: usize,
    records_peak: usize,
    rss_peak_kib: u64,
}

/// Probes the daemon's control socket (and the process's RSS) until `done`.
fn probe(daemon: &Daemon, done: &AtomicBool) -> Probed {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a prober runtime");
    let mut probed = Probed::default();
    let mut listed = Instant::now() - LIST_EVERY;
    while !done.load(Ordering::Relaxed) {
        probed.rss_peak_kib = probed.rss_peak_kib.max(rss_kib());
        let asked = Instant::now();
        match daemon.call(&rt, &Request::Status) {
            Ok(_) => probed.control.push(asked.elapsed()),
            Err(_) => probed.failures += 1,
        }
        if listed.elapsed() >= LIST_EVERY {
            listed = Instant::now();
            if let Ok(peers) = daemon.call(&rt, &Request::Peers) {
                let n = peers.as_array().map_or(0, Vec::len);
                probed.records_peak = probed.records_peak.max(n);
            }
        }
        std::thread::sleep(PROBE_EVERY);
    }
    probed
}

/// Where the flood goes: the node itself, or its relay (forwarding to the node).
#[derive(Clone, Copy)]
enum Target {
    Direct {
        addr: SocketAddr,
        node: NodeId,
    },
    Relay {
        addr: SocketAddr,
        relay: NodeId,
        node: NodeId,
    },
}

fn ack_name(status: &AckStatus) -> String {
    match status {
        AckStatus::Refused(r) => format!("refused:{}", r.code()),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn answer_name(answer: Result<Message, String>) -> String {
    match answer {
        Ok(Message::Ack(Ack { status })) => ack_name(&status),
        Ok(Message::Forwarded {
            ack: Some(Ack { status }),
            ..
        }) => ack_name(&status),
        Ok(Message::Forwarded { result, ack: None }) => match result {
            ForwardResult::Refused(r) => format!("relay:{r:?}").to_lowercase(),
            other => format!("relay:{other:?}").to_lowercase(),
        },
        Ok(_) => "unexpected answer".into(),
        Err(_) => "transport error".into(),
    }
}

/// One fresh identity: dials once, sends its requests and then a revoke.
async fn hostile_identity(
    endpoint: &quinn::Endpoint,
    target: Target,
    requests: usize,
    answers: &mut BTreeMap<String, usize>,
) {
    let key = NodeKey::generate();
    let identity = tls::Identity::new(&key).expect("a client certificate");
    let (dialled, node) = match target {
        Target::Direct { addr, node } => (tls::dial(endpoint, &identity, addr, node).await, node),
        Target::Relay { addr, relay, node } => (
            tls::dial_relay(endpoint, &identity, addr, relay).await,
            node,
        ),
    };
    let conn = match dialled {
        Ok(conn) => conn,
        Err(_) => {
            *answers.entry("dial failed".into()).or_default() += requests + 1;
            return;
        }
    };
    let base = now_ms();
    for n in 0..=requests {
        let kind = if n < requests {
            Kind::Request {
                justification: format!("hostile request {n}"),
            }
        } else {
            Kind::Revoke {
                reason: "never mind".into(),
            }
        };
        let timestamp_ms = base + n as u64;
        let envelope = signed(
            &key,
            node,
            kind,
            counted_nonce(n as u64, timestamp_ms),
            timestamp_ms,
        );
        let message = match target {
            Target::Direct { .. } => Message::Envelope(envelope),
            Target::Relay { .. } => Message::Forward {
                envelope,
                reach: Reach::default(),
            },
        };
        *answers
            .entry(answer_name(exchange(&conn, &message).await))
            .or_default() += 1;
    }
    conn.close(0u32.into(), b"done");
}

/// Runs the whole flood against `target` from `CONCURRENCY` tasks.
fn flood(clients: &Runtime, target: Target, scale: Scale) -> BTreeMap<String, usize> {
    let next = Arc::new(AtomicUsize::new(0));
    clients.block_on(async {
        let mut tasks = Vec::new();
        for task in 0..CONCURRENCY {
            let next = next.clone();
            // Each task sends from its own loopback address (127.0.1.x), as strangers
            // on many hosts would: one address alone meets the node's per-address
            // connection bound and per-source pending bound, which are not what is
            // measured here.
            let from = SocketAddr::from(([127, 0, 1, 1 + task as u8], 0));
            tasks.push(tokio::spawn(async move {
                let endpoint = quinn::Endpoint::client(from).expect("a client endpoint");
                let mut answers = BTreeMap::new();
                while next.fetch_add(1, Ordering::Relaxed) < scale.identities {
                    hostile_identity(&endpoint, target, scale.requests_per_identity, &mut answers)
                        .await;
                }
                endpoint.wait_idle().await;
                answers
            }));
        }
        let mut all = BTreeMap::new();
        for task in tasks {
            for (k, v) in task.await.expect("a client task") {
                *all.entry(k).or_default() += v;
            }
        }
        all
    })
}

/// The flood against `daemon` (at `target`), probed, then the daemon stopped and its
/// store file read.
fn measure(
    scenario: &'static str,
    node_rt: &Runtime,
    clients: &Runtime,
    daemon: Daemon,
    target: Target,
    scale: Scale,
    rss_before_kib: u64,
) -> Row {
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let (answers, probed) = std::thread::scope(|s| {
        let prober = s.spawn(|| probe(&daemon, &done));
        let answers = flood(clients, target, scale);
        done.store(true, Ordering::Relaxed);
        (answers, prober.join().expect("the prober"))
    });
    let elapsed = started.elapsed();
    let status = daemon.status(node_rt);
    let refused = serde_json::from_value(status["refused"].clone()).unwrap_or_default();
    let records_end = daemon
        .call(node_rt, &Request::Peers)
        .ok()
        .and_then(|p| p.as_array().map(Vec::len))
        .unwrap_or(0);
    let path = daemon.store_path();
    let _dir = daemon.stop(node_rt);
    let (audit_entries, store_bytes) = audit_of(&path);
    Row {
        scenario,
        sent: scale.identities * (scale.requests_per_identity + 1),
        answers,
        elapsed,
        rss_growth_mib: probed.rss_peak_kib.saturating_sub(rss_before_kib) as f64 / 1024.0,
        records_peak: probed.records_peak.max(records_end),
        records_end,
        audit_entries,
        store_bytes,
        control: probed.control,
        control_failures: probed.failures,
        refused,
    }
}

fn audit_of(path: &Path) -> (u64, u64) {
    let entries = Store::open(path)
        .and_then(|s| s.audit_len())
        .expect("reopening the store");
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    (entries, bytes)
}

fn direct_flood(node_rt: &Runtime, clients: &Runtime, scale: Scale) -> Row {
    let rss_before = rss_kib();
    let daemon = Daemon::start(node_rt, None);
    let status = daemon.status(node_rt);
    let target = Target::Direct {
        addr: status["listen"].as_str().unwrap().parse().unwrap(),
        node: status["node_id"].as_str().unwrap().parse().unwrap(),
    };
    measure(
        "direct", node_rt, clients, daemon, target, scale, rss_before,
    )
}

fn relayed_flood(node_rt: &Runtime, relay_rt: &Runtime, clients: &Runtime, scale: Scale) -> Row {
    let rss_before = rss_kib();
    let relay = default_relay(relay_rt);
    let daemon = Daemon::start(node_rt, Some(relay.ticket().as_relay()));
    let registered = Instant::now();
    while daemon.status(node_rt)["relay"]["state"] != "registered" {
        assert!(
            registered.elapsed() < Duration::from_secs(20),
            "the private node did not register at the relay"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = daemon.status(node_rt);
    let target = Target::Relay {
        addr: relay.local_addr(),
        relay: relay.node_id(),
        node: status["node_id"].as_str().unwrap().parse().unwrap(),
    };
    let row = measure(
        "through a relay",
        node_rt,
        clients,
        daemon,
        target,
        scale,
        rss_before,
    );
    relay_rt.block_on(relay.shutdown());
    row
}

fn print(rows: &[Row], scale: Scale) -> bool {
    let config = Config::default();
    let record_cap = config.max_pending_total + config.max_declined;
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "scenario",
            "envelopes",
            "time",
            "RSS growth",
            "records (peak / end)",
            "audit entries",
            "store file",
            "control p50",
            "control p99",
        ]);
    for r in rows {
        table.add_row(vec![
            Cell::new(r.scenario),
            right(r.sent),
            right(format!("{:.1} s", r.elapsed.as_secs_f64())),
            right(format!("{:.0} MiB", r.rss_growth_mib)),
            right(format!("{} / {}", r.records_peak, r.records_end)),
            right(r.audit_entries),
            right(format!(
                "{:.1} MiB",
                r.store_bytes as f64 / (1024.0 * 1024.0)
            )),
            right(ms(percentile(&r.control, 50.0))),
            right(ms(percentile(&r.control, 99.0))),
        ]);
    }
    println!(
        "\nhostile load: {} fresh identities x ({} requests + 1 revoke) = {} requests, \
         {CONCURRENCY} at once, default bounds\n{table}",
        scale.identities,
        scale.requests_per_identity,
        scale.requests()
    );
    for r in rows {
        let answers: Vec<String> = r.answers.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let refused: Vec<String> = r.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{}: answers: {}", r.scenario, answers.join(", "));
        println!(
            "{}: kith status refused: {}",
            r.scenario,
            refused.join(", ")
        );
    }
    let mut verdicts = Verdicts::new();
    let mut check = |what: String, pass: bool| verdicts.check(what, pass);
    println!();
    for r in rows {
        // A flood the node never saw (dials refused, transport errors) proves nothing.
        let answered: usize = r
            .answers
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("dial")
                    && !k.starts_with("transport")
                    && !k.starts_with("relay:")
                    && *k != "unexpected answer"
            })
            .map(|(_, n)| n)
            .sum();
        check(
            format!(
                "{}: the node answered {answered} of {} envelopes (goal >= 99%)",
                r.scenario, r.sent
            ),
            answered * 100 >= r.sent * 99,
        );
        check(
            format!(
                "{}: peer records {} <= {record_cap} (pending {} + declined {})",
                r.scenario, r.records_peak, config.max_pending_total, config.max_declined
            ),
            r.records_peak <= record_cap,
        );
        check(
            format!(
                "{}: audit entries {} <= {MAX_AUDIT_ENTRIES}",
                r.scenario, r.audit_entries
            ),
            r.audit_entries <= MAX_AUDIT_ENTRIES,
        );
        check(
            format!(
                "{}: RSS growth {:.0} MiB <= {RSS_GOAL_MIB:.0} MiB",
                r.scenario, r.rss_growth_mib
            ),
            r.rss_growth_mib <= RSS_GOAL_MIB,
        );
        check(
            format!(
                "{}: control socket p99 {} <= {} ({} probes, {} failed)",
                r.scenario,
                ms(percentile(&r.control, 99.0)),
                ms(CONTROL_P99_GOAL),
                r.control.len(),
                r.control_failures
            ),
            percentile(&r.control, 99.0) <= CONTROL_P99_GOAL && r.control_failures == 0,
        );
    }
    verdicts.all_pass()
}

/// The flood, directly and through a relay; whether every bound held.
pub fn run() -> bool {
    let scale = Scale::from_env();
    let node_rt = runtime("kith-node-rt", 2);
    let relay_rt = runtime("bench-relay", 1);
    let clients = runtime("bench-client", 2);
    let rows = vec![
        direct_flood(&node_rt, &clients, scale),
        relayed_flood(&node_rt, &relay_rt, &clients, scale),
    ];
    print(&rows, scale)
}
