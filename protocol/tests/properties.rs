//! Property tests: two or three nodes exchanging envelopes over a network that
//! drops, duplicates, delays and reorders, on a virtual clock, driven by a
//! seeded RNG and a proptest-chosen schedule.
//!
//! The harness behaves as the node will: for each ordered pair it keeps the
//! last envelope sent and re-delivers it until an ack comes back (acks can be
//! lost too). Nodes may also restart, rebuilding their machine from the store
//! their writes produced. Once everything is quiet:
//!
//! - both sides agree on trust, for every pair;
//! - trust implies both sides consented at some point;
//! - if the last decision on a pair was an approval, both trust; if it was a
//!   revocation or a rejection, it reached the other side;
//! - the store rebuilt from writes equals each machine (outputs are complete);
//! - replaying any envelope ever captured changes nothing, on the live machine
//!   and on one restarted from its store.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use kith_keys::NodeId;
use kith_protocol::{AckStatus, Command, Config, Envelope, Kind, Refusal, Reply, TrustState};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug)]
enum Op {
    Request(usize, usize),
    Approve(usize, usize),
    Reject(usize, usize),
    Revoke(usize, usize),
    /// What an operator would plausibly do next given the node's state: ask a
    /// stranger or a peer that said no, decide a waiting request (approve or,
    /// one time in four, reject), revoke trust.
    Act(usize, usize, u8),
    /// Policies: allowlist a peer (approving a waiting request), or switch
    /// auto-approve (trust on first use) on or off.
    Allow(usize, usize),
    AutoApprove(usize, bool),
    /// Deliver (or drop, or duplicate) up to n packets in flight, in random order.
    Deliver(usize),
    /// Re-deliver every unacknowledged last envelope.
    Retransmit,
    /// Advance the virtual clock.
    Advance(u64),
    Tick(usize),
    /// Rebuild the node's machine from its store (the replay cache is lost).
    Restart(usize),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    let pair = (0..n, 1..n).prop_map(move |(a, d)| (a, (a + d) % n));
    prop_oneof![
        3 => pair.clone().prop_map(|(a, b)| Op::Request(a, b)),
        3 => pair.clone().prop_map(|(a, b)| Op::Approve(a, b)),
        1 => pair.clone().prop_map(|(a, b)| Op::Reject(a, b)),
        2 => pair.clone().prop_map(|(a, b)| Op::Revoke(a, b)),
        6 => (pair.clone(), any::<u8>()).prop_map(|((a, b), c)| Op::Act(a, b, c)),
        1 => pair.prop_map(|(a, b)| Op::Allow(a, b)),
        1 => (0..n, any::<bool>()).prop_map(|(a, on)| Op::AutoApprove(a, on)),
        5 => (1usize..6).prop_map(Op::Deliver),
        1 => Just(Op::Retransmit),
        2 => (0u64..3_000).prop_map(Op::Advance),
        1 => (0..n).prop_map(Op::Tick),
        1 => (0..n).prop_map(Op::Restart),
    ]
}

#[derive(Clone, Debug)]
struct Net {
    drop_pct: u32,
    dup_pct: u32,
    ack_loss_pct: u32,
    /// A tiny replay cache, so the high-water mark has to do the work.
    small_cache: bool,
}

fn net() -> impl Strategy<Value = Net> {
    (0u32..50, 0u32..30, 0u32..50, any::<bool>()).prop_map(
        |(drop_pct, dup_pct, ack_loss_pct, small_cache)| Net {
            drop_pct,
            dup_pct,
            ack_loss_pct,
            small_cache,
        },
    )
}

/// What each node decided last about a pair, for the final checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Request,
    Approve,
    Reject,
    Revoke,
    /// An allowlist entry or auto-approve: later requests may be approved at once.
    Policy,
    /// The node's request, spent by the peer's decline.
    Spent,
}

