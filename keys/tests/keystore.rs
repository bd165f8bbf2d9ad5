//! The keystore file, through its public API and its documented byte layout.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kith_keys::keystore::{self, HEADER_LEN};
use kith_keys::{KdfParams, KeystoreError, Mnemonic, Passphrase, Protection, Secrets};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const PHRASE: &str = "panda eyebrow bullet gorilla call smoke muffin taste mesh discover soft ostrich alcohol speed nation flash devote level hobby quick inner drive ghost inside";

// Offsets from the format table in keystore.rs's module doc.
const VERSION_AT: usize = 8;
const KDF_AT: usize = 10;
const M_AT: usize = 11;
const T_AT: usize = 15;
const P_AT: usize = 19;
const SALT: std::ops::Range<usize> = 23..39;
const NONCE: std::ops::Range<usize> = 39..51;
const CT_LEN_AT: usize = 67;

fn secrets() -> Secrets {
    Secrets::new(
        Mnemonic::parse(PHRASE).unwrap(),
        Zeroizing::new("bip39 extra".to_string()),
        3,
    )
}

fn pass() -> Passphrase {
    Passphrase::new("correct horse battery staple".into())
}

/// Small but legal parameters, so tests stay fast.
fn fast(passphrase: &Passphrase) -> Protection<'_> {
    Protection::Passphrase(passphrase, KdfParams::MIN)
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore");
    (dir, path)
}

fn assert_same(a: &Secrets, b: &Secrets) {
    assert_eq!(a.mnemonic().entropy(), b.mnemonic().entropy());
    assert_eq!(a.bip39_passphrase(), b.bip39_passphrase());
    assert_eq!(a.index(), b.index());
}

/// Applies `edit` to the file and recomputes the trailing checksum, as a
/// deliberate editor would, so the open gets past the checksum.
fn edit_and_reseal(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap();
    edit(&mut bytes);
    reseal(&mut bytes);
    fs::write(path, &bytes).unwrap();
}

fn reseal(bytes: &mut [u8]) {
    let len = bytes.len();
    let sum = Sha256::digest(&bytes[..len - 32]);
    bytes[len - 32..].copy_from_slice(&sum);
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn encrypted_round_trip() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    assert!(keystore::is_encrypted(&path).unwrap());
    let opened = keystore::open(&path, Some(&pass)).unwrap();
    assert_same(&opened, &secrets());
    assert_eq!(
        opened.node_key().unwrap().node_id(),
        secrets().node_key().unwrap().node_id()
    );
    // The phrase does not appear in the file.
    let bytes = fs::read(&path).unwrap();
    let entropy = secrets().mnemonic().entropy().to_vec();
    assert!(!bytes.windows(entropy.len()).any(|w| w == entropy));
}

#[test]
fn encrypted_round_trip_with_default_parameters() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(
        &path,
        &secrets(),
        Protection::Passphrase(&pass, KdfParams::DEFAULT),
    )
    .unwrap();
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes[KDF_AT], 1);
    assert_eq!(bytes[M_AT..M_AT + 4], 65536u32.to_le_bytes());
    assert_eq!(bytes[T_AT..T_AT + 4], 3u32.to_le_bytes());
    assert_eq!(bytes[P_AT..P_AT + 4], 4u32.to_le_bytes());
    assert_same(&keystore::open(&path, Some(&pass)).unwrap(), &secrets());
}

#[test]
fn insecure_round_trip() {
    let (_dir, path) = dir();
    keystore::create(&path, &secrets(), Protection::Insecure).unwrap();
    assert!(!keystore::is_encrypted(&path).unwrap());
    assert_same(&keystore::open(&path, None).unwrap(), &secrets());
    // A passphrase given for an insecure keystore is not needed, and ignored.
    assert_same(&keystore::open(&path, Some(&pass())).unwrap(), &secrets());
}

