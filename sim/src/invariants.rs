//! The invariants the simulator checks as it runs, the bookkeeping they need,
//! and the bounded event trace shown when one fails.
//!
//! - [`CONSENT`]: no peer is trusted without our approval or a policy
//!   allowing it (checked on every write that makes a record trusted).
//! - [`REVOKE_HOLDS`]: after a revoke or reject in either direction, no record
//!   becomes trusted without a decision of its own node made after it (a
//!   request, an approval, or a policy approving a new request).
//! - [`AGREEMENT`]: once the network is quiet, both ends of every pair agree
//!   on whether they trust each other.
//! - [`DECLINE_REACHES`]: every revocation (and rejection) reaches the other
//!   side when a path exists (checked when quiet).
//! - [`DURABILITY`]: nothing committed is lost across a crash: the machine
//!   rebuilt from the store equals the one that crashed, except for the
//!   in-memory replay cache (checked at every crash and at the end).
//! - [`REPLAY`]: a replayed envelope changes nothing: no write, no send, and
//!   the sender's record and the replay cache as they were (checked on every
//!   re-delivery of an envelope that was already applied, and on every
//!   adversary injection).
//!
//! This module only observes: it must never change a node, and never draw
//! from the RNG (checking must not perturb the run it checks).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;

use kith_protocol::{AckStatus, Kind, Refusal};

pub const CONSENT: &str = "consent";
pub const AGREEMENT: &str = "agreement";
pub const DECLINE_REACHES: &str = "decline_reaches";
pub const DURABILITY: &str = "durability";
pub const REPLAY: &str = "replay";
pub const REVOKE_HOLDS: &str = "revoke_holds";
/// Every invariant, in report order.
pub const ALL: [&str; 6] = [
    CONSENT,
    REVOKE_HOLDS,
    AGREEMENT,
    DECLINE_REACHES,
    DURABILITY,
    REPLAY,
];

/// What the invariant promises, for messages.
pub fn describe(invariant: &str) -> &'static str {
    match invariant {
        CONSENT => "no peer trusted without an approval or a policy allowing it",
        AGREEMENT => "once the network is quiet, both ends of every pair agree",
        DECLINE_REACHES => "every revocation reaches the other side if any path exists",
        DURABILITY => "nothing committed is lost across a crash",
        REPLAY => "replays never change state",
        REVOKE_HOLDS => "a revoke holds until the local operator or policy decides again",
        _ => "",
    }
}

/// A failed invariant: which, when, what, and the events that led there.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub seed: u64,
    /// Virtual time since the start of the run.
    pub at_ms: u64,
    pub detail: String,
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "INVARIANT VIOLATED: {} ({})",
            self.invariant,
            describe(self.invariant)
        )?;
        writeln!(f, "  seed: {}", self.seed)?;
        writeln!(f, "  virtual time: {}", fmt_t(self.at_ms))?;
        writeln!(f, "  {}", self.detail)?;
        writeln!(
            f,
            "  last {} events concerning them (oldest first):",
            self.trace.len()
        )?;
        for line in &self.trace {
            writeln!(f, "    {line}")?;
        }
        write!(f, "  replay with: --seed {}", self.seed)
    }
}

impl std::error::Error for Violation {}

/// `t+1h02m03.004s`-style virtual time.
pub fn fmt_t(ms: u64) -> String {
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    format!("t+{h}h{m:02}m{:02}.{:03}s", rest / 1000, rest % 1000)
}

/// A compact, copyable record of one thing that happened (formatted only
/// when a violation needs it).
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    pub t: u64,
    /// The acting node (or relay, as `nodes + index`).
    pub a: u32,
    /// The other party, if any (`u32::MAX` if none).
    pub b: u32,
    pub what: What,
}

#[derive(Clone, Copy, Debug)]
pub enum What {
    Command {
        cmd: &'static str,
        result: &'static str,
    },
    Send {
        kind: &'static str,
        ts: u64,
        attempt: u32,
        via: &'static str,
    },
    Deliver {
        kind: &'static str,
        ts: u64,
        ack: &'static str,
        via: &'static str,
        redelivery: bool,
    },
    AckBack {
        kind: &'static str,
        ack: &'static str,
    },
    AttemptFailed {
        kind: &'static str,
        why: &'static str,
    },
    GaveUp {
        kind: &'static str,
    },
    Trust {
        trusted: bool,
    },
    Crash,
    Restart,
    PartitionStart {
        index: u32,
        cut: u32,
    },
    PartitionEnd {
        index: u32,
    },
    Inject {
        kind: &'static str,
        ts: u64,
        ack: &'static str,
        how: &'static str,
    },
    Relay {
        what: &'static str,
    },
}

