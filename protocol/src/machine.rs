//! The trust state machine: one per node, holding every peer relationship.
//!
//! [`TrustMachine::handle`] takes one [`Input`] — an envelope that arrived, an
//! operator [`Command`], or a [`Input::Tick`] — plus the current time and an
//! RNG, and returns an [`Output`]: the reply for whoever gave the input,
//! signed envelopes to send, events for operators, and the durable writes that
//! must be committed before any of it is acted on. That output is complete:
//! nothing else happens implicitly.
//!
//! This module must never read a clock, touch the network or the disk, or
//! block. The daemon and the simulator drive the very same code, so what the
//! simulator shows is what the daemon does.
//!
//! The principles behind the transition table (docs/design.md, "Consent and agreement", has the table):
//!
//! - A refused envelope or a failed command changes nothing at all.
//! - Every envelope that passes validation is *applied*: its nonce is
//!   remembered and, if we hold a record for the sender, the sender's
//!   high-water mark advances — even when it changes nothing else — so the
//!   same envelope can never be replayed later, when it might mean something.
//!   A repeat of a request still waiting takes no replay-cache slot (the stored
//!   mark alone refuses it again), and its writes may wait for a later commit
//!   ([`Output::writes_may_wait`]): a stranger repeating itself thousands of
//!   times evicts no other peer's nonces and costs no commit per repeat.
//! - Trust needs consent from both sides. Our side consents by requesting or
//!   approving (by hand or by policy) and withdraws by rejecting, revoking,
//!   cancelling, or letting an approval expire. An `Accept` is honoured only
//!   as the answer to a request of ours that still stands, so no peer can talk
//!   its way in (see [`Consent`]).
//! - A peer's decline spends our consent: trust comes back only through a new
//!   decision of ours. An expiry is told to the peer (`Expire`), so both ends
//!   agree; the peer's request then stands again for a renewal.
//! - A peer's decline (`Reject`, `Revoke`) always takes effect: losing trust
//!   on the peer's word is the safe direction.
//! - Messages from one sender are applied in the sender's order (timestamps
//!   strictly increase and the high-water mark drops anything older), so each
//!   side ends up reflecting the other's latest word.

mod commands;
mod consent;
mod envelopes;
mod index;
mod tick;
mod types;

use std::collections::{BTreeMap, BTreeSet};

use kith_keys::{NodeId, NodeKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::replay::NonceCache;
use crate::wire::{Ack, AckStatus, Body, Envelope, Kind};

pub use consent::Consent;
pub use types::{
    AllowEntry, AuditAction, AuditEntry, CLOCK_BEHIND_MS, Command, CommandError, Config,
    DEFAULT_DECLINED_TTL_MS, DEFAULT_PENDING_TTL_MS, DEFAULT_SKEW_MS, Decider, Event, EventKind,
    Input, MAX_NAME_CHARS, Output, PeerRecord, Reply, StoreWrite, TextField, TrustState,
    WITHDRAWN_REASON,
};

use self::index::{Reap, RecordIndex, RelayBuckets};

/// The accept we send; `send` fills in what of the peer's we have seen.
const ACCEPT: Kind = Kind::AcceptOf { seen_ms: 0 };

/// Per-call context: the clock, the signing key, the RNG, and the output being built.
struct Cx<'a, R: ?Sized> {
    now: u64,
    /// The sender and timestamp of the envelope being handled, if any.
    seen: Option<(NodeId, u64)>,
    key: &'a NodeKey,
    rng: &'a mut R,
    out: Output,
}

