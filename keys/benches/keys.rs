//! Costs of the identity operations a node performs: deriving its key, signing,
//! verifying, and (rarely, at start) turning a phrase into a seed and unlocking
//! the keystore.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kith_keys::keystore;
use kith_keys::{KdfParams, Mnemonic, Passphrase, Protection, Secrets, derive_node_key};
use zeroize::Zeroizing;

fn fixed_mnemonic() -> Mnemonic {
    Mnemonic::from_entropy(&[0x42; 32]).unwrap()
}

fn identity(c: &mut Criterion) {
    let seed = fixed_mnemonic().to_seed("");
    let key = derive_node_key(&seed, 0).unwrap();
    let id = key.node_id();
    // About the size of a handshake transcript or a signed trust record.
    let message = [0x5a_u8; 256];
    let signature = key.sign(&message);

    let mut group = c.benchmark_group("identity");
    group.bench_function("derive_node_key (seed -> m/7444'/0'/0')", |b| {
        b.iter(|| derive_node_key(black_box(&seed), black_box(0)).unwrap())
    });
    group.bench_function("sign 256 B", |b| b.iter(|| key.sign(black_box(&message))));
    group.bench_function("verify_strict 256 B", |b| {
        b.iter(|| {
            id.verify(black_box(&message), black_box(&signature))
                .unwrap()
        })
    });
    group.finish();
}

fn unlock(c: &mut Criterion) {
    let mnemonic = fixed_mnemonic();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore");
    let passphrase = Passphrase::new("bench passphrase".into());
    let secrets = Secrets::new(mnemonic.clone(), Zeroizing::new(String::new()), 0);
    keystore::create(
        &path,
        &secrets,
        Protection::Passphrase(&passphrase, KdfParams::DEFAULT),
    )
    .unwrap();

    let mut group = c.benchmark_group("unlock");
    group.sample_size(10);
    group.bench_function("mnemonic -> BIP39 seed (PBKDF2, 2048 rounds)", |b| {
        b.iter(|| mnemonic.to_seed(black_box("")))
    });
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("keystore open, Argon2id m=64MiB t=3 p=4", |b| {
        b.iter(|| keystore::open(&path, Some(&passphrase)).unwrap())
    });
    group.bench_function("keystore open + node_key", |b| {
        b.iter(|| {
            keystore::open(&path, Some(&passphrase))
                .unwrap()
                .node_key()
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, identity, unlock);
criterion_main!(benches);
