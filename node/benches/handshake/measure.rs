//! Measuring the handshake bench: what the system counted while a run went (CPU
//! per kind of thread, machine busy time, UDP drops), one run's samples and their
//! percentiles, driving handshakes at a given concurrency or in turns, and the
//! storage floors (one fdatasync, one store commit). It asserts nothing about the
//! figures: a handshake that fails is counted and shown, not a panic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kith_keys::{NodeId, NodeKey};
use kith_node::node::{error_chain, now_ms};
use kith_node::store::Store;
use kith_protocol::machine::{PeerRecord, StoreWrite, TrustState};
use tokio::runtime::Runtime;

use super::client::{Client, Op, run_op};
use super::{CLIENT_THREADS, LATENCY_ROUNDS, NODE_THREADS, RELAY_THREADS, WARMUP};

/// What the system counted while a measurement ran. Linux only: elsewhere (or
/// when /proc cannot be read) the figures are zero.
#[derive(Default, Clone)]
pub(super) struct Counters {
    /// CPU time of this process's live threads, by kind of thread (per-thread
    /// `schedstat`). Threads that exit between two snapshots lose their share, so
    /// snapshots are taken while the node under test still runs.
    threads: BTreeMap<&'static str, Duration>,
    /// CPU time the whole machine spent busy, every process included (/proc/stat).
    pub(super) machine_busy: Duration,
    /// UDP datagrams dropped because a socket's receive buffer was full.
    pub(super) udp_rcvbuf_drops: u64,
}

impl Counters {
    pub(super) fn now() -> Self {
        Counters {
            threads: thread_times(),
            machine_busy: machine_busy(),
            udp_rcvbuf_drops: udp_rcvbuf_drops(),
        }
    }

    pub(super) fn since(&self, before: &Counters) -> Counters {
        let mut threads = self.threads.clone();
        for (kind, t) in threads.iter_mut() {
            *t = t.saturating_sub(before.threads.get(kind).copied().unwrap_or_default());
        }
        Counters {
            threads,
            machine_busy: self.machine_busy.saturating_sub(before.machine_busy),
            udp_rcvbuf_drops: self
                .udp_rcvbuf_drops
                .saturating_sub(before.udp_rcvbuf_drops),
        }
    }

    fn add(&mut self, other: &Counters) {
        for (kind, t) in &other.threads {
            *self.threads.entry(kind).or_default() += *t;
        }
        self.machine_busy += other.machine_busy;
        self.udp_rcvbuf_drops += other.udp_rcvbuf_drops;
    }

    pub(super) fn get(&self, kind: &str) -> Duration {
        self.threads.get(kind).copied().unwrap_or_default()
    }

    /// CPU time of this process.
    pub(super) fn own(&self) -> Duration {
        self.threads.values().sum()
    }
}

fn thread_times() -> BTreeMap<&'static str, Duration> {
    let mut times = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return times;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let comm = comm.trim();
        let kind = if comm.starts_with(NODE_THREADS) {
            "node"
        } else if comm.starts_with(CLIENT_THREADS) {
            "clients"
        } else if comm.starts_with(RELAY_THREADS) {
            "relay"
        } else {
            "other"
        };
        *times.entry(kind).or_default() += Duration::from_nanos(ns);
    }
    times
}

/// Busy time of all CPUs together: the first line of /proc/stat, in USER_HZ ticks
/// (100 per second on every Linux this runs on), minus idle and iowait.
fn machine_busy() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(cpu) = stat.lines().next().filter(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Duration::from_millis(busy * 10)
}

fn udp_rcvbuf_drops() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// One measurement: latencies of the handshakes that succeeded, failures, CPU.
#[derive(Default)]
pub(super) struct Run {
    pub(super) name: String,
    pub(super) concurrency: usize,
    /// Whole handshakes, sorted.
    pub(super) samples: Vec<Duration>,
    /// Their dial part, sorted.
    pub(super) dials: Vec<Duration>,
    pub(super) failures: usize,
    pub(super) first_failure: Option<String>,
    pub(super) elapsed: Duration,
    pub(super) counters: Counters,
    /// For kith runs: pending records the running node held at the end, and (for a
    /// store file) the number found by reopening it after shutdown.
    pub(super) pending: Option<(usize, Option<Result<usize, String>>)>,
}

/// Nearest-rank percentile of sorted samples.
pub(super) fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

impl Run {
    /// Adds another round of the same measurement: its handshakes, time and counters.
    fn absorb(&mut self, round: Run) {
        self.samples.extend(round.samples);
        self.samples.sort();
        self.dials.extend(round.dials);
        self.dials.sort();
        self.failures += round.failures;
        if self.first_failure.is_none() {
            self.first_failure = round.first_failure;
        }
        self.elapsed += round.elapsed;
        self.counters.add(&round.counters);
    }

    pub(super) fn ok(&self) -> usize {
        self.samples.len()
    }

    pub(super) fn p(&self, p: f64) -> Duration {
        percentile(&self.samples, p)
    }

