//! The instance record: where this data dir was created, so a copy is noticed.
//!
//! A data dir copied by a VM snapshot, a container image or a backup restore would
//! run a second node with the same key, and peers could not tell the two apart.
//! `instance.json` records a random instance id, the machine id, hostname and
//! canonical path the node was created at, and its derivation index. Commands that
//! unlock the identity compare it with where they run; on a mismatch the operator
//! chooses `kith fork` (this is a copy: become a new node) or `kith adopt` (the same
//! node, moved). This module must never silently rewrite the record.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kith_keys::fsutil::{self, WriteError, WriteMode};
use kith_keys::{HARDENED, NodeId};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

pub const INSTANCE_FILE: &str = "instance.json";
const RECORD_VERSION: u32 = 1;

/// The node this one was forked from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub node_id: String,
    pub index: u32,
    pub instance_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub version: u32,
    /// 128 random bits, hex; new for every init and fork, kept by adopt.
    pub instance_id: String,
    pub node_id: String,
    pub index: u32,
    pub machine_id: String,
    pub hostname: String,
    /// The data dir's canonical path.
    pub data_dir: PathBuf,
    pub created_at_ms: u64,
    pub parent: Option<Parent>,
    pub adopted_at_ms: Option<u64>,
}

/// Where a command runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Here {
    pub machine_id: String,
    pub hostname: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot read the instance record {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the instance record {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot resolve the data directory {path}")]
    Canonical { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Moved(Box<Moved>),
    #[error(
        "the instance record names node {recorded} (index {recorded_index}) but the keystore \
         holds {actual} (index {actual_index}); an interrupted `kith fork`? Run `kith fork` again"
    )]
    IdentityMismatch {
        recorded: String,
        recorded_index: u32,
        actual: String,
        actual_index: u32,
    },
}

/// A data dir running somewhere other than where it was created.
#[derive(Debug, thiserror::Error)]
#[error(
    "this data directory was created as node {recorded_id} on {recorded_host} \
     (machine {recorded_machine}) at {recorded_path}, but now runs on {here_host} \
     (machine {here_machine}) at {here_path}. If it is a copy (a VM snapshot, an image, \
     a restored backup), run `kith fork` to make it a new node with its own identity; \
     if this node moved here and the old copy is gone, run `kith adopt`"
)]
pub struct Moved {
    pub recorded_id: String,
    pub recorded_host: String,
    pub recorded_machine: String,
    pub recorded_path: String,
    pub here_host: String,
    pub here_machine: String,
    pub here_path: String,
}

/// This machine's id: `/etc/machine-id`, else D-Bus's copy, else `host:<hostname>`.
pub fn machine_id() -> String {
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(text) = fs::read_to_string(path) {
            let id = text.trim();
            if !id.is_empty() {
                return id.to_string();
            }
        }
    }
    format!("host:{}", hostname())
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Here {
    pub fn detect(data_dir: &Path) -> Result<Here, InstanceError> {
        let data_dir = fs::canonicalize(data_dir).map_err(|source| InstanceError::Canonical {
            path: data_dir.to_path_buf(),
            source,
        })?;
        Ok(Here {
            machine_id: machine_id(),
            hostname: hostname(),
            data_dir,
        })
    }
}

fn random_instance_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    data_encoding::HEXLOWER.encode(&bytes)
}

/// A hardened derivation index drawn from OS entropy, different from `avoid`: two
/// copies forked independently pick different indices with overwhelming probability.
pub fn random_index(avoid: u32) -> u32 {
    loop {
        let index = OsRng.next_u32() & !HARDENED;
        if index != avoid {
            return index;
        }
    }
}

impl InstanceRecord {
    /// A record for a node created (or forked) here now.
    pub fn new(
        here: &Here,
        node_id: NodeId,
        index: u32,
        now_ms: u64,
        parent: Option<Parent>,
    ) -> Self {
        InstanceRecord {
            version: RECORD_VERSION,
            instance_id: random_instance_id(),
            node_id: node_id.to_string(),
            index,
            machine_id: here.machine_id.clone(),
            hostname: here.hostname.clone(),
            data_dir: here.data_dir.clone(),
            created_at_ms: now_ms,
            parent,
            adopted_at_ms: None,
        }
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(INSTANCE_FILE)
    }

