//! Writing small private files (keystores, instance records) so that a crash never
//! leaves a torn or world-readable one.
//!
//! The bytes go to a fresh temp file in the same directory (O_EXCL, mode 0600),
//! are fsynced, then linked or renamed into place, and the directory is fsynced.
//! This module must never follow a planted symlink, overwrite a file in
//! [`WriteMode::CreateNew`], or leave its temp file behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

/// Whether a write may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Link into place; fail if anything is at the target.
    CreateNew,
    /// Rename into place over whatever is there.
    Replace,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0} already exists")]
    AlreadyExists(PathBuf),
    #[error("cannot write {path}")]
    Io { path: PathBuf, source: io::Error },
}

/// Removes the temp file on every early return.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: the write already failed or succeeded by now.
            let _ = fs::remove_file(path);
        }
    }
}

/// Writes `bytes` to `path` atomically and durably, with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8], mode: WriteMode) -> Result<(), WriteError> {
    let io_at = |at: &Path| {
        let at = at.to_path_buf();
        move |source| WriteError::Io { path: at, source }
    };
    let name = path.file_name().ok_or_else(|| {
        io_at(path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not name a file",
        ))
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut suffix = [0u8; 8];
    OsRng
        .try_fill_bytes(&mut suffix)
        .map_err(|e| io_at(path)(io::Error::other(e.to_string())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        data_encoding::HEXLOWER.encode(&suffix)
    ));

    // O_EXCL: never follow a planted symlink or write into someone else's file.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_at(&tmp))?;
    let mut guard = TempFile(Some(tmp.clone()));
    // The umask may have cleared bits of 0600 at creation; fchmod ignores it.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_at(&tmp))?;
    file.write_all(bytes).map_err(io_at(&tmp))?;
    file.sync_all().map_err(io_at(&tmp))?;
    drop(file);

    match mode {
        // link(2) fails with EEXIST rather than replacing, unlike rename(2).
        WriteMode::CreateNew => fs::hard_link(&tmp, path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                WriteError::AlreadyExists(path.to_path_buf())
            } else {
                io_at(path)(source)
            }
        })?,
        WriteMode::Replace => {
            fs::rename(&tmp, path).map_err(io_at(path))?;
            guard.0 = None;
        }
    }
    // Unlink the temp name (CreateNew) before the directory fsync, so the
    // directory is synced in its final state.
    drop(guard);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_never_clobbers_and_replace_does() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        write_private(&path, b"one", WriteMode::CreateNew).unwrap();
        assert!(matches!(
            write_private(&path, b"two", WriteMode::CreateNew),
            Err(WriteError::AlreadyExists(_))
        ));
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_private(&path, b"three", WriteMode::Replace).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
    }
}
