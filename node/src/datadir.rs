//! The node's data directory: where its keystore, store and control socket live.
//!
//! Only this module decides file names and permissions inside the data dir. It must
//! never loosen permissions on an existing directory or follow the data dir into a
//! world-writable location silently, and never use a data dir, keystore, store or
//! instance record that another user owns: whoever owns them could swap the keystore
//! for one of their own.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File names inside the data dir.
pub const KEYSTORE_FILE: &str = "keystore";
pub const STORE_FILE: &str = "kith.redb";
pub const CONTROL_SOCKET: &str = "control.sock";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "cannot work out a data directory: neither $XDG_DATA_HOME nor $HOME is set; pass --data-dir"
    )]
    NoDefault,
    #[error("cannot create data directory {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("no kith node in {path}: run `kith init` first (or pass --data-dir)")]
    NotInitialised { path: PathBuf },
    #[error(
        "{path} belongs to user {owner}, not to user {me} who runs kith: refusing to use it \
         (its owner could replace the keystore); run kith as its owner, or use another --data-dir"
    )]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error("cannot check or tighten {path}")]
    Inspect { path: PathBuf, source: io::Error },
}

/// Refuses `path` (following symlinks) unless this process's user owns it; `Ok(None)`
/// when there is nothing there.
fn require_owned(path: &Path) -> Result<Option<fs::Metadata>, DataDirError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DataDirError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let me = crate::harden::effective_uid();
    if meta.uid() != me {
        return Err(DataDirError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(Some(meta))
}

/// Sets `mode` on `path` unless it already is that strict.
fn tighten(path: &Path, meta: &fs::Metadata, mode: u32) -> Result<(), DataDirError> {
    if meta.permissions().mode() & 0o777 & !mode == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        DataDirError::Inspect {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A node's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// `--data-dir`/`KITH_DATA_DIR` when given, else `$XDG_DATA_HOME/kith`, else `~/.local/share/kith`.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self, DataDirError> {
        if let Some(path) = explicit {
            return Ok(DataDir {
                path: path.to_path_buf(),
            });
        }
        let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(xdg) => PathBuf::from(xdg),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .ok_or(DataDirError::NoDefault)?;
                PathBuf::from(home).join(".local").join("share")
            }
        };
        Ok(DataDir {
            path: base.join("kith"),
        })
    }

    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keystore(&self) -> PathBuf {
        self.path.join(KEYSTORE_FILE)
    }

    pub fn store(&self) -> PathBuf {
        self.path.join(STORE_FILE)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.path.join(CONTROL_SOCKET)
    }

    pub fn instance_record(&self) -> PathBuf {
        crate::instance::InstanceRecord::path(&self.path)
    }

    /// Creates the directory (and parents) with mode 0700. A directory that already
    /// exists must be ours; it keeps its contents but is tightened (see [`secure`]).
    ///
    /// [`secure`]: DataDir::secure
    pub fn create(&self) -> Result<(), DataDirError> {
        match fs::metadata(&self.path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(DataDirError::NotADirectory {
                    path: self.path.clone(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.path)
                    .map_err(|source| DataDirError::Create {
                        path: self.path.clone(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(DataDirError::Create {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        self.secure()
    }

    /// Checks that this user owns the directory, keystore, store and instance record
    /// (those that exist), and tightens the directory to 0700 and the files to 0600:
    /// run at every init and unlock, so a mode loosened since is put back.
    pub fn secure(&self) -> Result<(), DataDirError> {
        if let Some(meta) = require_owned(&self.path)? {
            if !meta.is_dir() {
                return Err(DataDirError::NotADirectory {
                    path: self.path.clone(),
                });
            }
            tighten(&self.path, &meta, 0o700)?;
        }
        for file in [self.keystore(), self.store(), self.instance_record()] {
            if let Some(meta) = require_owned(&file)? {
                tighten(&file, &meta, 0o600)?;
            }
        }
        Ok(())
    }

    /// Fails with a hint to run `kith init` when there is no keystore.
    pub fn require_initialised(&self) -> Result<(), DataDirError> {
        if self.keystore().exists() {
            Ok(())
        } else {
            Err(DataDirError::NotInitialised {
                path: self.path.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_makes_0700_and_tightens_existing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("a/b/kith"));
        dir.create().unwrap();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        dir.create().unwrap();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn secure_tightens_the_files_it_knows_and_leaves_missing_ones_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        fs::write(dir.keystore(), b"k").unwrap();
        fs::set_permissions(dir.keystore(), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        dir.secure().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.keystore()), 0o600);
        assert!(!dir.store().exists() && !dir.instance_record().exists());
    }

    #[test]
    fn create_refuses_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            DataDir::new(&file).create(),
            Err(DataDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn uninitialised_dir_says_run_init() {
        let tmp = tempfile::tempdir().unwrap();
        let err = DataDir::new(tmp.path()).require_initialised().unwrap_err();
        assert!(err.to_string().contains("kith init"), "{err}");
    }
}
