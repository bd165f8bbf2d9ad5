//! Getting the keystore passphrase from the operator and unlocking the node key.
//!
//! Sources, in order: `--passphrase-file` / `KITH_PASSPHRASE_FILE`, then a prompt on
//! the controlling terminal. The passphrase only ever lives in zeroizing buffers; this
//! module must never echo, log or keep it.

use std::fs;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};

use kith_keys::NodeKey;
use kith_keys::keystore::{self, KeystoreError, Passphrase, Secrets};
use zeroize::Zeroizing;

use crate::datadir::{DataDir, DataDirError};
use crate::instance::{Custody, Here, InstanceError, InstanceRecord};
use crate::instance_secret::SecretStore;

/// Longest passphrase file accepted.
pub const MAX_PASSPHRASE_FILE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot read the passphrase file {path}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("the passphrase file {0} is empty")]
    EmptyFile(PathBuf),
    #[error("the passphrase file {0} is longer than {MAX_PASSPHRASE_FILE} bytes")]
    TooLong(PathBuf),
    #[error(
        "the BIP39 passphrase file {0} is not UTF-8 text; BIP39 passphrases are Unicode \
         (the keystore passphrase may be any bytes, this one may not)"
    )]
    NotUtf8(PathBuf),
    #[error(
        "the keystore is encrypted and no passphrase was given: pass --passphrase-file FILE, \
         set KITH_PASSPHRASE_FILE, or run on a terminal to be asked"
    )]
    NoPassphrase,
    #[error(
        "a passphrase was given ({passphrase_file}) but the keystore {keystore} is not \
         encrypted: refusing to start as a node anyone could have written; if this node \
         really was made with --insecure-no-passphrase, unlock it without a passphrase file"
    )]
    NotEncrypted {
        keystore: PathBuf,
        passphrase_file: PathBuf,
    },
    #[error(
        "a new keystore needs a passphrase and there is no terminal to ask on: pass \
         --passphrase-file FILE (or set KITH_PASSPHRASE_FILE), or --insecure-no-passphrase \
         for a throwaway node"
    )]
    NoNewPassphrase,
    #[error("cannot read the passphrase from the terminal")]
    Prompt(#[source] io::Error),
    #[error(
        "the passphrase is empty; choose one, or pass --insecure-no-passphrase for a throwaway node"
    )]
    EmptyPassphrase,
    #[error("the two passphrases differ")]
    Mismatch,
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error("cannot derive the node key")]
    Derive(#[source] kith_keys::slip10::DeriveError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
}

/// Reads a passphrase file: its bytes exactly, less one trailing newline (`\n` or
/// `\r\n`). The bytes need not be UTF-8: they go to the KDF as they are.
pub fn read_passphrase_file(path: &Path) -> Result<Passphrase, UnlockError> {
    let read_err = |source| UnlockError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    // A fixed buffer filled in place: `fs::read` grows its vector when the file is a
    // pipe (`--passphrase-file <(...)`), leaving unwiped partial copies behind.
    let mut bytes = Zeroizing::new(vec![0u8; MAX_PASSPHRASE_FILE + 1]);
    let mut filled = 0;
    let mut file = fs::File::open(path).map_err(read_err)?;
    while filled < bytes.len() {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    if filled > MAX_PASSPHRASE_FILE {
        return Err(UnlockError::TooLong(path.to_path_buf()));
    }
    bytes.truncate(filled);
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(UnlockError::EmptyFile(path.to_path_buf()));
    }
    Ok(Passphrase::from_bytes(bytes))
}

/// Reads a BIP39 passphrase file: like [`read_passphrase_file`], but the text must be
/// UTF-8, since BIP39 normalises it as Unicode (NFKD) before use.
pub fn read_bip39_passphrase_file(path: &Path) -> Result<Zeroizing<String>, UnlockError> {
    let passphrase = read_passphrase_file(path)?;
    let text = std::str::from_utf8(passphrase.as_bytes())
        .map_err(|_| UnlockError::NotUtf8(path.to_path_buf()))?;
    // One exact-size copy into a zeroizing String; the bytes are wiped with `passphrase`.
    let mut owned = Zeroizing::new(String::with_capacity(text.len()));
    owned.push_str(text);
    Ok(owned)
}

fn prompt(label: &str) -> Result<Zeroizing<String>, UnlockError> {
    rpassword::prompt_password(label)
        .map(Zeroizing::new)
        .map_err(UnlockError::Prompt)
}

fn have_terminal() -> bool {
    io::stdin().is_terminal() || fs::File::open("/dev/tty").is_ok()
}

/// The passphrase for a new keystore: from the file, or asked twice on the terminal.
pub fn new_passphrase(file: Option<&Path>) -> Result<Passphrase, UnlockError> {
    if let Some(path) = file {
        return read_passphrase_file(path);
    }
    if !have_terminal() {
        return Err(UnlockError::NoNewPassphrase);
    }
    let first = prompt("New keystore passphrase: ")?;
    if first.is_empty() {
        return Err(UnlockError::EmptyPassphrase);
    }
    let second = prompt("Repeat the passphrase: ")?;
    if *first != *second {
        return Err(UnlockError::Mismatch);
    }
    Ok(Passphrase::from(first))
}

