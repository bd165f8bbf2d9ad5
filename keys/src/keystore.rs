//! The keystore file: a node's recovery phrase, BIP39 passphrase and node
//! index, encrypted on disk.
//!
//! This module must never write a keystore anywhere but through an exclusive,
//! fsynced temp file renamed (or linked) into place, never overwrite one in
//! [`create`], never print a secret, and never panic on any file contents.
//!
//! # File format, version 1
//!
//! All integers little-endian.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! |  0 |  8 | magic `b"KITHKEYS"` |
//! |  8 |  2 | format version, `1` |
//! | 10 |  1 | KDF id: `0` none (insecure), `1` Argon2id |
//! | 11 |  4 | Argon2 memory, KiB (`0` for KDF 0) |
//! | 15 |  4 | Argon2 passes `t` (`0` for KDF 0) |
//! | 19 |  4 | Argon2 lanes `p` (`0` for KDF 0) |
//! | 23 | 16 | salt |
//! | 39 | 12 | AES-GCM nonce |
//! | 51 | 16 | key check: first 16 bytes of HMAC-SHA256(key, `"kith/keystore/check/v1"`) |
//! | 67 |  4 | ciphertext length `n` (including the 16-byte GCM tag) |
//! | 71 |  n | AES-256-GCM ciphertext and tag; the 71 header bytes are the AAD |
//! | 71+n | 32 | SHA-256 of every byte before it |
//!
//! The key is Argon2id(passphrase, salt, m, t, p) for KDF 1, and
//! SHA-256(`"kith/keystore/insecure/v1"` || salt) for KDF 0: an insecure
//! keystore is not secret, but keeps the same integrity checks.
//!
//! The plaintext ("contents", version 1):
//!
//! | size | field |
//! |-----:|-------|
//! | 1 | contents version, `1` |
//! | 4 | node index (the unhardened `i` of `m/7444'/0'/i'`) |
//! | 1 | entropy length `e` (16, 20, 24, 28 or 32) |
//! | e | BIP39 entropy |
//! | 2 | BIP39 passphrase length `b` (at most [`MAX_BIP39_PASSPHRASE_LEN`]) |
//! | b | BIP39 passphrase, UTF-8 |
//!
//! [`open`] checks, in order: magic, version, length, checksum, KDF
//! parameters, then derives the key and checks the key check, then decrypts
//! and parses. The checksum is not keyed: it catches accidental damage before
//! any expensive KDF runs, and nothing more, since an editor can recompute it.
//! The key check tells a wrong passphrase from an edited nonce, ciphertext or
//! other header field (then the GCM tag fails: [`KeystoreError::Tampered`]);
//! it cannot tell a wrong passphrase from an edited salt, KDF parameters or
//! key check, which change the derived key or its check just as a wrong
//! passphrase does, so [`KeystoreError::WrongPassphrase`] says it may be either.
//! An editor cannot learn the secrets or weaken their encryption this way (that
//! needs the key); they can make the keystore unopenable, or replace it whole.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hmac::Mac;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::NodeKey;
use crate::fsutil::{self, WriteError, WriteMode};
use crate::hash::{hmac_sha256, sha256_into};
use crate::mnemonic::Mnemonic;
use crate::slip10::{DeriveError, derive_node_key, node_key_path};

/// First eight bytes of every keystore file.
pub const MAGIC: [u8; 8] = *b"KITHKEYS";
/// The file format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Length of the fixed header (everything before the ciphertext).
pub const HEADER_LEN: usize = 71;
/// Longest BIP39 passphrase a keystore holds, in bytes.
pub const MAX_BIP39_PASSPHRASE_LEN: usize = 1024;

