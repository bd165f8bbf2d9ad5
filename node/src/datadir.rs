//! The node's data directory: where its keystore, store and control socket live.
//!
//! Only this module decides file names and permissions inside the data dir. It must
//! never loosen permissions on an existing directory or follow the data dir into a
//! world-writable location silently.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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

    /// Creates the directory (and parents) with mode 0700. A directory that already
    /// exists keeps its contents but is tightened to 0700.
    pub fn create(&self) -> Result<(), DataDirError> {
        let create_err = |source| DataDirError::Create {
            path: self.path.clone(),
            source,
        };
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
                    .map_err(create_err)?;
            }
            Err(e) => return Err(create_err(e)),
        }
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700)).map_err(create_err)
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
