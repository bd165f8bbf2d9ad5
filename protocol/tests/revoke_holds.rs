//! Property test: a revoke (or a reject) is final until the local operator acts.
//!
//! Two nodes exchange every kind of message in any order: delivered, dropped,
//! replayed (any envelope ever sent, at any time), crossed with the other side's
//! commands, and with either side restarting from its store. After a revoke or
//! reject in either direction — ours by command, or theirs applied to our
//! record — no record becomes trusted unless our side made a new decision
//! after it: a local command (request, approve, allow) or a policy approval
//! (an `AutoApproved` event). `CI=true` runs 10,000 cases.
//!
//! The same schedules, once every message is delivered and each side has
//! re-sent what it still owes (as the node's outbox does), must leave the two
//! records in a pair the design allows (docs/design.md): both trust or
//! neither does. (A waiting request whose sender no longer stands by it — it
//! crossed a withdrawal or a decline — is allowed: approving it is answered
//! with a revoke, and neither side trusts.)

mod common;

use common::*;
use kith_protocol::{
    AckStatus, Command, Config, Envelope, EventKind, Output, Refusal, Reply, TrustState,
};
use proptest::prelude::*;

/// Each side's operator, policy and network, as one step of a schedule.
#[derive(Clone, Debug)]
enum Op {
    /// Node `.0` runs a command about the other node.
    Cmd(usize, CmdKind),
    /// Node `.0` switches auto-approve.
    Auto(usize, bool),
    /// Deliver the in-flight envelope at this position (mod the count).
    Deliver(usize),
    /// Drop the in-flight envelope at this position.
    Drop(usize),
    /// Re-deliver any envelope ever sent (mod the count): a replay.
    Replay(usize),
    /// Advance the clock (ms) and tick both nodes.
    Advance(u64),
    /// Rebuild node `.0` from its store.
    Restart(usize),
}

#[derive(Clone, Copy, Debug)]
enum CmdKind {
    Request,
    Approve,
    ApproveFor(u64),
    Reject,
    Revoke,
    Cancel,
    Ignore,
    Unignore,
    Allow,
    Disallow,
    Forget,
    Dismiss,
    Resend,
}

fn op() -> impl Strategy<Value = Op> {
    let cmd = prop_oneof![
        4 => Just(CmdKind::Request),
        3 => Just(CmdKind::Approve),
        1 => (1u64..3_000).prop_map(CmdKind::ApproveFor),
        1 => Just(CmdKind::Reject),
        3 => Just(CmdKind::Revoke),
        1 => Just(CmdKind::Cancel),
        1 => Just(CmdKind::Ignore),
        1 => Just(CmdKind::Unignore),
        1 => Just(CmdKind::Allow),
        1 => Just(CmdKind::Disallow),
        1 => Just(CmdKind::Forget),
        1 => Just(CmdKind::Dismiss),
        1 => Just(CmdKind::Resend),
    ];
    prop_oneof![
        6 => (0..2usize, cmd).prop_map(|(i, c)| Op::Cmd(i, c)),
        1 => (0..2usize, any::<bool>()).prop_map(|(i, on)| Op::Auto(i, on)),
        10 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Drop),
        3 => any::<usize>().prop_map(Op::Replay),
        1 => (1u64..2_000).prop_map(Op::Advance),
        1 => (0..2usize).prop_map(Op::Restart),
    ]
}

struct World {
    nodes: [Node; 2],
    now: u64,
    in_flight: Vec<Envelope>,
    captured: Vec<Envelope>,
    /// Per node: a revoke or reject concerning the other happened, and the node
    /// made no consenting decision since.
    spent: [bool; 2],
    /// Per node: the nonce of its last message to the other, until acknowledged.
    owed: [Option<[u8; 16]>; 2],
    log: Vec<String>,
}

impl World {
    fn new() -> World {
        World {
            nodes: [
                Node::new(1, Config::default()),
                Node::new(2, Config::default()),
            ],
            now: T0,
            in_flight: Vec::new(),
            captured: Vec::new(),
            spent: [false; 2],
            owed: [None; 2],
            log: Vec::new(),
        }
    }

    fn other(&self, i: usize) -> kith_keys::NodeId {
        self.nodes[1 - i].id()
    }

    fn state(&self, i: usize) -> Option<TrustState> {
        self.nodes[i].m.peer(&self.other(i)).map(|r| r.state)
    }