impl TraceEvent {
    pub fn render(&self, nodes: u32, start_ms: u64) -> String {
        let who = |i: u32| -> String {
            if i == u32::MAX {
                "-".into()
            } else if i >= nodes {
                format!("relay{}", i - nodes)
            } else {
                format!("n{i}")
            }
        };
        let ts = |t: u64| fmt_t(t.saturating_sub(start_ms));
        let (a, b) = (who(self.a), who(self.b));
        let body = match self.what {
            What::Command { cmd, result } => format!("{a} operator {cmd} {b}: {result}"),
            What::Send {
                kind,
                ts: t,
                attempt,
                via,
            } => format!(
                "{a} sends {kind}[{}] to {b} (attempt {attempt}, {via})",
                ts(t)
            ),
            What::Deliver {
                kind,
                ts: t,
                ack,
                via,
                redelivery,
            } => format!(
                "{b} receives {kind}[{}] from {a} ({via}{}): {ack}",
                ts(t),
                if redelivery { ", again" } else { "" }
            ),
            What::AckBack { kind, ack } => format!("{a} gets ack {ack} for its {kind} to {b}"),
            What::AttemptFailed { kind, why } => {
                format!("{a}: delivering {kind} to {b} failed ({why})")
            }
            What::GaveUp { kind } => format!("{a} gives up delivering {kind} to {b}"),
            What::Trust { trusted } => format!(
                "{a} {} {b}",
                if trusted {
                    "now trusts"
                } else {
                    "no longer trusts"
                }
            ),
            What::Crash => format!("{a} crashes"),
            What::Restart => format!("{a} restarts from its store"),
            What::PartitionStart { index, cut } => {
                format!("partition {index} starts: {cut} nodes cut off")
            }
            What::PartitionEnd { index } => format!("partition {index} heals"),
            What::Inject {
                kind,
                ts: t,
                ack,
                how,
            } => format!(
                "adversary replays {a}'s {kind}[{}] to {b} ({how}): {ack}",
                ts(t)
            ),
            What::Relay { what } => format!("{a} relay {what} {b}"),
        };
        format!("{} {body}", fmt_t(self.t))
    }
}

/// The last events of the run, bounded.
pub struct Trace {
    ring: VecDeque<TraceEvent>,
    capacity: usize,
}

impl Trace {
    pub fn new(capacity: usize) -> Trace {
        Trace {
            ring: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn push(&mut self, e: TraceEvent) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(e);
    }

    /// The last `n` events that concern `nodes`: with one node, everything it
    /// did or had done to it; with two, what passed between them plus what
    /// happened to either alone (crashes, restarts) and to the network
    /// (partitions). All events if `nodes` is empty.
    pub fn about(&self, nodes: &[u32], n: usize) -> Vec<TraceEvent> {
        let concerns = |e: &TraceEvent| -> bool {
            match nodes {
                [] => true,
                [x] => e.a == *x || e.b == *x,
                _ => {
                    let has = |v: u32| nodes.contains(&v);
                    (has(e.a) && has(e.b))
                        || (has(e.a) && e.b == u32::MAX)
                        || (e.a == u32::MAX && e.b == u32::MAX)
                }
            }
        };
        let mut out: Vec<TraceEvent> = self
            .ring
            .iter()
            .rev()
            .filter(|e| concerns(e))
            .take(n)
            .copied()
            .collect();
        out.reverse();
        out
    }
}

/// A node's own latest decision about a peer, as far as consent goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Request,
    Approve,
    /// Allowlist entry or auto-approve.
    Policy,
    Reject,
    Revoke,
    /// A request withdrawn (`cancel`, `ignore`): no consent, and not a decline
    /// the peer must show.
    Withdraw,
}

impl Decision {
    pub fn consents(self) -> bool {
        matches!(
            self,
            Decision::Request | Decision::Approve | Decision::Policy
        )
    }
}

/// Who consented to what, and the last decision on each pair.
#[derive(Default)]
pub struct Ledger {
    /// (node, peer) → the node's latest explicit decision.
    own: HashMap<(u32, u32), Decision>,
    /// (node, peer) pairs where the node consented at some point.
    ever: HashSet<(u32, u32)>,
    /// Unordered pair → (actor, decision) of the latest decision by either side.
    last: HashMap<(u32, u32), (u32, Decision)>,
    /// (node, peer) pairs where a revoke or reject, either way, came after the
    /// node's latest consenting decision.
    spent: HashSet<(u32, u32)>,
}

/// Whether the other side of a pair shows a decline (theirs reached it, or it
/// declined as well): what the "decline reaches" invariant asks of the receiver.
pub fn shows_decline(state: Option<kith_protocol::TrustState>) -> bool {
    use kith_protocol::TrustState;
    matches!(
        state,
        Some(
            TrustState::RevokedByPeer
                | TrustState::RejectedByPeer
                | TrustState::Revoked
                | TrustState::Rejected
        )
    )
}

