//! Helpers shared by the integration tests: deterministic keys, a node
//! wrapper, envelope builders, and a store that replays `StoreWrite`s.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use kith_keys::{NodeId, NodeKey};
use kith_protocol::{
    AllowEntry, AuditEntry, Body, Command, Config, Envelope, Input, Kind, Output, PeerRecord,
    Reply, StoreWrite, TrustMachine,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use zeroize::Zeroizing;

/// A plausible "now": November 2023, in ms.
pub const T0: u64 = 1_700_000_000_000;

pub fn key(seed: u8) -> NodeKey {
    NodeKey::from_secret(&Zeroizing::new([seed; 32]))
}

/// One node under test: its key, machine, RNG, and a store fed by its writes.
pub struct Node {
    pub key: NodeKey,
    pub m: TrustMachine,
    pub rng: StdRng,
    pub store: Store,
}

impl Node {
    pub fn new(seed: u8, config: Config) -> Node {
        let key = key(seed);
        let m = TrustMachine::new(key.node_id(), config.clone());
        Node {
            key,
            m,
            rng: StdRng::seed_from_u64(seed as u64),
            store: Store::new(config.auto_approve),
        }
    }

    pub fn id(&self) -> NodeId {
        self.key.node_id()
    }

    pub fn handle(&mut self, now: u64, input: Input) -> Output {
        let out = self.m.handle(now, input, &self.key, &mut self.rng);
        self.store.apply(&out.writes);
        out
    }

    pub fn cmd(&mut self, now: u64, cmd: Command) -> Output {
        self.handle(now, Input::Command(cmd))
    }

    /// Runs a command that must succeed.
    pub fn ok(&mut self, now: u64, cmd: Command) -> Output {
        let out = self.cmd(now, cmd.clone());
        assert_eq!(out.reply, Reply::Done, "{cmd:?}");
        out
    }

    /// An envelope arriving on a direct connection from its signer.
    pub fn recv(&mut self, now: u64, envelope: Envelope) -> Output {
        let from = envelope.body.from;
        self.handle(
            now,
            Input::Envelope {
                envelope,
                transport_peer: Some(from),
                source: None,
                via_relay: None,
            },
        )
    }

    pub fn recv_from(
        &mut self,
        now: u64,
        envelope: Envelope,
        transport_peer: Option<NodeId>,
        source: Option<SocketAddr>,
    ) -> Output {
        self.handle(
            now,
            Input::Envelope {
                envelope,
                transport_peer,
                source,
                via_relay: None,
            },
        )
    }

    pub fn tick(&mut self, now: u64) -> Output {
        self.handle(now, Input::Tick)
    }

    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.m).unwrap()
    }

    /// The machine the node would rebuild from its store after a restart.
    pub fn restored(&self) -> TrustMachine {
        let mut config = self.m.config().clone();
        config.auto_approve = self.store.auto_approve;
        TrustMachine::restore(
            self.id(),
            config,
            self.store.peers.values().cloned(),
            self.store.allow.clone(),
            self.store.deny.iter().copied(),
        )
        .with_sent_floor(self.store.sent_floor)
    }

    /// The store holds exactly what the machine holds (its writes were complete).
    pub fn assert_store_matches(&self) {
        let restored = self.restored();
        assert_eq!(
            restored.records().collect::<Vec<_>>(),
            self.m.records().collect::<Vec<_>>(),
            "store peers differ from the machine's"
        );
        assert_eq!(
            restored.allowlist().collect::<Vec<_>>(),
            self.m.allowlist().collect::<Vec<_>>()
        );
        assert_eq!(
            restored.denylist().collect::<Vec<_>>(),
            self.m.denylist().collect::<Vec<_>>()
        );
        assert_eq!(self.store.auto_approve, self.m.config().auto_approve);
    }
}

/// What a node would have in its database, built only from `StoreWrite`s.
#[derive(Clone, Debug, Default)]
pub struct Store {
    pub peers: BTreeMap<NodeId, PeerRecord>,
    pub allow: BTreeMap<NodeId, AllowEntry>,
    pub deny: BTreeSet<NodeId>,
    pub auto_approve: bool,
    pub audit: Vec<AuditEntry>,
    pub sent_floor: u64,
}

impl Store {
    pub fn new(auto_approve: bool) -> Store {
        Store {
            auto_approve,
            ..Store::default()
        }
    }

    pub fn apply(&mut self, writes: &[StoreWrite]) {
        for w in writes {
            match w {
                StoreWrite::Peer(r) => {
                    self.peers.insert(r.id, r.clone());
                }
                StoreWrite::RemovePeer(id) => {
                    self.peers.remove(id);
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
                StoreWrite::Audit(a) => self.audit.push(a.clone()),
                StoreWrite::SentFloor(ms) => self.sent_floor = self.sent_floor.max(*ms),
            }
        }
    }
}

/// Builds and signs an envelope from `from` to `to`.
pub fn envelope(from: &NodeKey, to: NodeId, kind: Kind, timestamp_ms: u64, nonce: u8) -> Envelope {
    Envelope::sign(
        Body {
            kind,
            from: from.node_id(),
            to,
            nonce: [nonce; 16],
            timestamp_ms,
        },
        from,
    )
}

pub fn request(text: &str) -> Kind {
    Kind::Request {
        justification: text.into(),
    }
}

pub fn reject(text: &str) -> Kind {
    Kind::Reject {
        reason: text.into(),
    }
}

pub fn revoke(text: &str) -> Kind {
    Kind::Revoke {
        reason: text.into(),
    }
}
