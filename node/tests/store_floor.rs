//! The floor of our envelope timestamps survives a restart in the real store
//! (redb on disk), even when the record that held it was removed: a peer we
//! dropped remembers what we sent it, and a record made for it again after the
//! restart must start above that (the trust machine's `sent_floor`).

use kith_keys::NodeKey;
use kith_node::store::Store;
use kith_protocol::machine::{Command, Config, Input, Reply, StoreWrite, TrustMachine};

#[test]
fn a_removed_records_last_timestamp_is_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kith.redb");
    let (key, peer) = (NodeKey::generate(), NodeKey::generate().node_id());
    let mut rng = rand_core::OsRng;
    let t0 = 1_700_000_000_000;
    let mut m = TrustMachine::new(key.node_id(), Config::default());
    let store = Store::open(&path).unwrap();
    // Ask, then forget: the record (and its last timestamp) is gone.
    let ask = Command::Request {
        to: peer,
        justification: "hi".into(),
        address: None,
    };
    for cmd in [ask.clone(), Command::Forget { peer }] {
        let out = m.handle(t0, Input::Command(cmd), &key, &mut rng);
        assert_eq!(out.reply, Reply::Done);
        store.apply(&out.writes).unwrap();
    }
    // The forgotten record is reaped once its last word is old enough.
    let later = t0 + m.config().declined_reap_after_ms() + 1;
    let out = m.handle(later, Input::Tick, &key, &mut rng);
    store.apply(&out.writes).unwrap();
    assert!(m.record(&peer).is_none(), "reaped");
    drop(store);
    let snapshot = Store::open(&path).unwrap().load().unwrap();
    assert!(snapshot.sent_floor > t0, "the withdrawal went out above t0");
    // Restarted with the clock back where it was: the new request is newer than both.
    let mut m = TrustMachine::restore(
        key.node_id(),
        Config::default(),
        snapshot.peers,
        snapshot.allow,
        snapshot.deny,
    )
    .with_sent_floor(snapshot.sent_floor);
    let out = m.handle(t0, Input::Command(ask), &key, &mut rng);
    assert_eq!(out.send[0].body.timestamp_ms, snapshot.sent_floor + 1);
    assert!(
        out.writes
            .iter()
            .all(|w| !matches!(w, StoreWrite::SentFloor(_)))
    );
}
