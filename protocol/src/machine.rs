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

mod index;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use kith_keys::{NodeId, NodeKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::replay::NonceCache;
use crate::validate::{Refusal, TextError, check_envelope, check_text};
use crate::wire::{Ack, AckStatus, Body, Envelope, Kind, MAX_TEXT_CHARS};

mod consent;
pub use consent::Consent;

use self::index::{Reap, RecordIndex, RelayBuckets, SourceNet};

pub use crate::validate::DEFAULT_SKEW_MS;
/// Default lifetime of an incoming request nobody decided on: seven days.
pub const DEFAULT_PENDING_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// How far our clock may lag the last timestamp we sent a peer before the node
/// says so (a burst of sends in one millisecond raises timestamps a little).
pub const CLOCK_BEHIND_MS: u64 = 1_000;

/// The accept we send; `send` fills in what of the peer's we have seen.
const ACCEPT: Kind = Kind::AcceptOf { seen_ms: 0 };
/// The reason a withdrawn request of ours (`cancel`, `ignore`) carries to the peer.
pub const WITHDRAWN_REASON: &str = "request withdrawn";
/// Default time a declined record is kept after its last word: thirty days.
pub const DEFAULT_DECLINED_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Longest local name for a peer, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Tunables of the trust machine. Everything has a sensible [`Default`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Largest accepted difference between a sender's timestamp and our clock.
    pub skew_ms: u64,
    /// How long an incoming request waits for a decision before it is dropped.
    pub pending_ttl_ms: u64,
    /// Most incoming requests pending at once; a new one evicts the oldest.
    pub max_pending_total: usize,
    /// Most incoming requests pending from one source network (an IPv4 address
    /// or an IPv6 /64); more are refused with [`Refusal::PendingFull`].
    pub max_pending_per_source: usize,
    /// Most incoming requests pending that arrived through one relay (which
    /// hides their source address); more are refused with [`Refusal::PendingFull`].
    pub max_pending_per_relay: usize,
    /// How long a declined record (one we rejected; one whose peer rejected or
    /// revoked with no request of ours standing) is kept after its last word
    /// before it is reaped. Never less than the skew window plus 1 ms.
    pub declined_ttl_ms: u64,
    /// Most declined records kept at once; past it the oldest are reaped early.
    pub max_declined: usize,
    /// Most (sender, nonce) pairs remembered for replay detection.
    pub nonce_cache_capacity: usize,
    /// Trust on first use: approve requests from peers we never decided about.
    pub auto_approve: bool,
    /// TEST-ONLY deliberate bug: skip the replay checks (the nonce cache and
    /// the per-peer high-water mark) when validating an envelope. It exists so
    /// the simulator's tests can show that a broken rule is caught by an
    /// invariant. Never set it anywhere else; it is off by default, and off
    /// when missing from a serialized config.
    #[doc(hidden)]
    #[serde(default)]
    pub fault_skip_replay_check: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            skew_ms: DEFAULT_SKEW_MS,
            pending_ttl_ms: DEFAULT_PENDING_TTL_MS,
            max_pending_total: 1024,
            max_pending_per_source: 16,
            max_pending_per_relay: 256,
            declined_ttl_ms: DEFAULT_DECLINED_TTL_MS,
            max_declined: 4096,
            nonce_cache_capacity: 16 * 1024,
            auto_approve: false,
            fault_skip_replay_check: false,
        }
    }
}

impl Config {
    /// How long a nonce is remembered: twice the skew window, after which the
    /// skew check alone refuses the envelope.
    pub fn nonce_ttl_ms(&self) -> u64 {
        self.skew_ms.saturating_mul(2)
    }

    /// How long after its last word a declined record is reaped: the TTL, but never
    /// before every envelope its high-water mark refuses is outside the skew window.
    pub fn declined_reap_after_ms(&self) -> u64 {
        self.declined_ttl_ms.max(self.skew_ms.saturating_add(1))
    }
}

/// Where a relationship with one peer stands, from our side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TrustState {
    /// We asked them; no answer yet.
    OutgoingPending,
    /// They asked us; waiting for our operator (or expiry).
    IncomingPending,
    /// Both sides consent. Check [`PeerRecord::is_trusted`] for expiry.
    Trusted,
    /// We rejected their request.
    Rejected,
    /// They rejected ours (or declined after the fact).
    RejectedByPeer,
    /// We revoked trust.
    Revoked,
    /// They revoked trust.
    RevokedByPeer,
    /// Our approval had an expiry and it passed; fails closed until a new handshake.
    Expired,
}

impl TrustState {
    /// Text form, as shown in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustState::OutgoingPending => "outgoing-pending",
            TrustState::IncomingPending => "incoming-pending",
            TrustState::Trusted => "trusted",
            TrustState::Rejected => "rejected",
            TrustState::RejectedByPeer => "rejected-by-peer",
            TrustState::Revoked => "revoked",
            TrustState::RevokedByPeer => "revoked-by-peer",
            TrustState::Expired => "expired",
        }
    }

    /// What an ack says to a peer about a relationship in this state.
    pub fn ack_status(self) -> AckStatus {
        match self {
            TrustState::OutgoingPending | TrustState::IncomingPending => AckStatus::Pending,
            TrustState::Trusted => AckStatus::Trusted,
            TrustState::Rejected | TrustState::RejectedByPeer => AckStatus::Rejected,
            TrustState::Revoked | TrustState::RevokedByPeer => AckStatus::Revoked,
            TrustState::Expired => AckStatus::Expired,
        }
    }
}

impl fmt::Display for TrustState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made the decision that put a record in its current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decider {
    /// Our operator, by command.
    Operator,
    /// Our allowlist.
    Allowlist,
    /// Our auto-approve (trust on first use) policy.
    AutoApprove,
    /// Crossed requests: both sides asked.
    Mutual,
    /// The peer (its accept, reject or revoke).
    Peer,
}

impl fmt::Display for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decider::Operator => "operator",
            Decider::Allowlist => "allowlist",
            Decider::AutoApprove => "auto-approve",
            Decider::Mutual => "mutual",
            Decider::Peer => "peer",
        })
    }
}

