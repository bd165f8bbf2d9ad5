//! Scenario files: what a fleet looks like and what happens to it.
//!
//! A scenario is a TOML file (see `sim/scenarios/` for complete examples and
//! `sim/README.md` for every field). It describes the nodes (how many, what
//! fraction is private, how many relays), their policies, the workload, the
//! network, the node's delivery policy, the faults to inject, and protocol
//! tunables. Every field but `name` and `nodes.count` has a default.
//!
//! This module only parses and validates: it never runs anything and never
//! draws randomness. Unknown fields are errors, so a typo cannot silently
//! turn a fault off.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dist::{Dist, Millis};

/// One scenario file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How long the workload and faults run (simulated time).
    #[serde(default = "default_duration")]
    pub duration: Millis,
    /// After the workload stops: partitions heal, crashed nodes come back, and
    /// the network gets this long to go quiet before the final checks.
    #[serde(default = "default_drain")]
    pub drain: Millis,
    /// Interval of the time series in the report (default: duration / 200).
    #[serde(default)]
    pub sample_every: Option<Millis>,
    /// Virtual wall-clock time at the start, ms since the Unix epoch.
    #[serde(default = "default_start")]
    pub start_ms: u64,
    pub nodes: Nodes,
    /// Who decides incoming requests and how; fractions of the nodes. Nodes
    /// not covered by any entry use the manual policy with default settings.
    #[serde(default)]
    pub policies: Vec<Policy>,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub relay: RelaySettings,
    #[serde(default)]
    pub faults: Faults,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub checks: Checks,
    #[serde(default)]
    pub real: Real,
}

fn default_duration() -> Millis {
    Millis(10 * 60 * 1000)
}
fn default_drain() -> Millis {
    Millis(6 * 60 * 1000)
}
fn default_start() -> u64 {
    1_700_000_000_000
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Nodes {
    pub count: usize,
    /// Fraction of nodes that cannot be dialled directly (behind NAT).
    #[serde(default)]
    pub private_fraction: f64,
    /// Relays, in addition to `count` nodes. Private nodes register with one.
    #[serde(default)]
    pub relays: usize,
}

/// How a group of nodes decides incoming requests.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub kind: PolicyKind,
    /// Fraction of the nodes with this policy.
    pub fraction: f64,
    /// Manual (and allowlist misses): how long the operator takes to decide.
    #[serde(default = "default_decide_delay")]
    pub delay: Dist,
    /// Manual: probability the operator rejects rather than approves.
    #[serde(default)]
    pub reject: f64,
    /// Manual: probability the operator never decides (the request stays pending).
    #[serde(default)]
    pub ignore: f64,
    /// Allowlist: probability a requester was on the allowlist beforehand;
    /// other requests are decided by hand as under `manual`.
    #[serde(default = "one")]
    pub allowed: f64,
}

fn default_decide_delay() -> Dist {
    Dist::Lognormal {
        median: Millis(30_000),
        sigma: 1.0,
    }
}
fn one() -> f64 {
    1.0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Manual,
    Allowlist,
    Auto,
}

