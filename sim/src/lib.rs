//! kith-sim: many kith nodes in one process, to see what a fleet does before
//! deploying it and to find protocol bugs no hand-written test would.
//!
//! Two modes run the same scenario file:
//!
//! - **Simulated** ([`engine`]): every node is the protocol's own
//!   [`TrustMachine`](kith_protocol::TrustMachine) and every relay the
//!   protocol's own [`Relay`](kith_protocol::Relay), on a virtual clock and a
//!   virtual network, with one seeded RNG. The seed is printed and accepted
//!   back; the same seed gives a byte-identical report. Faults (loss,
//!   partitions, crashes with restarts, clock skew, a replaying adversary, a
//!   dropping or delaying relay) are small composable rules, and invariants
//!   are checked as it runs.
//! - **Real** ([`real`]): the same workload against real embedded
//!   [`kith_node::Node`]s over QUIC on loopback, on the wall clock, writing the
//!   same report so simulated and real latencies can be compared.
//!
//! # Layout
//!
//! - [`scenario`]: the scenario file format (TOML), validation and scaling.
//! - [`dist`]: durations and latency/delay distributions.
//! - [`engine`]: the deterministic event loop: virtual clock, network,
//!   delivery with retries, relays, faults, workload. The simulator, its
//!   construction and the main loop; inside it:
//!   - `engine/events`: the events and their queue order.
//!   - `engine/machines`: running inputs through the machines, flips, ticks, commands.
//!   - `engine/workload`: requests, operators deciding, renewing, withdrawing, revoking.
//!   - `engine/delivery`: direct connections and delivery with retries and backoff.
//!   - `engine/relays`: relay connections, forwarding through relays, pushes.
//!   - `engine/faults`: crashes, restarts, partitions, the replaying adversary.
//!   - `engine/checks`: invariant checks as it runs and at the end, violations.
//!   - `engine/metrics`: samples and the finished run's report.
//!   - `engine/fleet`: the fleet's make-up and the node and relay configs (shared with real mode).
//! - [`node`]: a simulated node — machine, key, store built from its writes,
//!   clock skew — restartable from its store.
//! - [`invariants`]: what is checked, the bookkeeping it needs, the bounded
//!   trace printed with a violation.
//! - [`report`]: the JSON report (the same shape in both modes).
//! - [`plot`]: SVG plots (latency histogram, trusted pairs, relay queue).
//! - [`real`]: real mode over QUIC.
//!   - `real/driver`: the workload driver — requests, operator commands, watching events, checks.
//!   - `real/collect`: relay queue samples, the time series and the finished run's report.
//! - [`cli`]: the `kith-sim` command line.

pub mod cli;
pub mod dist;
pub mod engine;
pub mod invariants;
pub mod node;
pub mod plot;
pub mod real;
pub mod report;
pub mod scenario;

pub use engine::{Outcome, RunOptions, run};
pub use report::Report;
pub use scenario::Scenario;
