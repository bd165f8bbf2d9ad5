//! The core's leader, batching, stop and failure paths, over real stores.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;

use kith_keys::NodeKey;
use kith_protocol::machine::{Config, Reply};
use tokio::sync::{broadcast, oneshot};

use super::*;

/// A core over `store`, its machine restored from what the store holds.
fn core_over(store: Store) -> Arc<Core> {
    let key = NodeKey::generate();
    let snapshot = store.load().unwrap();
    let machine = TrustMachine::restore(
        key.node_id(),
        Config::default(),
        snapshot.peers,
        snapshot.allow,
        snapshot.deny,
    );
    let (events, _) = broadcast::channel(16);
    let links = CoreLinks {
        key: Arc::new(key),
        events,
        reach: Default::default(),
        unacked: Default::default(),
        home: None,
        services: Default::default(),
        metrics: Default::default(),
        refusals: Default::default(),
    };
    Arc::new(Core::new(machine, store, links))
}

type ReplyRx = oneshot::Receiver<Result<Handled, NodeError>>;

/// A command that changes the store: put `peer` on the deny list.
fn deny(peer: NodeId) -> (CoreMsg, ReplyRx) {
    let (reply, rx) = oneshot::channel();
    let msg = CoreMsg::Handle {
        input: Box::new(Input::Command(Command::Ignore { peer })),
        learn: None,
        reply,
        arrived: std::time::Instant::now(),
    };
    (msg, rx)
}

/// `submit` on another thread; Err if it did not return within 10 s.
fn submit_elsewhere(core: &Arc<Core>, msg: CoreMsg) -> Result<Result<(), NodeError>, String> {
    let (done_tx, done) = mpsc::channel();
    let core = core.clone();
    std::thread::spawn(move || done_tx.send(core.submit(msg)));
    done.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "submit did not return".to_string())
}

fn denied_in(path: &Path) -> Vec<NodeId> {
    Store::open(path).unwrap().load().unwrap().deny
}

/// A core on a store file whose leader is held inside its batch (by a read, on
/// a thread of its own, that waits for `release` and then panics if asked to),
/// with `peer`'s denial queued behind it.
struct Held {
    _dir: tempfile::TempDir,
    path: PathBuf,
    core: Arc<Core>,
    release: mpsc::Sender<()>,
    leader: std::thread::JoinHandle<()>,
    peer: NodeId,
    reply: ReplyRx,
}

fn held_with_a_denial_queued(panic: bool) -> Held {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kith.redb");
    let core = core_over(Store::open(&path).unwrap());
    let (held_tx, held) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let leader = std::thread::spawn({
        let core = core.clone();
        move || {
            let read = CoreMsg::Read(Box::new(move |_, _| {
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                assert!(!panic, "a read that panics");
            }));
            core.submit(read).unwrap();
        }
    });
    held.recv_timeout(Duration::from_secs(10))
        .expect("the read never ran");
    let peer = NodeKey::generate().node_id();
    let (msg, reply) = deny(peer);
    // Returns at once: the leader is busy with its batch and will take it.
    submit_elsewhere(&core, msg).unwrap().unwrap();
    Held {
        _dir: dir,
        path,
        core,
        release,
        leader,
        peer,
        reply,
    }
}

#[test]
fn a_submit_while_another_task_leads_only_queues_and_that_leader_commits_it() {
    let mut held = held_with_a_denial_queued(false);
    assert!(matches!(
        held.reply.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));

    held.release.send(()).unwrap();
    held.leader.join().unwrap();
    let handled = held
        .reply
        .try_recv()
        .expect("the leader handled what was queued");
    assert!(matches!(handled.unwrap().reply, Reply::Done));
    held.core.stop();
    assert_eq!(denied_in(&held.path), vec![held.peer]);
}