impl<R: ?Sized> Cx<'_, R> {
    fn event(&mut self, peer: NodeId, kind: EventKind) {
        self.out.events.push(Event {
            at_ms: self.now,
            peer,
            kind,
        });
    }

    fn audit(&mut self, peer: Option<NodeId>, action: AuditAction, detail: Option<String>) {
        self.out.writes.push(StoreWrite::Audit(AuditEntry {
            at_ms: self.now,
            peer,
            action,
            detail,
        }));
    }

    /// Drops an earlier write of this peer's record in this output: only the
    /// final state of a record is written.
    fn unwrite_peer(&mut self, id: &NodeId) {
        self.out.writes.retain(|w| match w {
            StoreWrite::Peer(r) => r.id != *id,
            StoreWrite::RemovePeer(r) => r != id,
            _ => true,
        });
    }
}

/// The trust state of one node: all peer records, the allow and deny lists,
/// and the replay cache. See the [module docs](self).
///
/// Serializable as a snapshot (the simulator compares and stores them); the
/// node instead rebuilds it with [`TrustMachine::restore`] from its store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MachineSnapshot")]
pub struct TrustMachine {
    local: NodeId,
    config: Config,
    peers: BTreeMap<NodeId, PeerRecord>,
    allow: BTreeMap<NodeId, AllowEntry>,
    deny: BTreeSet<NodeId>,
    nonces: NonceCache,
    /// Derived from `peers`; not part of a snapshot.
    #[serde(skip_serializing)]
    index: RecordIndex,
    /// The highest timestamp we put on any envelope: a record made anew (after
    /// `forget`, or while our clock is behind) starts above it, so that a peer
    /// that remembers us never sees our new envelopes as stale. Derived from
    /// the records on restore; not part of a snapshot.
    #[serde(skip_serializing)]
    sent_floor: u64,
    /// The part of `sent_floor` that removed records held, as last stored
    /// ([`StoreWrite::SentFloor`]): a record removed with a higher `last_sent_ms`
    /// writes it, so the floor survives a restart that the record does not.
    #[serde(skip_serializing)]
    stored_floor: u64,
    /// Which relay each relayed pending request came through; not stored.
    #[serde(skip_serializing)]
    relayed: RelayBuckets,
    /// The newest high-water mark of a record reaped early by the
    /// [`Config::max_declined`] bound (never above the time it was reaped): an
    /// envelope from a sender we hold no record of is refused as stale at or
    /// below it. In memory only, like the nonce cache.
    reaped_floor_ms: u64,
    /// Declines (a withdrawal, a reject, a revoke) that found no record of their
    /// sender, by sender: their timestamp. The request a withdrawal withdraws is
    /// older, so when it arrives late (held back, or replayed) it is refused as
    /// stale instead of making a trust its sender no longer consents to. In memory
    /// only, bounded, and kept only as long as the skew window could still let
    /// such an older envelope in; not part of a snapshot.
    #[serde(skip_serializing)]
    withdrawn: Withdrawn,
}

/// Timestamps of declines from senders we held no record of (see
/// [`TrustMachine::withdrawn`]), indexed by sender and by time for pruning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Withdrawn {
    by_sender: BTreeMap<NodeId, u64>,
    by_time: BTreeSet<(u64, NodeId)>,
}

impl Withdrawn {
    fn get(&self, from: &NodeId) -> u64 {
        self.by_sender.get(from).copied().unwrap_or(0)
    }

    /// Remembers `at_ms` for `from`; forgets what the skew window already refuses
    /// (older than `now - 2 * skew`) and, past `capacity`, the oldest.
    fn note(&mut self, from: NodeId, at_ms: u64, now_ms: u64, skew_ms: u64, capacity: usize) {
        if let Some(old) = self.by_sender.insert(from, at_ms.max(self.get(&from))) {
            self.by_time.remove(&(old, from));
        }
        self.by_time.insert((self.get(&from), from));
        let horizon = now_ms.saturating_sub(skew_ms.saturating_mul(2));
        while let Some(&(at, id)) = self.by_time.first() {
            if at >= horizon && self.by_time.len() <= capacity.max(1) {
                break;
            }
            self.by_time.remove(&(at, id));
            self.by_sender.remove(&id);
        }
    }
}

