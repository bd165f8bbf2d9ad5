//! The instance record: where this data dir was created, so a copy is noticed.
//!
//! A data dir copied by a VM snapshot, a container image or a backup restore would
//! run a second node with the same key, and peers could not tell the two apart.
//! `instance.json` records a random instance id, the node id and index, the machine id
//! (when the machine has one), hostname and canonical path, and the hash of this
//! instance's secret, which lives outside the data dir ([`crate::instance_secret`]).
//! Commands that unlock the identity compare the record with where they run; on a
//! mismatch the operator chooses `kith fork` (this is a copy: become a new node) or
//! `kith adopt` (the same node, moved).
//!
//! What is compared, in order ([`InstanceRecord::check`]):
//! - the secret for this path is here and matches: the same instance, unless the
//!   machine id changed (a whole machine cloned with its state, then given a new id);
//! - a different secret is here for this path: not the data dir that lives here;
//! - no secret here: a copy or a move if the path or the machine id differ; if both
//!   are the same (or this machine has no id), the state was lost (a re-created
//!   container, a cleared state dir): accepted with a warning and a new secret.
//!
//! This module must never rewrite the record silently: every re-binding is reported
//! to the caller as a warning.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use kith_keys::fsutil::{self, WriteError, WriteMode};
use kith_keys::{HARDENED, NodeId};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::instance_secret::{InstanceSecret, SecretError, SecretStore};

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
    /// `/etc/machine-id`; empty when the machine had none. (Records written before
    /// this field's meaning was narrowed may hold `host:<hostname>`: also unknown.)
    pub machine_id: String,
    pub hostname: String,
    /// The data dir's canonical path.
    pub data_dir: PathBuf,
    pub created_at_ms: u64,
    pub parent: Option<Parent>,
    pub adopted_at_ms: Option<u64>,
    /// Hash of this instance's secret (see [`crate::instance_secret`]); absent in
    /// records from before instance secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// Where that secret is kept (so every command finds the same one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_dir: Option<PathBuf>,
}

/// Where a command runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Here {
    /// `None` where the machine has no machine id (many containers).
    pub machine_id: Option<String>,
    pub hostname: String,
    pub data_dir: PathBuf,
}

/// A record that matches, or may be brought up to date with a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Custody {
    Same,
    /// Accept, bind a new secret to the record, and show the operator this warning.
    Rebind(String),
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
    Secret(#[from] SecretError),
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
     (machine {recorded_machine}) at {recorded_path}, but {reason}. If it is a copy (a VM \
     snapshot, an image, a restored backup, a second container), run `kith fork` to make it \
     a new node with its own identity; if this node moved here and the old copy is gone, \
     run `kith adopt`"
)]
pub struct Moved {
    pub recorded_id: String,
    pub recorded_host: String,
    pub recorded_machine: String,
    pub recorded_path: String,
    /// What differs, as a clause.
    pub reason: String,
}

/// This machine's id: `/etc/machine-id`, else D-Bus's copy; `None` when it has neither
/// (the hostname is no substitute: containers get a new one each time they are made).
pub fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .into_iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .map(|text| text.trim().to_string())
        .find(|id| !id.is_empty() && id != "uninitialized")
}