#[test]
fn stop_waits_for_the_leader_commits_what_was_queued_then_refuses_and_closes_the_store() {
    let held = held_with_a_denial_queued(false);
    let core = held.core.clone();
    let stopper = {
        let core = core.clone();
        std::thread::spawn(move || core.stop())
    };
    // Stopping refuses new work at once, before the leader is done.
    let (late, _) = deny(NodeKey::generate().node_id());
    let refused = loop {
        match submit_elsewhere(&core, CoreMsg::Tick).unwrap() {
            Err(e) => break e,
            Ok(()) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    assert!(matches!(refused, NodeError::Stopped));
    assert!(matches!(core.submit(late), Err(NodeError::Stopped)));
    assert!(
        !stopper.is_finished(),
        "stop returned while a batch was running"
    );

    held.release.send(()).unwrap();
    held.leader.join().unwrap();
    stopper.join().unwrap();
    // The store is closed (redb would refuse a second open) and holds the queued write.
    assert_eq!(denied_in(&held.path), vec![held.peer]);
}

#[test]
fn a_leader_that_panics_stops_the_core_and_fails_what_was_queued() {
    let mut held = held_with_a_denial_queued(true);
    held.release.send(()).unwrap();
    assert!(held.leader.join().is_err(), "the leader's read panicked");
    // The queued input's reply is dropped, not left waiting for a leader forever.
    assert!(matches!(
        held.reply.try_recv(),
        Err(oneshot::error::TryRecvError::Closed)
    ));
    let (after, _) = deny(NodeKey::generate().node_id());
    assert!(matches!(held.core.submit(after), Err(NodeError::Stopped)));
}

/// An in-memory backend whose syncs fail while `failing` is set.
#[derive(Debug)]
struct FailingDisk {
    inner: redb::backends::InMemoryBackend,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl redb::StorageBackend for FailingDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: no space left on device"));
        }
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(offset, data)
    }
}

#[test]
fn a_failed_commit_fails_its_inputs_with_the_cause_and_stops_the_core_for_good() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Store::with_backend(FailingDisk {
        inner: redb::backends::InMemoryBackend::new(),
        failing: failing.clone(),
    })
    .unwrap();
    let core = core_over(store);
    failing.store(true, Ordering::SeqCst);
    let (msg, mut reply) = deny(NodeKey::generate().node_id());
    core.submit(msg).unwrap();
    match reply.try_recv() {
        Ok(Err(NodeError::Store(StoreError::Failed(cause)))) => {
            assert!(cause.contains("no space left on device"), "{cause}");
        }
        Ok(Ok(_)) => panic!("a commit that failed was acknowledged"),
        Ok(Err(other)) => panic!("expected the commit's failure, got {other:?}"),
        Err(e) => panic!("no answer: {e:?}"),
    }
    // The disk recovers, but the core does not act on what the store refused.
    failing.store(false, Ordering::SeqCst);
    let (msg, _) = deny(NodeKey::generate().node_id());
    assert!(matches!(core.submit(msg), Err(NodeError::Stopped)));
    let cause = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), core.failed()).await })
        .expect("whoever runs the node learns that it failed");
    assert!(cause.contains("no space left on device"), "{cause}");
}