struct World {
    nodes: Vec<Node>,
    now: u64,
    rng: StdRng,
    net: Net,
    in_flight: Vec<Envelope>,
    /// Per (from, to): the last envelope sent and whether it was acknowledged.
    last: BTreeMap<(usize, usize), (Envelope, bool)>,
    /// Every envelope ever sent, for the replay check.
    captured: Vec<Envelope>,
    /// (node, peer) pairs where the node requested, approved, allowlisted, or
    /// had auto-approve on at some point.
    consented: BTreeSet<(usize, usize)>,
    /// Per unordered pair: who made the last decision, and what it was.
    last_decision: BTreeMap<(usize, usize), (usize, Decision)>,
    /// Per (node, peer): the node's own last decision about the peer.
    own_last: BTreeMap<(usize, usize), Decision>,
    /// Per unordered pair: whether the last decision was an approval given
    /// while the peer's own last decision was still its request — the case in
    /// which both must end up trusting. (An approval of a request the peer has
    /// since revoked, concurrently, rightly leads nowhere.)
    approval_stands: BTreeMap<(usize, usize), bool>,
}

impl World {
    fn new(n: usize, seed: u64, net: Net) -> World {
        let config = Config {
            nonce_cache_capacity: if net.small_cache { 2 } else { 1024 },
            ..Config::default()
        };
        World {
            nodes: (0..n)
                .map(|i| Node::new(i as u8 + 1, config.clone()))
                .collect(),
            now: T0,
            rng: StdRng::seed_from_u64(seed),
            net,
            in_flight: Vec::new(),
            last: BTreeMap::new(),
            captured: Vec::new(),
            consented: BTreeSet::new(),
            last_decision: BTreeMap::new(),
            own_last: BTreeMap::new(),
            approval_stands: BTreeMap::new(),
        }
    }

    fn index(&self, id: &NodeId) -> usize {
        self.nodes.iter().position(|n| n.id() == *id).unwrap()
    }

    fn id(&self, i: usize) -> NodeId {
        self.nodes[i].id()
    }

    fn enqueue(&mut self, from: usize, sent: Vec<Envelope>) {
        for env in sent {
            let to = self.index(&env.body.to);
            self.last.insert((from, to), (env.clone(), false));
            self.captured.push(env.clone());
            self.in_flight.push(env);
        }
    }

    fn command(&mut self, i: usize, peer: usize, cmd: Command) {
        let before = self.nodes[i].snapshot();
        let out = self.nodes[i].cmd(self.now, cmd.clone());
        trace(|| {
            format!(
                "t+{} node {i} {} -> {:?}, sends {:?}, now {:?}",
                self.now - T0,
                cmd_name(&cmd),
                out.reply,
                out.send.iter().map(describe).collect::<Vec<_>>(),
                self.nodes[i].m.peer(&self.id(peer)).map(|r| r.state)
            )
        });
        match &out.reply {
            Reply::Done => {
                // What was decided is what was sent: a request command on a
                // waiting request sends an accept, and is an approval.
                let decided = out.send.last().and_then(|env| match env.body.kind {
                    Kind::Request { .. } => Some(Decision::Request),
                    Kind::Accept | Kind::AcceptOf { .. } => Some(Decision::Approve),
                    Kind::Reject { .. } => Some(Decision::Reject),
                    Kind::Revoke { .. } => Some(Decision::Revoke),
                    Kind::Expire => None,
                });
                if let Some(d) = decided {
                    if matches!(d, Decision::Request | Decision::Approve) {
                        self.consented.insert((i, peer));
                    }
                    let pair = (i.min(peer), i.max(peer));
                    self.last_decision.insert(pair, (i, d));
                    let stands = d == Decision::Approve
                        && self.own_last.get(&(peer, i)) == Some(&Decision::Request);
                    self.approval_stands.insert(pair, stands);
                    self.own_last.insert((i, peer), d);
                }
            }
            Reply::Failed(_) => {
                assert_eq!(
                    self.nodes[i].snapshot(),
                    before,
                    "failed {cmd:?} changed state"
                );
            }
            other => panic!("unexpected reply {other:?}"),
        }
        self.enqueue(i, out.send);
    }

