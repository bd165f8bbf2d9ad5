//! Opening the database file: a new one appears whole or not at all, and a
//! damaged one is refused with the file named, never repaired or replaced.
//!
//! redb writes a fresh database into an empty file, so an empty `kith.redb` is
//! ambiguous: a file cut to nothing (a crash mid-copy, a full disk, `truncate`)
//! would silently come back with no peers and no owner. Only a missing file is
//! new, and a new one is made under a temporary name (0600, not the umask's mode)
//! and renamed into place once redb has written it, so a crash while making it
//! leaves no file at all (or a leftover temporary, replaced next time), never an
//! empty store that the next start must refuse as damaged.

use std::cell::Cell;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

use redb::Database;

use super::StoreError;

/// Opens the database at `path`, making a new one if the file is missing.
pub(super) fn open_file(path: &Path) -> Result<Database, StoreError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == 0 => {
            return Err(StoreError::Damaged {
                path: path.to_owned(),
                detail: "the file is empty".into(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_whole(path).map_err(|e| open_err(path, e))?
        }
        Err(e) => return Err(open_err(path, e)),
    }
    // redb asserts, rather than reports, some damage it finds on opening (a file
    // cut short, a foreign page size): its panic becomes our error.
    let opened = quietly(|| Database::create(path)).map_err(|detail| StoreError::Damaged {
        path: path.to_owned(),
        detail,
    })?;
    opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_owned(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::Damaged {
                path: path.to_owned(),
                detail,
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::InvalidData =>
        {
            StoreError::Damaged {
                path: path.to_owned(),
                detail: "not a kith database, or its header is unreadable".into(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::UnexpectedEof =>
        {
            StoreError::Damaged {
                path: path.to_owned(),
                detail: "the file is cut short".into(),
            }
        }
        other => StoreError::Open {
            path: path.to_owned(),
            source: Box::new(other.into()),
        },
    })
}

/// Reads the file at `path` (at most `max_len` bytes) into a private in-memory
/// database that nothing writes back.
pub(super) fn read_copy(path: &Path, max_len: u64) -> Result<Database, StoreError> {
    use redb::StorageBackend;
    let open_err = |e: io::Error| open_err(path, e);
    let len = std::fs::metadata(path).map_err(open_err)?.len();
    if len > max_len {
        return Err(open_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes is more than the {max_len} read without a daemon"),
        )));
    }
    let bytes = std::fs::read(path).map_err(open_err)?;
    let backend = redb::backends::InMemoryBackend::new();
    backend.set_len(bytes.len() as u64).map_err(open_err)?;
    backend.write(0, &bytes).map_err(open_err)?;
    let damaged = |detail: String| StoreError::Damaged {
        path: path.to_owned(),
        detail,
    };
    quietly(|| Database::builder().create_with_backend(backend))
        .map_err(damaged)?
        .map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => damaged(detail),
            other => StoreError::Open {
                path: path.to_owned(),
                source: Box::new(other.into()),
            },
        })
}

fn open_err(path: &Path, e: io::Error) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        source: Box::new(redb::Error::Io(e)),
    }
}

/// The name a new database is made under before it is renamed to `path`.
fn making(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".new");
    path.with_file_name(name)
}

/// Makes a new, empty redb database at `path`, whole: under a temporary name,
/// synced, then renamed into place and the directory synced.
fn create_whole(path: &Path) -> io::Result<()> {
    let temporary = making(path);
    // A leftover of a crash while making one: it never became the store.
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(&temporary)?;
    #[cfg(test)]
    if CRASH_BEFORE_FIRST_WRITE.with(Cell::get) {
        return Err(io::Error::other("simulated crash"));
    }
    let db = quietly(|| Database::create(&temporary))
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    drop(db);
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Makes [`create_whole`] stop, as a crash would, right after the file appears.
    static CRASH_BEFORE_FIRST_WRITE: Cell<bool> = const { Cell::new(false) };
}

thread_local! {
    /// Set while this thread runs [`quietly`]: its panics are caught and reported as
    /// errors, so the panic hook must not print them as crashes.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err` with its message, without the panic hook
/// printing it. The hook is wrapped once per process and stays as it was for every
/// other panic, on every thread.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static WRAP_HOOK: Once = Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the database library gave up on it".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_crash_while_making_a_new_store_leaves_nothing_the_next_start_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.redb");
        CRASH_BEFORE_FIRST_WRITE.with(|c| c.set(true));
        assert!(Store::open(&path).is_err(), "the simulated crash");
        CRASH_BEFORE_FIRST_WRITE.with(|c| c.set(false));
        // The next start makes the store anew.
        let store = Store::open(&path).expect("no damaged file was left behind");
        drop(store);
        assert!(!making(&path).exists(), "the leftover is gone");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        Store::open(&path).expect("and it opens again");
    }
}
