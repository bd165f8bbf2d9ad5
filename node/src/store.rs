//! The node's durable state in redb: peers, allow and deny lists, the audit log,
//! and how each peer is reached (its relay, its reply hints; see [`crate::reach`]).
//!
//! The trust state machine says what must be remembered as [`StoreWrite`]s; this
//! module commits a batch of them in one transaction, durably, before the daemon
//! acknowledges anything that depended on them. It must never apply a partial batch
//! or rewrite the audit log: audit entries are only appended, and only the oldest are
//! dropped, past [`MAX_AUDIT_ENTRIES`], so that a flood of strangers cannot grow it
//! without bound.

use std::path::{Path, PathBuf};

use kith_keys::NodeId;
use kith_protocol::machine::{AllowEntry, AuditEntry, PeerRecord, StoreWrite};

use crate::reach::PeerReach;
use crate::service::spec::ServiceSpec;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers");
const ALLOW: TableDefinition<&[u8], &[u8]> = TableDefinition::new("allow");
const DENY: TableDefinition<&[u8], ()> = TableDefinition::new("deny");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Per peer: a postcard [`PeerReach`]. Not trust state: removed with the peer's record.
const REACH: TableDefinition<&[u8], &[u8]> = TableDefinition::new("reach");
/// Peers owed a message they have not acknowledged yet, with when that began (ms).
const OUTBOX: TableDefinition<&[u8], u64> = TableDefinition::new("outbox");
/// Services this node exposes to trusted peers, by name.
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");

mod migrate;
mod open;

/// Bumped when a table's encoding changes; a newer file is refused, not misread,
/// and an older one is upgraded on open (see [`migrate`]). 2: peer consent by origin.
/// 3: the `Forgotten` trust state (a hidden tombstone that still owes the peer a word).
const SCHEMA_VERSION: u32 = 3;
/// The audit log keeps this many of the newest entries; older ones are dropped in the
/// transaction that appends past it. An entry is at most a few KiB (its detail is
/// bounded text), so the log stays within a few hundred MiB at worst, ~20 MiB typically.
pub const MAX_AUDIT_ENTRIES: u64 = 100_000;

/// META key: the node id (32 bytes) this database belongs to. A database records
/// the trust of one identity; another identity must never inherit it.
const OWNER_KEY: &str = "owner";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[source] Box<redb::Error>),
    #[error("cannot open the database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error(
        "the database {} is already open in another process: is a kith daemon already \
         running for this data dir?",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error(
        "the database {} is damaged ({detail}); restore it from a backup, or move it away \
         to start again with no peers",
        path.display()
    )]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "the database was written by a newer kith (schema {found}, this build reads {SCHEMA_VERSION})"
    )]
    NewerSchema { found: u32 },
    #[error(
        "the database {path} holds the peers of node {owner}, not of this node {ours}: its \
         peers never approved this identity. Restore node {owner}'s keystore (`kith init \
         --recover` with its phrase and index) to run it, or move {path} aside to start \
         this node with no peers"
    )]
    OtherIdentity {
        path: String,
        owner: NodeId,
        ours: NodeId,
    },
    #[error("the database commit failed: {0}")]
    Failed(String),
    #[error("a {table} key in the database is not a node id")]
    BadKey { table: &'static str },
    #[error("a {table} record in the database is damaged")]
    Decode {
        table: &'static str,
        #[source]
        source: postcard::Error,
    },
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding of store records cannot fail")
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { table, source })
}

/// Everything the store holds, as loaded at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub peers: Vec<PeerRecord>,
    pub allow: Vec<(NodeId, AllowEntry)>,
    pub deny: Vec<NodeId>,
    /// The auto-approve policy as last set by command (false if never set).
    pub auto_approve: bool,
    /// The floor of our envelope timestamps kept from removed records
    /// (`StoreWrite::SentFloor`; 0 if never set).
    pub sent_floor: u64,
    /// How each peer is reached.
    pub reach: Vec<(NodeId, PeerReach)>,
    /// Peers owed an unacknowledged message, and since when (ms).
    pub outbox: Vec<(NodeId, u64)>,
    /// Exposed services, by name.
    pub services: Vec<(String, ServiceSpec)>,
}

/// Changes to the node's own tables that ride along with the trust machine's writes.
#[derive(Debug, Default)]
pub struct NodeWrites {
    /// Reach records; `None` removes one.
    pub reach: Vec<(NodeId, Option<PeerReach>)>,
    /// Outbox markers; `None` removes one.
    pub outbox: Vec<(NodeId, Option<u64>)>,
    /// Services; `None` removes one.
    pub services: Vec<(String, Option<ServiceSpec>)>,
}