/// Who asks whom for trust, how often, and what becomes of trust later.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    pub pattern: Pattern,
    /// Requests per second across the fleet (a Poisson process).
    pub rate: f64,
    /// Stop after this many requests (default: no cap; the duration ends it).
    pub requests: Option<u64>,
    /// Probability that a pair, once trusted, is later revoked by one side.
    pub revoke: f64,
    /// How long after trust is established the revocation comes.
    pub revoke_after: Dist,
    /// Probability that an operator's approval carries an expiry.
    pub expires: f64,
    /// How long such an approval lasts.
    pub expires_after: Dist,
    /// Probability that an expired approval is renewed (`approve` again) by its operator.
    pub renew: f64,
    /// Probability that a request's sender later withdraws or drops it: `cancel`,
    /// `ignore` or `forget`, one picked at random (whatever the state by then).
    pub withdraw: f64,
    /// How long after the request that comes.
    pub withdraw_after: Dist,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            pattern: Pattern::Random,
            rate: 1.0,
            requests: None,
            revoke: 0.0,
            revoke_after: Dist::Exp {
                mean: Millis(5 * 60 * 1000),
            },
            expires: 0.0,
            expires_after: Dist::Exp {
                mean: Millis(2 * 60 * 1000),
            },
            renew: 0.0,
            withdraw: 0.0,
            withdraw_after: Dist::Exp {
                mean: Millis(60 * 1000),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// A random node asks another random node it has no standing with.
    Random,
    /// Every pair once, in random order, by a random side.
    Mesh,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way latency of a message.
    pub latency: Dist,
    /// Probability that one message of an exchange is lost for good (the
    /// exchange then fails and the sender retries; QUIC's own retransmissions
    /// are part of `latency`).
    pub loss: f64,
    pub partitions: Vec<Partition>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            latency: Dist::Lognormal {
                median: Millis(20),
                sigma: 0.5,
            },
            loss: 0.0,
            partitions: Vec::new(),
        }
    }
}

/// For `duration` from `at`, a random `fraction` of nodes (and relays) is cut
/// off from the rest: nothing crosses the cut either way.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub at: Millis,
    pub duration: Millis,
    pub fraction: f64,
}

/// How a node delivers an envelope; the defaults are the daemon's.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// A dial or an exchange that gets no answer fails after this long.
    pub attempt_timeout: Millis,
    pub backoff_min: Millis,
    pub backoff_max: Millis,
    /// Retries stop this long after the first failure (the daemon: 4 minutes,
    /// inside the peer's 5-minute skew window).
    pub retry_for: Millis,
    /// After a restart, re-send (`Command::Resend`) what every record's state
    /// implies, since the retry queue lived in memory and is gone. The daemon
    /// does not do this yet: turn it off to see what that costs.
    pub resend_on_restart: bool,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            attempt_timeout: Millis(5_000),
            backoff_min: Millis(500),
            backoff_max: Millis(30_000),
            retry_for: Millis(240_000),
            resend_on_restart: true,
        }
    }
}

/// Relay tunables (mapped onto the protocol's relay config).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    pub queue_per_destination: Option<usize>,
    pub queue_total: Option<usize>,
    pub queue_ttl: Option<Millis>,
    /// How long a private node takes to reconnect to its relay after losing it.
    pub reconnect: Dist,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            queue_per_destination: None,
            queue_total: None,
            queue_ttl: None,
            reconnect: Dist::Uniform {
                min: Millis(500),
                max: Millis(5_000),
            },
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    pub crashes: Option<Crashes>,
    pub clock_skew: Option<ClockSkew>,
    pub adversary: Option<Adversary>,
    pub bad_relay: Option<BadRelay>,
}

/// `count` crashes at uniformly random times during the run, of random nodes;
/// each node comes back after `downtime` with its store (state kept).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Crashes {
    pub count: usize,
    pub downtime: Dist,
    /// Crash relays too (default: nodes only).
    #[serde(default)]
    pub relays: bool,
    /// Crash private nodes too (default). A private node's relay only
    /// notices it is gone after the idle timeout and meanwhile answers
    /// `Delivered` for pushes that are lost: see the README's findings.
    #[serde(default = "yes")]
    pub private: bool,
    /// Clean shutdowns rather than crashes: connections are closed, so peers
    /// and relays know at once (the in-memory retry queue is lost either way).
    #[serde(default)]
    pub graceful: bool,
}

fn yes() -> bool {
    true
}

/// A `fraction` of nodes runs with its clock off by a draw from `skew`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSkew {
    pub fraction: f64,
    pub skew: Dist,
}

