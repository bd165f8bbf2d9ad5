//! The run report: one JSON file, the same shape for simulated and real runs.
//!
//! Everything in it is a function of the scenario and the seed in simulated
//! mode — no wall-clock time, no host name, no map with random order — so the
//! same seed gives a byte-identical file (wall-clock figures are printed on
//! the terminal instead). Real mode fills the same fields from wall-clock
//! measurements, with `mode = "real"`.
//!
//! This module only records and serializes: it must never influence a run.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// Bumped when a field changes meaning or disappears.
pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub report_version: u32,
    pub scenario: String,
    /// "sim" or "real".
    pub mode: String,
    pub seed: u64,
    /// "clean" or "violated".
    pub outcome: String,
    pub violation: Option<ViolationReport>,
    pub nodes: NodesReport,
    pub time: TimeReport,
    pub handshakes: HandshakeReport,
    pub latency_ms: LatencyReport,
    pub messages: MessageReport,
    pub relays: RelayReport,
    pub trust: TrustReport,
    pub faults: FaultReport,
    /// Per invariant: how many times it was checked, and whether it failed.
    pub invariants: BTreeMap<String, InvariantReport>,
    pub series: Series,
    /// Events the engine processed (simulated mode), or the messages the real-mode
    /// runner handled: the nodes' trust events, decisions, revocations, results.
    pub events_processed: u64,
    /// What the mode could not apply (real mode: network faults, for example).
    pub not_applied: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ViolationReport {
    pub invariant: String,
    pub at_ms: u64,
    pub detail: String,
    pub trace: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NodesReport {
    pub count: usize,
    pub private: usize,
    pub relays: usize,
    pub policies: BTreeMap<String, usize>,
    pub skewed: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TimeReport {
    /// Simulated (or, in real mode, wall-clock) time covered by the run.
    pub run_ms: u64,
    pub workload_ms: u64,
    pub drain_ms: u64,
    /// Whether the network was quiet when the final checks ran.
    pub quiet_at_end: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HandshakeReport {
    /// Request commands that sent a request.
    pub requested: u64,
    /// Requests the requester ended up trusting after (request → trust).
    pub completed: u64,
    /// Requests declined by the peer.
    pub rejected: u64,
    /// Requests with no outcome at the end (waiting, ignored, or lost).
    pub open_at_end: u64,
    pub revocations: u64,
    /// Approvals that expired, and how many of those were renewed.
    pub expired: u64,
    pub renewed: u64,
    /// `cancel`, `ignore` and `forget` commands the workload ran (done or refused).
    pub withdrawals: u64,
    pub operator_decisions: u64,
    pub allowlisted: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyReport {
    /// Request command to the requester trusting the peer, every completed handshake.
    pub handshake: Percentiles,
    /// The same, only where the peer's policy approved at once (no operator).
    pub handshake_policy: Percentiles,
    /// Envelope handed to delivery to its ack coming back, first attempts only.
    pub exchange: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted in place).
    pub fn of(samples: &mut [u64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let at = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let sum: u128 = samples.iter().map(|&v| v as u128).sum();
        Percentiles {
            count: n as u64,
            min: samples[0],
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[n - 1],
            mean: ((sum as f64 / n as f64) * 1000.0).round() / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MessageReport {
    /// Envelopes produced by the machines, by kind.
    pub envelopes: BTreeMap<String, u64>,
    pub envelopes_total: u64,
    /// Delivery attempts (first tries and retries) put on the network.
    pub attempts: u64,
    pub retries: u64,
    /// Messages lost by the network (either direction).
    pub lost: u64,
    /// Attempts that failed (lost, unreachable, partitioned, peer down).
    pub failed_attempts: u64,
    /// Envelopes whose delivery was abandoned after the retry window.
    pub gave_up: u64,
    /// Envelopes lost from a crashed node's in-memory retry queue.
    pub dropped_by_crash: u64,
    /// Deliveries of an envelope its addressee had already applied.
    pub redeliveries: u64,
    /// Acks received by senders, by status.
    pub acks: BTreeMap<String, u64>,
    /// Envelopes sent through a relay.
    pub relayed: u64,
    /// New connections dialled.
    pub dials: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RelayReport {
    pub count: usize,
    /// Queue depth over all relays, sampled on the series grid.
    pub queue_depth: Percentiles,
    pub max_queue_by_relay: Vec<u64>,
    pub forwarded: u64,
    pub pushed: u64,
    pub queued: u64,
    /// Queued envelopes that expired before their destination came back.
    pub expired: u64,
    pub unknown_destination: u64,
    pub refused: u64,
    pub registrations: u64,
    pub conflicts: u64,
    /// Pushes that failed on a cleanly closed connection and were queued again.
    pub requeued: u64,
    pub dropped_by_bad_relay: u64,
    pub delayed_by_bad_relay: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TrustReport {
    /// Pairs where both sides trust each other, at the end.
    pub trusted_pairs: u64,
    pub max_trusted_pairs: u64,
    /// Peer records across all nodes, at the end.
    pub records: u64,
    pub states: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultReport {
    pub crashes: u64,
    pub restarts: u64,
    pub resent_after_restart: u64,
    pub partitions: u64,
    pub replays_injected: u64,
    /// Injections by outcome (refusal kind, or the ack of an envelope that
    /// changed nothing).
    pub replay_outcomes: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct InvariantReport {
    pub checks: u64,
    pub violated: bool,
}

/// Time series on a fixed grid (virtual ms since the start).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    pub t_ms: Vec<u64>,
    pub trusted_pairs: Vec<u64>,
    pub pending_requests: Vec<u64>,
    pub relay_queue: Vec<u64>,
    pub deliveries_in_flight: Vec<u64>,
}

impl Report {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a report serializes");
        s.push('\n');
        s
    }

    /// Writes `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("report.json");
        std::fs::write(&path, self.to_json())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.min, p.p50, p.p90, p.p99, p.max), (1, 50, 90, 99, 100));
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }
}
