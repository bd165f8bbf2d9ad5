//! The public data types of the trust machine: its [`Config`], the per-peer
//! [`PeerRecord`] and its [`TrustState`], the allow list, audit entries,
//! events, store writes, and the [`Input`], [`Command`], [`Reply`] and
//! [`Output`] that go in and out of [`TrustMachine::handle`](super::TrustMachine::handle).
//!
//! Plain data: this module must never read a clock, touch the network or the
//! disk, or block, and it decides nothing — the machine does.

use std::fmt;
use std::net::SocketAddr;

use kith_keys::NodeId;
use serde::{Deserialize, Serialize};

use super::Consent;
use crate::validate::Refusal;
use crate::wire::{Ack, AckStatus, Envelope};

pub use crate::validate::DEFAULT_SKEW_MS;
/// Default lifetime of an incoming request nobody decided on: seven days.
pub const DEFAULT_PENDING_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// How far our clock may lag the last timestamp we sent a peer before the node
/// says so (a burst of sends in one millisecond raises timestamps a little).
pub const CLOCK_BEHIND_MS: u64 = 1_000;

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
    /// Our operator forgot the peer (`forget`, or `dismiss` or `ignore` of a request
    /// from a peer we had sent anything): hidden from every view, as if there were
    /// no record, but kept (reaped like a declined record) so that a word of ours
    /// the peer has not acknowledged is still re-sent, and an accept of theirs is
    /// still answered with a revoke. Appended: states are stored by position.
    Forgotten,
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
            TrustState::Forgotten => "forgotten",
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
            TrustState::Forgotten => AckStatus::Revoked,
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

    pub(super) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }

    /// Trusted on paper but past expiry: treated as `Expired` by every decision.
    pub(super) fn lapsed(&self, now_ms: u64) -> bool {
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
    /// A removed record held the highest timestamp we sent anyone: keep it, and
    /// pass it to [`TrustMachine::with_sent_floor`](super::TrustMachine::with_sent_floor)
    /// on restore (only ever raised).
    SentFloor(u64),
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
    /// Time passed: expire, evict and reap what is due. Call at [`TrustMachine::next_deadline`](super::TrustMachine::next_deadline).
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
    /// The writes only record a repeat of a request still waiting (its words and
    /// its sender's mark): the caller may hold them, with everything else of this
    /// output, for a while and commit them with later writes, so that a stranger
    /// repeating itself cannot make each repeat cost a commit of its own. Nothing
    /// of the output may be acted on before the writes are committed, as always.
    #[serde(default)]
    pub writes_may_wait: bool,
}

impl Output {
    pub(super) fn new(reply: Reply) -> Self {
        Output {
            reply,
            send: Vec::new(),
            events: Vec::new(),
            writes: Vec::new(),
            writes_may_wait: false,
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