const KDF_NONE: u8 = 0;
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const CHECK_LEN: usize = 16;
const TAG_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;
const CONTENTS_VERSION: u8 = 1;
/// Contents bytes other than entropy and passphrase.
const CONTENTS_FIXED_LEN: usize = 1 + 4 + 1 + 2;
const MAX_CIPHERTEXT_LEN: usize = CONTENTS_FIXED_LEN + 32 + MAX_BIP39_PASSPHRASE_LEN + TAG_LEN;
const MAX_FILE_LEN: usize = HEADER_LEN + MAX_CIPHERTEXT_LEN + CHECKSUM_LEN;
/// Magic, version and KDF id: all [`is_encrypted`] reads.
const PREFIX_LEN: usize = 11;

const CHECK_LABEL: &[u8] = b"kith/keystore/check/v1";
const INSECURE_LABEL: &[u8] = b"kith/keystore/insecure/v1";

/// Why a keystore could not be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("no keystore at {}", .0.display())]
    NotFound(PathBuf),
    #[error("a keystore already exists at {}; refusing to overwrite it", .0.display())]
    AlreadyExists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a kith keystore (the file does not start with KITHKEYS)")]
    NotAKeystore,
    #[error(
        "keystore format version {0} is not supported by this kith (it reads version {VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("the keystore file is truncated")]
    Truncated,
    #[error("the keystore file is damaged ({0})")]
    Corrupt(&'static str),
    #[error("the keystore uses an unknown key derivation (id {0})")]
    UnknownKdf(u8),
    #[error(
        "the keystore's key derivation is too weak (m={m_kib} KiB, t={t}, p={p}); the minimum is m={} KiB, t={}, p={}",
        KdfParams::MIN.m_kib, KdfParams::MIN.t, KdfParams::MIN.p
    )]
    WeakKdf { m_kib: u32, t: u32, p: u32 },
    #[error(
        "the keystore's key derivation asks for too much (m={m_kib} KiB, t={t}, p={p}); the limit is m={} KiB, t={}, p={}",
        KdfParams::MAX.m_kib, KdfParams::MAX.t, KdfParams::MAX.p
    )]
    ExcessiveKdf { m_kib: u32, t: u32, p: u32 },
    #[error("the keystore is encrypted and no passphrase was given")]
    PassphraseRequired,
    #[error("refusing an empty passphrase; ask for an unencrypted keystore explicitly instead")]
    EmptyPassphrase,
    /// The key check failed. Whoever can write the file can also recompute its
    /// checksum, so an edited salt, KDF parameters or key check look exactly like a
    /// wrong passphrase: without the right key nothing can tell them apart.
    #[error(
        "the passphrase does not open this keystore: either it is wrong, or the keystore's \
         salt, key-derivation parameters or key check were edited (its checksum cannot \
         tell: whoever can edit the file can recompute it)"
    )]
    WrongPassphrase,
    #[error(
        "the keystore failed authentication although its checksum is intact: it was altered after being written"
    )]
    Tampered,
    #[error("the keystore decrypted but its contents are invalid: {0}")]
    InvalidContents(String),
    #[error("the BIP39 passphrase is {len} bytes; a keystore holds at most {max}")]
    Bip39PassphraseTooLong { len: usize, max: usize },
    #[error("a cryptographic operation failed: {0}")]
    Crypto(String),
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
}

/// What a keystore holds: everything needed to re-derive the node key.
/// Wiped on drop; never printed.
#[derive(Clone)]
pub struct Secrets {
    mnemonic: Mnemonic,
    bip39_passphrase: Zeroizing<String>,
    index: u32,
}

impl Secrets {
    /// `index` is the unhardened node index of `m/7444'/0'/<index>'`; it is
    /// checked (below 2^31) when the key is derived.
    pub fn new(mnemonic: Mnemonic, bip39_passphrase: Zeroizing<String>, index: u32) -> Secrets {
        Secrets {
            mnemonic,
            bip39_passphrase,
            index,
        }
    }

    pub fn mnemonic(&self) -> &Mnemonic {
        &self.mnemonic
    }