    /// Bookkeeping common to every output of node `i`.
    fn after(&mut self, i: usize, out: &Output) {
        for ev in &out.events {
            match ev.kind {
                // A policy decision made now: our side consents anew.
                EventKind::AutoApproved { .. } => self.spent[i] = false,
                EventKind::RevokedByPeer { .. } | EventKind::RejectedByPeer { .. } => {
                    self.spent[i] = true
                }
                EventKind::Revoked | EventKind::Rejected | EventKind::Cancelled => {
                    self.spent[i] = true
                }
                _ => {}
            }
        }
        for env in &out.send {
            self.owed[i] = Some(env.body.nonce);
            self.in_flight.push(env.clone());
            self.captured.push(env.clone());
        }
    }

    fn command(&mut self, i: usize, c: CmdKind) {
        let peer = self.other(i);
        let now = self.now;
        let cmd = match c {
            CmdKind::Request => Command::Request {
                to: peer,
                justification: "hi".into(),
                address: None,
            },
            CmdKind::Approve | CmdKind::ApproveFor(_) => Command::Approve {
                peer,
                name: None,
                note: None,
                expires_at_ms: match c {
                    CmdKind::ApproveFor(ms) => Some(now + ms),
                    _ => None,
                },
            },
            CmdKind::Reject => Command::Reject {
                peer,
                reason: "no".into(),
            },
            CmdKind::Revoke => Command::Revoke {
                peer,
                reason: "bye".into(),
            },
            CmdKind::Cancel => Command::Cancel { peer },
            CmdKind::Ignore => Command::Ignore { peer },
            CmdKind::Unignore => Command::Unignore { peer },
            CmdKind::Allow => Command::Allow { peer, name: None },
            CmdKind::Disallow => Command::Disallow { peer },
            CmdKind::Forget => Command::Forget { peer },
            CmdKind::Dismiss => Command::Dismiss { peer },
            CmdKind::Resend => Command::Resend { peer },
        };
        let out = self.nodes[i].cmd(now, cmd);
        self.log.push(format!(
            "n{i} {c:?} -> {:?}, now {:?}",
            out.reply,
            self.state(i)
        ));
        if out.reply == Reply::Done
            && matches!(
                c,
                CmdKind::Request | CmdKind::Approve | CmdKind::ApproveFor(_) | CmdKind::Allow
            )
        {
            // A local decision to trust, made now.
            self.spent[i] = false;
        }
        self.after(i, &out);
    }

