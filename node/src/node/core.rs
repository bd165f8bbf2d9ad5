//! The node's core: the trust machine and its store, and the one way to change them.
//!
//! Everything that can change trust — an envelope off the network, an operator
//! command, a timer — is submitted as a [`CoreMsg`]. A task that submits while no
//! batch is being handled *leads*: on its own thread it takes the queued messages
//! (up to [`MAX_BATCH`]), handles them, commits all their store writes in one
//! durable transaction, and only then releases their replies, events and outgoing
//! envelopes. Tasks that submit meanwhile only queue and await their reply; what
//! they queued is handled by a task the leader spawns after its batch (or by the
//! leader itself, off a Tokio runtime). So nothing is acknowledged before it is on
//! disk, a burst of handshakes costs one fsync, and a lone handshake is committed by
//! the task that received it, with no hand-off to another thread and back (which
//! cost a measured 50–90 µs of a ~1 ms handshake on a 2-core VM). The one
//! exception to "one commit per batch": a batch whose only writes are repeats of
//! waiting requests ([`Output::writes_may_wait`]) is held back, answers and all,
//! until the next commit or [`DEFER_MAX`], so strangers repeating themselves cost
//! at most a few commits a second between them.
//!
//! The leader blocks its thread (a runtime worker) for one batch and its fsync; one
//! leader at a time, so the other workers keep moving bytes. Code here must never
//! await, never take the state lock outside [`Core::lead`] and [`Core::stop`], never
//! release anything of a batch whose commit failed, and never leave a message
//! queued with nobody leading.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kith_keys::NodeId;
use kith_protocol::machine::{Command, EventKind, Input, Output, Reply, StoreWrite, TrustMachine};
use kith_protocol::validate::Refusal;
use kith_protocol::wire::AckStatus;
use tokio::sync::{Notify, watch};
use tracing::warn;

use super::{
    CoreLinks, CoreMsg, Handled, NodeError, Outgoing, ReplyTo, Unacked, dial_addrs, error_chain,
    now_ms,
};
use crate::reach::{PeerReach, targets};
use crate::service::spec::ServiceSpec;
use crate::store::{NodeWrites, Store, StoreError};

/// Inputs handled per store commit; bounds the latency one batch adds.
const MAX_BATCH: usize = 512;
/// The longest the writes of repeated requests ([`Output::writes_may_wait`]) wait
/// for another commit to ride with before they get one of their own: all the
/// repeats of every waiting stranger together cost at most four commits a second.
const DEFER_MAX: Duration = Duration::from_millis(250);
/// The most outputs held back that way; past it they are committed at once.
const DEFER_MAX_OUTPUTS: usize = 4096;
/// The longest the ticker sleeps without looking at the machine's deadline again.
const TICK_MAX_MS: u64 = 60_000;

pub(super) struct Core {
    queue: Mutex<Queue>,
    /// Signalled whenever `Queue::leader` stops being `Running`.
    leader_changed: Condvar,
    /// `None` once stopped (the store closed).
    state: Mutex<Option<CoreState>>,
    links: CoreLinks,
    /// The machine's next deadline in ms since the epoch (0: none), for the ticker.
    deadline: AtomicU64,
    deadline_changed: Notify,
    /// Why the core stopped on its own (its store failed, or a leader panicked);
    /// `None` while it runs or after an orderly [`Core::stop`].
    failure: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct Queue {
    msgs: Vec<CoreMsg>,
    leader: Leader,
    /// Nothing more is accepted: the node is shutting down or its store failed.
    stopped: bool,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// Nothing is queued and nobody handles batches: the next submitter leads.
    #[default]
    Idle,
    /// A task handles batches; it takes what is queued before it stops leading.
    Running,
    /// A task was spawned to handle what is queued and has not started yet.
    HandedOff,
}

struct CoreState {
    machine: TrustMachine,
    store: Store,
    next_seq: u64,
    deferred: Deferred,
}

/// Outputs whose writes may wait ([`Output::writes_may_wait`]), held back with
/// their writes until a commit takes them: nothing of them is released before.
#[derive(Default)]
struct Deferred {
    /// In the order the machine made them, before any later batch's writes.
    writes: Vec<StoreWrite>,
    released: Vec<(ReplyTo, Output, Vec<u64>)>,
    handled_envelopes: Vec<(AckStatus, Instant)>,
    /// When the oldest of them was handled.
    since: Option<Instant>,
}

/// `older` followed by `newer`, leaving `older` empty.
fn older_first<T>(older: &mut Vec<T>, newer: Vec<T>) -> Vec<T> {
    let mut all = std::mem::take(older);
    all.extend(newer);
    all
}

impl Deferred {
    /// When they must be committed, whatever else happens.
    fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + DEFER_MAX)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A leader that panicked stopped the core before unwinding (see `Leading`), so
    // what a poisoned lock guards is never used to decide anything again.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Held by the leader; if it unwinds, the core stops and every queued reply is
/// dropped (its waiter sees `Stopped`) rather than waiting for a leader forever.
struct Leading<'a>(&'a Core);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = lock(&self.0.queue);
            queue.stopped = true;
            queue.msgs.clear();
            self.0.set_leader(&mut queue, Leader::Idle);
            self.0
                .failure
                .send_replace(Some("the node's core panicked (a bug in kith)".into()));
        }
    }
}