    pub fn bip39_passphrase(&self) -> &str {
        &self.bip39_passphrase
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The same mnemonic and BIP39 passphrase at another node index (a fork).
    pub fn with_index(self, index: u32) -> Secrets {
        Secrets { index, ..self }
    }

    /// Derives the node key; the BIP39 seed is wiped before this returns.
    pub fn node_key(&self) -> Result<NodeKey, DeriveError> {
        // Refuse a bad index before paying for 2048 PBKDF2 rounds.
        node_key_path(self.index)?;
        let seed = self.mnemonic.to_seed(&self.bip39_passphrase);
        derive_node_key(&seed, self.index)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("mnemonic", &self.mnemonic)
            .field("bip39_passphrase", &format_args!("<redacted>"))
            .field("index", &self.index)
            .finish()
    }
}

/// The passphrase that unlocks a keystore: bytes, exactly as given (Argon2id takes a
/// byte string, so a passphrase need not be UTF-8). Wiped on drop; never printed.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    pub fn new(passphrase: String) -> Passphrase {
        Passphrase(Zeroizing::new(passphrase.into_bytes()))
    }

    pub fn from_bytes(passphrase: Zeroizing<Vec<u8>>) -> Passphrase {
        Passphrase(passphrase)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Zeroizing<String>> for Passphrase {
    fn from(mut passphrase: Zeroizing<String>) -> Passphrase {
        // Moves the allocation out; the emptied `Zeroizing` has nothing left to wipe.
        Passphrase::new(std::mem::take(&mut *passphrase))
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// What new keystores use: 64 MiB, 3 passes, 4 lanes.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 65536,
        t: 3,
        p: 4,
    };
    /// The weakest accepted (OWASP's Argon2id floor: 19 MiB, 2 passes, 1 lane).
    pub const MIN: KdfParams = KdfParams {
        m_kib: 19456,
        t: 2,
        p: 1,
    };
    /// The most accepted, so a hostile file cannot make `open` allocate or
    /// compute without bound: 1 GiB, 64 passes, 64 lanes.
    pub const MAX: KdfParams = KdfParams {
        m_kib: 1_048_576,
        t: 64,
        p: 64,
    };
    /// What an insecure (KDF 0) keystore records.
    const NONE: KdfParams = KdfParams {
        m_kib: 0,
        t: 0,
        p: 0,
    };

    /// Checks that every parameter is within [`MIN`](Self::MIN)..=[`MAX`](Self::MAX).
    pub fn check(&self) -> Result<(), KeystoreError> {
        let KdfParams { m_kib, t, p } = *self;
        if m_kib < Self::MIN.m_kib || t < Self::MIN.t || p < Self::MIN.p {
            return Err(KeystoreError::WeakKdf { m_kib, t, p });
        }
        if m_kib > Self::MAX.m_kib || t > Self::MAX.t || p > Self::MAX.p {
            return Err(KeystoreError::ExcessiveKdf { m_kib, t, p });
        }
        Ok(())
    }
}

impl Default for KdfParams {
    fn default() -> KdfParams {
        KdfParams::DEFAULT
    }
}

/// How a keystore is protected on disk.
#[derive(Debug, Clone, Copy)]
pub enum Protection<'a> {
    /// Encrypted under a key derived from the passphrase with Argon2id.
    Passphrase(&'a Passphrase, KdfParams),
    /// Not encrypted in any meaningful sense: for tests and simulations only.
    Insecure,
}

/// Writes a new keystore at `path`; fails with [`KeystoreError::AlreadyExists`]
/// if anything is there, even if it appears between the check and the write.
pub fn create(path: &Path, secrets: &Secrets, protection: Protection) -> Result<(), KeystoreError> {
    // Cheap early refusal before the expensive KDF; the hard link below is
    // what actually guarantees nothing is clobbered.
    if path.symlink_metadata().is_ok() {
        return Err(KeystoreError::AlreadyExists(path.to_path_buf()));
    }
    let bytes = encode(secrets, protection)?;
    fsutil::write_private(path, &bytes, WriteMode::CreateNew).map_err(write_error)
}

/// Writes a keystore at `path`, atomically replacing any existing one (for
/// re-keying or forking). A reader sees the old file or the new, never a mix.
pub fn replace(
    path: &Path,
    secrets: &Secrets,
    protection: Protection,
) -> Result<(), KeystoreError> {
    let bytes = encode(secrets, protection)?;
    fsutil::write_private(path, &bytes, WriteMode::Replace).map_err(write_error)
}

/// Opens the keystore at `path`. `passphrase` is required for an encrypted
/// keystore and ignored for an insecure one (see [`is_encrypted`]).
pub fn open(path: &Path, passphrase: Option<&Passphrase>) -> Result<Secrets, KeystoreError> {
    let bytes = read_prefix(path, MAX_FILE_LEN + 1)?;
    decode(&bytes, passphrase)
}

/// Whether the keystore at `path` needs a passphrase. Reads only the first
/// bytes of the header: it does not verify the file.
pub fn is_encrypted(path: &Path) -> Result<bool, KeystoreError> {
    let bytes = read_prefix(path, PREFIX_LEN)?;
    check_magic_and_version(&bytes)?;
    match bytes.get(PREFIX_LEN - 1) {
        None => Err(KeystoreError::Truncated),
        Some(&KDF_NONE) => Ok(false),
        Some(&KDF_ARGON2ID) => Ok(true),
        Some(&other) => Err(KeystoreError::UnknownKdf(other)),
    }
}

/// The fixed-size header, field by field.
struct Header {
    kdf: u8,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    check: [u8; CHECK_LEN],
    ciphertext_len: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields: [&[u8]; 10] = [
            &MAGIC,
            &VERSION.to_le_bytes(),
            &[self.kdf],
            &self.params.m_kib.to_le_bytes(),
            &self.params.t.to_le_bytes(),
            &self.params.p.to_le_bytes(),
            &self.salt,
            &self.nonce,
            &self.check,
            &self.ciphertext_len.to_le_bytes(),
        ];
        let mut at = 0;
        for field in fields {
            out[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        }
        debug_assert_eq!(at, HEADER_LEN);
        out
    }

    /// Reads the fields; magic and version were checked by the caller.
    fn decode(bytes: &[u8; HEADER_LEN]) -> Header {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        let mut check = [0u8; CHECK_LEN];
        salt.copy_from_slice(&bytes[23..39]);
        nonce.copy_from_slice(&bytes[39..51]);
        check.copy_from_slice(&bytes[51..67]);
        Header {
            kdf: bytes[10],
            params: KdfParams {
                m_kib: u32_at(11),
                t: u32_at(15),
                p: u32_at(19),
            },
            salt,
            nonce,
            check,
            ciphertext_len: u32_at(67),
        }
    }
}

fn encode(secrets: &Secrets, protection: Protection) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    // Encrypted in place: this buffer holds the plaintext, then the ciphertext.
    let mut buffer = encode_contents(secrets)?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut salt)?;
    fill_random(&mut nonce)?;
    let (kdf, params, key) = match protection {
        Protection::Passphrase(passphrase, params) => {
            params.check()?;
            if passphrase.is_empty() {
                return Err(KeystoreError::EmptyPassphrase);
            }
            (KDF_ARGON2ID, params, argon2_key(passphrase, params, &salt)?)
        }
        Protection::Insecure => (KDF_NONE, KdfParams::NONE, insecure_key(&salt)),
    };
    let ciphertext_len = buffer.len() + TAG_LEN;
    let header = Header {
        kdf,
        params,
        salt,
        nonce,
        check: key_check(&key),
        // At most MAX_CIPHERTEXT_LEN, checked by encode_contents.
        ciphertext_len: ciphertext_len as u32,
    };
    let header_bytes = header.encode();
    let cipher =
        Aes256Gcm::new_from_slice(&key[..]).map_err(|e| KeystoreError::Crypto(e.to_string()))?;
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &header_bytes, &mut buffer[..])
        .map_err(|_| KeystoreError::Crypto("AES-GCM encryption failed".into()))?;

    let mut out = Zeroizing::new(Vec::with_capacity(
        HEADER_LEN + ciphertext_len + CHECKSUM_LEN,
    ));
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&buffer);
    out.extend_from_slice(&tag);
    let mut checksum = [0u8; CHECKSUM_LEN];
    sha256_into(&[&out], &mut checksum);
    out.extend_from_slice(&checksum);
    Ok(out)
}

