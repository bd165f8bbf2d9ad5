//! Real mode's report: relay queue samples, the time series and the final
//! [`Report`], built from the driver's state once the run is over.
//!
//! This module must never make trust decisions itself: it only reads what the
//! driver observed.

use std::collections::BTreeMap;

use crate::invariants;
use crate::report::{
    InvariantReport, LatencyReport, NodesReport, Percentiles, RelayReport, Report, TimeReport,
    TrustReport, ViolationReport,
};
use crate::scenario::PolicyKind;

use super::driver::Driver;

impl Driver {
    fn relay_queue(&self) -> u64 {
        self.relays.iter().map(|r| r.snapshot().queued as u64).sum()
    }

    fn relay_report(&mut self) -> RelayReport {
        let mut rep = RelayReport {
            count: self.relays.len(),
            queue_depth: Percentiles::of(&mut self.queue_samples.clone()),
            ..RelayReport::default()
        };
        for r in &self.relays {
            let s = r.snapshot();
            rep.forwarded += s.stats.forwarded;
            rep.pushed += s.stats.delivered + s.stats.delivered_from_queue;
            rep.queued += s.stats.queued;
            rep.expired += s.stats.expired;
            rep.unknown_destination += s.stats.unknown_destination;
            rep.refused += s.stats.refused;
            rep.conflicts += s.stats.conflicts;
            rep.registrations += s.registered as u64;
        }
        rep.max_queue_by_relay = self.max_queue.clone();
        rep
    }

    pub(super) fn sample(&mut self) {
        self.series
            .t_ms
            .push(self.started.elapsed().as_millis() as u64);
        self.series.trusted_pairs.push(self.mutual);
        self.series
            .pending_requests
            .push(self.handshakes.len() as u64);
        let q = self.relay_queue();
        self.series.relay_queue.push(q);
        if !self.relays.is_empty() {
            self.queue_samples.push(q);
            for (k, r) in self.relays.iter().enumerate() {
                let depth = r.snapshot().queued as u64;
                self.max_queue[k] = self.max_queue[k].max(depth);
            }
        }
        self.series
            .deliveries_in_flight
            .push((self.in_progress + self.timers) as u64);
    }

    pub(super) fn report(&mut self, run_ms: u64, workload_ms: u64, quiet: bool) -> Report {
        let sc = &self.sc;
        let mut policies = BTreeMap::new();
        for &p in &self.policy_of {
            let name = match self.policies[p].kind {
                PolicyKind::Manual => "manual",
                PolicyKind::Allowlist => "allowlist",
                PolicyKind::Auto => "auto",
            };
            *policies.entry(name.to_string()).or_default() += 1;
        }
        let mut not_applied = Vec::new();
        if sc.nodes.private_fraction > 0.0 && sc.nodes.relays == 0 {
            not_applied.push("private nodes without relays (they are public in real mode)".into());
        }
        if !sc.network.partitions.is_empty() || sc.network.loss > 0.0 {
            not_applied.push("network loss and partitions (loopback)".into());
        }
        not_applied.push("network latency distribution (loopback latency instead)".into());
        if sc.faults.crashes.is_some() {
            not_applied.push("crashes".into());
        }
        if sc.faults.clock_skew.is_some() {
            not_applied.push("clock skew".into());
        }
        if sc.faults.adversary.is_some() {
            not_applied.push("replaying adversary".into());
        }
        if sc.faults.bad_relay.is_some() {
            not_applied.push("bad relay".into());
        }
        if self.lagged > 0 {
            not_applied.push(format!(
                "{} events were missed by the observer (lagging subscriber)",
                self.lagged
            ));
        }
        let mut hs = std::mem::take(&mut self.hs);
        hs.open_at_end = self.handshakes.len() as u64;
        let mut invariants_map = BTreeMap::new();
        for name in invariants::ALL {
            invariants_map.insert(
                name.to_string(),
                InvariantReport {
                    checks: self.counts.checks.get(name).copied().unwrap_or(0),
                    violated: self.violation.as_ref().is_some_and(|v| v.0 == name),
                },
            );
        }
        Report {
            report_version: crate::report::REPORT_VERSION,
            scenario: sc.name.clone(),
            mode: "real".into(),
            seed: self.seed,
            outcome: if self.violation.is_some() {
                "violated"
            } else {
                "clean"
            }
            .into(),
            violation: self
                .violation
                .as_ref()
                .map(|(invariant, at_ms, detail)| ViolationReport {
                    invariant: invariant.to_string(),
                    at_ms: *at_ms,
                    detail: detail.clone(),
                    trace: Vec::new(),
                }),
            nodes: NodesReport {
                count: self.nodes.len(),
                private: self.private.iter().filter(|p| **p).count(),
                relays: self.relays.len(),
                policies,
                skewed: 0,
            },
            time: TimeReport {
                run_ms,
                workload_ms,
                drain_ms: run_ms.saturating_sub(workload_ms),
                quiet_at_end: quiet,
            },
            handshakes: hs,
            latency_ms: LatencyReport {
                handshake: Percentiles::of(&mut self.latencies.clone()),
                handshake_policy: Percentiles::of(&mut self.latencies_policy),
                exchange: Percentiles::of(&mut self.exchange),
            },
            messages: std::mem::take(&mut self.msg),
            relays: self.relay_report(),
            trust: TrustReport {
                trusted_pairs: self.mutual,
                max_trusted_pairs: self.max_mutual,
                records: 0,
                states: BTreeMap::new(),
            },
            faults: Default::default(),
            invariants: invariants_map,
            series: std::mem::take(&mut self.series),
            events_processed: self.events,
            not_applied,
        }
    }
}