/// Everything we know about one peer. Stored by the node, keyed by `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub id: NodeId,
    pub state: TrustState,
    /// When the record entered `state`.
    pub since_ms: u64,
    /// Local, operator-given name.
    pub name: Option<String>,
    /// Local, operator-given note.
    pub note: Option<String>,
    /// Their justification (incoming) or ours (outgoing), raw: escape to display.
    pub justification: Option<String>,
    /// Reason given with the last reject or revoke, ours or theirs, raw.
    pub reason: Option<String>,
    /// How we reach them, as given to `Command::Request`.
    pub address: Option<SocketAddr>,
    /// Where their last request came from on a direct connection (`None` via a
    /// relay); pending requests are bounded per source network.
    pub source: Option<SocketAddr>,
    /// Our approval's expiry; past it the record fails closed.
    pub expires_at_ms: Option<u64>,
    /// Timestamp of the last envelope applied from them; anything not newer is refused.
    pub high_water_ms: u64,
    /// Our last timestamp to them, so ours stay strictly increasing.
    pub last_sent_ms: u64,
    pub decided_by: Option<Decider>,
    /// Where our side's consent to trust comes from (`None`: we do not consent):
    /// a request of ours that stands, or an approval. Withdrawn by our reject,
    /// revoke, cancel or an expiry, and spent by their reject or revoke. An
    /// `Accept` from them is honoured only while a request of ours stands.
    pub consent: Option<Consent>,
}

impl PeerRecord {
    /// A blank record in `state`, entered at `now_ms`.
    pub fn new(id: NodeId, state: TrustState, now_ms: u64) -> Self {
        PeerRecord {
            id,
            state,
            since_ms: now_ms,
            name: None,
            note: None,
            justification: None,
            reason: None,
            address: None,
            source: None,
            expires_at_ms: None,
            high_water_ms: 0,
            last_sent_ms: 0,
            decided_by: None,
            consent: None,
        }
    }

    /// Trusted and not past its expiry. Fails closed: at `expires_at_ms` the
    /// peer is no longer trusted, whether or not a tick has run.
    pub fn is_trusted(&self, now_ms: u64) -> bool {
        self.state == TrustState::Trusted && !self.is_expired(now_ms)
    }

    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }

    /// Trusted on paper but past expiry: treated as `Expired` by every decision.
    fn lapsed(&self, now_ms: u64) -> bool {
        self.state == TrustState::Trusted && self.is_expired(now_ms)
    }
}

/// An allowlist entry: requests from this peer are approved at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowEntry {
    pub name: Option<String>,
    pub added_ms: u64,
}

/// What an audit entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    /// We asked the peer for trust (detail: our justification).
    RequestSent,
    /// We granted trust (detail: their justification).
    Approved {
        by: Decider,
    },
    /// We rejected their request (detail: reason).
    Rejected,
    /// We revoked trust (detail: reason).
    Revoked,
    AcceptedByPeer,
    /// Detail: their reason.
    RejectedByPeer,
    /// Detail: their reason.
    RevokedByPeer,
    TrustExpired,
    PendingExpired,
    PendingEvicted,
    Dismissed,
    Cancelled,
    Forgotten,
    Ignored,
    Unignored,
    /// Detail: the name given.
    Allowed,
    Disallowed,
    AutoApproveSet(bool),
    /// This data dir became a new node (`kith fork`); detail: the parent's id and index.
    /// Variants are stored by position: append only.
    Forked,
    /// This node's data dir was confirmed at a new machine or path (`kith adopt`).
    Adopted,
    /// The peer's time-limited approval of us expired (it told us).
    ExpiredByPeer,
}

/// One line of the append-only audit log of trust decisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// `None` for decisions about policy rather than one peer.
    pub peer: Option<NodeId>,
    pub action: AuditAction,
    pub detail: Option<String>,
}

/// Something an operator may want to hear about (`kith events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    /// The peer concerned. For [`EventKind::Refused`] this is the *claimed*
    /// sender, which may not be a valid key.
    pub peer: NodeId,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    RequestReceived {
        justification: String,
        source: Option<SocketAddr>,
    },
    RequestSent,
    AutoApproved {
        by: Decider,
    },
    Approved,
    Rejected,
    RejectedByPeer {
        reason: String,
    },
    AcceptedByPeer,
    MutualTrust,
    Revoked,
    RevokedByPeer {
        reason: String,
    },
    TrustExpired,
    PendingExpired,
    PendingEvicted,
    /// A request from a denied peer was dropped.
    Ignored,
    Dismissed,
    Cancelled,
    Forgotten,
    /// An envelope was refused (for logs; nothing changed).
    Refused {
        refusal: Refusal,
    },
    /// The peer's time-limited approval of us expired: we are no longer trusted
    /// there, and our request stands again for it to renew (or for us to resend).
    ExpiredByPeer,
    /// Our clock is behind the last timestamp we sent this peer (it went back):
    /// the envelope was sent `behind_ms` ahead of our clock, so that the peer
    /// does not refuse it as stale or replayed.
    ClockBehind {
        behind_ms: u64,
    },
}

/// A durable change. The node applies all of an output's writes in one
/// transaction before sending anything or replying.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreWrite {
    /// Insert or replace this record.
    Peer(PeerRecord),
    RemovePeer(NodeId),
    Allow(NodeId, AllowEntry),
    Disallow(NodeId),
    Deny(NodeId),
    Undeny(NodeId),
    /// The auto-approve policy changed.
    AutoApprove(bool),
    Audit(AuditEntry),
}

/// One thing for the machine to process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// An envelope arrived.
    Envelope {
        envelope: Envelope,
        /// The TLS-authenticated sender on a direct connection; `None` via a relay.
        transport_peer: Option<NodeId>,
        /// The remote address on a direct connection; `None` via a relay.
        source: Option<SocketAddr>,
        /// The relay that delivered it (its pending requests are bounded per relay);
        /// `None` on a direct connection.
        via_relay: Option<NodeId>,
    },
    Command(Command),
    /// Time passed: expire, evict and reap what is due. Call at [`TrustMachine::next_deadline`].
    Tick,
}