#[test]
fn wrong_passphrase_is_told_apart() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    let wrong = Passphrase::new("correct horse battery stapler".into());
    assert!(matches!(
        keystore::open(&path, Some(&wrong)),
        Err(KeystoreError::WrongPassphrase)
    ));
}

#[test]
fn encrypted_keystore_needs_a_passphrase() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    assert!(matches!(
        keystore::open(&path, None),
        Err(KeystoreError::PassphraseRequired)
    ));
}

#[test]
fn truncated_file_is_reported_as_truncated() {
    let (_dir, path) = dir();
    keystore::create(&path, &secrets(), Protection::Insecure).unwrap();
    let bytes = fs::read(&path).unwrap();
    for cut in [
        0,
        3,
        8,
        9,
        10,
        40,
        HEADER_LEN - 1,
        HEADER_LEN,
        bytes.len() - 33,
        bytes.len() - 1,
    ] {
        fs::write(&path, &bytes[..cut]).unwrap();
        let result = keystore::open(&path, None);
        assert!(
            matches!(result, Err(KeystoreError::Truncated)),
            "cut at {cut}: {result:?}"
        );
    }
}

#[test]
fn flipped_byte_is_corruption() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    let original = fs::read(&path).unwrap();
    // In the ciphertext, in the salt, and in the checksum itself.
    for at in [HEADER_LEN + 5, SALT.start + 1, original.len() - 1] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let result = keystore::open(&path, Some(&pass));
        assert!(
            matches!(result, Err(KeystoreError::Corrupt("checksum mismatch"))),
            "byte {at}: {result:?}"
        );
    }
    let err = keystore::open(&path, Some(&pass)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the keystore file is damaged (checksum mismatch)"
    );
}

#[test]
fn an_edited_salt_or_kdf_parameter_is_not_blamed_on_the_passphrase_alone() {
    // With the right passphrase, each edit (checksum recomputed) changes the derived
    // key exactly as a wrong passphrase would: the message must say it may be an edit.
    type Edit = fn(&mut Vec<u8>);
    let edits: [(&str, Edit); 3] = [
        ("salt", |b| b[23] ^= 1),
        ("passes", |b| put_u32(b, 15, 3)),
        ("key check", |b| b[51] ^= 1),
    ];
    for (what, edit) in edits {
        let (_dir, path) = dir();
        let pass = pass();
        keystore::create(&path, &secrets(), fast(&pass)).unwrap();
        edit_and_reseal(&path, edit);
        let err = keystore::open(&path, Some(&pass)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("wrong") && text.contains("edited") && text.contains("salt"),
            "{what}: {text}"
        );
    }
}

#[test]
fn edited_ciphertext_with_a_fixed_checksum_is_tampering() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    edit_and_reseal(&path, |bytes| bytes[HEADER_LEN + 5] ^= 1);
    assert!(matches!(
        keystore::open(&path, Some(&pass)),
        Err(KeystoreError::Tampered)
    ));
}

#[test]
fn every_single_byte_edit_is_refused_and_nothing_panics() {
    let (_dir, path) = dir();
    keystore::create(&path, &secrets(), Protection::Insecure).unwrap();
    let original = fs::read(&path).unwrap();
    for at in 0..original.len() {
        for resealed in [false, true] {
            if resealed && at >= original.len() - 32 {
                continue;
            }
            let mut bytes = original.clone();
            bytes[at] ^= 0x01;
            if resealed {
                reseal(&mut bytes);
            }
            fs::write(&path, &bytes).unwrap();
            let result = keystore::open(&path, None);
            assert!(result.is_err(), "byte {at} resealed={resealed} accepted");
        }
    }
}

#[test]
fn trailing_bytes_are_corruption() {
    let (_dir, path) = dir();
    keystore::create(&path, &secrets(), Protection::Insecure).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes.push(0);
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        keystore::open(&path, None),
        Err(KeystoreError::Corrupt(_))
    ));
}

