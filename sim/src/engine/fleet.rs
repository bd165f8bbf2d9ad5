//! The fleet's make-up (which policy each node has, which nodes are
//! private) and the machine and relay configs every node and relay starts
//! from. Shared by simulated and real mode.
//!
//! Like the rest of the engine, this must never draw from anything but the
//! run's RNG, in a fixed order, and never read the wall clock.

use kith_protocol::{Config, RelayConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::scenario::{Policy, PolicyKind, Scenario};

/// Which policy each node has and which nodes are private.
pub(crate) struct Fleet {
    /// The scenario's policies, then the default (manual) one.
    pub policies: Vec<Policy>,
    pub policy_of: Vec<usize>,
    pub private: Vec<bool>,
}

/// Draws the fleet's make-up from the run's RNG: policies by shuffling the
/// node indices and cutting them by fraction, then an independent random
/// subset of private nodes.
pub(crate) fn assign_fleet(sc: &Scenario, rng: &mut StdRng) -> Fleet {
    let n = sc.nodes.count;
    let mut policies = sc.policies.clone();
    policies.push(Policy {
        kind: PolicyKind::Manual,
        fraction: 0.0,
        delay: crate::dist::Dist::Lognormal {
            median: crate::dist::Millis(30_000),
            sigma: 1.0,
        },
        reject: 0.0,
        ignore: 0.0,
        allowed: 1.0,
    });
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(rng);
    let mut policy_of = vec![policies.len() - 1; n];
    let mut cursor = 0usize;
    for (pi, p) in sc.policies.iter().enumerate() {
        let take = ((p.fraction * n as f64).round() as usize).min(n - cursor);
        for &i in &order[cursor..cursor + take] {
            policy_of[i as usize] = pi;
        }
        cursor += take;
    }
    let private_count = (sc.nodes.private_fraction * n as f64).round() as usize;
    let mut private = vec![false; n];
    for i in rand::seq::index::sample(rng, n, private_count) {
        private[i] = true;
    }
    Fleet {
        policies,
        policy_of,
        private,
    }
}

/// The machine config every node starts from.
pub fn protocol_config(sc: &Scenario) -> Config {
    let p = &sc.protocol;
    let mut c = Config::default();
    if let Some(s) = p.skew_window {
        c.skew_ms = s.ms();
    }
    if let Some(v) = p.nonce_cache_capacity {
        c.nonce_cache_capacity = v;
    }
    if let Some(v) = p.max_pending_total {
        c.max_pending_total = v;
    }
    if let Some(v) = p.max_pending_per_source {
        c.max_pending_per_source = v;
    }
    c.fault_skip_replay_check = p.fault_skip_replay_check;
    c
}

pub(crate) fn relay_config(sc: &Scenario, nodes: usize) -> RelayConfig {
    let r = &sc.relay;
    let mut c = RelayConfig {
        // A relay for a fleet is sized for it.
        max_clients: (nodes + 16).max(RelayConfig::default().max_clients),
        ..RelayConfig::default()
    };
    if let Some(v) = r.queue_per_destination {
        c.queue_per_destination = v;
    }
    if let Some(v) = r.queue_total {
        c.queue_total = v;
    }
    if let Some(v) = r.queue_ttl {
        c.queue_ttl_ms = v.ms();
    }
    c
}