/// What an operator (or a policy in the node) asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Ask `to` for trust. On a peer whose request is waiting for us, this is
    /// an approval (both asked: mutual trust). On an outgoing request, re-sends it.
    Request {
        to: NodeId,
        justification: String,
        address: Option<SocketAddr>,
    },
    /// Approve an incoming request, optionally naming the peer and limiting the trust.
    Approve {
        peer: NodeId,
        name: Option<String>,
        note: Option<String>,
        expires_at_ms: Option<u64>,
    },
    /// Decline an incoming request; the peer is told.
    Reject {
        peer: NodeId,
        reason: String,
    },
    /// End trust (also an expired one); the peer is told.
    Revoke {
        peer: NodeId,
        reason: String,
    },
    /// Drop an incoming request silently.
    Dismiss {
        peer: NodeId,
    },
    /// Withdraw our request (local only: the peer is not told). An outgoing
    /// pending request is dropped with its record; a request the peer declined
    /// stops standing (a later accept from them is then refused).
    Cancel {
        peer: NodeId,
    },
    /// Put on the deny list: requests are dropped quietly. Drops pending requests either way.
    Ignore {
        peer: NodeId,
    },
    Unignore {
        peer: NodeId,
    },
    /// Put on the allowlist; approves a request already waiting.
    Allow {
        peer: NodeId,
        name: Option<String>,
    },
    Disallow {
        peer: NodeId,
    },
    /// Change local name and note. `None` leaves a field as it is; `Some("")` clears it.
    Rename {
        peer: NodeId,
        name: Option<String>,
        note: Option<String>,
    },
    /// Drop all local record of a peer (no message is sent).
    Forget {
        peer: NodeId,
    },
    SetAutoApprove(bool),
    /// Re-sign and re-send the message our current state implies (request,
    /// accept, reject or revoke), for a peer that has not acknowledged it —
    /// an envelope older than the skew window would be refused.
    Resend {
        peer: NodeId,
    },
}

/// The answer to whoever gave the input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// For an envelope: send this back on its stream.
    Ack(Ack),
    /// The command succeeded.
    Done,
    /// The command failed and changed nothing.
    Failed(CommandError),
    /// For a tick.
    None,
}

/// Everything that follows from one input. Apply `writes` (one transaction),
/// then deliver `send` (each to `envelope.body.to`), then act on `reply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub reply: Reply,
    pub send: Vec<Envelope>,
    pub events: Vec<Event>,
    pub writes: Vec<StoreWrite>,
}

impl Output {
    fn new(reply: Reply) -> Self {
        Output {
            reply,
            send: Vec::new(),
            events: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// The ack, if this was the output of an envelope.
    pub fn ack(&self) -> Option<&AckStatus> {
        match &self.reply {
            Reply::Ack(ack) => Some(&ack.status),
            _ => None,
        }
    }

    /// The refusal, if the envelope was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self.ack() {
            Some(AckStatus::Refused(r)) => Some(r),
            _ => None,
        }
    }
}

/// Which operator-supplied text a [`CommandError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextField {
    Justification,
    Reason,
    Name,
    Note,
}

impl fmt::Display for TextField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextField::Justification => "justification",
            TextField::Reason => "reason",
            TextField::Name => "name",
            TextField::Note => "note",
        })
    }
}