fn decode(bytes: &[u8], passphrase: Option<&Passphrase>) -> Result<Secrets, KeystoreError> {
    check_magic_and_version(bytes)?;
    let Some(header_bytes) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(KeystoreError::Truncated);
    };
    let header = Header::decode(header_bytes);
    let ciphertext_len = header.ciphertext_len as usize;
    if !(TAG_LEN..=MAX_CIPHERTEXT_LEN).contains(&ciphertext_len) {
        return Err(KeystoreError::Corrupt("impossible ciphertext length"));
    }
    let expected = HEADER_LEN + ciphertext_len + CHECKSUM_LEN;
    if bytes.len() < expected {
        return Err(KeystoreError::Truncated);
    }
    if bytes.len() > expected {
        return Err(KeystoreError::Corrupt("unexpected bytes after the end"));
    }
    let (body, stored_checksum) = bytes.split_at(expected - CHECKSUM_LEN);
    let mut checksum = [0u8; CHECKSUM_LEN];
    sha256_into(&[body], &mut checksum);
    if checksum[..] != *stored_checksum {
        return Err(KeystoreError::Corrupt("checksum mismatch"));
    }

    let key = match header.kdf {
        KDF_NONE => {
            if header.params != KdfParams::NONE {
                return Err(KeystoreError::Corrupt(
                    "an unencrypted keystore with KDF parameters",
                ));
            }
            insecure_key(&header.salt)
        }
        KDF_ARGON2ID => {
            header.params.check()?;
            let passphrase = passphrase.ok_or(KeystoreError::PassphraseRequired)?;
            argon2_key(passphrase, header.params, &header.salt)?
        }
        other => return Err(KeystoreError::UnknownKdf(other)),
    };
    if hmac_sha256(&key[..])
        .chain_update(CHECK_LABEL)
        .verify_truncated_left(&header.check)
        .is_err()
    {
        return Err(if header.kdf == KDF_NONE {
            // No passphrase was involved, so a mismatch can only be an edit.
            KeystoreError::Tampered
        } else {
            KeystoreError::WrongPassphrase
        });
    }

    let (ciphertext, tag) = body[HEADER_LEN..].split_at(ciphertext_len - TAG_LEN);
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    let cipher =
        Aes256Gcm::new_from_slice(&key[..]).map_err(|e| KeystoreError::Crypto(e.to_string()))?;
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&header.nonce),
            header_bytes,
            &mut plaintext[..],
            aes_gcm::Tag::from_slice(tag),
        )
        .map_err(|_| KeystoreError::Tampered)?;
    decode_contents(&plaintext)
}