impl Core {
    pub(super) fn new(machine: TrustMachine, store: Store, links: CoreLinks) -> Self {
        let deadline = machine.next_deadline().unwrap_or(0);
        Core {
            queue: Mutex::new(Queue::default()),
            leader_changed: Condvar::new(),
            state: Mutex::new(Some(CoreState {
                machine,
                store,
                next_seq: 1,
                deferred: Deferred::default(),
            })),
            links,
            deadline: AtomicU64::new(deadline),
            deadline_changed: Notify::new(),
            failure: watch::Sender::new(None),
        }
    }

    /// Resolves with the cause once the core has stopped on its own.
    pub(super) async fn failed(&self) -> String {
        let mut failure = self.failure.subscribe();
        let cause = failure
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives as long as the core");
        cause.clone().unwrap_or_default()
    }

    /// Queues `msg`, and handles it (with whatever else is queued) on this thread
    /// unless another task is already doing so.
    pub(super) fn submit(self: &Arc<Self>, msg: CoreMsg) -> Result<(), NodeError> {
        {
            let mut queue = lock(&self.queue);
            if queue.stopped {
                return Err(NodeError::Stopped);
            }
            queue.msgs.push(msg);
            if queue.leader != Leader::Idle {
                return Ok(());
            }
            queue.leader = Leader::Running;
        }
        self.lead();
        Ok(())
    }

    fn set_leader(&self, queue: &mut Queue, leader: Leader) {
        queue.leader = leader;
        if leader != Leader::Running {
            self.leader_changed.notify_all();
        }
    }

    /// Handles what is queued, one batch at a time. Only the task that set
    /// `Leader::Running`. On a Tokio runtime it hands what arrived during its first
    /// batch to a task of its own rather than go on: the runtime cannot move the
    /// tasks this one woke off its worker while it is blocked here, and its own
    /// caller waits for it too.
    fn lead(self: &Arc<Self>) {
        let leading = Leading(self);
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut state = lock(&self.state);
        let mut handled = false;
        loop {
            let batch: Vec<CoreMsg> = {
                let mut queue = lock(&self.queue);
                if state.is_none() {
                    queue.stopped = true;
                    queue.msgs.clear();
                }
                if queue.msgs.is_empty() {
                    self.set_leader(&mut queue, Leader::Idle);
                    break;
                }
                if let Some(runtime) = runtime.as_ref().filter(|_| handled && !queue.stopped) {
                    self.set_leader(&mut queue, Leader::HandedOff);
                    let core = self.clone();
                    runtime.spawn(async move { core.resume() });
                    break;
                }
                let n = queue.msgs.len().min(MAX_BATCH);
                queue.msgs.drain(..n).collect()
            };
            let core = state
                .as_mut()
                .expect("a core without state has an empty queue");
            handled = true;
            if let Err(cause) = core.handle_batch(batch, &self.links, false) {
                // The machine holds decisions the store refused; acting on them later
                // could make them durable. Stop instead: every later call fails with
                // `Stopped`, and whoever watches `failure` learns why.
                *state = None;
                self.failure.send_replace(Some(cause));
                continue;
            }
            let flush_ms = core.deferred.due().map(|due| {
                now_ms() + due.saturating_duration_since(Instant::now()).as_millis() as u64
            });
            let deadline = [core.machine.next_deadline(), flush_ms]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(0);
            if self.deadline.swap(deadline, Ordering::Relaxed) != deadline {
                self.deadline_changed.notify_one();
            }
        }
        drop(state);
        drop(leading);
    }