/// A network tap that records envelopes that were applied and replays them
/// later to their addressee, as if through a relay.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Adversary {
    /// Injections per second.
    pub rate: f64,
    /// Envelopes remembered (reservoir).
    #[serde(default = "default_capture")]
    pub capture: usize,
    /// Fraction of injections with one flipped bit (must fail the signature).
    #[serde(default)]
    pub tamper: f64,
    /// Fraction of injections sent over a direct connection from the adversary
    /// (must fail the sender check) rather than through a relay.
    #[serde(default)]
    pub direct: f64,
}

fn default_capture() -> usize {
    4096
}

/// A relay that drops or delays what it pushes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BadRelay {
    /// Which relay (index), default the first.
    #[serde(default)]
    pub relay: usize,
    #[serde(default)]
    pub drop: f64,
    #[serde(default)]
    pub delay: Dist,
}

/// Trust machine tunables for every node.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Protocol {
    pub skew_window: Option<Millis>,
    pub nonce_cache_capacity: Option<usize>,
    pub max_pending_total: Option<usize>,
    pub max_pending_per_source: Option<usize>,
    /// TEST ONLY: the deliberately broken rule (`Config::fault_skip_replay_check`).
    pub fault_skip_replay_check: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checks {
    /// Events shown with an invariant violation.
    pub trace: usize,
    /// Check agreement whenever the network goes quiet, not only at the end.
    pub when_quiet: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            trace: 40,
            when_quiet: true,
        }
    }
}

/// Real mode (`--real`) settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Real {
    /// Nodes to run in real mode (default: `nodes.count`, at most 200 unless set).
    pub nodes: Option<usize>,
    /// Play the workload this many times faster than scheduled.
    pub speed: f64,
    /// Longest wall-clock run of the workload (then it drains).
    pub max_wall: Millis,
}

impl Default for Real {
    fn default() -> Self {
        Real {
            nodes: None,
            speed: 1.0,
            max_wall: Millis(120_000),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        s.validate().map_err(|message| ScenarioError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        let frac = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1, not {v}"))
            }
        };
        if self.nodes.count < 2 {
            return Err("nodes.count must be at least 2".into());
        }
        if self.nodes.count > 1_000_000 {
            return Err("nodes.count is at most 1,000,000".into());
        }
        frac("nodes.private_fraction", self.nodes.private_fraction)?;
        let mut total = 0.0;
        for p in &self.policies {
            frac("policies.fraction", p.fraction)?;
            frac("policies.reject", p.reject)?;
            frac("policies.ignore", p.ignore)?;
            frac("policies.allowed", p.allowed)?;
            total += p.fraction;
        }
        if total > 1.0 + 1e-9 {
            return Err(format!("policy fractions add up to {total}, more than 1"));
        }
        if !(self.workload.rate > 0.0 && self.workload.rate.is_finite()) {
            return Err("workload.rate must be a positive number".into());
        }
        frac("workload.revoke", self.workload.revoke)?;
        frac("network.loss", self.network.loss)?;
        if self.network.loss >= 0.5 {
            return Err("network.loss must be below 0.5".into());
        }
        for p in &self.network.partitions {
            frac("network.partitions.fraction", p.fraction)?;
            if p.at.0 < 0 || p.duration.0 <= 0 {
                return Err("a partition needs at >= 0 and duration > 0".into());
            }
        }
        if self.duration.0 <= 0 {
            return Err("duration must be positive".into());
        }
        if self.drain.0 < 0 {
            return Err("drain must not be negative".into());
        }
        let d = &self.delivery;
        if d.attempt_timeout.0 <= 0 || d.backoff_min.0 <= 0 || d.backoff_max < d.backoff_min {
            return Err("delivery: timeouts and backoff must be positive, min <= max".into());
        }
        if let Some(c) = &self.faults.clock_skew {
            frac("faults.clock_skew.fraction", c.fraction)?;
        }
        if let Some(a) = &self.faults.adversary {
            frac("faults.adversary.tamper", a.tamper)?;
            frac("faults.adversary.direct", a.direct)?;
            if !(a.rate > 0.0 && a.rate.is_finite()) || a.capture == 0 {
                return Err("faults.adversary needs rate > 0 and capture > 0".into());
            }
        }
        if let Some(b) = &self.faults.bad_relay {
            frac("faults.bad_relay.drop", b.drop)?;
            if b.relay >= self.nodes.relays {
                return Err(format!(
                    "faults.bad_relay.relay is {} but there are {} relays",
                    b.relay, self.nodes.relays
                ));
            }
        }
        if self.nodes.private_fraction > 0.0 && self.nodes.relays == 0 {
            // Allowed (private nodes are then reachable only over connections
            // they opened), but worth knowing.
        }
        if self.real.speed <= 0.0 || !self.real.speed.is_finite() {
            return Err("real.speed must be positive".into());
        }
        Ok(())
    }