impl NodeWrites {
    pub fn is_empty(&self) -> bool {
        self.reach.is_empty() && self.outbox.is_empty() && self.services.is_empty()
    }
}

/// Whose a database is, as found by [`Store::bind_owner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// It already belonged to this identity.
    Owned,
    /// It recorded no owner (new, or written before owners were recorded) and now
    /// belongs to this identity.
    Adopted,
}

/// The node's database.
pub struct Store {
    db: Database,
    /// The file, for messages; `None` in memory.
    path: Option<PathBuf>,
    /// Audit entries kept (the newest).
    audit_cap: u64,
}

impl Store {
    /// Opens (creating if missing) the database file. A damaged file is refused
    /// with an error naming it, and left as it is. See `store::open` for how a new file
    /// is made whole.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(open::open_file(path)?, Some(path.to_owned()))
    }

    /// Reads the database file at `path` into a private in-memory copy, for commands
    /// that answer while no daemon runs. redb never opens the file itself, so nothing
    /// locks it (a daemon starting meanwhile is not refused) and nothing repairs or
    /// writes it. A file over `max_len` bytes is refused rather than read whole.
    pub fn open_copy(path: &Path, max_len: u64) -> Result<Self, StoreError> {
        Self::init(open::read_copy(path, max_len)?, Some(path.to_owned()))
    }

    /// A database over any redb backend, e.g. one that fails on cue.
    #[cfg(test)]
    pub(crate) fn with_backend(backend: impl redb::StorageBackend) -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(db_err)?;
        Self::init(db, None)
    }

    /// A database that lives only in memory, for embedded nodes and tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        Self::init(db, None)
    }

    fn init(db: Database, path: Option<PathBuf>) -> Result<Self, StoreError> {
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let found = meta
                .get("schema")
                .map_err(db_err)?
                .map(|v| decode::<u32>("meta", v.value()))
                .transpose()?;
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::NewerSchema { found: v }),
                Some(SCHEMA_VERSION) => {}
                Some(v @ (1 | 2)) => {
                    if v == 1 {
                        migrate::peers_v1_to_v2(&txn)?;
                    }
                    // Schema 3 only added a trust state (`Forgotten`, appended), which
                    // a schema-2 kith could not read: the records stay as they are.
                    meta.insert("schema", encode(&SCHEMA_VERSION).as_slice())
                        .map_err(db_err)?;
                }
                Some(v) => return Err(StoreError::NewerSchema { found: v }),
                None => {
                    meta.insert("schema", encode(&SCHEMA_VERSION).as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.open_table(PEERS).map_err(db_err)?;
            txn.open_table(ALLOW).map_err(db_err)?;
            txn.open_table(DENY).map_err(db_err)?;
            txn.open_table(AUDIT).map_err(db_err)?;
            txn.open_table(REACH).map_err(db_err)?;
            txn.open_table(OUTBOX).map_err(db_err)?;
            txn.open_table(SERVICES).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Store {
            db,
            path,
            audit_cap: MAX_AUDIT_ENTRIES,
        })
    }

    /// Keeps only the newest `cap` audit entries from the next commit on, instead of
    /// [`MAX_AUDIT_ENTRIES`] (for tests and benchmarks).
    pub fn with_audit_cap(mut self, cap: u64) -> Self {
        self.audit_cap = cap;
        self
    }

    /// The identity this database belongs to, if one is recorded.
    pub fn owner(&self) -> Result<Option<NodeId>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let owner = meta.get(OWNER_KEY).map_err(db_err)?;
        owner.map(|v| node_id("meta", v.value())).transpose()
    }

    /// Makes sure the database belongs to `id`: one with no owner recorded (new, or
    /// from before owners were recorded) becomes `id`'s; one that belongs to another
    /// identity is refused and left as it is.
    pub fn bind_owner(&self, id: NodeId) -> Result<Ownership, StoreError> {
        match self.check_owner(id)? {
            Ownership::Owned => Ok(Ownership::Owned),
            Ownership::Adopted => {
                self.set_owner(Some(id))?;
                Ok(Ownership::Adopted)
            }
        }
    }

    /// What [`Store::bind_owner`] would do, without writing anything.
    pub fn check_owner(&self, id: NodeId) -> Result<Ownership, StoreError> {
        match self.owner()? {
            Some(owner) if owner == id => Ok(Ownership::Owned),
            Some(owner) => Err(StoreError::OtherIdentity {
                path: self
                    .path
                    .as_ref()
                    .map_or_else(|| "in memory".into(), |p| p.display().to_string()),
                owner,
                ours: id,
            }),
            None => Ok(Ownership::Adopted),
        }
    }

    /// Records `owner` as the identity this database belongs to (`None`: no owner,
    /// so the next identity to open it adopts it). For `kith fork` only.
    pub fn set_owner(&self, owner: Option<NodeId>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            match owner {
                Some(id) => meta
                    .insert(OWNER_KEY, id.as_bytes().as_slice())
                    .map_err(db_err)?,
                None => meta.remove(OWNER_KEY).map_err(db_err)?,
            };
        }
        txn.commit().map_err(db_err)
    }

    /// Reads peers, allow and deny lists.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut snapshot = Snapshot::default();
        for item in txn
            .open_table(PEERS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (_, v) = item.map_err(db_err)?;
            snapshot.peers.push(decode("peers", v.value())?);
        }
        for item in txn
            .open_table(ALLOW)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = item.map_err(db_err)?;
            snapshot
                .allow
                .push((node_id("allow", k.value())?, decode("allow", v.value())?));
        }
        for item in txn
            .open_table(DENY)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, _) = item.map_err(db_err)?;
            snapshot.deny.push(node_id("deny", k.value())?);
        }
        if let Some(v) = txn
            .open_table(META)
            .map_err(db_err)?
            .get("auto_approve")
            .map_err(db_err)?
        {
            snapshot.auto_approve = decode("meta", v.value())?;
        }
        if let Some(v) = txn
            .open_table(META)
            .map_err(db_err)?
            .get("sent_floor")
            .map_err(db_err)?
        {
            snapshot.sent_floor = decode("meta", v.value())?;
        }
        for item in txn
            .open_table(REACH)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = item.map_err(db_err)?;
            snapshot
                .reach
                .push((node_id("reach", k.value())?, decode("reach", v.value())?));
        }
        for item in txn
            .open_table(OUTBOX)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = item.map_err(db_err)?;
            snapshot
                .outbox
                .push((node_id("outbox", k.value())?, v.value()));
        }
        for item in txn
            .open_table(SERVICES)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = item.map_err(db_err)?;
            snapshot
                .services
                .push((k.value().to_string(), decode("services", v.value())?));
        }
        Ok(snapshot)
    }

    /// Commits every write in one durable transaction: all of them, or none.
    pub fn apply(&self, writes: &[StoreWrite]) -> Result<(), StoreError> {
        self.apply_all(writes, &NodeWrites::default())
    }

    /// [`Store::apply`], plus the node's own records, in the same transaction.
    /// Removing a peer removes its reach record and outbox marker too.
    pub fn apply_all(&self, writes: &[StoreWrite], node: &NodeWrites) -> Result<(), StoreError> {
        let reach_writes = &node.reach;
        if writes.is_empty() && node.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        if !node.services.is_empty() {
            let mut services = txn.open_table(SERVICES).map_err(db_err)?;
            for (name, spec) in &node.services {
                match spec {
                    Some(spec) => services
                        .insert(name.as_str(), encode(spec).as_slice())
                        .map_err(db_err)?,
                    None => services.remove(name.as_str()).map_err(db_err)?,
                };
            }
        }
        let removed: Vec<&NodeId> = writes
            .iter()
            .filter_map(|w| match w {
                StoreWrite::RemovePeer(id) => Some(id),
                _ => None,
            })
            .collect();
        // A removed peer's marker and reach go first: `node` holds the state after the
        // whole batch, and a later input of the batch may have written them anew.
        if !node.outbox.is_empty() || !removed.is_empty() {
            let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
            for id in &removed {
                outbox.remove(id.as_bytes().as_slice()).map_err(db_err)?;
            }
            for (id, value) in &node.outbox {
                match value {
                    Some(since) => outbox
                        .insert(id.as_bytes().as_slice(), since)
                        .map_err(db_err)?,
                    None => outbox.remove(id.as_bytes().as_slice()).map_err(db_err)?,
                };
            }
        }
        if !reach_writes.is_empty() || !removed.is_empty() {
            let mut reach = txn.open_table(REACH).map_err(db_err)?;
            for id in &removed {
                reach.remove(id.as_bytes().as_slice()).map_err(db_err)?;
            }
            for (id, value) in reach_writes {
                match value {
                    Some(r) => {
                        reach
                            .insert(id.as_bytes().as_slice(), encode(r).as_slice())
                            .map_err(db_err)?;
                    }
                    None => {
                        reach.remove(id.as_bytes().as_slice()).map_err(db_err)?;
                    }
                }
            }
        }
        {
            let mut peers = txn.open_table(PEERS).map_err(db_err)?;
            let mut allow = txn.open_table(ALLOW).map_err(db_err)?;
            let mut deny = txn.open_table(DENY).map_err(db_err)?;
            let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let mut next_seq = match audit.last().map_err(db_err)? {
                Some((k, _)) => k.value() + 1,
                None => 0,
            };
            for write in writes {
                match write {
                    StoreWrite::Peer(record) => {
                        peers
                            .insert(record.id.as_bytes().as_slice(), encode(record).as_slice())
                            .map_err(db_err)?;
                    }
                    StoreWrite::RemovePeer(id) => {
                        peers.remove(id.as_bytes().as_slice()).map_err(db_err)?;
                    }
                    StoreWrite::Allow(id, entry) => {
                        allow
                            .insert(id.as_bytes().as_slice(), encode(entry).as_slice())
                            .map_err(db_err)?;
                    }
                    StoreWrite::Disallow(id) => {
                        allow.remove(id.as_bytes().as_slice()).map_err(db_err)?;
                    }
                    StoreWrite::Deny(id) => {
                        deny.insert(id.as_bytes().as_slice(), ()).map_err(db_err)?;
                    }
                    StoreWrite::Undeny(id) => {
                        deny.remove(id.as_bytes().as_slice()).map_err(db_err)?;
                    }
                    StoreWrite::AutoApprove(on) => {
                        meta.insert("auto_approve", encode(on).as_slice())
                            .map_err(db_err)?;
                    }
                    StoreWrite::SentFloor(ms) => {
                        // Only ever raised: writes of one batch come in order, but
                        // keep the maximum whatever the order.
                        let old = meta
                            .get("sent_floor")
                            .map_err(db_err)?
                            .map(|v| decode::<u64>("meta", v.value()))
                            .transpose()?
                            .unwrap_or(0);
                        meta.insert("sent_floor", encode(&old.max(*ms)).as_slice())
                            .map_err(db_err)?;
                    }
                    StoreWrite::Audit(entry) => {
                        audit
                            .insert(next_seq, encode(entry).as_slice())
                            .map_err(db_err)?;
                        next_seq += 1;
                    }
                }
            }
            // Keys are consecutive (appended at the end, dropped from the front), so
            // the count is the distance from the first to the next.
            let first = audit.first().map_err(db_err)?.map(|(k, _)| k.value());
            let excess = first.map_or(0, |first| (next_seq - first).saturating_sub(self.audit_cap));
            for _ in 0..excess {
                audit.pop_first().map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// The last `limit` audit entries, oldest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db_err)?.rev().take(limit) {
            let (_, v) = item.map_err(db_err)?;
            out.push(decode("audit", v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// How many audit entries are kept (at most [`MAX_AUDIT_ENTRIES`]).
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        txn.open_table(AUDIT).map_err(db_err)?.len().map_err(db_err)
    }
}

fn node_id(table: &'static str, bytes: &[u8]) -> Result<NodeId, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .ok()
        .and_then(|b| NodeId::from_bytes(b).ok())
        .ok_or(StoreError::BadKey { table })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;
    use kith_protocol::machine::TrustState;

    fn store_with_a_peer(path: &Path) {
        let store = Store::open(path).unwrap();
        let peer = PeerRecord::new(NodeKey::generate().node_id(), TrustState::Trusted, 1);
        store.apply(&[StoreWrite::Peer(peer)]).unwrap();
    }

    /// Opening fails with `Damaged` naming the file, and the file is left as it was.
    fn refused_as_damaged(path: &Path) -> String {
        let before = std::fs::read(path).unwrap();
        let err = match Store::open(path) {
            Err(e @ StoreError::Damaged { .. }) => e.to_string(),
            Err(other) => panic!("expected Damaged, got {other:?}"),
            Ok(_) => panic!("a damaged database was opened"),
        };
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(std::fs::read(path).unwrap(), before, "the file was changed");
        err
    }

    #[test]
    fn a_database_cut_short_is_refused_as_damaged_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.redb");
        store_with_a_peer(&path);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 2).unwrap();
        drop(file);
        refused_as_damaged(&path);
    }

    #[test]
    fn an_empty_or_truncated_database_is_refused_never_made_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.redb");
        store_with_a_peer(&path);
        let whole = std::fs::read(&path).unwrap();
        for len in [0, 1, 64, 511, 4096, whole.len() / 3, whole.len() - 1] {
            std::fs::write(&path, &whole[..len]).unwrap();
            let err = refused_as_damaged(&path);
            if len == 0 {
                assert!(err.contains("empty"), "{err}");
            }
        }
    }

    #[test]
    fn a_database_belongs_to_the_first_identity_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.redb");
        let (first, second) = (NodeKey::generate().node_id(), NodeKey::generate().node_id());
        store_with_a_peer(&path);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.owner().unwrap(), None, "no owner before one binds");
        assert_eq!(store.bind_owner(first).unwrap(), Ownership::Adopted);
        assert_eq!(store.bind_owner(first).unwrap(), Ownership::Owned);
        drop(store);
        let store = Store::open(&path).unwrap();
        let err = store.bind_owner(second).unwrap_err();
        assert!(matches!(err, StoreError::OtherIdentity { owner, ours, .. }
            if owner == first && ours == second));
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("move") && text.contains("aside"), "{text}");
        assert_eq!(
            store.owner().unwrap(),
            Some(first),
            "a refusal changes nothing"
        );
        store.set_owner(None).unwrap();
        assert_eq!(store.bind_owner(second).unwrap(), Ownership::Adopted);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.redb");
        std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
        let err = refused_as_damaged(&path);
        assert!(err.contains("restore it from a backup"), "{err}");
    }

    #[test]
    fn a_peer_removed_then_written_anew_in_one_batch_keeps_its_new_marker_and_reach() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.redb");
        let store = Store::open(&path).unwrap();
        let peer = NodeKey::generate().node_id();
        let record = PeerRecord::new(peer, TrustState::OutgoingPending, 1);
        let reach = PeerReach {
            direct: Some(vec!["127.0.0.1:7444".parse().unwrap()]),
            ..PeerReach::default()
        };
        // E.g. `forget` then `request` in one batch: the node's writes hold the final state.
        store
            .apply_all(
                &[StoreWrite::RemovePeer(peer), StoreWrite::Peer(record)],
                &NodeWrites {
                    reach: vec![(peer, Some(reach.clone()))],
                    outbox: vec![(peer, Some(5))],
                    services: Vec::new(),
                },
            )
            .unwrap();
        drop(store);
        let snapshot = Store::open(&path).unwrap().load().unwrap();
        assert_eq!(snapshot.peers.len(), 1);
        assert_eq!(snapshot.outbox, vec![(peer, 5)]);
        assert_eq!(snapshot.reach, vec![(peer, reach)]);
    }

    #[test]
    fn the_audit_log_keeps_only_the_newest_entries_past_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kith.redb"))
            .unwrap()
            .with_audit_cap(5);
        let entry = |n: u64| AuditEntry {
            at_ms: n,
            peer: None,
            action: kith_protocol::machine::AuditAction::Rejected,
            detail: None,
        };
        for n in 0..4 {
            store.apply(&[StoreWrite::Audit(entry(n))]).unwrap();
        }
        // One batch well past the cap.
        let batch: Vec<StoreWrite> = (4..12).map(|n| StoreWrite::Audit(entry(n))).collect();
        store.apply(&batch).unwrap();
        assert_eq!(store.audit_len().unwrap(), 5);
        let kept: Vec<u64> = store
            .audit_tail(100)
            .unwrap()
            .iter()
            .map(|e| e.at_ms)
            .collect();
        assert_eq!(kept, vec![7, 8, 9, 10, 11]);
        store.apply(&[StoreWrite::Audit(entry(12))]).unwrap();
        let kept: Vec<u64> = store
            .audit_tail(100)
            .unwrap()
            .iter()
            .map(|e| e.at_ms)
            .collect();
        assert_eq!(
            kept,
            vec![8, 9, 10, 11, 12],
            "appends continue after the dropped ones"
        );
    }

    #[test]
    fn a_database_open_elsewhere_is_reported_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.redb");
        let _first = Store::open(&path).unwrap();
        match Store::open(&path) {
            Err(e @ StoreError::InUse { .. }) => {
                let text = e.to_string();
                assert!(text.contains("already running"), "{text}");
                assert!(text.contains(&path.display().to_string()), "{text}");
            }
            other => panic!("expected InUse, got {:?}", other.err()),
        }
    }
}