    /// The spawned task a leader handed off to: leads, unless `stop` already did.
    fn resume(self: Arc<Self>) {
        {
            let mut queue = lock(&self.queue);
            if queue.leader != Leader::HandedOff {
                return;
            }
            queue.leader = Leader::Running;
        }
        self.lead();
    }

    /// Handles everything submitted before, then closes the store; later
    /// submissions fail with [`NodeError::Stopped`]. Blocks while another thread
    /// leads, until it has emptied the queue.
    pub(super) fn stop(self: &Arc<Self>) {
        let mut queue = lock(&self.queue);
        queue.stopped = true;
        loop {
            match queue.leader {
                Leader::Idle => break,
                // The spawned task may never run (a runtime shutting down, or this
                // very thread being its only worker): lead in its place.
                Leader::HandedOff => {
                    queue.leader = Leader::Running;
                    drop(queue);
                    self.lead();
                    queue = lock(&self.queue);
                }
                Leader::Running => {
                    queue = self
                        .leader_changed
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        drop(queue);
        // The last leader may still be releasing the state; nobody leads after it.
        // What waits for a commit gets it now.
        let mut state = lock(&self.state);
        if let Some(core) = state.as_mut() {
            if let Err(cause) = core.handle_batch(Vec::new(), &self.links, true) {
                self.failure.send_replace(Some(cause));
            }
        }
        state.take();
    }

    /// Wakes the machine when its next deadline passes; runs until the core stops.
    pub(super) async fn run_ticker(self: Arc<Self>) {
        loop {
            let changed = self.deadline_changed.notified();
            let wait = match self.deadline.load(Ordering::Relaxed) {
                0 => TICK_MAX_MS,
                at => at.saturating_sub(now_ms()).clamp(1, TICK_MAX_MS),
            };
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait)) => {
                    // Every batch first handles what is due; this one may hold nothing else.
                    if self.submit(CoreMsg::Tick).is_err() {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }
}

impl CoreState {
    /// Handles one batch and commits its writes; releases its results only if the
    /// commit succeeded. Writes that may wait are held back instead (see
    /// [`Deferred`]) unless the batch commits anyway, they are due, or `flush`.
    /// Err: the commit failed, with its cause chain.
    fn handle_batch(
        &mut self,
        batch: Vec<CoreMsg>,
        links: &CoreLinks,
        flush: bool,
    ) -> Result<(), String> {
        let CoreLinks {
            key,
            events,
            reach,
            unacked,
            home,
            services,
            metrics,
            refusals,
        } = links;
        let machine = &mut self.machine;
        let mut rng = rand_core::OsRng;
        let now = now_ms();
        let mut writes = Vec::new();
        let mut released: Vec<(ReplyTo, Output, Vec<u64>)> = Vec::new();
        let mut reads = Vec::new();
        // Acknowledgements of this batch and when their envelopes arrived, counted
        // once the batch is committed.
        let mut handled_envelopes = Vec::new();
        // Services exposed or unexposed by this batch, and who waits for the commit.
        let mut service_changes: Vec<(String, Option<ServiceSpec>)> = Vec::new();
        let mut service_done = Vec::new();
        // Outbox markers changed by this batch (with the sequence of a new one),
        // committed with the batch and mirrored to `unacked` after the commit.
        let mut outbox_changes: HashMap<NodeId, Option<Unacked>> = HashMap::new();
        let current_seq =
            |changes: &HashMap<NodeId, Option<Unacked>>, id: &NodeId| match changes.get(id) {
                Some(u) => u.map(|u| u.seq),
                None => unacked.lock().unwrap().get(id).map(|u| u.seq),
            };
        // Reach records changed by this batch, applied to the shared map after the commit.
        let mut reach_changes: HashMap<NodeId, Option<PeerReach>> = HashMap::new();
        let current =
            |changes: &HashMap<NodeId, Option<PeerReach>>, id: &NodeId| match changes.get(id) {
                Some(r) => r.clone(),
                None => reach.lock().unwrap().get(id).cloned(),
            };
        if machine.next_deadline().is_some_and(|d| d <= now) {
            let mut out = machine.handle(now, Input::Tick, key, &mut rng);
            // A tick's messages (an expiry notice) are owed like any other: marked
            // with sequence 0 ("due now"), the resender signs and sends them at once
            // and until the peer acknowledges.
            for envelope in out.send.drain(..) {
                let to = envelope.body.to;
                let since_ms = unacked.lock().unwrap().get(&to).map_or(now, |u| u.since_ms);
                outbox_changes.insert(to, Some(Unacked { seq: 0, since_ms }));
            }
            writes.extend(out.writes.iter().cloned());
            released.push((None, out, Vec::new()));
        }
        for msg in batch {
            match msg {
                CoreMsg::Handle {
                    input,
                    learn,
                    reply,
                    arrived,
                } => {
                    let resend_of = match &*input {
                        Input::Command(Command::Resend { peer }) => Some(*peer),
                        _ => None,
                    };
                    let stamped = match &*input {
                        Input::Envelope {
                            envelope,
                            via_relay,
                            ..
                        } => Some((
                            envelope.body.from,
                            envelope.body.timestamp_ms,
                            via_relay.is_some(),
                        )),
                        _ => None,
                    };
                    let out = machine.handle(now, *input, key, &mut rng);
                    let waits = out.writes_may_wait;
                    if let Some(status) = out.ack() {
                        if waits {
                            self.deferred
                                .handled_envelopes
                                .push((status.clone(), arrived));
                        } else {
                            handled_envelopes.push((status.clone(), arrived));
                        }
                    }
                    let applied = out.refusal().is_none() && !matches!(out.reply, Reply::Failed(_));
                    // Only authenticated envelopes count: the signature is checked
                    // before the skew, so a skew refusal is as authentic as an apply.
                    // A relay may have held an envelope for minutes, so one that came
                    // through a relay looking old says nothing about its sender's clock.
                    if let Some((from, stamp, relayed)) = stamped {
                        let skew = stamp as i64 - now as i64;
                        match out.refusal() {
                            None if applied && !(relayed && skew < 0) => {
                                refusals.note_skew(from, skew, false, now);
                            }
                            Some(Refusal::ClockSkew { skew_ms }) => {
                                refusals.note_skew(from, *skew_ms, true, now);
                            }
                            _ => {}
                        }
                    }
                    for w in &out.writes {
                        if let StoreWrite::RemovePeer(id) = w {
                            reach_changes.insert(*id, None);
                            outbox_changes.insert(*id, None);
                        }
                    }
                    if let (Some(peer), Reply::Failed(_)) = (resend_of, &out.reply) {
                        // Our state implies nothing to send any more: nothing is owed.
                        outbox_changes.insert(peer, None);
                    }
                    let mut seqs = Vec::with_capacity(out.send.len());
                    for envelope in &out.send {
                        let to = envelope.body.to;
                        let since_ms = match outbox_changes.get(&to) {
                            Some(Some(u)) => u.since_ms,
                            Some(None) => now,
                            None => unacked.lock().unwrap().get(&to).map_or(now, |u| u.since_ms),
                        };
                        outbox_changes.insert(
                            to,
                            Some(Unacked {
                                seq: self.next_seq,
                                since_ms,
                            }),
                        );
                        seqs.push(self.next_seq);
                        self.next_seq += 1;
                    }
                    // A repeat learns nothing new, and a stranger repeating itself
                    // with a new hint each time must not buy a commit per repeat.
                    if let Some(learn) = learn.filter(|_| applied && !waits) {
                        // Only for peers we keep a record of: a denied or refused
                        // sender leaves nothing behind.
                        if let Some(peer) = learn.peer.filter(|p| machine.peer(p).is_some()) {
                            let before = current(&reach_changes, &peer);
                            let mut r = before.clone().unwrap_or_default();
                            if let Some(hint) = &learn.hint {
                                r.learn(hint);
                            }
                            if learn.via.is_some() {
                                r.via = learn.via.clone();
                            }
                            // An inbound path only fills in until we reached the peer ourselves.
                            if let Some(path) = learn.path.filter(|_| r.last_path.is_none()) {
                                r.record_path(path, now);
                            }
                            if before.as_ref() != Some(&r) {
                                reach_changes.insert(peer, Some(r));
                            }
                        }
                    }
                    writes.extend(out.writes.iter().cloned());
                    if waits {
                        self.deferred.since.get_or_insert_with(Instant::now);
                        self.deferred.released.push((Some(reply), out, seqs));
                    } else {
                        released.push((Some(reply), out, seqs));
                    }
                }
                CoreMsg::Delivered { peer, seq } | CoreMsg::Abandon { peer, seq } => {
                    if current_seq(&outbox_changes, &peer) == Some(seq) {
                        outbox_changes.insert(peer, None);
                    }
                }
                CoreMsg::Path { peer, path } => {
                    if machine.peer(&peer).is_some() {
                        let mut r = current(&reach_changes, &peer).unwrap_or_default();
                        if r.last_path != Some(path) {
                            r.record_path(path, now);
                            reach_changes.insert(peer, Some(r));
                        }
                    }
                }
                CoreMsg::Read(f) => reads.push(f),
                CoreMsg::Service { name, spec, done } => {
                    service_changes.retain(|(n, _)| *n != name);
                    service_changes.push((name, spec));
                    service_done.push(done);
                }
                CoreMsg::Tick => {}
            }
        }
        let node_writes = NodeWrites {
            reach: reach_changes.into_iter().collect(),
            outbox: outbox_changes
                .iter()
                .map(|(id, u)| (*id, u.map(|u| u.since_ms)))
                .collect(),
            services: service_changes,
        };
        // Writes that may wait are only those of deferred outputs: if nothing else
        // of this batch needs a commit, they wait for one (or for their time).
        let own_writes = released.iter().any(|(_, out, _)| !out.writes.is_empty());
        let commit_now = flush
            || own_writes
            || !node_writes.is_empty()
            || self.deferred.released.len() >= DEFER_MAX_OUTPUTS
            || self.deferred.due().is_some_and(|due| due <= Instant::now());
        if commit_now {
            // Older writes first (a later one to the same record replaces them), and
            // older results released first.
            let held = &mut self.deferred;
            writes = older_first(&mut held.writes, writes);
            released = older_first(&mut held.released, released);
            handled_envelopes = older_first(&mut held.handled_envelopes, handled_envelopes);
            held.since = None;
        } else {
            self.deferred.writes.append(&mut writes);
        }
        let committing = Instant::now();
        let committed = self.store.apply_all(&writes, &node_writes);
        if !writes.is_empty() || !node_writes.is_empty() {
            metrics.commit(committing.elapsed());
        }
        if let Err(e) = committed {
            // Nothing of this batch is durable, so none of it may be acted on. After a
            // failed write redb refuses every later one, so the core stops: the daemon
            // exits with the cause, and a restart reopens the store.
            let cause = error_chain(&e);
            warn!(error = %cause, "store commit failed; stopping the node");
            for (reply, _, _) in released {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(NodeError::Store(StoreError::Failed(cause.clone()))));
                }
            }
            return Err(cause);
        }
        {
            {
                let mut map = reach.lock().unwrap();
                for (id, r) in node_writes.reach {
                    match r {
                        Some(r) => map.insert(id, r),
                        None => map.remove(&id),
                    };
                }
                let mut map = unacked.lock().unwrap();
                for (id, u) in outbox_changes {
                    match u {
                        Some(u) => map.insert(id, u),
                        None => map.remove(&id),
                    };
                }
            }
            {
                let mut map = services.lock().unwrap();
                for (name, spec) in &node_writes.services {
                    match spec {
                        Some(spec) => map.insert(name.clone(), spec.clone()),
                        None => map.remove(name),
                    };
                }
            }
            for done in service_done {
                let _ = done.send(());
            }
            for (status, arrived) in handled_envelopes {
                metrics.envelope(&status, arrived.elapsed());
            }
            for (reply, out, seqs) in released {
                for event in out.events {
                    // A flood of refusals is counted, not let through to flush the events.
                    if let EventKind::Refused { refusal } = &event.kind {
                        if !refusals.note(refusal, event.at_ms) {
                            continue;
                        }
                    }
                    let _ = events.send(event);
                }
                let outgoing = out
                    .send
                    .into_iter()
                    .zip(seqs)
                    .map(|(envelope, seq)| {
                        let to = envelope.body.to;
                        // A forgotten record still reaches the peer it owes a word.
                        let known = dial_addrs(machine.record(&to));
                        let r = reach.lock().unwrap().get(&to).cloned();
                        Outgoing {
                            targets: targets(&known, r.as_ref(), home.as_ref()),
                            envelope,
                            seq,
                        }
                    })
                    .collect();
                let handled = Handled {
                    reply: out.reply,
                    outgoing,
                };
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Ok(handled));
                    }
                    None => debug_assert!(handled.outgoing.is_empty(), "a tick sends nothing"),
                }
            }
        }
        for read in reads {
            read(machine, now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