/// Magic first (a short prefix of it is a truncated keystore), then version.
fn check_magic_and_version(bytes: &[u8]) -> Result<(), KeystoreError> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(KeystoreError::NotAKeystore);
    }
    let Some(&[lo, hi]) = bytes.get(8..10) else {
        return Err(KeystoreError::Truncated);
    };
    match u16::from_le_bytes([lo, hi]) {
        VERSION => Ok(()),
        other => Err(KeystoreError::UnsupportedVersion(other)),
    }
}

fn encode_contents(secrets: &Secrets) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let entropy = secrets.mnemonic.entropy();
    let passphrase = secrets.bip39_passphrase.as_bytes();
    if passphrase.len() > MAX_BIP39_PASSPHRASE_LEN {
        return Err(KeystoreError::Bip39PassphraseTooLong {
            len: passphrase.len(),
            max: MAX_BIP39_PASSPHRASE_LEN,
        });
    }
    // Exact capacity: a reallocation would leave an unwiped copy behind.
    let mut out = Zeroizing::new(Vec::with_capacity(
        CONTENTS_FIXED_LEN + entropy.len() + passphrase.len(),
    ));
    out.push(CONTENTS_VERSION);
    out.extend_from_slice(&secrets.index.to_le_bytes());
    // Mnemonic guarantees 16..=32 bytes; the length above guarantees u16.
    out.push(entropy.len() as u8);
    out.extend_from_slice(entropy);
    out.extend_from_slice(&(passphrase.len() as u16).to_le_bytes());
    out.extend_from_slice(passphrase);
    Ok(out)
}

