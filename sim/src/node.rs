//! A simulated node: the protocol's [`TrustMachine`] plus what a daemon keeps
//! around it — its key, its store, its clock — as a restartable factory.
//!
//! The store is built only from the [`StoreWrite`]s each output carries, as
//! the daemon's redb store is, so a crash loses exactly what a daemon would
//! lose (the replay cache and the in-memory retry queue) and a restart
//! rebuilds the machine with [`TrustMachine::restore`], as `kith run` does.
//!
//! This module must never decide trust itself or bypass the machine: every
//! change of a peer record goes through [`TrustMachine::handle`].

use std::collections::{BTreeMap, BTreeSet};

use kith_keys::{NodeId, NodeKey};
use kith_protocol::{AllowEntry, Config, PeerRecord, StoreWrite, TrustMachine, TrustState};

use crate::scenario::PolicyKind;

/// What a node would have in its database: built only from `StoreWrite`s.
#[derive(Clone, Debug, Default)]
pub struct Store {
    pub peers: BTreeMap<NodeId, PeerRecord>,
    pub allow: BTreeMap<NodeId, AllowEntry>,
    pub deny: BTreeSet<NodeId>,
    pub auto_approve: bool,
    /// Audit entries written (only counted: nothing reads them back).
    pub audit_entries: u64,
    /// The timestamp floor kept from removed records (`StoreWrite::SentFloor`).
    pub sent_floor: u64,
}

/// A trust flip seen while applying writes: `peer`'s trust went to `trusted`.
#[derive(Clone, Copy, Debug)]
pub struct TrustFlip {
    pub peer: NodeId,
    pub trusted: bool,
}

impl Store {
    /// Commits one output's writes; reports every record whose trusted-ness changed.
    pub fn apply(&mut self, writes: &[StoreWrite], flips: &mut Vec<TrustFlip>) {
        for w in writes {
            match w {
                StoreWrite::Peer(r) => {
                    let was = self
                        .peers
                        .get(&r.id)
                        .is_some_and(|o| o.state == TrustState::Trusted);
                    let is = r.state == TrustState::Trusted;
                    if was != is {
                        flips.push(TrustFlip {
                            peer: r.id,
                            trusted: is,
                        });
                    }
                    self.peers.insert(r.id, r.clone());
                }
                StoreWrite::RemovePeer(id) => {
                    if let Some(o) = self.peers.remove(id) {
                        if o.state == TrustState::Trusted {
                            flips.push(TrustFlip {
                                peer: *id,
                                trusted: false,
                            });
                        }
                    }
                }
                StoreWrite::Allow(id, e) => {
                    self.allow.insert(*id, e.clone());
                }
                StoreWrite::Disallow(id) => {
                    self.allow.remove(id);
                }
                StoreWrite::Deny(id) => {
                    self.deny.insert(*id);
                }
                StoreWrite::Undeny(id) => {
                    self.deny.remove(id);
                }
                StoreWrite::AutoApprove(on) => self.auto_approve = *on,
                StoreWrite::Audit(_) => self.audit_entries += 1,
                StoreWrite::SentFloor(ms) => self.sent_floor = self.sent_floor.max(*ms),
            }
        }
    }

    /// Whether the record says `peer` is trusted (committed state).
    pub fn trusts(&self, peer: &NodeId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|r| r.state == TrustState::Trusted)
    }
}

/// One simulated node.
pub struct SimNode {
    pub index: u32,
    pub key: NodeKey,
    pub id: NodeId,
    /// `None` while crashed.
    pub machine: Option<TrustMachine>,
    pub store: Store,
    /// The machine config the node starts with (auto-approve comes from the store).
    pub config: Config,
    /// This node's clock minus the true (virtual) time, in ms.
    pub skew_ms: i64,
    pub policy: usize,
    pub policy_kind: PolicyKind,
    /// Cannot be dialled directly.
    pub private: bool,
    /// Home relay index, for private nodes when the scenario has relays.
    pub home_relay: Option<u32>,
    /// Bumped on every crash: events of an earlier life are ignored.
    pub incarnation: u32,
    /// Virtual time of the tick currently scheduled, if any.
    pub tick_at: Option<u64>,
    /// Virtual time this node comes back, while crashed.
    pub back_at: Option<u64>,
}

impl SimNode {
    pub fn up(&self) -> bool {
        self.machine.is_some()
    }

    /// This node's clock at virtual time `t`.
    pub fn clock(&self, t: u64) -> u64 {
        t.saturating_add_signed(self.skew_ms)
    }

    /// Virtual time at which this node's clock reads `local`.
    pub fn to_virtual(&self, local: u64) -> u64 {
        local.saturating_add_signed(-self.skew_ms)
    }

    /// The machine a restart would build from the store.
    pub fn restored(&self) -> TrustMachine {
        let mut config = self.config.clone();
        config.auto_approve = self.store.auto_approve;
        TrustMachine::restore(
            self.id,
            config,
            self.store.peers.values().cloned(),
            self.store.allow.clone(),
            self.store.deny.iter().copied(),
        )
        .with_sent_floor(self.store.sent_floor)
    }
}

/// What survives a restart of `m`, for comparing a live machine with one
/// rebuilt from its store: everything but the in-memory replay cache.
pub fn durable_view(m: &TrustMachine) -> DurableView<'_> {
    DurableView {
        peers: m.records().collect(),
        allow: m.allowlist().collect(),
        deny: m.denylist().collect(),
        auto_approve: m.config().auto_approve,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct DurableView<'a> {
    pub peers: Vec<&'a PeerRecord>,
    pub allow: Vec<(&'a NodeId, &'a AllowEntry)>,
    pub deny: Vec<&'a NodeId>,
    pub auto_approve: bool,
}

impl DurableView<'_> {
    /// A one-line description of the first difference, for a violation report.
    pub fn first_difference(&self, other: &DurableView<'_>) -> Option<String> {
        if self.auto_approve != other.auto_approve {
            return Some(format!(
                "auto-approve {} before, {} after",
                self.auto_approve, other.auto_approve
            ));
        }
        let a: BTreeMap<_, _> = self.peers.iter().map(|r| (r.id, *r)).collect();
        let b: BTreeMap<_, _> = other.peers.iter().map(|r| (r.id, *r)).collect();
        for (id, ra) in &a {
            match b.get(id) {
                None => return Some(format!("record of {} lost", id.short())),
                Some(rb) if rb != ra => {
                    return Some(format!(
                        "record of {} differs: {} (hw {}) before, {} (hw {}) after",
                        id.short(),
                        ra.state,
                        ra.high_water_ms,
                        rb.state,
                        rb.high_water_ms
                    ));
                }
                _ => {}
            }
        }
        for id in b.keys() {
            if !a.contains_key(id) {
                return Some(format!("record of {} appeared", id.short()));
            }
        }
        if self.allow != other.allow {
            return Some("allowlist differs".into());
        }
        if self.deny != other.deny {
            return Some("deny list differs".into());
        }
        None
    }
}
