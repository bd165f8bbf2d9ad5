//! The per-instance secret: 32 random bytes kept outside the data dir, one file per
//! data-dir path, whose hash `instance.json` records.
//!
//! A copy of a data dir (a backup restored elsewhere, a volume mounted by a second
//! container, a directory copied to another path or host) carries `instance.json` but
//! not this secret, so the copy is noticed whatever the machine id says. It lives under
//! `$KITH_STATE_DIR`, else `$XDG_STATE_HOME/kith`, else `~/.local/state/kith`, in
//! `instances/<SHA-256 of the data dir's canonical path>`. This module must never put
//! the secret inside the data dir, nor use a state dir or file another user owns.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kith_keys::fsutil::{self, WriteMode};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const SECRET_LEN: usize = 32;
const HASH_LABEL: &[u8] = b"kith/instance-secret/v1";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "cannot work out where to keep the instance secret: none of $KITH_STATE_DIR, \
         $XDG_STATE_HOME and $HOME is set; set KITH_STATE_DIR to a directory outside the data dir"
    )]
    NoStateDir,
    #[error("cannot use the instance state directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot read the instance secret {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the instance secret {path} is damaged (not {SECRET_LEN} bytes)")]
    Damaged { path: PathBuf },
    #[error("{path} belongs to user {owner}, not to user {me} who runs kith: refusing to use it")]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error(transparent)]
    Write(#[from] fsutil::WriteError),
}

/// One instance secret. Not a key (it only tells copies apart), but kept private.
pub struct InstanceSecret(Zeroizing<[u8; SECRET_LEN]>);

impl InstanceSecret {
    /// A fresh secret from the OS RNG.
    pub fn random() -> InstanceSecret {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        OsRng.fill_bytes(&mut secret[..]);
        InstanceSecret(secret)
    }

    /// The hex hash `instance.json` records; it reveals nothing of the secret.
    pub fn hash_hex(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(HASH_LABEL);
        hasher.update(&self.0[..]);
        data_encoding::HEXLOWER.encode(&hasher.finalize())
    }
}

/// Where instance secrets live on this machine, for this user.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
}

fn owned(path: &Path, meta: &fs::Metadata) -> Result<(), SecretError> {
    let me = crate::harden::effective_uid();
    if meta.uid() != me {
        return Err(SecretError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

impl SecretStore {
    /// `$KITH_STATE_DIR`, else the store a data dir's record names (`recorded`), else
    /// `$XDG_STATE_HOME/kith`, else `~/.local/state/kith`. The recorded store comes
    /// before the defaults so that commands run with another `$HOME` (`sudo -u`, a
    /// service) find the secret the daemon's start bound, instead of binding another.
    pub fn resolve(recorded: Option<&Path>) -> Result<SecretStore, SecretError> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("KITH_STATE_DIR") {
            return Ok(SecretStore {
                dir: PathBuf::from(dir).join("instances"),
            });
        }
        if let Some(dir) = recorded {
            return Ok(SecretStore {
                dir: dir.to_path_buf(),
            });
        }
        let base = if let Some(xdg) = var("XDG_STATE_HOME") {
            PathBuf::from(xdg).join("kith")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".local/state/kith")
        } else {
            return Err(SecretError::NoStateDir);
        };
        Ok(SecretStore {
            dir: base.join("instances"),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A warning when the store lies inside `data_dir`, where a copy of the data dir
    /// would carry the secret along.
    pub fn inside_warning(&self, data_dir: &Path) -> Option<String> {
        let canonical = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let mut dir = self.dir.clone();
        // The store may not exist yet: compare its nearest existing ancestor.
        while !dir.exists() && dir.pop() {}
        canonical(&dir).starts_with(canonical(data_dir)).then(|| {
            format!(
                "the instance secrets are kept in {}, inside the data dir, so a copy of the \
                 data dir carries them and is not noticed: set KITH_STATE_DIR to a directory \
                 outside it",
                self.dir.display()
            )
        })
    }

    /// The file for a data dir, named by its canonical path's hash.
    fn file_for(&self, canonical_data_dir: &Path) -> PathBuf {
        let digest = Sha256::digest(canonical_data_dir.as_os_str().as_encoded_bytes());
        self.dir.join(data_encoding::HEXLOWER.encode(&digest))
    }

    /// The secret for this data dir, if this machine has one.
    pub fn load(&self, canonical_data_dir: &Path) -> Result<Option<InstanceSecret>, SecretError> {
        let path = self.file_for(canonical_data_dir);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SecretError::Read { path, source }),
        };
        owned(&path, &meta)?;
        let bytes = Zeroizing::new(fs::read(&path).map_err(|source| SecretError::Read {
            path: path.clone(),
            source,
        })?);
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        if bytes.len() != SECRET_LEN {
            return Err(SecretError::Damaged { path });
        }
        secret.copy_from_slice(&bytes);
        Ok(Some(InstanceSecret(secret)))
    }

    /// This data dir's secret if there is one, else a fresh one not yet written
    /// (`true`): the caller saves the record naming it first, then [`save`]s it, so a
    /// crash in between leaves a record whose secret is missing (which the next unlock
    /// re-binds), never a secret that contradicts the record.
    ///
    /// [`save`]: SecretStore::save
    pub fn load_or_new(
        &self,
        canonical_data_dir: &Path,
    ) -> Result<(InstanceSecret, bool), SecretError> {
        if let Some(secret) = self.load(canonical_data_dir)? {
            return Ok((secret, false));
        }
        Ok((InstanceSecret::random(), true))
    }

    /// Writes `secret` as this data dir's, replacing any earlier one.
    pub fn save(
        &self,
        canonical_data_dir: &Path,
        secret: &InstanceSecret,
    ) -> Result<(), SecretError> {
        let dir_err = |source| SecretError::Dir {
            path: self.dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(dir_err)?;
        let meta = fs::metadata(&self.dir).map_err(dir_err)?;
        owned(&self.dir, &meta)?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        }
        fsutil::write_private(
            &self.file_for(canonical_data_dir),
            &secret.0[..],
            WriteMode::Replace,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_per_path_and_kept_once_saved() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore {
            dir: tmp.path().join("state/instances"),
        };
        let a = Path::new("/srv/a");
        assert!(store.load(a).unwrap().is_none());
        let (first, new) = store.load_or_new(a).unwrap();
        assert!(new);
        assert!(store.load(a).unwrap().is_none(), "not written until saved");
        store.save(a, &first).unwrap();
        let (again, new) = store.load_or_new(a).unwrap();
        assert!(!new);
        assert_eq!(again.hash_hex(), first.hash_hex());
        assert!(store.load(Path::new("/srv/b")).unwrap().is_none());
        let mode = fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_store_inside_the_data_dir_is_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let inside = SecretStore {
            dir: tmp.path().join(".local/state/kith/instances"),
        };
        assert!(inside.inside_warning(tmp.path()).is_some());
        let other = tempfile::tempdir().unwrap();
        assert!(inside.inside_warning(other.path()).is_none());
    }
}
