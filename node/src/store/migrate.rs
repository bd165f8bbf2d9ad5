//! Upgrades a database written by an older schema, inside the transaction that
//! opens it: all of it, or nothing (a failed migration leaves the file as it was).
//!
//! Schema 1 stored a peer's consent as one bool. Schema 2 records where it comes
//! from ([`Consent`]); a request of ours that a peer already declined no longer
//! counts as consent (their decline spends it). This module must never guess a
//! consent that the old record did not hold.

use std::net::SocketAddr;

use kith_keys::NodeId;
use kith_protocol::machine::{Consent, Decider, PeerRecord, TrustState};
use redb::{ReadableTable, WriteTransaction};
use serde::Deserialize;

use super::{PEERS, StoreError, db_err, decode, encode};

/// A peer record as schema 1 stored it (field order is the encoding: keep it).
#[derive(Deserialize)]
struct PeerRecordV1 {
    id: NodeId,
    state: TrustState,
    since_ms: u64,
    name: Option<String>,
    note: Option<String>,
    justification: Option<String>,
    reason: Option<String>,
    address: Option<SocketAddr>,
    source: Option<SocketAddr>,
    expires_at_ms: Option<u64>,
    high_water_ms: u64,
    last_sent_ms: u64,
    decided_by: Option<Decider>,
    consent: bool,
}

impl From<PeerRecordV1> for PeerRecord {
    fn from(v: PeerRecordV1) -> PeerRecord {
        let consent = match (v.consent, v.state) {
            (false, _) => None,
            // Our request, still waiting, or answered by their accept. Any accept of
            // theirs answers it (`at_ms` 0), as schema 1 had it.
            (true, TrustState::OutgoingPending) => Some(Consent::Asked { at_ms: 0 }),
            (true, TrustState::Trusted) if v.decided_by == Some(Decider::Peer) => {
                Some(Consent::Asked { at_ms: 0 })
            }
            (true, TrustState::Trusted) => Some(Consent::Approved {
                by: v.decided_by.unwrap_or(Decider::Operator),
                at_ms: v.since_ms,
            }),
            // Schema 1 kept consent across a peer's decline; schema 2 spends it.
            (true, _) => None,
        };
        let mut rec = PeerRecord::new(v.id, v.state, v.since_ms);
        rec.name = v.name;
        rec.note = v.note;
        rec.justification = v.justification;
        rec.reason = v.reason;
        rec.address = v.address;
        rec.source = v.source;
        rec.expires_at_ms = v.expires_at_ms;
        rec.high_water_ms = v.high_water_ms;
        rec.last_sent_ms = v.last_sent_ms;
        rec.decided_by = v.decided_by;
        rec.consent = consent;
        rec
    }
}

/// Rewrites every schema-1 peer record as schema 2.
pub(super) fn peers_v1_to_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut peers = txn.open_table(PEERS).map_err(db_err)?;
    let mut upgraded = Vec::new();
    for item in peers.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        let old: PeerRecordV1 = decode("peers", v.value())?;
        upgraded.push((k.value().to_vec(), PeerRecord::from(old)));
    }
    for (k, rec) in upgraded {
        peers
            .insert(k.as_slice(), encode(&rec).as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;
    use serde::Serialize;

    #[derive(Serialize)]
    struct WriteV1 {
        id: NodeId,
        state: TrustState,
        since_ms: u64,
        name: Option<String>,
        note: Option<String>,
        justification: Option<String>,
        reason: Option<String>,
        address: Option<SocketAddr>,
        source: Option<SocketAddr>,
        expires_at_ms: Option<u64>,
        high_water_ms: u64,
        last_sent_ms: u64,
        decided_by: Option<Decider>,
        consent: bool,
    }

    fn v1(state: TrustState, decided_by: Option<Decider>, consent: bool) -> WriteV1 {
        WriteV1 {
            id: NodeKey::generate().node_id(),
            state,
            since_ms: 7,
            name: Some("bob".into()),
            note: None,
            justification: None,
            reason: None,
            address: None,
            source: None,
            expires_at_ms: Some(99),
            high_water_ms: 5,
            last_sent_ms: 6,
            decided_by,
            consent,
        }
    }

    #[test]
    fn a_schema_1_database_is_upgraded_on_open_and_declined_consent_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.redb");
        let trusted = v1(TrustState::Trusted, Some(Decider::Operator), true);
        let declined = v1(TrustState::RevokedByPeer, Some(Decider::Peer), true);
        let asking = v1(TrustState::OutgoingPending, Some(Decider::Operator), true);
        {
            // What a schema-1 kith left behind.
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(super::super::META).unwrap();
                meta.insert("schema", encode(&1u32).as_slice()).unwrap();
                let mut peers = txn.open_table(PEERS).unwrap();
                for r in [&trusted, &declined, &asking] {
                    peers
                        .insert(r.id.as_bytes().as_slice(), encode(r).as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = super::super::Store::open(&path).unwrap();
        let peers = store.load().unwrap().peers;
        let get = |id: &NodeId| peers.iter().find(|r| r.id == *id).unwrap();
        let t = get(&trusted.id);
        assert_eq!(t.state, TrustState::Trusted);
        assert_eq!(
            t.consent,
            Some(Consent::Approved {
                by: Decider::Operator,
                at_ms: 7
            })
        );
        assert_eq!(t.name.as_deref(), Some("bob"));
        assert_eq!((t.high_water_ms, t.last_sent_ms), (5, 6));
        assert_eq!(get(&declined.id).consent, None, "a decline spent it");
        assert_eq!(get(&asking.id).consent, Some(Consent::Asked { at_ms: 0 }));
        drop(store);
        // Upgraded once: a second open reads the current schema as it is.
        let again = super::super::Store::open(&path).unwrap().load().unwrap();
        assert_eq!(again.peers.len(), 3);
    }
}