/// A snapshot as serialized: everything but the derived index, rebuilt on load.
#[derive(Deserialize)]
struct MachineSnapshot {
    local: NodeId,
    config: Config,
    peers: BTreeMap<NodeId, PeerRecord>,
    allow: BTreeMap<NodeId, AllowEntry>,
    deny: BTreeSet<NodeId>,
    nonces: NonceCache,
    #[serde(default)]
    reaped_floor_ms: u64,
}

impl From<MachineSnapshot> for TrustMachine {
    fn from(s: MachineSnapshot) -> Self {
        TrustMachine {
            index: RecordIndex::build(&s.peers),
            sent_floor: sent_floor(&s.peers),
            stored_floor: 0,
            local: s.local,
            config: s.config,
            peers: s.peers,
            allow: s.allow,
            deny: s.deny,
            nonces: s.nonces,
            relayed: RelayBuckets::default(),
            reaped_floor_ms: s.reaped_floor_ms,
            withdrawn: Withdrawn::default(),
        }
    }
}

impl TrustMachine {
    pub fn new(local: NodeId, config: Config) -> Self {
        TrustMachine {
            local,
            config,
            peers: BTreeMap::new(),
            allow: BTreeMap::new(),
            deny: BTreeSet::new(),
            nonces: NonceCache::default(),
            index: RecordIndex::default(),
            sent_floor: 0,
            stored_floor: 0,
            relayed: RelayBuckets::default(),
            reaped_floor_ms: 0,
            withdrawn: Withdrawn::default(),
        }
    }

    /// Rebuilds a machine from what the node stored. The replay cache starts
    /// empty: the persisted high-water marks refuse replays across a restart.
    pub fn restore(
        local: NodeId,
        config: Config,
        peers: impl IntoIterator<Item = PeerRecord>,
        allow: impl IntoIterator<Item = (NodeId, AllowEntry)>,
        deny: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        let mut m = TrustMachine::new(local, config);
        // A record for ourselves can only come from a damaged store; drop it.
        m.peers = peers
            .into_iter()
            .filter(|r| r.id != local)
            .map(|r| (r.id, r))
            .collect();
        m.index = RecordIndex::build(&m.peers);
        m.sent_floor = sent_floor(&m.peers);
        m.allow = allow.into_iter().collect();
        m.deny = deny.into_iter().collect();
        m
    }