fn decode_contents(bytes: &[u8]) -> Result<Secrets, KeystoreError> {
    let invalid = |what: &str| KeystoreError::InvalidContents(what.to_string());
    let mut rest = bytes;
    let version = take(&mut rest, 1)?[0];
    if version != CONTENTS_VERSION {
        return Err(KeystoreError::InvalidContents(format!(
            "unknown contents version {version}"
        )));
    }
    let index = u32::from_le_bytes(*take_array::<4>(&mut rest)?);
    let entropy_len = usize::from(take(&mut rest, 1)?[0]);
    let mnemonic = Mnemonic::from_entropy(take(&mut rest, entropy_len)?)
        .map_err(|e| KeystoreError::InvalidContents(e.to_string()))?;
    let passphrase_len = usize::from(u16::from_le_bytes(*take_array::<2>(&mut rest)?));
    let passphrase = std::str::from_utf8(take(&mut rest, passphrase_len)?)
        .map_err(|_| invalid("the BIP39 passphrase is not UTF-8"))?;
    let passphrase = Zeroizing::new(passphrase.to_string());
    if !rest.is_empty() {
        return Err(invalid("unexpected bytes after the contents"));
    }
    Ok(Secrets::new(mnemonic, passphrase, index))
}

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], KeystoreError> {
    let Some((head, tail)) = rest.split_at_checked(n) else {
        return Err(KeystoreError::InvalidContents("too short".into()));
    };
    *rest = tail;
    Ok(head)
}

fn take_array<'a, const N: usize>(rest: &mut &'a [u8]) -> Result<&'a [u8; N], KeystoreError> {
    let Some((head, tail)) = rest.split_first_chunk::<N>() else {
        return Err(KeystoreError::InvalidContents("too short".into()));
    };
    *rest = tail;
    Ok(head)
}

fn argon2_key(
    passphrase: &Passphrase,
    params: KdfParams,
    salt: &[u8],
) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
    let argon_params = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| KeystoreError::Crypto(format!("Argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| KeystoreError::Crypto(format!("Argon2: {e}")))?;
    Ok(key)
}

fn insecure_key(salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    sha256_into(&[INSECURE_LABEL, salt], &mut key);
    key
}

fn key_check(key: &[u8; 32]) -> [u8; CHECK_LEN] {
    let tag = hmac_sha256(key)
        .chain_update(CHECK_LABEL)
        .finalize()
        .into_bytes();
    let mut check = [0u8; CHECK_LEN];
    check.copy_from_slice(&tag[..CHECK_LEN]);
    check
}

fn write_error(e: WriteError) -> KeystoreError {
    match e {
        WriteError::AlreadyExists(path) => KeystoreError::AlreadyExists(path),
        WriteError::Io { path, source } => KeystoreError::Io { path, source },
    }
}

fn fill_random(buf: &mut [u8]) -> Result<(), KeystoreError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| KeystoreError::Rng(e.to_string()))
}