    /// Delivers one envelope; the sender may or may not get the ack.
    fn deliver(&mut self, env: Envelope) {
        let from = self.index(&env.body.from);
        let to = self.index(&env.body.to);
        let out = self.nodes[to].recv(self.now, env.clone());
        let status = out.ack().cloned().expect("an envelope is acked");
        trace(|| {
            format!(
                "t+{} deliver {} {from}->{to}: {status}, sends {:?}, now {:?}",
                self.now - T0,
                describe(&env),
                out.send.iter().map(describe).collect::<Vec<_>>(),
                self.nodes[to].m.peer(&env.body.from).map(|r| r.state)
            )
        });
        if let AckStatus::Refused(r) = &status {
            // In this world clocks agree and nobody forges: only these can happen.
            assert!(
                matches!(
                    r,
                    Refusal::ReplayedNonce | Refusal::Stale | Refusal::Unsolicited
                ),
                "unexpected refusal {r:?} of {env:?}"
            );
        }
        if matches!(env.body.kind, Kind::Reject { .. } | Kind::Revoke { .. })
            && !matches!(status, AckStatus::Refused(_))
        {
            // A decline spends the receiver's request, however recent: an approval
            // of that request (made before or after) no longer leads to trust.
            let pair = (from.min(to), from.max(to));
            self.approval_stands.insert(pair, false);
            if self.own_last.get(&(to, from)) == Some(&Decision::Request) {
                self.own_last.insert((to, from), Decision::Spent);
            }
        }
        let ack_lost = self.rng.gen_range(0..100) < self.net.ack_loss_pct;
        if !ack_lost {
            if let Some((last, acked)) = self.last.get_mut(&(from, to)) {
                if *last == env {
                    *acked = true;
                }
            }
        }
        self.enqueue(to, out.send);
    }

    fn deliver_some(&mut self, count: usize, lossy: bool) {
        for _ in 0..count {
            if self.in_flight.is_empty() {
                return;
            }
            // Random choice among everything in flight: reordering and delay.
            let i = self.rng.gen_range(0..self.in_flight.len());
            let env = self.in_flight.swap_remove(i);
            if lossy && self.rng.gen_range(0..100) < self.net.drop_pct {
                continue;
            }
            if lossy && self.rng.gen_range(0..100) < self.net.dup_pct {
                self.in_flight.push(env.clone());
            }
            self.deliver(env);
        }
    }

    fn retransmit(&mut self) {
        let unacked: Vec<Envelope> = self
            .last
            .values()
            .filter(|(_, acked)| !acked)
            .map(|(e, _)| e.clone())
            .collect();
        self.in_flight.extend(unacked);
    }

    fn restart(&mut self, i: usize) {
        let restored = self.nodes[i].restored();
        self.nodes[i].m = restored;
    }