#[test]
fn huge_ciphertext_length_is_refused_without_reading_it() {
    let (_dir, path) = dir();
    keystore::create(&path, &secrets(), Protection::Insecure).unwrap();
    edit_and_reseal(&path, |bytes| put_u32(bytes, CT_LEN_AT, u32::MAX));
    assert!(matches!(
        keystore::open(&path, None),
        Err(KeystoreError::Corrupt(_))
    ));
}

#[test]
fn unknown_version_is_refused() {
    let (_dir, path) = dir();
    keystore::create(&path, &secrets(), Protection::Insecure).unwrap();
    // No reseal needed: the version is checked before the checksum.
    let mut bytes = fs::read(&path).unwrap();
    bytes[VERSION_AT..VERSION_AT + 2].copy_from_slice(&2u16.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        keystore::open(&path, None),
        Err(KeystoreError::UnsupportedVersion(2))
    ));
    assert!(matches!(
        keystore::is_encrypted(&path),
        Err(KeystoreError::UnsupportedVersion(2))
    ));
}

#[test]
fn other_files_are_not_keystores() {
    let (_dir, path) = dir();
    for contents in [
        &b"hello, world"[..],
        b"KITHKEYZ\x01\x00",
        b"\x89PNG\r\n\x1a\n",
        b"K",
    ] {
        fs::write(&path, contents).unwrap();
        let result = keystore::open(&path, None);
        let expect_truncated = contents == b"K";
        assert!(
            if expect_truncated {
                matches!(result, Err(KeystoreError::Truncated))
            } else {
                matches!(result, Err(KeystoreError::NotAKeystore))
            },
            "{contents:?}: {result:?}"
        );
    }
}

#[test]
fn missing_file_is_not_found() {
    let (_dir, path) = dir();
    assert!(matches!(
        keystore::open(&path, None),
        Err(KeystoreError::NotFound(p)) if p == path
    ));
    assert!(matches!(
        keystore::is_encrypted(&path),
        Err(KeystoreError::NotFound(_))
    ));
}

#[test]
fn weak_kdf_parameters_in_a_file_are_refused() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    let original = fs::read(&path).unwrap();
    for (at, value) in [(M_AT, 19455), (M_AT, 8), (T_AT, 1), (P_AT, 0)] {
        fs::write(&path, &original).unwrap();
        edit_and_reseal(&path, |bytes| put_u32(bytes, at, value));
        let result = keystore::open(&path, Some(&pass));
        assert!(
            matches!(result, Err(KeystoreError::WeakKdf { .. })),
            "offset {at} = {value}: {result:?}"
        );
    }
    fs::write(&path, &original).unwrap();
    edit_and_reseal(&path, |bytes| put_u32(bytes, M_AT, 1024));
    assert!(matches!(
        keystore::open(&path, Some(&pass)),
        Err(KeystoreError::WeakKdf {
            m_kib: 1024,
            t: 2,
            p: 1
        })
    ));
}

#[test]
fn excessive_kdf_parameters_in_a_file_are_refused() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    let original = fs::read(&path).unwrap();
    for (at, value) in [
        (M_AT, u32::MAX),
        (M_AT, 1_048_577),
        (T_AT, 65),
        (P_AT, 1000),
    ] {
        fs::write(&path, &original).unwrap();
        edit_and_reseal(&path, |bytes| put_u32(bytes, at, value));
        let result = keystore::open(&path, Some(&pass));
        assert!(
            matches!(result, Err(KeystoreError::ExcessiveKdf { .. })),
            "offset {at} = {value}: {result:?}"
        );
    }
}

#[test]
fn unknown_kdf_is_refused() {
    let (_dir, path) = dir();
    keystore::create(&path, &secrets(), Protection::Insecure).unwrap();
    edit_and_reseal(&path, |bytes| bytes[KDF_AT] = 7);
    assert!(matches!(
        keystore::open(&path, None),
        Err(KeystoreError::UnknownKdf(7))
    ));
    assert!(matches!(
        keystore::is_encrypted(&path),
        Err(KeystoreError::UnknownKdf(7))
    ));
}

