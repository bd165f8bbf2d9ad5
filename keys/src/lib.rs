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

pub mod id;

pub use id::{IdError, NodeId, NodeKey, PrefixError, Signature, SignatureError};