pub fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

impl Ledger {
    pub fn decide(&mut self, node: u32, peer: u32, d: Decision) {
        self.own.insert((node, peer), d);
        if d.consents() {
            self.ever.insert((node, peer));
            self.spent.remove(&(node, peer));
        } else {
            self.spent.insert((node, peer));
        }
        self.last.insert(pair(node, peer), (node, d));
    }

    /// Whether `node` consents to trusting `peer` now; `auto` is the node's
    /// auto-approve policy (which an own negative decision overrides).
    pub fn consents(&self, node: u32, peer: u32, auto: bool) -> bool {
        match self.own.get(&(node, peer)) {
            Some(d) => d.consents(),
            None => auto,
        }
    }

    /// Whether `node` consented to `peer` at any point (or has auto-approve).
    pub fn ever_consented(&self, node: u32, peer: u32, auto: bool) -> bool {
        auto || self.ever.contains(&(node, peer))
    }

    /// A revoke or reject between `node` and `peer` reached `node`'s record (or
    /// `node` withdrew): only a new decision of `node` may bring trust back.
    pub fn spend(&mut self, node: u32, peer: u32) {
        self.spent.insert((node, peer));
    }

    /// Whether `node`'s consent to `peer` was spent and not given again since.
    pub fn spent(&self, node: u32, peer: u32) -> bool {
        self.spent.contains(&(node, peer))
    }

    pub fn last(&self, a: u32, b: u32) -> Option<(u32, Decision)> {
        self.last.get(&pair(a, b)).copied()
    }
}

/// How many times each invariant was checked.
#[derive(Default)]
pub struct Counts {
    pub checks: BTreeMap<&'static str, u64>,
}

impl Counts {
    pub fn add(&mut self, invariant: &'static str, n: u64) {
        *self.checks.entry(invariant).or_default() += n;
    }
}

/// Short names for traces and reports.
pub fn kind_name(kind: &Kind) -> &'static str {
    kind.name()
}

pub fn ack_name(status: &AckStatus) -> &'static str {
    match status {
        AckStatus::Pending => "pending",
        AckStatus::Trusted => "trusted",
        AckStatus::Rejected => "rejected",
        AckStatus::Revoked => "revoked",
        AckStatus::Expired => "expired",
        AckStatus::Refused(r) => refusal_name(r),
    }
}

pub fn refusal_name(r: &Refusal) -> &'static str {
    match r {
        Refusal::UnknownVersion(_) => "refused:unknown-version",
        Refusal::BadSignature => "refused:bad-signature",
        Refusal::WrongAddressee => "refused:wrong-addressee",
        Refusal::ClockSkew { .. } => "refused:clock-skew",
        Refusal::ReplayedNonce => "refused:replayed-nonce",
        Refusal::Stale => "refused:stale",
        Refusal::SenderMismatch => "refused:sender-mismatch",
        Refusal::TextTooLong { .. } => "refused:text-too-long",
        Refusal::TextNotPrintable => "refused:text-not-printable",
        Refusal::NotTrusted => "refused:not-trusted",
        Refusal::Malformed => "refused:malformed",
        Refusal::PendingFull => "refused:pending-full",
        Refusal::FromSelf => "refused:from-self",
        Refusal::Unsolicited => "refused:unsolicited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_tracks_latest_own_decision() {
        let mut l = Ledger::default();
        assert!(!l.consents(1, 2, false));
        assert!(l.consents(1, 2, true));
        l.decide(1, 2, Decision::Request);
        assert!(l.consents(1, 2, false));
        l.decide(1, 2, Decision::Revoke);
        assert!(!l.consents(1, 2, true), "own revoke beats auto-approve");
        assert!(l.ever_consented(1, 2, false));
        assert_eq!(l.last(2, 1), Some((1, Decision::Revoke)));
        assert!(l.spent(1, 2));
        l.decide(1, 2, Decision::Request);
        assert!(
            !l.spent(1, 2),
            "a new request of its own gives consent again"
        );
        l.spend(1, 2);
        assert!(l.spent(1, 2));
    }

    #[test]
    fn trace_is_bounded_and_filters() {
        let mut t = Trace::new(3);
        for i in 0..5 {
            t.push(TraceEvent {
                t: i,
                a: i as u32,
                b: u32::MAX,
                what: What::Crash,
            });
        }
        assert_eq!(t.about(&[], 10).len(), 3);
        assert_eq!(t.about(&[4], 10).len(), 1);
        assert_eq!(t.about(&[4, 9], 10).len(), 1, "a crash of either counts");
        assert_eq!(fmt_t(3_723_004), "t+1h02m03.004s");
    }
}