/// Reads at most `limit` bytes of `path` into a buffer wiped on drop (an
/// insecure keystore is its secrets in the clear).
fn read_prefix(path: &Path, limit: usize) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let io_error = |source: io::Error| KeystoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => KeystoreError::NotFound(path.to_path_buf()),
        _ => io_error(source),
    })?;
    let size = file.metadata().map_err(io_error)?.len();
    let size = usize::try_from(size).unwrap_or(usize::MAX).min(limit);
    // Filled in place up to a fixed size, so the buffer never reallocates.
    let mut buf = Zeroizing::new(vec![0u8; size]);
    let mut filled = 0;
    let mut reader = file.take(limit as u64);
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_encoding_round_trips_at_the_documented_offsets() {
        let header = Header {
            kdf: KDF_ARGON2ID,
            params: KdfParams::DEFAULT,
            salt: [1; SALT_LEN],
            nonce: [2; NONCE_LEN],
            check: [3; CHECK_LEN],
            ciphertext_len: 0x0102_0304,
        };
        let bytes = header.encode();
        assert_eq!(&bytes[..8], b"KITHKEYS");
        assert_eq!(&bytes[8..10], &[1, 0]);
        assert_eq!(bytes[10], 1);
        assert_eq!(&bytes[11..15], &65536u32.to_le_bytes());
        assert_eq!(&bytes[15..19], &3u32.to_le_bytes());
        assert_eq!(&bytes[19..23], &4u32.to_le_bytes());
        assert_eq!(&bytes[23..39], &[1; 16]);
        assert_eq!(&bytes[39..51], &[2; 12]);
        assert_eq!(&bytes[51..67], &[3; 16]);
        assert_eq!(&bytes[67..71], &[4, 3, 2, 1]);
        let back = Header::decode(&bytes);
        assert_eq!(back.params, KdfParams::DEFAULT);
        assert_eq!(back.ciphertext_len, 0x0102_0304);
        assert_eq!(
            (back.salt, back.nonce, back.check),
            ([1; 16], [2; 12], [3; 16])
        );
    }

    #[test]
    fn contents_round_trip_and_reject_trailing_bytes() {
        let secrets = Secrets::new(
            Mnemonic::generate(),
            Zeroizing::new("extra words".into()),
            9,
        );
        let bytes = encode_contents(&secrets).unwrap();
        assert_eq!(bytes.len(), CONTENTS_FIXED_LEN + 32 + 11);
        let back = decode_contents(&bytes).unwrap();
        assert_eq!(back.mnemonic().entropy(), secrets.mnemonic().entropy());
        assert_eq!(back.bip39_passphrase(), "extra words");
        assert_eq!(back.index(), 9);

        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            decode_contents(&longer),
            Err(KeystoreError::InvalidContents(_))
        ));
        for cut in 0..bytes.len() {
            assert!(matches!(
                decode_contents(&bytes[..cut]),
                Err(KeystoreError::InvalidContents(_))
            ));
        }
    }

    #[test]
    fn overlong_bip39_passphrase_is_refused() {
        let secrets = Secrets::new(
            Mnemonic::generate(),
            Zeroizing::new("x".repeat(MAX_BIP39_PASSPHRASE_LEN + 1)),
            0,
        );
        assert!(matches!(
            encode_contents(&secrets),
            Err(KeystoreError::Bip39PassphraseTooLong {
                len: 1025,
                max: 1024
            })
        ));
    }

    #[test]
    fn insecure_key_check_mismatch_is_tampering_not_a_wrong_passphrase() {
        let secrets = Secrets::new(Mnemonic::generate(), Zeroizing::new(String::new()), 0);
        let mut bytes = encode(&secrets, Protection::Insecure).unwrap().to_vec();
        bytes[51] ^= 1;
        let len = bytes.len();
        let mut checksum = [0u8; 32];
        sha256_into(&[&bytes[..len - 32]], &mut checksum);
        bytes[len - 32..].copy_from_slice(&checksum);
        assert!(matches!(decode(&bytes, None), Err(KeystoreError::Tampered)));
    }
}