    /// Reads the record; `Ok(None)` when the data dir has none yet.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, InstanceError> {
        let path = Self::path(data_dir);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(InstanceError::Read { path, source }),
        };
        let record: InstanceRecord =
            serde_json::from_slice(&text).map_err(|e| InstanceError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if record.version != RECORD_VERSION {
            return Err(InstanceError::Damaged {
                path,
                reason: format!("unknown version {}", record.version),
            });
        }
        Ok(Some(record))
    }

    /// Writes the record atomically (mode 0600), replacing any previous one.
    pub fn save(&self, data_dir: &Path) -> Result<(), InstanceError> {
        let text = serde_json::to_vec_pretty(self).expect("an instance record always encodes");
        fsutil::write_private(&Self::path(data_dir), &text, WriteMode::Replace)?;
        Ok(())
    }

    /// Checks that the record describes `node_id` at `index`, running `here`.
    pub fn check(&self, here: &Here, node_id: NodeId, index: u32) -> Result<(), InstanceError> {
        if self.node_id != node_id.to_string() || self.index != index {
            return Err(InstanceError::IdentityMismatch {
                recorded: self.node_id.clone(),
                recorded_index: self.index,
                actual: node_id.to_string(),
                actual_index: index,
            });
        }
        if self.machine_id != here.machine_id || self.data_dir != here.data_dir {
            return Err(InstanceError::Moved(Box::new(Moved {
                recorded_id: self.node_id.clone(),
                recorded_host: self.hostname.clone(),
                recorded_machine: self.machine_id.clone(),
                recorded_path: self.data_dir.display().to_string(),
                here_host: here.hostname.clone(),
                here_machine: here.machine_id.clone(),
                here_path: here.data_dir.display().to_string(),
            })));
        }
        Ok(())
    }

    /// The same node, confirmed at a new place.
    pub fn adopted(&self, here: &Here, now_ms: u64) -> Self {
        InstanceRecord {
            machine_id: here.machine_id.clone(),
            hostname: here.hostname.clone(),
            data_dir: here.data_dir.clone(),
            adopted_at_ms: Some(now_ms),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;

    #[test]
    fn a_record_matches_where_it_was_made_and_not_a_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let id = NodeKey::generate().node_id();
        let here = Here::detect(tmp.path()).unwrap();
        let record = InstanceRecord::new(&here, id, 0, 1, None);
        record.save(tmp.path()).unwrap();
        let loaded = InstanceRecord::load(tmp.path()).unwrap().unwrap();
        assert_eq!(loaded, record);
        loaded.check(&here, id, 0).unwrap();

        let copy = Here {
            data_dir: PathBuf::from("/elsewhere"),
            ..here.clone()
        };
        let err = loaded.check(&copy, id, 0).unwrap_err();
        assert!(
            err.to_string().contains("kith fork") && err.to_string().contains("kith adopt"),
            "{err}"
        );
        let other_machine = Here {
            machine_id: "another".into(),
            ..here.clone()
        };
        assert!(matches!(
            loaded.check(&other_machine, id, 0),
            Err(InstanceError::Moved(_))
        ));
        assert!(matches!(
            loaded.check(&here, id, 5),
            Err(InstanceError::IdentityMismatch { .. })
        ));

        let adopted = loaded.adopted(&copy, 2);
        assert_eq!(adopted.instance_id, record.instance_id);
        adopted.check(&copy, id, 0).unwrap();
    }

    #[test]
    fn random_indices_are_hardened_range_and_avoid_the_current() {
        for _ in 0..1000 {
            let i = random_index(0);
            assert!(i < HARDENED && i != 0);
        }
        assert_ne!(random_instance_id(), random_instance_id());
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(INSTANCE_FILE), b"{not json").unwrap();
        assert!(matches!(
            InstanceRecord::load(tmp.path()),
            Err(InstanceError::Damaged { .. })
        ));
        assert!(
            InstanceRecord::load(&tmp.path().join("none"))
                .unwrap()
                .is_none()
        );
    }
}