    fn run(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Request(a, b) => {
                let to = self.id(b);
                self.command(
                    a,
                    b,
                    Command::Request {
                        to,
                        justification: format!("{a} asks {b} at {now}"),
                        address: None,
                    },
                );
            }
            Op::Approve(a, b) => {
                let peer = self.id(b);
                self.command(
                    a,
                    b,
                    Command::Approve {
                        peer,
                        name: None,
                        note: None,
                        expires_at_ms: None,
                    },
                );
            }
            Op::Reject(a, b) => {
                let peer = self.id(b);
                self.command(
                    a,
                    b,
                    Command::Reject {
                        peer,
                        reason: "no".into(),
                    },
                );
            }
            Op::Revoke(a, b) => {
                let peer = self.id(b);
                self.command(
                    a,
                    b,
                    Command::Revoke {
                        peer,
                        reason: "bye".into(),
                    },
                );
            }
            Op::Act(a, b, choice) => {
                let peer = self.id(b);
                let op = match self.nodes[a].m.peer(&peer).map(|r| r.state) {
                    Some(TrustState::IncomingPending) if choice % 4 == 0 => Op::Reject(a, b),
                    Some(TrustState::IncomingPending) => Op::Approve(a, b),
                    Some(TrustState::Trusted) => Op::Revoke(a, b),
                    Some(TrustState::OutgoingPending) => Op::Deliver(3),
                    _ => Op::Request(a, b),
                };
                self.run(op);
            }
            Op::Allow(a, b) => {
                let peer = self.id(b);
                self.consented.insert((a, b));
                self.last_decision
                    .insert((a.min(b), a.max(b)), (a, Decision::Policy));
                self.command(a, b, Command::Allow { peer, name: None });
            }
            Op::AutoApprove(a, on) => {
                if on {
                    for b in (0..self.nodes.len()).filter(|b| *b != a) {
                        self.consented.insert((a, b));
                        self.last_decision
                            .insert((a.min(b), a.max(b)), (a, Decision::Policy));
                    }
                }
                let out = self.nodes[a].cmd(self.now, Command::SetAutoApprove(on));
                assert_eq!(out.reply, Reply::Done);
            }
            Op::Deliver(n) => self.deliver_some(n, true),
            Op::Retransmit => self.retransmit(),
            Op::Advance(ms) => self.now += ms,
            Op::Tick(i) => {
                let now = self.now;
                let out = self.nodes[i].tick(now);
                assert!(out.send.is_empty());
            }
            Op::Restart(i) => self.restart(i),
        }
    }

    /// Retransmits until every last envelope is acknowledged and nothing is in
    /// flight: lossy for a while, then lossless.
    fn quiesce(&mut self) {
        for round in 0..400 {
            if self.in_flight.is_empty() && self.last.values().all(|(_, acked)| *acked) {
                return;
            }
            self.now += 50;
            self.retransmit();
            let n = self.in_flight.len();
            self.deliver_some(n, round < 20);
        }
        panic!("the network did not quiesce");
    }

    fn check(&self) {
        let n = self.nodes.len();
        let now = self.now;
        assert!(
            now - T0 < Config::default().skew_ms / 2,
            "the run must stay within the skew window"
        );
        for node in &self.nodes {
            node.assert_store_matches();
        }
        for x in 0..n {
            for y in (x + 1)..n {
                let (xid, yid) = (self.id(x), self.id(y));
                let tx = self.nodes[x].m.is_trusted(&yid, now);
                let ty = self.nodes[y].m.is_trusted(&xid, now);
                let sx = self.nodes[x].m.peer(&yid).map(|r| r.state);
                let sy = self.nodes[y].m.peer(&xid).map(|r| r.state);
                let ctx = format!(
                    "pair ({x},{y}): {sx:?} / {sy:?}, last decision {:?}",
                    self.last_decision.get(&(x, y))
                );
                assert_eq!(tx, ty, "disagreement: {ctx}");
                if tx {
                    assert!(
                        self.consented.contains(&(x, y)) && self.consented.contains(&(y, x)),
                        "trust without consent on both sides: {ctx}"
                    );
                }
                match self.last_decision.get(&(x, y)) {
                    Some(&(_, Decision::Approve)) => {
                        if self.approval_stands[&(x, y)] {
                            assert!(tx, "approval lost: {ctx}");
                        }
                    }
                    // A decline reaches the other side; there it shows as the
                    // peer's decline, unless that side had said no itself.
                    Some(&(actor, Decision::Revoke | Decision::Reject)) => {
                        assert!(!tx, "{ctx}");
                        let other = if actor == x { sy } else { sx };
                        assert!(
                            matches!(
                                other,
                                Some(
                                    TrustState::RevokedByPeer
                                        | TrustState::RejectedByPeer
                                        | TrustState::Revoked
                                        | TrustState::Rejected
                                )
                            ),
                            "the decline did not reach the peer: {ctx}"
                        );
                    }
                    Some(&(_, Decision::Request | Decision::Policy | Decision::Spent)) | None => {}
                }
            }
        }
    }

    /// Replays every captured envelope at its addressee, live and restarted:
    /// nothing may change.
    fn check_replays(&mut self) {
        let now = self.now;
        for env in self.captured.clone() {
            let to = self.index(&env.body.to);
            let node = &mut self.nodes[to];
            let before = node.snapshot();
            let out = node.recv(now, env.clone());
            assert!(out.writes.is_empty(), "replay wrote: {env:?} {out:?}");
            assert!(out.send.is_empty(), "replay sent: {env:?} {out:?}");
            assert_eq!(node.snapshot(), before, "replay changed state: {env:?}");

            let mut restarted = Node::new(to as u8 + 1, node.m.config().clone());
            restarted.m = node.restored();
            let before = restarted.snapshot();
            let out = restarted.recv(now, env.clone());
            assert!(
                out.writes.is_empty() && out.send.is_empty(),
                "replay after restart acted: {env:?} {out:?}"
            );
            assert_eq!(restarted.snapshot(), before);
        }
    }
}

/// Set KITH_TRACE=1 to follow a failing schedule step by step.
fn trace(line: impl FnOnce() -> String) {
    if std::env::var_os("KITH_TRACE").is_some() {
        eprintln!("{}", line());
    }
}

fn describe(env: &Envelope) -> String {
    format!("{}@{}", env.body.kind.name(), env.body.timestamp_ms - T0)
}