/// Why a command was refused. A failed command changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("no record of peer {0}")]
    UnknownPeer(NodeId),
    #[error(
        "{0} has no request waiting for a decision (it may ask again, or ask it with `kith request`)"
    )]
    NotPending(NodeId),
    #[error("there is no request of ours to {0} to withdraw")]
    NoOutgoingRequest(NodeId),
    #[error("{0} is not trusted")]
    NotTrusted(NodeId),
    #[error("{0} is already trusted (end it with `kith revoke`)")]
    AlreadyTrusted(NodeId),
    #[error("that is this node's own id")]
    SelfPeer,
    #[error("{0} is on the deny list; unignore it first")]
    Ignored(NodeId),
    #[error("{0} is not on the deny list")]
    NotIgnored(NodeId),
    #[error("{0} is not on the allowlist")]
    NotAllowed(NodeId),
    #[error("the {field} is {chars} characters long; at most {max} are allowed")]
    TextTooLong {
        field: TextField,
        chars: usize,
        max: usize,
    },
    #[error("the {field} contains NUL or is mostly control characters")]
    TextNotPrintable { field: TextField },
    #[error("the expiry time is not in the future")]
    ExpiryInPast { expires_at_ms: u64, now_ms: u64 },
    #[error("nothing to resend to {0} in its current state")]
    NothingToResend(NodeId),
    #[error("{0} is trusted: end it with `kith revoke` first, so that it is told")]
    ForgetTrusted(NodeId),
}

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
    /// Which relay each relayed pending request came through; not stored.
    #[serde(skip_serializing)]
    relayed: RelayBuckets,
    /// The newest high-water mark of a record reaped early by the
    /// [`Config::max_declined`] bound (never above the time it was reaped): an
    /// envelope from a sender we hold no record of is refused as stale at or
    /// below it. In memory only, like the nonce cache.
    reaped_floor_ms: u64,
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
            local: s.local,
            config: s.config,
            peers: s.peers,
            allow: s.allow,
            deny: s.deny,
            nonces: s.nonces,
            relayed: RelayBuckets::default(),
            reaped_floor_ms: s.reaped_floor_ms,
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
            relayed: RelayBuckets::default(),
            reaped_floor_ms: 0,
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

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn peer(&self, id: &NodeId) -> Option<&PeerRecord> {
        self.peers.get(id)
    }

    /// All records, ordered by id.
    pub fn peers(&self) -> impl Iterator<Item = &PeerRecord> {
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

    // ----- envelopes -------------------------------------------------------

    fn on_envelope<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        envelope: Envelope,
        transport_peer: Option<NodeId>,
        source: Option<SocketAddr>,
        via_relay: Option<NodeId>,
    ) -> AckStatus {
        let from = envelope.body.from;
        let result = self
            .validate(cx.now, &envelope, transport_peer.as_ref())
            .and_then(|()| self.dispatch(cx, &envelope, source, via_relay));
        match result {
            Ok(Applied::Yes(status)) => {
                self.nonces.insert(
                    from,
                    envelope.body.nonce,
                    cx.now,
                    self.config.nonce_cache_capacity,
                );
                if let Some(rec) = self.peers.get_mut(&from) {
                    rec.high_water_ms = rec.high_water_ms.max(envelope.body.timestamp_ms);
                    self.put_peer(cx, from);
                }
                status
            }
            Ok(Applied::Dropped(status)) => status,
            Err(refusal) => {
                debug_assert!(cx.out.writes.is_empty() && cx.out.send.is_empty());
                cx.event(
                    from,
                    EventKind::Refused {
                        refusal: refusal.clone(),
                    },
                );
                AckStatus::Refused(refusal)
            }
        }
    }

    /// Every rule, stateless then stateful, in the normative order. Pure.
    fn validate(
        &self,
        now_ms: u64,
        envelope: &Envelope,
        transport_peer: Option<&NodeId>,
    ) -> Result<(), Refusal> {
        check_envelope(
            envelope,
            &self.local,
            now_ms,
            self.config.skew_ms,
            transport_peer,
        )?;
        let body = &envelope.body;
        if self.config.fault_skip_replay_check {
            // The test-only deliberate bug: see `Config::fault_skip_replay_check`.
            return Ok(());
        }
        if self.nonces.contains(&body.from, &body.nonce) {
            return Err(Refusal::ReplayedNonce);
        }
        let high_water_ms = match self.peers.get(&body.from) {
            Some(rec) => rec.high_water_ms,
            // The mark of a record reaped early may have been this sender's.
            None => self.reaped_floor_ms,
        };
        if body.timestamp_ms <= high_water_ms {
            return Err(Refusal::Stale);
        }
        Ok(())
    }

    /// Acts on a valid envelope. Must return every `Err` before changing anything.
    fn dispatch<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        envelope: &Envelope,
        source: Option<SocketAddr>,
        via_relay: Option<NodeId>,
    ) -> Result<Applied, Refusal> {
        let from = envelope.body.from;
        match &envelope.body.kind {
            Kind::Request { justification } => {
                self.on_request(cx, from, justification.clone(), source, via_relay)
            }
            // An old node's accept names nothing: honoured as before (see on_accept).
            Kind::Accept => self.on_accept(cx, from, u64::MAX),
            Kind::AcceptOf { seen_ms } => self.on_accept(cx, from, *seen_ms),
            Kind::Reject { reason } => self.on_decline(cx, from, reason.clone(), false),
            Kind::Revoke { reason } => self.on_decline(cx, from, reason.clone(), true),
            Kind::Expire => self.on_expire(cx, from),
        }
    }

    fn on_request<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: NodeId,
        justification: String,
        source: Option<SocketAddr>,
        via_relay: Option<NodeId>,
    ) -> Result<Applied, Refusal> {
        if self.deny.contains(&from) {
            // Quietly: the same answer as a request still waiting, and nothing
            // stored, so a denied peer learns nothing and costs nothing.
            cx.event(from, EventKind::Ignored);
            return Ok(Applied::Dropped(AckStatus::Pending));
        }
        let now = cx.now;
        let (state, lapsed) = match self.peers.get(&from) {
            Some(r) if r.lapsed(now) => (Some(TrustState::Expired), true),
            Some(r) => (Some(r.state), false),
            None => (None, false),
        };
        match state {
            Some(TrustState::Trusted) => {
                // They may have lost our accept: say it again. No state change.
                self.send(cx, from, ACCEPT);
                Ok(Applied::Yes(AckStatus::Trusted))
            }
            Some(TrustState::OutgoingPending) if self.peers[&from].consent.is_some() => {
                // Crossed requests: both asked, so both consent. A request of ours
                // they declined no longer stands (their decline spent it), so this
                // arm is only for a request still waiting for their answer.
                let rec = self.peers.get_mut(&from).expect("record exists");
                // A consent that was an approval keeps its expiry (an ask has none).
                let expires_at_ms = rec.expires_at_ms;
                grant(rec, now, Decider::Mutual, expires_at_ms);
                self.send(cx, from, ACCEPT);
                cx.event(from, EventKind::MutualTrust);
                cx.audit(
                    Some(from),
                    AuditAction::Approved {
                        by: Decider::Mutual,
                    },
                    Some(justification),
                );
                Ok(Applied::Yes(AckStatus::Trusted))
            }
            Some(TrustState::IncomingPending) => {
                // Asking again: keep the original time (the TTL is not
                // extended by repeating), take the latest words.
                let rec = self.peers.get_mut(&from).expect("record exists");
                rec.justification = Some(justification);
                if source.is_some() {
                    rec.source = source;
                }
                Ok(Applied::Yes(AckStatus::Pending))
            }
            _ => {
                if let Some(by) = self.policy_for(&from, state) {
                    if lapsed {
                        self.expire_trust(cx, from);
                    }
                    let allow_name = self.allow.get(&from).and_then(|e| e.name.clone());
                    let rec = self
                        .peers
                        .entry(from)
                        .or_insert_with(|| PeerRecord::new(from, TrustState::Trusted, now));
                    grant(rec, now, by, None);
                    rec.justification = Some(justification.clone());
                    if source.is_some() {
                        rec.source = source;
                    }
                    if rec.name.is_none() {
                        rec.name = allow_name;
                    }
                    self.send(cx, from, ACCEPT);
                    cx.event(from, EventKind::AutoApproved { by });
                    cx.audit(
                        Some(from),
                        AuditAction::Approved { by },
                        Some(justification),
                    );
                    return Ok(Applied::Yes(AckStatus::Trusted));
                }
                // A new pending request: check every bound before touching anything.
                // A relayed one has no source address; it counts against its relay.
                if let Some(net) = source.as_ref().map(SourceNet::of) {
                    if self.index.count_from(net) >= self.config.max_pending_per_source {
                        return Err(Refusal::PendingFull);
                    }
                }
                let relay = via_relay.filter(|_| source.is_none());
                if let Some(relay) = &relay {
                    if self.relayed.count(relay) >= self.config.max_pending_per_relay {
                        return Err(Refusal::PendingFull);
                    }
                }
                if self.config.max_pending_total == 0 {
                    return Err(Refusal::PendingFull);
                }
                if lapsed {
                    self.expire_trust(cx, from);
                }
                while self.pending_incoming() >= self.config.max_pending_total {
                    let Some(oldest) = self.oldest_pending() else {
                        break;
                    };
                    self.remove_peer(cx, oldest);
                    cx.event(oldest, EventKind::PendingEvicted);
                    cx.audit(Some(oldest), AuditAction::PendingEvicted, None);
                }
                let rec = self
                    .peers
                    .entry(from)
                    .or_insert_with(|| PeerRecord::new(from, TrustState::IncomingPending, now));
                rec.state = TrustState::IncomingPending;
                rec.since_ms = now;
                rec.justification = Some(justification.clone());
                rec.source = source;
                rec.reason = None;
                rec.expires_at_ms = None;
                rec.decided_by = None;
                // Their asking is not our consent: our operator decides.
                rec.consent = None;
                self.relayed.set(from, relay);
                cx.event(
                    from,
                    EventKind::RequestReceived {
                        justification,
                        source,
                    },
                );
                Ok(Applied::Yes(AckStatus::Pending))
            }
        }
    }

    /// Which policy, if any, approves a request from `id` in `state` at once.
    ///
    /// Our own negative or time-limited decision (rejected, revoked, expired)
    /// stands against auto-approve, and against the allowlist unless the peer
    /// was allowlisted after that decision: the operator's latest word wins.
    fn policy_for(&self, id: &NodeId, state: Option<TrustState>) -> Option<Decider> {
        let own_decision_stands = matches!(
            state,
            Some(TrustState::Rejected | TrustState::Revoked | TrustState::Expired)
        );
        if let Some(entry) = self.allow.get(id) {
            let decided_at = self.peers.get(id).map_or(0, |r| r.since_ms);
            if !own_decision_stands || entry.added_ms > decided_at {
                return Some(Decider::Allowlist);
            }
        }
        if self.config.auto_approve && !own_decision_stands {
            return Some(Decider::AutoApprove);
        }
        None
    }

    fn oldest_pending(&self) -> Option<NodeId> {
        self.index.oldest()
    }

    /// `seen_ms`: the newest of our timestamps the accepter had applied when it
    /// sent this, so that an accept of an earlier request of ours (one we since
    /// revoked or withdrew before asking again) is not taken for an answer.
    fn on_accept<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: NodeId,
        seen_ms: u64,
    ) -> Result<Applied, Refusal> {
        let now = cx.now;
        let Some(rec) = self.peers.get_mut(&from) else {
            // No record, so no mark to advance: refuse, and create nothing.
            return Err(Refusal::Unsolicited);
        };
        if rec.lapsed(now) {
            return Ok(Applied::Yes(AckStatus::Expired));
        }
        match rec.state {
            // Crossed requests, or a renewed accept: nothing to change.
            TrustState::Trusted => Ok(Applied::Yes(AckStatus::Trusted)),
            TrustState::OutgoingPending
                if rec.consent.is_some_and(|c| consent::answers(c, seen_ms)) =>
            {
                // Their answer to a request of ours that still stands. A consent
                // that was an approval keeps its expiry: the peer's word cannot
                // extend what our operator granted (an ask has no expiry).
                let expires_at_ms = rec.expires_at_ms;
                grant(rec, now, Decider::Peer, expires_at_ms);
                cx.event(from, EventKind::AcceptedByPeer);
                cx.audit(Some(from), AuditAction::AcceptedByPeer, None);
                Ok(Applied::Yes(AckStatus::Trusted))
            }
            // Every accept that does not trust is still applied (the mark
            // advances), so nothing older from them can be applied after it.
            //
            // An accept of an earlier request of ours (one we since withdrew before
            // asking again): they trust us on that. Our current request is what
            // stands, so send it again; their answer to it is what counts.
            TrustState::OutgoingPending => {
                let justification = rec.justification.clone().unwrap_or_default();
                self.send(cx, from, Kind::Request { justification });
                Ok(Applied::Yes(AckStatus::Pending))
            }
            // They trust us, but no request of ours stands: their decline spent it
            // (and the accept crossed that), or they answered a request of ours
            // after asking us themselves. No trust here; tell them so, so that
            // both ends agree.
            TrustState::RejectedByPeer
            | TrustState::RevokedByPeer
            | TrustState::IncomingPending => Ok(Applied::Yes(self.refuse_spent_accept(cx, from))),
            // We said no (or our approval expired) and they trust us: our word
            // did not reach them before their accept (e.g. a withdrawal that
            // overtook the request it withdraws). Say it again; nothing changes here.
            TrustState::Rejected | TrustState::Revoked | TrustState::Expired => {
                let state = rec.state;
                let word = consent::standing_word(rec).expect("a decided state has a word");
                self.send(cx, from, word);
                Ok(Applied::Yes(state.ack_status()))
            }
        }
    }

    fn on_decline<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        from: NodeId,
        reason: String,
        revoke: bool,
    ) -> Result<Applied, Refusal> {
        let now = cx.now;
        let Some(rec) = self.peers.get_mut(&from) else {
            // No record: nothing to decline, and no record is created for it.
            return Err(Refusal::Unsolicited);
        };
        match rec.state {
            // We already said no ourselves; that stays the record.
            TrustState::Rejected | TrustState::Revoked => Ok(Applied::Yes(rec.state.ack_status())),
            _ => {
                rec.state = if revoke {
                    TrustState::RevokedByPeer
                } else {
                    TrustState::RejectedByPeer
                };
                rec.since_ms = now;
                rec.reason = Some(reason.clone());
                rec.decided_by = Some(Decider::Peer);
                // Their no spends our consent, whatever its origin: trust comes back
                // only through a new decision of ours (a request, an approval).
                rec.consent = None;
                rec.expires_at_ms = None;
                let status = rec.state.ack_status();
                if revoke {
                    cx.event(
                        from,
                        EventKind::RevokedByPeer {
                            reason: reason.clone(),
                        },
                    );
                    cx.audit(Some(from), AuditAction::RevokedByPeer, Some(reason));
                } else {
                    cx.event(
                        from,
                        EventKind::RejectedByPeer {
                            reason: reason.clone(),
                        },
                    );
                    cx.audit(Some(from), AuditAction::RejectedByPeer, Some(reason));
                }
                Ok(Applied::Yes(status))
            }
        }
    }

    // ----- commands --------------------------------------------------------

    fn on_command<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        cmd: Command,
    ) -> Result<(), CommandError> {
        let now = cx.now;
        if let Some(peer) = command_peer(&cmd) {
            if peer == self.local {
                return Err(CommandError::SelfPeer);
            }
        }
        match cmd {
            Command::Request {
                to,
                justification,
                address,
            } => {
                text(&justification, MAX_TEXT_CHARS, TextField::Justification)?;
                if self.deny.contains(&to) {
                    return Err(CommandError::Ignored(to));
                }
                let (state, lapsed) = match self.peers.get(&to) {
                    Some(r) if r.lapsed(now) => (Some(TrustState::Expired), true),
                    Some(r) => (Some(r.state), false),
                    None => (None, false),
                };
                match state {
                    Some(TrustState::Trusted) => Err(CommandError::AlreadyTrusted(to)),
                    Some(TrustState::IncomingPending) => {
                        // They already asked: asking back is consent on both sides.
                        let rec = self.peers.get_mut(&to).expect("record exists");
                        grant(rec, now, Decider::Mutual, None);
                        if address.is_some() {
                            rec.address = address;
                        }
                        self.send(cx, to, ACCEPT);
                        cx.event(to, EventKind::MutualTrust);
                        cx.audit(
                            Some(to),
                            AuditAction::Approved {
                                by: Decider::Mutual,
                            },
                            Some(justification),
                        );
                        self.put_peer(cx, to);
                        Ok(())
                    }
                    _ => {
                        if lapsed {
                            self.expire_trust(cx, to);
                        }
                        let rec = self.peers.entry(to).or_insert_with(|| {
                            PeerRecord::new(to, TrustState::OutgoingPending, now)
                        });
                        if rec.state != TrustState::OutgoingPending {
                            rec.state = TrustState::OutgoingPending;
                            rec.since_ms = now;
                        }
                        rec.justification = Some(justification.clone());
                        rec.reason = None;
                        rec.expires_at_ms = None;
                        rec.decided_by = Some(Decider::Operator);
                        // A request that already stands keeps its start: an accept
                        // of any of its envelopes answers it.
                        if !matches!(rec.consent, Some(Consent::Asked { .. })) {
                            // Our request's first envelope is timestamped above this.
                            rec.consent = Some(Consent::Asked {
                                at_ms: now.max(rec.last_sent_ms.saturating_add(1)),
                            });
                        }
                        if address.is_some() {
                            rec.address = address;
                        }
                        self.send(
                            cx,
                            to,
                            Kind::Request {
                                justification: justification.clone(),
                            },
                        );
                        cx.event(to, EventKind::RequestSent);
                        cx.audit(Some(to), AuditAction::RequestSent, Some(justification));
                        self.put_peer(cx, to);
                        Ok(())
                    }
                }
            }
            Command::Approve {
                peer,
                name,
                note,
                expires_at_ms,
            } => {
                opt_text(&name, MAX_NAME_CHARS, TextField::Name)?;
                opt_text(&note, MAX_TEXT_CHARS, TextField::Note)?;
                if let Some(e) = expires_at_ms {
                    if e <= now {
                        return Err(CommandError::ExpiryInPast {
                            expires_at_ms: e,
                            now_ms: now,
                        });
                    }
                }
                // An expired approval is renewed the same way: the peer's request
                // stood again since our expiry notice, so our accept answers it.
                let lapsed = self.peers.get(&peer).is_some_and(|r| r.lapsed(now));
                match self.peers.get(&peer).map(|r| r.state) {
                    Some(TrustState::Expired) => {}
                    Some(TrustState::Trusted) if lapsed => self.expire_trust(cx, peer),
                    _ => {
                        self.pending_incoming_mut(&peer)?;
                    }
                }
                let rec = self.peers.get_mut(&peer).expect("record exists");
                grant(rec, now, Decider::Operator, expires_at_ms);
                if name.is_some() {
                    rec.name = name;
                }
                if note.is_some() {
                    rec.note = note;
                }
                let detail = rec.justification.clone();
                self.send(cx, peer, ACCEPT);
                cx.event(peer, EventKind::Approved);
                cx.audit(
                    Some(peer),
                    AuditAction::Approved {
                        by: Decider::Operator,
                    },
                    detail,
                );
                self.put_peer(cx, peer);
                Ok(())
            }
            Command::Reject { peer, reason } => {
                text(&reason, MAX_TEXT_CHARS, TextField::Reason)?;
                let rec = self.pending_incoming_mut(&peer)?;
                decline(rec, now, TrustState::Rejected, reason.clone());
                self.send(
                    cx,
                    peer,
                    Kind::Reject {
                        reason: reason.clone(),
                    },
                );
                cx.event(peer, EventKind::Rejected);
                cx.audit(Some(peer), AuditAction::Rejected, Some(reason));
                self.put_peer(cx, peer);
                Ok(())
            }
            Command::Revoke { peer, reason } => {
                text(&reason, MAX_TEXT_CHARS, TextField::Reason)?;
                let rec = self
                    .peers
                    .get_mut(&peer)
                    .ok_or(CommandError::UnknownPeer(peer))?;
                if !matches!(rec.state, TrustState::Trusted | TrustState::Expired) {
                    return Err(CommandError::NotTrusted(peer));
                }
                decline(rec, now, TrustState::Revoked, reason.clone());
                self.send(
                    cx,
                    peer,
                    Kind::Revoke {
                        reason: reason.clone(),
                    },
                );
                cx.event(peer, EventKind::Revoked);
                cx.audit(Some(peer), AuditAction::Revoked, Some(reason));
                self.put_peer(cx, peer);
                Ok(())
            }
            Command::Dismiss { peer } => {
                self.pending_incoming_mut(&peer)?;
                self.remove_peer(cx, peer);
                cx.event(peer, EventKind::Dismissed);
                cx.audit(Some(peer), AuditAction::Dismissed, None);
                Ok(())
            }
            Command::Cancel { peer } => {
                match self.peers.get(&peer) {
                    Some(r) if r.state == TrustState::OutgoingPending => {
                        self.withdraw_request(cx, peer);
                    }
                    _ => return Err(CommandError::NoOutgoingRequest(peer)),
                }
                cx.event(peer, EventKind::Cancelled);
                cx.audit(Some(peer), AuditAction::Cancelled, None);
                Ok(())
            }
            Command::Ignore { peer } => {
                if self.is_trusted(&peer, now) {
                    return Err(CommandError::AlreadyTrusted(peer));
                }
                if self.deny.contains(&peer) {
                    return Ok(());
                }
                self.deny.insert(peer);
                cx.out.writes.push(StoreWrite::Deny(peer));
                if self.allow.remove(&peer).is_some() {
                    cx.out.writes.push(StoreWrite::Disallow(peer));
                }
                // Ignoring someone means wanting nothing from them either way:
                // their pending request goes quietly, and a request of ours is
                // withdrawn (they are told, as for `cancel`).
                match self.peers.get(&peer).map(|r| r.state) {
                    Some(TrustState::IncomingPending) => self.remove_peer(cx, peer),
                    Some(TrustState::OutgoingPending) => self.withdraw_request(cx, peer),
                    _ => {}
                }
                cx.audit(Some(peer), AuditAction::Ignored, None);
                Ok(())
            }
            Command::Unignore { peer } => {
                if !self.deny.remove(&peer) {
                    return Err(CommandError::NotIgnored(peer));
                }
                cx.out.writes.push(StoreWrite::Undeny(peer));
                cx.audit(Some(peer), AuditAction::Unignored, None);
                Ok(())
            }
            Command::Allow { peer, name } => {
                opt_text(&name, MAX_NAME_CHARS, TextField::Name)?;
                if self.deny.remove(&peer) {
                    cx.out.writes.push(StoreWrite::Undeny(peer));
                }
                let entry = AllowEntry {
                    name: name.clone(),
                    added_ms: now,
                };
                self.allow.insert(peer, entry.clone());
                cx.out.writes.push(StoreWrite::Allow(peer, entry));
                cx.audit(Some(peer), AuditAction::Allowed, name.clone());
                // A request already waiting is approved by the new entry.
                if let Some(rec) = self.peers.get_mut(&peer) {
                    if rec.state == TrustState::IncomingPending {
                        grant(rec, now, Decider::Allowlist, None);
                        if rec.name.is_none() {
                            rec.name = name;
                        }
                        let detail = rec.justification.clone();
                        self.send(cx, peer, ACCEPT);
                        cx.event(
                            peer,
                            EventKind::AutoApproved {
                                by: Decider::Allowlist,
                            },
                        );
                        cx.audit(
                            Some(peer),
                            AuditAction::Approved {
                                by: Decider::Allowlist,
                            },
                            detail,
                        );
                        self.put_peer(cx, peer);
                    }
                }
                Ok(())
            }
            Command::Disallow { peer } => {
                if self.allow.remove(&peer).is_none() {
                    return Err(CommandError::NotAllowed(peer));
                }
                cx.out.writes.push(StoreWrite::Disallow(peer));
                cx.audit(Some(peer), AuditAction::Disallowed, None);
                Ok(())
            }
            Command::Rename { peer, name, note } => {
                opt_text(&name, MAX_NAME_CHARS, TextField::Name)?;
                opt_text(&note, MAX_TEXT_CHARS, TextField::Note)?;
                let rec = self
                    .peers
                    .get_mut(&peer)
                    .ok_or(CommandError::UnknownPeer(peer))?;
                if let Some(name) = name {
                    rec.name = Some(name).filter(|s| !s.is_empty());
                }
                if let Some(note) = note {
                    rec.note = Some(note).filter(|s| !s.is_empty());
                }
                self.put_peer(cx, peer);
                Ok(())
            }
            Command::Forget { peer } => {
                // A peer that trusts us must be told first (revoke, re-sent until
                // acknowledged). A request of ours is withdrawn as the record goes:
                // the peer is told once, best effort (no record is left to re-send).
                match self.peers.get(&peer) {
                    None => return Err(CommandError::UnknownPeer(peer)),
                    Some(r) if r.is_trusted(now) => return Err(CommandError::ForgetTrusted(peer)),
                    Some(r) if r.state == TrustState::OutgoingPending => {
                        self.withdraw_request(cx, peer);
                    }
                    Some(_) => {}
                }
                self.remove_peer(cx, peer);
                cx.event(peer, EventKind::Forgotten);
                cx.audit(Some(peer), AuditAction::Forgotten, None);
                Ok(())
            }
            Command::SetAutoApprove(on) => {
                if self.config.auto_approve != on {
                    self.config.auto_approve = on;
                    cx.out.writes.push(StoreWrite::AutoApprove(on));
                    cx.audit(None, AuditAction::AutoApproveSet(on), None);
                }
                Ok(())
            }
            Command::Resend { peer } => {
                let rec = self
                    .peers
                    .get(&peer)
                    .ok_or(CommandError::UnknownPeer(peer))?;
                let kind = match rec.state {
                    TrustState::OutgoingPending => Kind::Request {
                        justification: rec.justification.clone().unwrap_or_default(),
                    },
                    TrustState::Trusted if !rec.lapsed(now) => ACCEPT,
                    _ => consent::standing_word(rec).ok_or(CommandError::NothingToResend(peer))?,
                };
                self.send(cx, peer, kind);
                self.put_peer(cx, peer);
                Ok(())
            }
        }
    }

    /// Our request to `peer` stops standing, and the peer is told: the record
    /// becomes `Revoked` (its message is re-sent until acknowledged), so a crossed
    /// accept or request of theirs can never build trust on it.
    fn withdraw_request<R: RngCore + CryptoRng + ?Sized>(
        &mut self,
        cx: &mut Cx<'_, R>,
        peer: NodeId,
    ) {
        let rec = self.peers.get_mut(&peer).expect("record exists");
        decline(
            rec,
            cx.now,
            TrustState::Revoked,
            WITHDRAWN_REASON.to_string(),
        );
        self.send(
            cx,
            peer,
            Kind::Revoke {
                reason: WITHDRAWN_REASON.to_string(),
            },
        );
        self.put_peer(cx, peer);
    }

    fn pending_incoming_mut(&mut self, peer: &NodeId) -> Result<&mut PeerRecord, CommandError> {
        match self.peers.get_mut(peer) {
            None => Err(CommandError::UnknownPeer(*peer)),
            Some(r) if r.state != TrustState::IncomingPending => {
                Err(CommandError::NotPending(*peer))
            }
            Some(r) => Ok(r),
        }
    }

    // ----- time ------------------------------------------------------------

    fn on_tick<R: RngCore + CryptoRng + ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let now = cx.now;
        let ttl = self.config.pending_ttl_ms;
        let stale: Vec<NodeId> = self
            .peers
            .values()
            .filter(|r| {
                r.state == TrustState::IncomingPending && r.since_ms.saturating_add(ttl) <= now
            })
            .map(|r| r.id)
            .collect();
        for id in stale {
            self.remove_peer(cx, id);
            cx.event(id, EventKind::PendingExpired);
            cx.audit(Some(id), AuditAction::PendingExpired, None);
        }
        let lapsed: Vec<NodeId> = self
            .peers
            .values()
            .filter(|r| r.lapsed(now))
            .map(|r| r.id)
            .collect();
        for id in lapsed {
            self.expire_trust(cx, id);
        }
        // Declined records whose last word is older than the reap time. Forgetting
        // one changes no decision: with or without it, an accept, reject or revoke
        // from that peer changes nothing (without it they are `Unsolicited`), and a
        // request from them is a new pending request (see `reap` for our rejects).
        // Replay: every envelope its high-water mark would refuse is timestamped at
        // or before `last_word`, which is more than the skew window ago, so the skew
        // check refuses it now and at every later time (on a clock that does not go
        // back) — the mark is no longer needed.
        let reap = self.reap();
        while let Some((at, id)) = self.index.oldest_declined(reap.rejected) {
            if at.saturating_add(reap.after_ms) > now {
                break;
            }
            self.remove_peer(cx, id);
        }
        self.nonces.reap(now, self.config.nonce_ttl_ms());
    }

    /// Reaps the oldest declined records past [`Config::max_declined`], however
    /// recent: a stranger can make one per request (ask, then revoke), so only a
    /// hard bound holds them. One reaped within the skew window leaves its mark in
    /// `reaped_floor_ms`, so nothing it refused as stale becomes fresh.
    fn bound_declined<R: ?Sized>(&mut self, cx: &mut Cx<'_, R>) {
        let reap = self.reap();
        while self.index.declined_len(reap.rejected) > self.config.max_declined {
            let Some((_, id)) = self.index.oldest_declined(reap.rejected) else {
                break;
            };
            let mark = self.peers.get(&id).map_or(0, |r| r.high_water_ms);
            // Capped at now: a mark a peer set in our future must not hold up
            // strangers' requests for the whole skew window.
            self.reaped_floor_ms = self.reaped_floor_ms.max(mark.min(cx.now));
            self.remove_peer(cx, id);
        }
    }

    /// Trusted → Expired: our consent lapsed with our approval.
    fn expire_trust<R: RngCore + CryptoRng + ?Sized>(&mut self, cx: &mut Cx<'_, R>, id: NodeId) {
        let now = cx.now;
        let rec = self.peers.get_mut(&id).expect("record exists");
        rec.state = TrustState::Expired;
        rec.since_ms = now;
        rec.consent = None;
        // The peer is told, so that both ends agree (it stops trusting us too).
        self.send(cx, id, Kind::Expire);
        cx.event(id, EventKind::TrustExpired);
        cx.audit(Some(id), AuditAction::TrustExpired, None);
        self.put_peer(cx, id);
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
        // Strictly above what we sent this peer before; a new record starts above
        // everything we ever sent (it may be a peer we forgot, which remembers us).
        let floor = if rec.last_sent_ms == 0 {
            self.sent_floor
        } else {
            rec.last_sent_ms
        };
        let timestamp_ms = cx.now.max(floor.saturating_add(1));
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
        self.peers.remove(&id);
        self.index.update(id, None);
        self.relayed.set(id, None);
        cx.unwrite_peer(&id);
        cx.out.writes.push(StoreWrite::RemovePeer(id));
    }
}