    pub(super) fn rate(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU per successful handshake of one kind of thread.
    pub(super) fn cpu_per(&self, cpu: Duration) -> Duration {
        cpu / self.ok().max(1) as u32
    }

    /// For kith runs: every acknowledged handshake left exactly one pending record
    /// in the node and (for a store file) in the file after shutdown.
    pub(super) fn counts_match(&self) -> bool {
        self.pending.as_ref().is_none_or(|(node, file)| {
            *node == self.ok() && file.as_ref().is_none_or(|f| *f == Ok(self.ok()))
        })
    }

    /// Every handshake succeeded and the record counts match.
    pub(super) fn durable(&self) -> bool {
        self.failures == 0 && self.counts_match()
    }
}

/// `total` handshakes of `op` from distinct identities, `concurrency` at a time
/// (after `warmup` untimed ones, run one at a time), against `server`.
pub(super) fn drive(
    clients: &Runtime,
    op: Op,
    server: SocketAddr,
    server_id: NodeId,
    concurrency: usize,
    warmup: usize,
    total: usize,
) -> Run {
    clients.block_on(async {
        let client = Client::fresh().endpoint();
        for _ in 0..warmup {
            let _ = run_op(op, &client, &Client::fresh(), server, server_id).await;
        }
        let next = Arc::new(AtomicUsize::new(0));
        let before = Counters::now();
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (next, client) = (next.clone(), client.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut failures = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        // A new identity is not part of a handshake; it stays untimed.
                        let me = Client::fresh();
                        let t = Instant::now();
                        match run_op(op, &client, &me, server, server_id).await {
                            Ok(dial) => samples.push((t.elapsed(), dial)),
                            Err(e) => failures.push(e),
                        }
                    }
                    (samples, failures)
                })
            })
            .collect();
        let mut run = Run {
            concurrency,
            ..Run::default()
        };
        let mut failures = Vec::new();
        for task in tasks {
            let (s, f) = task.await.expect("a client task panicked");
            for (whole, dial) in s {
                run.samples.push(whole);
                run.dials.push(dial);
            }
            failures.extend(f);
        }
        run.elapsed = started.elapsed();
        run.counters = Counters::now().since(&before);
        client.close(0u32.into(), b"done");
        run.samples.sort();
        run.dials.sort();
        run.failures = failures.len();
        run.first_failure = failures.into_iter().next();
        run
    })
}

/// `total` handshakes, one at a time, against each of `targets`, taken in turns:
/// [`LATENCY_ROUNDS`] rounds of an equal share each, the order rotating by round.
/// The host's drift over the seconds this takes (neighbouring VMs, clock
/// frequency) then falls on every target alike, so their ratios compare like with
/// like. Each target must be warmed up before.
pub(super) fn in_turns(
    clients: &Runtime,
    targets: &[(Op, SocketAddr, NodeId)],
    total: usize,
) -> Vec<Run> {
    let mut runs: Vec<Run> = targets
        .iter()
        .map(|_| Run {
            concurrency: 1,
            ..Run::default()
        })
        .collect();
    for round in 0..LATENCY_ROUNDS {
        let share = total / LATENCY_ROUNDS + usize::from(round < total % LATENCY_ROUNDS);
        for i in (0..targets.len()).map(|i| (i + round) % targets.len()) {
            let (op, addr, id) = targets[i];
            runs[i].absorb(drive(clients, op, addr, id, 1, 0, share));
        }
    }
    runs
}

/// `iterations` timed calls of `once`, one at a time, after `WARMUP` untimed ones;
/// `once` gets the call's index and returns how long its timed part took.
fn one_at_a_time(
    name: &str,
    iterations: usize,
    mut once: impl FnMut(usize) -> Result<Duration, String>,
) -> Run {
    for i in 0..WARMUP {
        let _ = once(i);
    }
    let mut run = Run {
        name: name.into(),
        concurrency: 1,
        ..Run::default()
    };
    let before = Counters::now();
    let started = Instant::now();
    for i in WARMUP..WARMUP + iterations {
        match once(i) {
            Ok(t) => run.samples.push(t),
            Err(e) => {
                run.failures += 1;
                run.first_failure.get_or_insert(e);
            }
        }
    }
    run.elapsed = started.elapsed();
    run.counters = Counters::now().since(&before);
    run.samples.sort();
    run
}

/// The files the fsync rows write into: this long, zero-filled and synced before
/// timing, so a write never grows the file and `fdatasync` flushes data alone.
const SYNC_FILE_LEN: usize = 1 << 20;
/// One write's slot in such a file.
pub(super) const SYNC_SLOT: usize = 512;

pub(super) fn preallocated(path: &Path) -> std::fs::File {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).expect("creating a file to sync");
    file.write_all_at(&vec![0; SYNC_FILE_LEN], 0)
        .and_then(|()| file.sync_all())
        .expect("preallocating a file to sync");
    file
}

/// Where the `n`th write goes, round the file.
pub(super) fn slot_offset(n: usize) -> u64 {
    (n * SYNC_SLOT % SYNC_FILE_LEN) as u64
}

/// One small write and `fdatasync` to a preallocated file, 1 ms after the last (as
/// one-at-a-time handshakes leave the disk idle between commits): the least any
/// durable commit costs on this disk, whatever the store.
pub(super) fn fsync_floor(path: &Path, iterations: usize) -> Run {
    use std::os::unix::fs::FileExt;
    let file = preallocated(path);
    one_at_a_time("  fdatasync, one 512 B write", iterations, |i| {
        std::thread::sleep(Duration::from_millis(1));
        let t = Instant::now();
        file.write_all_at(&[i as u8; SYNC_SLOT], slot_offset(i))
            .and_then(|()| file.sync_data())
            .map(|()| t.elapsed())
            .map_err(|e| e.to_string())
    })
}

/// Durable commits of one new pending record each, one at a time, on a store file
/// of its own: what the node's core pays per batch.
pub(super) fn store_commits(path: &Path, iterations: usize) -> Run {
    let store = Store::open(path).expect("opening the store");
    one_at_a_time("  redb commit, 1 record", iterations, |_| {
        let record = PeerRecord::new(
            NodeKey::generate().node_id(),
            TrustState::IncomingPending,
            now_ms(),
        );
        let started = Instant::now();
        store
            .apply(&[StoreWrite::Peer(record)])
            .map(|()| started.elapsed())
            .map_err(|e| error_chain(&e))
    })
}