    /// Raises the floor of our timestamps to what the store kept of removed records
    /// ([`StoreWrite::SentFloor`]); call after [`TrustMachine::restore`].
    pub fn with_sent_floor(mut self, floor_ms: u64) -> Self {
        self.sent_floor = self.sent_floor.max(floor_ms);
        self.stored_floor = self.stored_floor.max(floor_ms);
        self
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Our record of `id`; `None` for a peer we have none of, or forgot.
    pub fn peer(&self, id: &NodeId) -> Option<&PeerRecord> {
        self.peers
            .get(id)
            .filter(|r| r.state != TrustState::Forgotten)
    }

    /// All records, ordered by id; forgotten ones are left out.
    pub fn peers(&self) -> impl Iterator<Item = &PeerRecord> {
        self.records().filter(|r| r.state != TrustState::Forgotten)
    }

    /// Our record of `id`, forgotten or not: for reaching the peer (a forgotten
    /// record may still owe it a word), never for showing or deciding.
    pub fn record(&self, id: &NodeId) -> Option<&PeerRecord> {
        self.peers.get(id)
    }

    /// Every record, forgotten ones too, ordered by id: what the store holds.
    pub fn records(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values()
    }

    /// Whether `id` is trusted at `now_ms`; false past an expiry even before a tick.
    pub fn is_trusted(&self, id: &NodeId, now_ms: u64) -> bool {
        self.peers.get(id).is_some_and(|r| r.is_trusted(now_ms))
    }

    pub fn allowlist(&self) -> impl Iterator<Item = (&NodeId, &AllowEntry)> {
        self.allow.iter()
    }

    pub fn denylist(&self) -> impl Iterator<Item = &NodeId> {
        self.deny.iter()
    }

    /// Number of incoming requests waiting for a decision.
    pub fn pending_incoming(&self) -> usize {
        self.index.len()
    }

    /// Number of remembered (sender, nonce) pairs.
    pub fn nonce_cache_len(&self) -> usize {
        self.nonces.len()
    }

    /// Number of declined records that may be reaped (see [`Config::max_declined`]).
    pub fn declined_records(&self) -> usize {
        self.index.declined_len(self.reap().rejected)
    }

    /// How declined records are reaped now. Records we rejected are kept while
    /// auto-approve is on: there the record is what stands between the peer and
    /// trust (`policy_for`), and no stranger can make such records then (their
    /// requests are approved, not left for us to reject). An allowlist entry older
    /// than our reject cannot exist (the entry approves a waiting request), and a
    /// newer one approves them with or without the record.
    fn reap(&self) -> Reap {
        Reap {
            after_ms: self.config.declined_reap_after_ms(),
            rejected: !self.config.auto_approve,
        }
    }

    /// When the next [`Input::Tick`] is due: the earliest pending expiry, trust
    /// expiry, declined-record reaping or nonce reaping. `None` when nothing is
    /// scheduled.
    pub fn next_deadline(&self) -> Option<u64> {
        self.index
            .next_deadline(self.config.pending_ttl_ms, self.reap())
            .into_iter()
            .chain(self.nonces.next_expiry(self.config.nonce_ttl_ms()))
            .min()
    }

    /// Processes one input. `key` must be the local node's key; `rng` supplies
    /// nonces. See [`Output`] for what the caller must do with the result.
    pub fn handle<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        input: Input,
        key: &NodeKey,
        rng: &mut R,
    ) -> Output {
        debug_assert_eq!(key.node_id(), self.local, "handle() needs the local key");
        let seen = match &input {
            Input::Envelope { envelope, .. } => {
                Some((envelope.body.from, envelope.body.timestamp_ms))
            }
            _ => None,
        };
        let mut cx = Cx {
            now: now_ms,
            seen,
            key,
            rng,
            out: Output::new(Reply::None),
        };
        match input {
            Input::Envelope {
                envelope,
                transport_peer,
                source,
                via_relay,
            } => {
                let status = self.on_envelope(&mut cx, envelope, transport_peer, source, via_relay);
                if !matches!(status, AckStatus::Refused(_)) {
                    self.bound_declined(&mut cx);
                }
                cx.out.reply = Reply::Ack(Ack { status });
            }
            Input::Command(cmd) => {
                cx.out.reply = match self.on_command(&mut cx, cmd) {
                    Ok(()) => {
                        self.bound_declined(&mut cx);
                        Reply::Done
                    }
                    Err(e) => {
                        debug_assert!(cx.out.writes.is_empty() && cx.out.send.is_empty());
                        Reply::Failed(e)
                    }
                };
            }
            Input::Tick => {
                self.on_tick(&mut cx);
                self.bound_declined(&mut cx);
            }
        }
        debug_assert_eq!(
            self.index,
            RecordIndex::build(&self.peers),
            "a record changed without put_peer/remove_peer"
        );
        cx.out
    }

    // ----- output helpers --------------------------------------------------