/// What became of a valid envelope.
enum Applied {
    /// Acted on: remember its nonce and advance the sender's high-water mark.
    Yes(AckStatus),
    /// Dropped quietly (a denied peer): nothing at all changes.
    Dropped(AckStatus),
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

fn sent_floor(peers: &BTreeMap<NodeId, PeerRecord>) -> u64 {
    peers.values().map(|r| r.last_sent_ms).max().unwrap_or(0)
}

fn command_peer(cmd: &Command) -> Option<NodeId> {
    match cmd {
        Command::Request { to, .. } => Some(*to),
        Command::Approve { peer, .. }
        | Command::Reject { peer, .. }
        | Command::Revoke { peer, .. }
        | Command::Dismiss { peer }
        | Command::Cancel { peer }
        | Command::Ignore { peer }
        | Command::Unignore { peer }
        | Command::Allow { peer, .. }
        | Command::Disallow { peer }
        | Command::Rename { peer, .. }
        | Command::Forget { peer }
        | Command::Resend { peer } => Some(*peer),
        Command::SetAutoApprove(_) => None,
    }
}

fn text(s: &str, max: usize, field: TextField) -> Result<(), CommandError> {
    check_text(s, max).map_err(|e| match e {
        TextError::TooLong { chars, max } => CommandError::TextTooLong { field, chars, max },
        TextError::NotPrintable => CommandError::TextNotPrintable { field },
    })
}

fn opt_text(s: &Option<String>, max: usize, field: TextField) -> Result<(), CommandError> {
    s.as_deref().map_or(Ok(()), |s| text(s, max, field))
}