    /// Scales the scenario down (or up) to `nodes` nodes, keeping requests
    /// per node: the workload rate, request cap, crash count and relay
    /// count scale with it. For tests and quick looks at big scenarios.
    pub fn with_nodes(mut self, nodes: usize) -> Scenario {
        let old = self.nodes.count.max(1) as f64;
        let f = nodes as f64 / old;
        self.nodes.count = nodes.max(2);
        self.workload.rate = (self.workload.rate * f).max(0.01);
        if let Some(r) = self.workload.requests.as_mut() {
            *r = ((*r as f64 * f).ceil() as u64).max(1);
        }
        if let Some(c) = self.faults.crashes.as_mut() {
            c.count = ((c.count as f64 * f).ceil() as usize).min(nodes);
        }
        if let Some(a) = self.faults.adversary.as_mut() {
            a.rate = (a.rate * f).max(0.01);
        }
        self
    }

    /// Shortens (or lengthens) the run; partitions past the end are dropped.
    pub fn with_duration(mut self, duration: Millis) -> Scenario {
        let f = duration.0 as f64 / self.duration.0.max(1) as f64;
        if let Some(r) = self.workload.requests.as_mut() {
            *r = ((*r as f64 * f).ceil() as u64).max(1);
        }
        if let Some(c) = self.faults.crashes.as_mut() {
            c.count = (c.count as f64 * f).ceil() as usize;
        }
        self.network.partitions.retain(|p| p.at < duration);
        self.duration = duration;
        self
    }

    /// Total simulated time, workload plus drain.
    pub fn total_ms(&self) -> u64 {
        self.duration.ms() + self.drain.ms()
    }

    pub fn sample_every_ms(&self) -> u64 {
        self.sample_every
            .map(|m| m.ms())
            .unwrap_or(self.total_ms() / 200)
            .max(100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_scenario_gets_defaults() {
        let s = Scenario::parse("name = \"x\"\n[nodes]\ncount = 3\n", "t").unwrap();
        assert_eq!(s.nodes.count, 3);
        assert_eq!(s.workload.pattern, Pattern::Random);
        assert_eq!(s.delivery.retry_for, Millis(240_000));
        assert!(s.delivery.resend_on_restart);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let e = Scenario::parse("name = \"x\"\n[nodes]\ncount = 3\nprivat = 1\n", "t");
        assert!(e.unwrap_err().to_string().contains("privat"));
        let e = Scenario::parse(
            "name = \"x\"\n[nodes]\ncount = 3\nprivate_fraction = 2.0\n",
            "t",
        );
        assert!(e.unwrap_err().to_string().contains("between 0 and 1"));
    }

    #[test]
    fn scaling_keeps_requests_per_node() {
        let s = Scenario::parse(
            "name = \"x\"\n[nodes]\ncount = 1000\n[workload]\npattern = \"random\"\nrate = 10.0\nrequests = 5000\nrevoke = 0.0\nrevoke_after = { const = 0 }\n",
            "t",
        )
        .unwrap()
        .with_nodes(100);
        assert_eq!(s.nodes.count, 100);
        assert!((s.workload.rate - 1.0).abs() < 1e-9);
        assert_eq!(s.workload.requests, Some(500));
    }
}