#[test]
fn create_refuses_bad_protection() {
    let (_dir, path) = dir();
    let pass = pass();
    let weak = KdfParams {
        m_kib: 4096,
        ..KdfParams::MIN
    };
    let huge = KdfParams {
        t: 1000,
        ..KdfParams::MIN
    };
    assert!(matches!(
        keystore::create(&path, &secrets(), Protection::Passphrase(&pass, weak)),
        Err(KeystoreError::WeakKdf { m_kib: 4096, .. })
    ));
    assert!(matches!(
        keystore::create(&path, &secrets(), Protection::Passphrase(&pass, huge)),
        Err(KeystoreError::ExcessiveKdf { t: 1000, .. })
    ));
    let empty = Passphrase::new(String::new());
    assert!(matches!(
        keystore::create(&path, &secrets(), fast(&empty)),
        Err(KeystoreError::EmptyPassphrase)
    ));
    assert!(!path.exists());
}

#[test]
fn file_mode_is_0600() {
    let (_dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    keystore::replace(&path, &secrets(), Protection::Insecure).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn create_never_clobbers_and_leaves_no_temp_files() {
    let (dir, path) = dir();
    let pass = pass();
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    let original = fs::read(&path).unwrap();
    let other = Secrets::new(Mnemonic::generate(), Zeroizing::new(String::new()), 0);
    let result = keystore::create(&path, &other, Protection::Insecure);
    assert!(
        matches!(&result, Err(KeystoreError::AlreadyExists(p)) if *p == path),
        "{result:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), original);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keystore")]);

    // Not even a dangling symlink is replaced.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    assert!(matches!(
        keystore::create(&link, &other, Protection::Insecure),
        Err(KeystoreError::AlreadyExists(_))
    ));
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn replace_overwrites_atomically() {
    let (_dir, path) = dir();
    let pass = pass();
    // replace also creates.
    keystore::replace(&path, &secrets(), Protection::Insecure).unwrap();
    let forked = secrets().with_index(77);
    keystore::replace(&path, &forked, fast(&pass)).unwrap();
    let opened = keystore::open(&path, Some(&pass)).unwrap();
    assert_eq!(opened.index(), 77);
    assert_eq!(opened.mnemonic().entropy(), secrets().mnemonic().entropy());
}

#[test]
fn every_write_uses_a_fresh_salt_and_nonce() {
    let (dir, path) = dir();
    let pass = pass();
    let second = dir.path().join("second");
    keystore::create(&path, &secrets(), fast(&pass)).unwrap();
    keystore::create(&second, &secrets(), fast(&pass)).unwrap();
    let a = fs::read(&path).unwrap();
    let b = fs::read(&second).unwrap();
    assert_ne!(a[SALT], b[SALT]);
    assert_ne!(a[NONCE], b[NONCE]);
    assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    assert_eq!(a.len(), b.len());

    let (_dir2, insecure) = self::dir();
    keystore::create(&insecure, &secrets(), Protection::Insecure).unwrap();
    let before = fs::read(&insecure).unwrap();
    keystore::replace(&insecure, &secrets(), Protection::Insecure).unwrap();
    let after = fs::read(&insecure).unwrap();
    assert_ne!(before[SALT], after[SALT]);
    assert_ne!(before[NONCE], after[NONCE]);
}

#[test]
fn debug_of_passphrase_and_protection_reveals_nothing() {
    let pass = pass();
    assert_eq!(format!("{pass:?}"), "Passphrase(<redacted>)");
    let shown = format!("{:?}", fast(&pass));
    assert!(!shown.contains("horse"), "{shown}");
    let shown = format!("{:?}", secrets());
    assert!(
        !shown.contains("bip39 extra") && !shown.contains("panda"),
        "{shown}"
    );
}