    /// Signs and queues a message to `to`, whose record must exist: a fresh
    /// nonce, and a timestamp strictly above the last one we sent them.
    fn send<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        to: NodeId,
        kind: Kind,
    ) {
        let rec = self.peers.get_mut(&to).expect("sending needs a record");
        let mut kind = kind;
        if let Kind::AcceptOf { seen_ms } = &mut kind {
            // What of theirs we have seen, including the envelope being handled
            // (its mark advances only once it is applied).
            *seen_ms = rec
                .high_water_ms
                .max(cx.seen.filter(|(id, _)| *id == to).map_or(0, |(_, ts)| ts));
        }
        let timestamp_ms = next_timestamp(rec, self.sent_floor, cx.now);
        rec.last_sent_ms = timestamp_ms;
        self.sent_floor = self.sent_floor.max(timestamp_ms);
        if timestamp_ms > cx.now.saturating_add(CLOCK_BEHIND_MS) {
            // Our clock went back: say so, and what we did (kept timestamps rising).
            cx.event(
                to,
                EventKind::ClockBehind {
                    behind_ms: timestamp_ms - cx.now,
                },
            );
        }
        let mut nonce = [0u8; 16];
        cx.rng.fill_bytes(&mut nonce);
        let body = Body {
            kind,
            from: self.local,
            to,
            nonce,
            timestamp_ms,
        };
        cx.out.send.push(Envelope::sign(body, cx.key));
    }

    /// Writes the record's current state (replacing an earlier write of it).
    fn put_peer<R: ?Sized>(&mut self, cx: &mut Cx<'_, R>, id: NodeId) {
        cx.unwrite_peer(&id);
        self.index.update(id, self.peers.get(&id));
        if self
            .peers
            .get(&id)
            .is_none_or(|r| r.state != TrustState::IncomingPending)
        {
            self.relayed.set(id, None);
        }
        if let Some(rec) = self.peers.get(&id) {
            cx.out.writes.push(StoreWrite::Peer(rec.clone()));
        }
    }

    fn remove_peer<R: ?Sized>(&mut self, cx: &mut Cx<'_, R>, id: NodeId) {
        let last_sent_ms = self.peers.remove(&id).map_or(0, |r| r.last_sent_ms);
        self.index.update(id, None);
        self.relayed.set(id, None);
        cx.unwrite_peer(&id);
        cx.out.writes.push(StoreWrite::RemovePeer(id));
        if last_sent_ms > self.stored_floor {
            // The peer remembers our timestamps; a record made for it again, even
            // after a restart, must start above them.
            self.stored_floor = last_sent_ms;
            cx.out.writes.push(StoreWrite::SentFloor(last_sent_ms));
        }
    }
}

/// What became of a valid envelope.
enum Applied {
    /// Acted on: remember its nonce and advance the sender's high-water mark.
    Yes(AckStatus),
    /// Dropped quietly (a denied peer): nothing at all changes.
    Dropped(AckStatus),
    /// A repeat of a request still waiting: its mark advances, but its nonce
    /// takes no replay-cache slot, and its writes may wait for a later commit.
    Repeat(AckStatus),
}

/// Our side consents and trust holds.
fn grant(rec: &mut PeerRecord, now: u64, by: Decider, expires_at_ms: Option<u64>) {
    rec.state = TrustState::Trusted;
    rec.since_ms = now;
    rec.decided_by = Some(by);
    rec.expires_at_ms = expires_at_ms;
    rec.reason = None;
    // An accept of theirs answers our request: the consent stays what it was.
    if by != Decider::Peer {
        rec.consent = Some(Consent::Approved { by, at_ms: now });
    }
}

/// Our side says no (reject or revoke).
fn decline(rec: &mut PeerRecord, now: u64, state: TrustState, reason: String) {
    rec.state = state;
    rec.since_ms = now;
    rec.decided_by = Some(Decider::Operator);
    rec.expires_at_ms = None;
    rec.reason = Some(reason);
    rec.consent = None;
}

/// The timestamp of our next envelope to `rec`'s peer: strictly above what we sent
/// it before; a new record starts above everything we ever sent (`sent_floor`: it
/// may be a peer we forgot, which remembers us).
fn next_timestamp(rec: &PeerRecord, sent_floor: u64, now: u64) -> u64 {
    let floor = if rec.last_sent_ms == 0 {
        sent_floor
    } else {
        rec.last_sent_ms
    };
    now.max(floor.saturating_add(1))
}

fn sent_floor(peers: &BTreeMap<NodeId, PeerRecord>) -> u64 {
    peers.values().map(|r| r.last_sent_ms).max().unwrap_or(0)
}