fn cmd_name(cmd: &Command) -> String {
    format!("{cmd:?}")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn scenario(n: usize, seed: u64, ops: Vec<Op>, net: Net) {
    let mut world = World::new(n, seed, net);
    for op in ops {
        world.run(op);
    }
    world.quiesce();
    world.check();
    world.check_replays();
}

proptest! {
    // 192 cases each by default (about a second); PROPTEST_CASES=5000 for a deep run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(192),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn two_nodes_agree_once_quiet(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(2), 1..60),
        net in net(),
    ) {
        scenario(2, seed, ops, net);
    }

    #[test]
    fn three_nodes_agree_once_quiet(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(3), 1..60),
        net in net(),
    ) {
        scenario(3, seed, ops, net);
    }
}

/// A fixed, hand-picked schedule of the crossed reject/request race, kept as
/// a regression test.
#[test]
fn crossed_reject_and_requests_converge() {
    scenario(
        2,
        1,
        vec![
            Op::Request(1, 0),
            Op::Deliver(1),
            Op::Reject(0, 1),
            Op::Request(0, 1),
            Op::Request(1, 0),
            Op::Deliver(5),
            Op::Deliver(5),
        ],
        Net {
            drop_pct: 0,
            dup_pct: 0,
            ack_loss_pct: 0,
            small_cache: true,
        },
    );
}

/// Found by the property test: node 1 revokes while node 0 approves node 1's
/// older request; the revoke is newer, so neither ends up trusting.
#[test]
fn approval_of_a_request_revoked_meanwhile_leads_nowhere() {
    use Op::*;
    scenario(
        2,
        9006058576182484602,
        vec![
            Act(0, 1, 0),
            Request(0, 1),
            Act(0, 1, 0),
            Request(1, 0),
            Revoke(1, 0),
            Act(1, 0, 0),
            Act(0, 1, 0),
            Act(0, 1, 0),
            Act(0, 1, 0),
            Act(0, 1, 0),
            Act(0, 1, 0),
            Act(1, 0, 0),
            Request(1, 0),
            Deliver(1),
            Retransmit,
            Request(1, 0),
            Deliver(1),
            Deliver(1),
            Revoke(0, 1),
            Revoke(1, 0),
            Deliver(1),
            Act(0, 1, 41),
        ],
        Net {
            drop_pct: 30,
            dup_pct: 0,
            ack_loss_pct: 0,
            small_cache: false,
        },
    );
}

/// Found by the property test against a design (not kept) that left repeats of
/// a waiting request unstored: a restart between repeats and a decision.
#[test]
fn repeats_across_a_restart_then_a_decision_replay_nowhere() {
    use Op::*;
    scenario(
        2,
        15740369019930678691,
        vec![
            Act(1, 0, 0),
            Deliver(1),
            Request(1, 0),
            Request(1, 0),
            Deliver(4),
            Restart(0),
            Act(0, 1, 12),
            Deliver(1),
            Act(0, 1, 0),
            Deliver(1),
            Reject(1, 0),
            Approve(0, 1),
            Act(0, 1, 0),
            Request(1, 0),
            Request(1, 0),
        ],
        Net {
            drop_pct: 35,
            dup_pct: 12,
            ack_loss_pct: 0,
            small_cache: false,
        },
    );
}

/// Found by the property test against a design (not kept) that stored repeats
/// once a window: a revoke overtaken by a request after a restart and a decision.
#[test]
fn a_request_within_the_repeat_window_after_a_restart_still_agrees() {
    use Op::*;
    scenario(
        2,
        7234317398597291642,
        vec![
            Request(1, 0),
            Deliver(2),
            Approve(0, 1),
            Act(0, 1, 0),
            Request(1, 0),
            Act(1, 0, 0),
            AutoApprove(0, false),
            AutoApprove(0, false),
            Request(1, 0),
            Act(1, 0, 0),
            Restart(0),
            Request(1, 0),
            Act(0, 1, 1),
            Act(0, 1, 0),
            Act(0, 1, 0),
            Approve(0, 1),
            Deliver(3),
            Revoke(1, 0),
            Act(1, 0, 0),
        ],
        Net {
            drop_pct: 24,
            dup_pct: 14,
            ack_loss_pct: 0,
            small_cache: false,
        },
    );
}