/// A recorded machine id, or `None` for unknown (empty, or an old `host:` fallback).
fn known(machine_id: &str) -> Option<&str> {
    (!machine_id.is_empty() && !machine_id.starts_with("host:")).then_some(machine_id)
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
    /// A record for a node created (or forked) here now, bound to `secret`.
    pub fn new(
        here: &Here,
        node_id: NodeId,
        index: u32,
        now_ms: u64,
        parent: Option<Parent>,
        secret: &InstanceSecret,
        store: &SecretStore,
    ) -> Self {
        InstanceRecord {
            version: RECORD_VERSION,
            instance_id: random_instance_id(),
            node_id: node_id.to_string(),
            index,
            machine_id: here.machine_id.clone().unwrap_or_default(),
            hostname: here.hostname.clone(),
            data_dir: here.data_dir.clone(),
            created_at_ms: now_ms,
            parent,
            adopted_at_ms: None,
            secret_hash: Some(secret.hash_hex()),
            secret_dir: Some(store.dir().to_path_buf()),
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

    /// Saves the record, then `secret` if it is `new`: in that order, so a crash in
    /// between leaves a record whose secret is missing, which the next unlock re-binds
    /// with a warning, never a secret that contradicts the record.
    pub fn save_with_secret(
        &self,
        data_dir: &Path,
        store: &SecretStore,
        secret: &InstanceSecret,
        new: bool,
    ) -> Result<(), InstanceError> {
        self.save(data_dir)?;
        if new {
            store.save(&self.data_dir, secret)?;
        }
        Ok(())
    }

    fn moved(&self, reason: String) -> InstanceError {
        InstanceError::Moved(Box::new(Moved {
            recorded_id: self.node_id.clone(),
            recorded_host: self.hostname.clone(),
            recorded_machine: known(&self.machine_id).unwrap_or("unknown").to_string(),
            recorded_path: self.data_dir.display().to_string(),
            reason,
        }))
    }

    /// Checks that the record describes `node_id` at `index`, running `here`, whose
    /// instance secret for this path is `secret` (see the module doc for the rules).
    pub fn check(
        &self,
        here: &Here,
        node_id: NodeId,
        index: u32,
        secret: Option<&InstanceSecret>,
    ) -> Result<Custody, InstanceError> {
        if self.node_id != node_id.to_string() || self.index != index {
            return Err(InstanceError::IdentityMismatch {
                recorded: self.node_id.clone(),
                recorded_index: self.index,
                actual: node_id.to_string(),
                actual_index: index,
            });
        }
        let here_machine = here.machine_id.as_deref();
        let machine_changed = matches!(
            (known(&self.machine_id), here_machine),
            (Some(a), Some(b)) if a != b
        );
        let elsewhere = if self.data_dir != here.data_dir {
            Some(format!(
                "it now runs at {} on {}",
                here.data_dir.display(),
                here.hostname
            ))
        } else if machine_changed {
            Some(format!(
                "it now runs on {} (machine {})",
                here.hostname,
                here_machine.unwrap_or("unknown")
            ))
        } else {
            None
        };
        match (&self.secret_hash, secret) {
            (Some(hash), Some(secret)) if *hash == secret.hash_hex() => match elsewhere {
                // The secret came along with the data dir: a whole machine (disk, VM
                // image) was copied, and only a new machine id tells.
                Some(what) if machine_changed && self.data_dir == here.data_dir => {
                    Err(self.moved(format!(
                        "{what}, with its instance secret: a clone of a whole machine (a VM \
                         snapshot or image) given a new machine id"
                    )))
                }
                Some(what) => Err(self.moved(what)),
                None => Ok(Custody::Same),
            },
            (Some(_), Some(_)) => Err(self.moved(format!(
                "this machine's instance secret for {} belongs to another data dir (one \
                 made or adopted there since): this one is a copy or an older backup",
                here.data_dir.display()
            ))),
            // No secret here, or a record from before secrets: judged by place.
            (hash, _) => match elsewhere {
                Some(what) => Err(self.moved(what)),
                // Same path on a machine with the same known id, yet the secret is gone:
                // containers from one image with a baked-in machine id look like this
                // (so does a cleared state dir, which `kith adopt` fixes).
                None if hash.is_some()
                    && known(&self.machine_id).is_some_and(|m| here_machine == Some(m)) =>
                {
                    Err(self.moved(format!(
                        "its instance secret is not in this machine's state ({}): a copy \
                         made from an image or a backup on a machine with the same machine \
                         id, or this machine's state was cleared",
                        self.secret_dir
                            .as_deref()
                            .unwrap_or(Path::new("unknown"))
                            .display()
                    )))
                }
                None if hash.is_some() => Ok(Custody::Rebind(format!(
                    "the instance secret for {} is missing, and this machine has no machine \
                     id to tell a copy from a re-created container: taken as the same node, \
                     and a new secret is recorded; if this data dir is a copy of a node that \
                     still runs elsewhere, stop this one and run `kith fork`",
                    here.data_dir.display()
                ))),
                None => Ok(Custody::Rebind(
                    "this data dir's instance record predates instance secrets: one is \
                     recorded now"
                        .into(),
                )),
            },
        }
    }

    /// The same instance, bound to `secret` in `store` (and to this machine's id, if
    /// it has one).
    pub fn rebound(&self, here: &Here, secret: &InstanceSecret, store: &SecretStore) -> Self {
        InstanceRecord {
            machine_id: here.machine_id.clone().unwrap_or_default(),
            hostname: here.hostname.clone(),
            secret_hash: Some(secret.hash_hex()),
            secret_dir: Some(store.dir().to_path_buf()),
            ..self.clone()
        }
    }

    /// The same node, confirmed at a new place.
    pub fn adopted(
        &self,
        here: &Here,
        now_ms: u64,
        secret: &InstanceSecret,
        store: &SecretStore,
    ) -> Self {
        InstanceRecord {
            data_dir: here.data_dir.clone(),
            adopted_at_ms: Some(now_ms),
            ..self.rebound(here, secret, store)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;

    fn store() -> SecretStore {
        SecretStore::resolve(Some(Path::new("/nonexistent/instances"))).unwrap()
    }

    fn here(dir: &Path, machine: Option<&str>) -> Here {
        Here {
            machine_id: machine.map(str::to_string),
            hostname: "h".into(),
            data_dir: dir.to_path_buf(),
        }
    }

    fn is_moved(r: Result<Custody, InstanceError>) -> bool {
        matches!(r, Err(InstanceError::Moved(_)))
    }

    #[test]
    fn a_record_is_saved_and_loaded_and_matches_its_own_place_and_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let id = NodeKey::generate().node_id();
        let here = Here::detect(tmp.path()).unwrap();
        let secret = InstanceSecret::random();
        let record = InstanceRecord::new(&here, id, 0, 1, None, &secret, &store());
        record.save(tmp.path()).unwrap();
        let loaded = InstanceRecord::load(tmp.path()).unwrap().unwrap();
        assert_eq!(loaded, record);
        assert_eq!(
            loaded.check(&here, id, 0, Some(&secret)).unwrap(),
            Custody::Same
        );
        assert!(matches!(
            loaded.check(&here, id, 5, Some(&secret)),
            Err(InstanceError::IdentityMismatch { .. })
        ));
    }

    #[test]
    fn copies_are_refused_and_lost_state_is_rebound() {
        let id = NodeKey::generate().node_id();
        let a = Path::new("/srv/a");
        let secret = InstanceSecret::random();
        let made = here(a, Some("m1"));
        let record = InstanceRecord::new(&made, id, 0, 1, None, &secret, &store());

        // Another path, or another machine, without the secret: a copy (or a move).
        let err = record.check(&here(Path::new("/srv/b"), Some("m1")), id, 0, None);
        let text = err.as_ref().unwrap_err().to_string();
        assert!(
            text.contains("kith fork") && text.contains("kith adopt"),
            "{text}"
        );
        assert!(is_moved(record.check(&here(a, Some("m2")), id, 0, None)));
        // Same machine id (baked into an image) and path, but another instance's secret,
        // or none at all: a container from an image, or a restored backup.
        let other = InstanceSecret::random();
        assert!(is_moved(record.check(&made, id, 0, Some(&other))));
        let err = record.check(&made, id, 0, None).unwrap_err().to_string();
        assert!(err.contains("same machine id"), "{err}");
        // A whole-machine clone: the secret came along, the machine id was regenerated.
        let err = record.check(&here(a, Some("m2")), id, 0, Some(&secret));
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("clone of a whole machine")
        );

        // A re-created container: no machine id, same path, state lost. Not refused.
        let container = InstanceRecord::new(&here(a, None), id, 0, 1, None, &secret, &store());
        let fresh = here(a, None);
        assert!(matches!(
            container.check(&fresh, id, 0, None),
            Ok(Custody::Rebind(w)) if w.contains("missing")
        ));
        // Its hostname changes with every re-creation: that alone is no reason to refuse.
        let renamed = Here {
            hostname: "other".into(),
            ..fresh.clone()
        };
        assert_eq!(
            container.check(&renamed, id, 0, Some(&secret)).unwrap(),
            Custody::Same
        );
        // Gaining a machine id is no move either.
        assert_eq!(
            container
                .check(&here(a, Some("m9")), id, 0, Some(&secret))
                .unwrap(),
            Custody::Same
        );
    }

    #[test]
    fn records_from_before_secrets_are_checked_by_place_and_then_bound() {
        let id = NodeKey::generate().node_id();
        let a = Path::new("/srv/a");
        let secret = InstanceSecret::random();
        let mut old = InstanceRecord::new(&here(a, None), id, 0, 1, None, &secret, &store());
        old.secret_hash = None;
        old.machine_id = "host:oldname".into();
        // The hostname fallback of old records counts as no machine id.
        assert!(matches!(
            old.check(&here(a, Some("m1")), id, 0, None),
            Ok(Custody::Rebind(_))
        ));
        assert!(is_moved(old.check(
            &here(Path::new("/srv/b"), None),
            id,
            0,
            None
        )));
        let bound = old.rebound(&here(a, Some("m1")), &secret, &store());
        assert_eq!(bound.machine_id, "m1");
        assert_eq!(
            bound
                .check(&here(a, Some("m1")), id, 0, Some(&secret))
                .unwrap(),
            Custody::Same
        );
        let text = serde_json::to_string(&old).unwrap();
        assert!(
            !text.contains("secret_hash"),
            "old readers see the old shape"
        );
    }

    #[test]
    fn adopting_binds_the_new_place() {
        let id = NodeKey::generate().node_id();
        let secret = InstanceSecret::random();
        let record = InstanceRecord::new(
            &here(Path::new("/srv/a"), None),
            id,
            0,
            1,
            None,
            &secret,
            &store(),
        );
        let there = here(Path::new("/srv/b"), Some("m2"));
        let new_secret = InstanceSecret::random();
        let adopted = record.adopted(&there, 2, &new_secret, &store());
        assert_eq!(adopted.instance_id, record.instance_id);
        assert_eq!(
            adopted.check(&there, id, 0, Some(&new_secret)).unwrap(),
            Custody::Same
        );
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
