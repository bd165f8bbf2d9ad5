//! Metrics and the report: periodic samples and turning a finished run into
//! its [`Outcome`].
//!
//! Like the rest of the engine, this must never change a machine other than
//! through its `handle`, never read the wall clock, and never let an
//! invariant check draw from the RNG.

use std::collections::BTreeMap;

use crate::invariants;
use crate::report::{
    InvariantReport, LatencyReport, NodesReport, Percentiles, Report, TimeReport, TrustReport,
    ViolationReport,
};
use crate::scenario::PolicyKind;

use super::{Outcome, Sim, events::Ev};

impl Sim<'_> {
    pub(super) fn on_sample(&mut self) {
        let q: u64 = self
            .relays
            .iter()
            .map(|r| r.machine.as_ref().map_or(0, |m| m.queued() as u64))
            .sum();
        self.series.t_ms.push(self.t());
        self.series.trusted_pairs.push(self.mutual);
        self.series
            .pending_requests
            .push(self.handshakes.len() as u64);
        self.series.relay_queue.push(q);
        self.series
            .deliveries_in_flight
            .push(self.deliveries.len() as u64);
        if !self.relays.is_empty() {
            self.queue_samples.push(q);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.t() / 1000);
        }
        if self.now < self.end {
            let every = self.sc.sample_every_ms();
            self.at(self.now + every, Ev::Sample);
        }
    }

    pub(super) fn finish(mut self) -> Outcome {
        let sc = self.sc;
        let mut report = Report {
            report_version: crate::report::REPORT_VERSION,
            scenario: sc.name.clone(),
            mode: "sim".into(),
            seed: self.seed,
            events_processed: self.events,
            ..Report::default()
        };
        let mut policies = BTreeMap::new();
        for node in &self.nodes {
            let name = match node.policy_kind {
                PolicyKind::Manual => "manual",
                PolicyKind::Allowlist => "allowlist",
                PolicyKind::Auto => "auto",
            };
            *policies.entry(name.to_string()).or_default() += 1;
        }
        report.nodes = NodesReport {
            count: self.nodes.len(),
            private: self.nodes.iter().filter(|n| n.private).count(),
            relays: self.relays.len(),
            policies,
            skewed: self.nodes.iter().filter(|n| n.skew_ms != 0).count(),
        };
        report.time = TimeReport {
            run_ms: self.t(),
            workload_ms: sc.duration.ms(),
            drain_ms: sc.drain.ms(),
            quiet_at_end: self.is_quiet(),
        };
        self.hs.open_at_end = self.handshakes.len() as u64;
        report.handshakes = std::mem::take(&mut self.hs);
        report.latency_ms = LatencyReport {
            handshake: Percentiles::of(&mut self.latencies.clone()),
            handshake_policy: Percentiles::of(&mut self.latencies_policy),
            exchange: Percentiles::of(&mut self.exchange),
        };
        report.messages = std::mem::take(&mut self.msg);
        self.relay_rep.count = self.relays.len();
        self.relay_rep.queue_depth = Percentiles::of(&mut self.queue_samples);
        self.relay_rep.max_queue_by_relay = self.relays.iter().map(|r| r.max_queue).collect();
        report.relays = std::mem::take(&mut self.relay_rep);
        let mut states = BTreeMap::new();
        let mut records = 0;
        for node in &self.nodes {
            for r in node.store.peers.values() {
                records += 1;
                *states.entry(r.state.to_string()).or_default() += 1;
            }
        }
        report.trust = TrustReport {
            trusted_pairs: self.mutual,
            max_trusted_pairs: self.max_mutual,
            records,
            states,
        };
        report.faults = std::mem::take(&mut self.faults);
        for name in invariants::ALL {
            report.invariants.insert(
                name.to_string(),
                InvariantReport {
                    checks: self.counts.checks.get(name).copied().unwrap_or(0),
                    violated: self.violation.as_ref().is_some_and(|v| v.invariant == name),
                },
            );
        }
        report.series = std::mem::take(&mut self.series);
        report.outcome = if self.violation.is_some() {
            "violated"
        } else {
            "clean"
        }
        .into();
        report.violation = self.violation.as_ref().map(|v| ViolationReport {
            invariant: v.invariant.to_string(),
            at_ms: v.at_ms,
            detail: v.detail.clone(),
            trace: v.trace.clone(),
        });
        Outcome {
            report,
            violation: self.violation,
            latencies: self.latencies,
        }
    }
}