    fn deliver(&mut self, env: Envelope, what: &str) {
        let to = usize::from(env.body.to != self.nodes[0].id());
        let out = self.nodes[to].recv(self.now, env.clone());
        let from = 1 - to;
        let settles = match out.ack() {
            Some(AckStatus::Refused(r)) => matches!(
                r,
                Refusal::Stale | Refusal::ReplayedNonce | Refusal::Unsolicited
            ),
            _ => true,
        };
        if settles && self.owed[from] == Some(env.body.nonce) {
            self.owed[from] = None;
        }
        self.log.push(format!(
            "{what} {}@{} to n{to}: {}, now {:?}",
            env.body.kind.name(),
            env.body.timestamp_ms - T0,
            out.ack().map_or("-".into(), AckStatus::to_string),
            self.state(to)
        ));
        self.after(to, &out);
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Cmd(i, c) => self.command(i, c),
            Op::Auto(i, on) => {
                let out = self.nodes[i].cmd(self.now, Command::SetAutoApprove(on));
                self.after(i, &out);
            }
            Op::Deliver(k) if !self.in_flight.is_empty() => {
                let env = self.in_flight.remove(k % self.in_flight.len());
                self.deliver(env, "deliver");
            }
            Op::Drop(k) if !self.in_flight.is_empty() => {
                self.in_flight.remove(k % self.in_flight.len());
            }
            Op::Replay(k) if !self.captured.is_empty() => {
                let env = self.captured[k % self.captured.len()].clone();
                self.deliver(env, "replay");
            }
            Op::Advance(ms) => {
                self.now += ms;
                for i in 0..2 {
                    let out = self.nodes[i].tick(self.now);
                    self.after(i, &out);
                }
            }
            Op::Restart(i) => {
                self.nodes[i].m = self.nodes[i].restored();
                self.log.push(format!("n{i} restarts"));
            }
            _ => {}
        }
    }

    /// Everything in flight arrives, lapsed approvals are ticked, and each side
    /// re-sends (re-signed, as `Command::Resend`) what it still owes.
    fn quiesce(&mut self) {
        for _ in 0..50 {
            while !self.in_flight.is_empty() {
                let env = self.in_flight.remove(0);
                self.deliver(env, "deliver");
            }
            for i in 0..2 {
                let out = self.nodes[i].tick(self.now);
                self.after(i, &out);
            }
            for i in 0..2 {
                if self.owed[i].is_some() && self.in_flight.is_empty() {
                    let peer = self.other(i);
                    let out = self.nodes[i].cmd(self.now, Command::Resend { peer });
                    if out.reply != Reply::Done {
                        self.owed[i] = None;
                    }
                    self.after(i, &out);
                }
            }
            if self.in_flight.is_empty() && self.owed == [None, None] {
                return;
            }
        }
        panic!("never quiet:\n{}", self.log.join("\n"));
    }

    /// The pair of records is one the design allows once quiet.
    fn check_allowed_pair(&self) {
        let (s0, s1) = (self.state(0), self.state(1));
        let t0 = self.nodes[0].m.is_trusted(&self.other(0), self.now);
        let t1 = self.nodes[1].m.is_trusted(&self.other(1), self.now);
        assert!(
            t0 == t1,
            "not an allowed pair once quiet: n0 has {s0:?}, n1 has {s1:?}\n{}",
            self.log.join("\n")
        );
    }

    fn check(&self) {
        for i in 0..2 {
            let trusted = self.nodes[i].m.is_trusted(&self.other(i), self.now);
            assert!(
                !(trusted && self.spent[i]),
                "n{i} trusts n{} again after a revoke or reject with no decision of its own since:\n{}",
                1 - i,
                self.log.join("\n")
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if std::env::var("CI").is_ok() { 10_000 } else { 1_000 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_revoke_holds_until_the_local_operator_acts(
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut world = World::new();
        for op in ops {
            world.run(op);
            world.check();
        }
        for i in 0..2 {
            world.nodes[i].assert_store_matches();
        }
    }

    /// Each counterexample it found became a plain regression test below.
    #[test]
    fn once_everything_is_delivered_the_pair_is_allowed(
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut world = World::new();
        for op in ops {
            world.run(op);
        }
        world.quiesce();
        world.check_allowed_pair();
    }
}

#[test]
fn a_revoke_spends_the_consent_of_the_side_it_reaches() {
    // The shape of the bug this property guards: b revokes a; a (which had asked)
    // must not trust b again on b's word alone, whatever b sends next.
    let mut w = World::new();
    for op in [
        Op::Cmd(0, CmdKind::Request),
        Op::Deliver(0),
        Op::Cmd(1, CmdKind::Approve),
        Op::Deliver(0),
        Op::Cmd(1, CmdKind::Revoke),
        Op::Deliver(0),
        Op::Cmd(1, CmdKind::Request),
        Op::Deliver(0),
    ] {
        w.run(op);
        w.check();
    }
    assert!(w.spent[0]);
    assert_ne!(w.state(0), Some(TrustState::Trusted));
}

/// Found by `once_everything_is_delivered_the_pair_is_allowed` in CI: a withdrawn
/// request held back (here: lost, then replayed from capture) reaches its addressee
/// after the withdrawal did, when the addressee had no record yet and so refused the
/// withdrawal as unsolicited. The late request must not create trust on that side.
#[test]
fn a_withdrawal_that_overtakes_its_request_still_withdraws_it() {
    let mut w = World::new();
    for op in [
        Op::Cmd(0, CmdKind::Request),
        Op::Drop(0),
        Op::Cmd(0, CmdKind::Cancel),
        Op::Cmd(0, CmdKind::Unignore),
        Op::Deliver(0),
        Op::Cmd(1, CmdKind::Request),
        Op::Deliver(0),
        Op::Cmd(0, CmdKind::Ignore),
        Op::Replay(242_856_944_930_396_697),
    ] {
        w.run(op);
    }
    w.quiesce();
    w.check_allowed_pair();
}

/// Found by `once_everything_is_delivered_the_pair_is_allowed` in CI: n0 answers
/// n1's request (mutual trust), then revokes; the revoke is lost and n1's repeat of
/// its request arrives after it, so n0 shows a new waiting request. The accept sent
/// before the revoke then reaches n1, which trusts. n0's revoke stays owed (it was
/// never acknowledged), and what n0 re-sends must end that trust without spending
/// the request n1 made.
#[test]
fn a_revoke_overtaken_by_an_older_accept_still_ends_the_trust() {
    let mut w = World::new();
    for op in [
        Op::Cmd(1, CmdKind::Request),
        Op::Deliver(0),
        Op::Cmd(0, CmdKind::Request),
        Op::Cmd(0, CmdKind::Revoke),
        // In flight: n0's accept, n0's revoke. The revoke is lost.
        Op::Drop(1),
        Op::Cmd(1, CmdKind::Request),
        // n1's repeated request reaches n0 (a copy of it; the original follows).
        Op::Replay(3),
    ] {
        w.run(op);
    }
    assert_eq!(w.state(0), Some(TrustState::IncomingPending));
    w.quiesce();
    w.check_allowed_pair();
    // n1's request still waits at n0, and n1 still stands by it: n0 may approve.
    assert_eq!(w.state(1), Some(TrustState::OutgoingPending));
    w.run(Op::Cmd(0, CmdKind::Approve));
    w.quiesce();
    assert!(w.nodes[0].m.is_trusted(&w.other(0), w.now));
    w.check_allowed_pair();
}

/// Found by `once_everything_is_delivered_the_pair_is_allowed` in CI: n0 drops its
/// record of n1 (`ignore` of a waiting request) and restarts with the clock where it
/// was. Its next envelopes to n1 must still be timestamped above everything it sent
/// n1 before (n1 remembers), or n1 refuses them as stale while applying n0's older
/// revoke after its newer accept.
#[test]
fn timestamps_to_a_dropped_peer_stay_above_what_it_saw_after_a_restart() {
    let mut w = World::new();
    for op in [
        Op::Cmd(1, CmdKind::Request),
        Op::Replay(0),
        Op::Cmd(0, CmdKind::Request),
        Op::Cmd(0, CmdKind::Revoke),
        Op::Cmd(1, CmdKind::Request),
        // In flight: n1's request, n0's accept and revoke, n1's repeat: the repeat.
        Op::Deliver(3),
        Op::Cmd(1, CmdKind::Request),
        Op::Cmd(0, CmdKind::Ignore),
        Op::Restart(0),
        Op::Cmd(0, CmdKind::Allow),
    ] {
        w.run(op);
    }
    w.quiesce();
    w.check_allowed_pair();
}

/// Found by `once_everything_is_delivered_the_pair_is_allowed` in CI: n0 drops its
/// record of n1 (`ignore`), n1's withdrawal then finds no record, and n0 asks n1 anew
/// and restarts. An accept n1 sent long before (of n0's earlier request) must not
/// answer n0's new request: that request starts above everything n0 ever sent n1,
/// and the withdrawal's time stays n1's mark in the new record across the restart.
#[test]
fn an_old_accept_does_not_answer_a_request_made_after_a_forgotten_record() {
    let mut w = World::new();
    for op in [
        Op::Cmd(0, CmdKind::Request),
        Op::Deliver(0),
        Op::Cmd(0, CmdKind::Request),
        Op::Cmd(1, CmdKind::Request),
        Op::Deliver(0),
        Op::Deliver(0),
        Op::Cmd(0, CmdKind::Revoke),
        Op::Deliver(6_181_121_944_552_092_253),
        Op::Cmd(1, CmdKind::Request),
        Op::Deliver(516_192_372_825_739_997),
        Op::Cmd(0, CmdKind::Ignore),
        Op::Cmd(0, CmdKind::Unignore),
        Op::Cmd(1, CmdKind::Cancel),
        Op::Deliver(12_952_585_655_325_468_415),
        Op::Cmd(0, CmdKind::Request),
        Op::Restart(0),
    ] {
        w.run(op);
    }
    w.quiesce();
    w.check_allowed_pair();
}

/// The request n0 makes after forgetting n1 starts where its first envelope is
/// timestamped (above everything n0 sent n1 before, its withdrawal included), so an
/// accept n1 sent before it saw that withdrawal is not taken for an answer.
#[test]
fn an_accept_of_a_forgotten_request_does_not_answer_the_next_one() {
    let mut w = World::new();
    for op in [
        Op::Cmd(0, CmdKind::Request),
        Op::Deliver(0),
        Op::Cmd(1, CmdKind::Approve),
        // n0 forgets n1 (withdrawing its request) and asks again at once.
        Op::Cmd(0, CmdKind::Forget),
        Op::Cmd(0, CmdKind::Request),
        // In flight: n1's accept, n0's withdrawal, n0's new request.
        Op::Deliver(0),
    ] {
        w.run(op);
    }
    assert_eq!(w.state(0), Some(TrustState::OutgoingPending));
    w.quiesce();
    w.check_allowed_pair();
}

/// `forget` after a revoke the peer never got: the forgotten record is kept (hidden)
/// until then, so the revoke is still re-sent and the peer stops trusting.
#[test]
fn a_revoke_owed_to_a_forgotten_peer_is_still_delivered() {
    let mut w = World::new();
    for op in [
        Op::Cmd(0, CmdKind::Request),
        Op::Deliver(0),
        Op::Cmd(1, CmdKind::Approve),
        Op::Deliver(0),
        Op::Cmd(0, CmdKind::Revoke),
        Op::Drop(0),
        Op::Cmd(0, CmdKind::Forget),
    ] {
        w.run(op);
    }
    assert_eq!(w.state(0), None, "forgotten, as far as the operator sees");
    assert_eq!(w.state(1), Some(TrustState::Trusted));
    w.quiesce();
    w.check_allowed_pair();
    assert_eq!(w.state(1), Some(TrustState::RevokedByPeer));
}

/// Found by the agreement property once it ran `forget`: n1 forgets n0 after n0
/// withdrew, then n0 trusts on n1's old request (delivered late) and accepts. The
/// accept reaches n1's forgotten record, which answers it with a revoke.
#[test]
fn an_accept_to_a_forgotten_peer_is_answered_with_a_revoke() {
    let mut w = World::new();
    for op in [
        Op::Cmd(1, CmdKind::Request),
        Op::Cmd(0, CmdKind::Request),
        Op::Cmd(0, CmdKind::Cancel),
        // In flight: n1's request, n0's request, n0's withdrawal.
        Op::Deliver(2),
        Op::Deliver(1),
        Op::Cmd(1, CmdKind::Forget),
        // n1's request, held back until now.
        Op::Replay(0),
        Op::Cmd(0, CmdKind::Request),
    ] {
        w.run(op);
    }
    assert_eq!(w.state(0), Some(TrustState::Trusted));
    w.quiesce();
    w.check_allowed_pair();
}

/// `dismiss` of a request that came in after a revoke of ours that an older accept
/// overtook (see `a_revoke_overtaken_by_an_older_accept_still_ends_the_trust`): what
/// we owe the peer survives the dismissal.
#[test]
fn a_word_owed_to_a_dismissed_request_is_still_delivered() {
    let mut w = World::new();
    for op in [
        Op::Cmd(1, CmdKind::Request),
        Op::Deliver(0),
        Op::Cmd(0, CmdKind::Request),
        Op::Cmd(0, CmdKind::Revoke),
        Op::Drop(1),
        Op::Cmd(1, CmdKind::Request),
        Op::Replay(3),
        Op::Cmd(0, CmdKind::Dismiss),
    ] {
        w.run(op);
    }
    assert_eq!(w.state(0), None);
    w.quiesce();
    w.check_allowed_pair();
}

/// `forget` of an approval past its expiry that no tick has seen yet: the expiry
/// notice still goes out (from the tombstone), so the peer stops trusting.
#[test]
fn forget_of_a_lapsed_approval_still_tells_the_peer() {
    let mut w = World::new();
    for op in [
        Op::Cmd(1, CmdKind::Request),
        Op::Deliver(0),
        Op::Cmd(0, CmdKind::ApproveFor(100)),
        Op::Deliver(0),
    ] {
        w.run(op);
    }
    assert_eq!(w.state(1), Some(TrustState::Trusted));
    // Past the expiry, with no tick in between.
    w.now += 200;
    w.run(Op::Cmd(0, CmdKind::Forget));
    assert_eq!(w.state(0), None);
    w.quiesce();
    w.check_allowed_pair();
}
