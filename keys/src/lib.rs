//! kith-keys: who a kith node is.
//!
//! A node's identity is an Ed25519 key derived (SLIP-0010, hardened only) from a
//! 24-word BIP39 mnemonic, kept on disk in an encrypted keystore. This crate owns
//! every secret kith handles; it must never print, log, or leave a secret in a
//! buffer that is not wiped on drop.
//!
//! # Layout
//!
//! - [`id`]: [`NodeId`] (the public key and its base32 text form), [`NodeKey`]
//!   (the signing key) and [`Signature`].
//! - [`mnemonic`]: [`Mnemonic`], the BIP39 recovery phrase (English), and its
//!   64-byte seed.
//! - [`slip10`]: SLIP-0010 Ed25519 derivation ([`ExtendedKey`]) and the node key
//!   path `m/7444'/0'/<index>'` ([`derive_node_key`]).
//! - [`keystore`]: the encrypted keystore file ([`keystore::create`],
//!   [`keystore::open`], ...) holding [`Secrets`] (mnemonic, BIP39 passphrase,
//!   node index) under a [`Passphrase`] (Argon2id + AES-256-GCM).
//! - [`fsutil`]: atomic, durable, private (0600) file writes.
//! - [`memory`]: locked, non-dumpable pages for long-lived secret keys.
//!
//! From phrase to node: `Mnemonic` → [`Mnemonic::to_seed`] →
//! [`derive_node_key`] → `NodeKey` → [`NodeKey::node_id`]; [`Secrets::node_key`]
//! does all of it and wipes the seed.

pub mod fsutil;
mod hash;
pub mod id;
pub mod keystore;
pub mod memory;
pub mod mnemonic;
pub mod slip10;

pub use id::{IdError, NodeId, NodeKey, PrefixError, Signature, SignatureError};
pub use keystore::{KdfParams, KeystoreError, Passphrase, Protection, Secrets};
pub use mnemonic::{Mnemonic, MnemonicError};
pub use slip10::{
    DeriveError, ExtendedKey, HARDENED, NODE_PURPOSE, derive_node_key, node_key_path,
};
