//! SLIP-0010 Ed25519 key derivation (hardened only) and kith's node key path.
//!
//! A node key is the SLIP-0010 leaf at `m/7444'/0'/<index>'` of the BIP39 seed.
//! Ed25519 SLIP-0010 has no public (non-hardened) derivation, so every index
//! carries [`HARDENED`]. Written by hand with `hmac` + `sha2` so every
//! intermediate (the 64-byte HMAC output, keys, chain codes) lives in
//! `Zeroizing` storage; this module must never print or copy a secret key or
//! chain code into a buffer that is not wiped on drop.

use std::fmt;

use hmac::Mac;
use zeroize::Zeroizing;

use crate::NodeKey;
use crate::hash::{HmacSha512, finish_sha512, hmac_sha512};

/// The hardened-index bit.
pub const HARDENED: u32 = 0x8000_0000;

/// kith's purpose level, `m/7444'` (coin type 74 is taken in SLIP-0044).
pub const NODE_PURPOSE: u32 = 7444;

/// SLIP-0010's HMAC key for the Ed25519 master key.
const ED25519_CURVE: &[u8] = b"ed25519 seed";

/// Why a derivation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    #[error("Ed25519 derivation is hardened only: index {0} lacks the hardened bit (0x80000000)")]
    NotHardened(u32),
    #[error("a node index must be below 2^31 (2147483648); got {0}")]
    IndexTooLarge(u32),
}

/// A SLIP-0010 extended private key: a 32-byte Ed25519 secret and its chain
/// code. Wiped on drop; never printed.
#[derive(Clone)]
pub struct ExtendedKey {
    secret: Zeroizing<[u8; 32]>,
    chain_code: Zeroizing<[u8; 32]>,
}

impl ExtendedKey {
    /// The master key of `seed`: HMAC-SHA512(key = "ed25519 seed", seed).
    /// Every 32-byte string is a valid Ed25519 secret, so this cannot fail.
    pub fn master(seed: &[u8]) -> ExtendedKey {
        let mut mac = hmac_sha512(ED25519_CURVE);
        mac.update(seed);
        ExtendedKey::from_mac(mac)
    }

    /// The hardened child `index` (which must have the [`HARDENED`] bit):
    /// HMAC-SHA512(key = chain code, 0x00 || secret || index big-endian).
    pub fn derive_child(&self, index: u32) -> Result<ExtendedKey, DeriveError> {
        if index & HARDENED == 0 {
            return Err(DeriveError::NotHardened(index));
        }
        // Fed piecewise rather than assembled in a 37-byte buffer: one less
        // copy of the parent secret to wipe.
        let mut mac = hmac_sha512(&self.chain_code[..]);
        mac.update(&[0]);
        mac.update(&self.secret[..]);
        mac.update(&index.to_be_bytes());
        Ok(ExtendedKey::from_mac(mac))
    }

    /// The key at `path` below the master key of `seed`.
    pub fn derive_path(seed: &[u8], path: &[u32]) -> Result<ExtendedKey, DeriveError> {
        // Checked up front so a bad path costs no HMAC at all.
        if let Some(&index) = path.iter().find(|&&i| i & HARDENED == 0) {
            return Err(DeriveError::NotHardened(index));
        }
        path.iter()
            .try_fold(ExtendedKey::master(seed), |key, &index| {
                key.derive_child(index)
            })
    }

    pub fn secret(&self) -> &Zeroizing<[u8; 32]> {
        &self.secret
    }

    pub fn chain_code(&self) -> &[u8; 32] {
        &self.chain_code
    }

    /// The Ed25519 public key of [`secret`](Self::secret). (SLIP-0010's
    /// vectors print it with a leading 0x00 byte, which is not part of the key.)
    pub fn public_key(&self) -> [u8; 32] {
        // SigningKey wipes itself on drop (ed25519-dalek's `zeroize` feature).
        ed25519_dalek::SigningKey::from_bytes(&self.secret)
            .verifying_key()
            .to_bytes()
    }

    /// Splits an HMAC-SHA512 result into secret (left half) and chain code (right half).
    fn from_mac(mac: HmacSha512) -> ExtendedKey {
        let mut i = Zeroizing::new([0u8; 64]);
        finish_sha512(mac, &mut i);
        let mut secret = Zeroizing::new([0u8; 32]);
        let mut chain_code = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&i[..32]);
        chain_code.copy_from_slice(&i[32..]);
        ExtendedKey { secret, chain_code }
    }
}

impl fmt::Debug for ExtendedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExtendedKey(<redacted>)")
    }
}

/// The SLIP-0010 path of node `index`: `m/7444'/0'/<index>'`.
/// `index` is the unhardened number, below 2^31.
pub fn node_key_path(index: u32) -> Result<[u32; 3], DeriveError> {
    if index & HARDENED != 0 {
        return Err(DeriveError::IndexTooLarge(index));
    }
    Ok([NODE_PURPOSE | HARDENED, HARDENED, index | HARDENED])
}

/// The node key at `m/7444'/0'/<index>'` of a BIP39 `seed`.
pub fn derive_node_key(seed: &[u8; 64], index: u32) -> Result<NodeKey, DeriveError> {
    let path = node_key_path(index)?;
    let leaf = ExtendedKey::derive_path(seed, &path)?;
    Ok(NodeKey::from_secret(leaf.secret()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhardened_indices_are_refused_anywhere_in_a_path() {
        let master = ExtendedKey::master(&[7; 64]);
        assert_eq!(
            master.derive_child(5).unwrap_err(),
            DeriveError::NotHardened(5)
        );
        assert_eq!(
            ExtendedKey::derive_path(&[7; 64], &[HARDENED, 3, HARDENED | 1]).unwrap_err(),
            DeriveError::NotHardened(3)
        );
    }

    #[test]
    fn node_key_path_hardens_every_level_and_bounds_the_index() {
        assert_eq!(
            node_key_path(0).unwrap(),
            [HARDENED | 7444, HARDENED, HARDENED]
        );
        assert_eq!(
            node_key_path(HARDENED - 1).unwrap(),
            [HARDENED | 7444, HARDENED, u32::MAX]
        );
        assert_eq!(
            node_key_path(HARDENED).unwrap_err(),
            DeriveError::IndexTooLarge(HARDENED)
        );
    }

    #[test]
    fn derive_node_key_matches_the_explicit_path() {
        let seed = [42u8; 64];
        let key = derive_node_key(&seed, 3).unwrap();
        let leaf =
            ExtendedKey::derive_path(&seed, &[HARDENED | 7444, HARDENED, HARDENED | 3]).unwrap();
        assert_eq!(key.node_id().as_bytes(), &leaf.public_key());
    }
}