/// What an unlocked keystore yields.
pub struct Unlocked {
    pub secrets: Secrets,
    pub key: NodeKey,
    /// The passphrase it was unlocked with; `None` for an insecure keystore.
    pub passphrase: Option<Passphrase>,
    /// True when the keystore was written with `--insecure-no-passphrase`.
    pub insecure: bool,
    /// The data dir's instance record and where this command runs.
    pub record: InstanceRecord,
    pub here: Here,
    /// Where this machine keeps instance secrets.
    pub instances: SecretStore,
    /// Whether the record matches where this command runs (see [`crate::instance`]).
    pub custody: Result<(), InstanceError>,
    /// What the operator must be told even though the unlock succeeded: a record
    /// re-created or re-bound, an instance secret kept where copies carry it.
    pub warnings: Vec<String>,
}

impl Unlocked {
    /// Shows the operator each of [`Unlocked::warnings`] on stderr.
    pub fn print_warnings(&self) {
        for warning in &self.warnings {
            eprintln!("warning: {warning}");
        }
    }

    /// The node key alone: every other secret (recovery entropy, BIP39 passphrase,
    /// keystore passphrase) is wiped before this returns.
    pub fn into_key(self) -> NodeKey {
        let Unlocked {
            secrets,
            key,
            passphrase,
            ..
        } = self;
        drop(secrets);
        drop(passphrase);
        key
    }
}

/// Opens the data dir's keystore, asking for the passphrase only when it is encrypted.
pub fn unlock(data_dir: &DataDir, passphrase_file: Option<&Path>) -> Result<Unlocked, UnlockError> {
    data_dir.secure()?;
    data_dir.require_initialised()?;
    let path = data_dir.keystore();
    let encrypted = keystore::is_encrypted(&path)?;
    let passphrase = if !encrypted {
        if let Some(file) = passphrase_file {
            return Err(UnlockError::NotEncrypted {
                keystore: path,
                passphrase_file: file.to_path_buf(),
            });
        }
        None
    } else if let Some(file) = passphrase_file {
        Some(read_passphrase_file(file)?)
    } else if have_terminal() {
        Some(Passphrase::from(prompt("Keystore passphrase: ")?))
    } else {
        return Err(UnlockError::NoPassphrase);
    };
    let secrets = keystore::open(&path, passphrase.as_ref())?;
    let key = secrets.node_key().map_err(UnlockError::Derive)?;
    let here = Here::detect(data_dir.path())?;
    let loaded = InstanceRecord::load(data_dir.path())?;
    let recorded_store = loaded.as_ref().and_then(|r| r.secret_dir.as_deref());
    let instances = SecretStore::resolve(recorded_store).map_err(InstanceError::from)?;
    let mut warnings = Vec::new();
    warnings.extend(instances.inside_warning(data_dir.path()));
    let (node_id, index) = (key.node_id(), secrets.index());
    let (record, custody) = match loaded {
        None => {
            // Deleting the record must not quietly remove the check: say so every time
            // one is made here.
            warnings.push(format!(
                "{} had no instance record: a new one binds it to this place; if this data \
                 dir is a copy of a node that still runs elsewhere, stop this one and run \
                 `kith fork`",
                data_dir.path().display()
            ));
            let (secret, new) = instances
                .load_or_new(&here.data_dir)
                .map_err(InstanceError::from)?;
            let now = crate::node::now_ms();
            let record = InstanceRecord::new(&here, node_id, index, now, None, &secret, &instances);
            record.save_with_secret(data_dir.path(), &instances, &secret, new)?;
            (record, Ok(()))
        }
        Some(record) => {
            let secret = instances
                .load(&here.data_dir)
                .map_err(InstanceError::from)?;
            match record.check(&here, node_id, index, secret.as_ref()) {
                Ok(Custody::Same) => (record, Ok(())),
                Ok(Custody::Rebind(warning)) => {
                    warnings.push(warning);
                    let (secret, new) = instances
                        .load_or_new(&here.data_dir)
                        .map_err(InstanceError::from)?;
                    let record = record.rebound(&here, &secret, &instances);
                    record.save_with_secret(data_dir.path(), &instances, &secret, new)?;
                    (record, Ok(()))
                }
                Err(e) => (record, Err(e)),
            }
        }
    };
    Ok(Unlocked {
        secrets,
        key,
        passphrase,
        insecure: !encrypted,
        record,
        here,
        instances,
        custody,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passphrase_file_keeps_its_bytes_less_one_line_end() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("p");
        for (contents, expected) in [
            (&b"\xff\xfe\xfd\n"[..], &b"\xff\xfe\xfd"[..]),
            (b"pass\r\n", b"pass"),
            (b"pass\n\n", b"pass\n"),
            (b" pass ", b" pass "),
        ] {
            fs::write(&file, contents).unwrap();
            assert_eq!(read_passphrase_file(&file).unwrap().as_bytes(), expected);
        }
        fs::write(&file, b"\n").unwrap();
        assert!(matches!(
            read_passphrase_file(&file),
            Err(UnlockError::EmptyFile(_))
        ));
        fs::write(&file, vec![b'a'; MAX_PASSPHRASE_FILE]).unwrap();
        assert!(read_passphrase_file(&file).is_ok());
        fs::write(&file, vec![b'a'; MAX_PASSPHRASE_FILE + 1]).unwrap();
        assert!(matches!(
            read_passphrase_file(&file),
            Err(UnlockError::TooLong(_))
        ));
    }
}