#[test]
fn nothing_accepted_before_stop_is_lost_however_submits_and_stop_interleave() {
    // Each round costs ~0.1 s in a debug build (closing the store dominates).
    for round in 0..50 {
        let core = core_over(Store::in_memory().unwrap());
        let (accepted, ran) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let submitters: Vec<_> = (0..3)
            .map(|_| {
                let (core, accepted, ran) = (core.clone(), accepted.clone(), ran.clone());
                std::thread::spawn(move || {
                    loop {
                        let ran = ran.clone();
                        let read = CoreMsg::Read(Box::new(move |_, _| {
                            ran.fetch_add(1, Ordering::SeqCst);
                        }));
                        match core.submit(read) {
                            Ok(()) => accepted.fetch_add(1, Ordering::SeqCst),
                            Err(_) => break,
                        };
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(20 * (round % 10)));
        core.stop();
        for s in submitters {
            s.join().unwrap();
        }
        assert_eq!(
            ran.load(Ordering::SeqCst),
            accepted.load(Ordering::SeqCst),
            "round {round}: a submit returned Ok but its read never ran"
        );
    }
}

#[test]
fn on_a_runtime_the_leader_hands_what_queued_during_its_batch_to_another_task() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let core = core_over(Store::in_memory().unwrap());
    let (held_tx, held) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (returned_tx, returned_rx) = mpsc::channel::<()>();
    let leader = runtime.spawn({
        let core = core.clone();
        async move {
            let read = CoreMsg::Read(Box::new(move |_, _| {
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            }));
            core.submit(read).unwrap();
            returned_tx.send(()).unwrap();
        }
    });
    held.recv_timeout(Duration::from_secs(10))
        .expect("the leader never ran");
    // Queued during the leader's batch; handled only after the leader returned.
    let (saw_tx, saw) = mpsc::channel();
    let after = CoreMsg::Read(Box::new(move |_, _| {
        let leader_returned = returned_rx.recv_timeout(Duration::from_secs(10)).is_ok();
        saw_tx.send(leader_returned).unwrap();
    }));
    submit_elsewhere(&core, after).unwrap().unwrap();
    release.send(()).unwrap();
    assert!(
        saw.recv_timeout(Duration::from_secs(30)).unwrap(),
        "the leader handled the next batch itself before returning to its caller"
    );
    runtime.block_on(leader).unwrap();
    core.stop();
}

/// An envelope from `from` to `local`, on a direct connection.
fn envelope_msg(
    from: &NodeKey,
    local: NodeId,
    kind: kith_protocol::wire::Kind,
    at_ms: u64,
    nonce: u8,
) -> (CoreMsg, ReplyRx) {
    let envelope = kith_protocol::wire::Envelope::sign(
        kith_protocol::wire::Body {
            kind,
            from: from.node_id(),
            to: local,
            nonce: [nonce; 16],
            timestamp_ms: at_ms,
        },
        from,
    );
    let (reply, rx) = oneshot::channel();
    let msg = CoreMsg::Handle {
        input: Box::new(Input::Envelope {
            envelope,
            transport_peer: Some(from.node_id()),
            source: None,
            via_relay: None,
        }),
        learn: None,
        reply,
        arrived: std::time::Instant::now(),
    };
    (msg, rx)
}

fn acked(rx: &mut ReplyRx) -> AckStatus {
    match rx.try_recv() {
        Ok(Ok(Handled {
            reply: Reply::Ack(ack),
            ..
        })) => ack.status,
        Ok(Ok(_)) => panic!("not an ack"),
        Ok(Err(e)) => panic!("failed: {e}"),
        Err(e) => panic!("no ack released: {e:?}"),
    }
}

/// #22 item 10: a repeat of a waiting request gets no commit of its own at once:
/// it is answered only once its mark is committed, by the next commit that
/// happens or at stop. (Past `DEFER_MAX` the ticker commits it alone; the
/// end-to-end test in tests/adversary_e2e.rs counts those commits.)
#[test]
fn a_repeat_is_answered_only_once_a_later_commit_or_the_stop_has_stored_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kith.redb");
    let core = core_over(Store::open(&path).unwrap());
    let local = lock(&core.state).as_ref().unwrap().machine.local();
    let (stranger, other) = (NodeKey::generate(), NodeKey::generate());
    let request = |words: &str| kith_protocol::wire::Kind::Request {
        justification: words.into(),
    };
    let t = now_ms();

    // A new request is committed and answered at once.
    let (msg, mut first) = envelope_msg(&stranger, local, request("let me in"), t, 1);
    core.submit(msg).unwrap();
    assert_eq!(acked(&mut first), AckStatus::Pending);

    // Its repeat waits: no commit of its own, no answer yet.
    let (msg, mut repeat) = envelope_msg(&stranger, local, request("let me in"), t + 1, 2);
    core.submit(msg).unwrap();
    assert!(
        repeat.try_recv().is_err(),
        "a repeat was answered uncommitted"
    );

    // The next commit (another stranger's new request) takes it along, and the
    // repeat is answered first.
    let (msg, mut second) = envelope_msg(&other, local, request("me too"), t + 2, 3);
    core.submit(msg).unwrap();
    assert_eq!(acked(&mut repeat), AckStatus::Pending);
    assert_eq!(acked(&mut second), AckStatus::Pending);

    // Another repeat waits; stopping commits it, then answers it.
    let (msg, mut last) = envelope_msg(&stranger, local, request("now?"), t + 3, 4);
    core.submit(msg).unwrap();
    assert!(last.try_recv().is_err());
    core.stop();
    assert_eq!(acked(&mut last), AckStatus::Pending);
    let stored = Store::open(&path).unwrap().load().unwrap().peers;
    let record = stored.iter().find(|r| r.id == stranger.node_id()).unwrap();
    assert_eq!(record.high_water_ms, t + 3);
    assert_eq!(record.justification.as_deref(), Some("now?"));
}
