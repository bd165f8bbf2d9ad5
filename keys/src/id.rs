//! Node identities: the public [`NodeId`], the secret [`NodeKey`] and [`Signature`]s.
//!
//! `NodeId` is the raw 32-byte Ed25519 public key; its text form is RFC 4648
//! base32, lowercase, unpadded (52 characters). Verification is always strict
//! (`verify_strict`) and weak (small-order) keys are refused, so one key has one
//! signature per message and no key signs for everyone.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::memory::SecretCell;

/// Length of a [`NodeId`] in text form.
pub const NODE_ID_TEXT_LEN: usize = 52;
/// Length of the short form shown in tables.
pub const SHORT_ID_LEN: usize = 10;
/// Shortest prefix accepted when looking up a known peer.
pub const MIN_PREFIX_LEN: usize = 8;

/// Why a text or byte string is not a usable node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("a node id is {NODE_ID_TEXT_LEN} characters of base32, got {0}")]
    WrongLength(usize),
    #[error("a node id uses only the letters a-z and digits 2-7; found {0:?}")]
    BadCharacter(char),
    #[error("not a valid Ed25519 public key")]
    NotAPoint,
    #[error("refusing a weak (small-order) Ed25519 public key")]
    WeakKey,
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signer's key is not usable: {0}")]
    BadKey(#[from] IdError),
    #[error("signature does not verify")]
    Invalid,
}

/// Why a prefix did not name exactly one known node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("an id prefix needs at least {MIN_PREFIX_LEN} characters, got {0}")]
    TooShort(usize),
    #[error("{0:?} is not base32 (letters a-z and digits 2-7)")]
    NotBase32(String),
    #[error("no known node id starts with {0:?}")]
    NotFound(String),
    #[error("{prefix:?} matches {} node ids: {}", candidates.len(), candidates.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<NodeId>,
    },
}

/// A node's public identity: its 32-byte Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Checks that `bytes` is a valid, non-weak Ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdError> {
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| IdError::NotAPoint)?;
        if key.is_weak() {
            return Err(IdError::WeakKey);
        }
        Ok(NodeId(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first [`SHORT_ID_LEN`] characters of the text form, for tables.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(SHORT_ID_LEN);
        s
    }

    /// Verifies `signature` over `message` strictly (no malleable or weak-key forms).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdError::NotAPoint)?;
        if key.is_weak() {
            return Err(IdError::WeakKey.into());
        }
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig)
            .map_err(|_| SignatureError::Invalid)
    }

    /// Finds the one id in `known` whose text form starts with `prefix`
    /// (case-insensitive, at least [`MIN_PREFIX_LEN`] characters).
    pub fn resolve_prefix<'a>(
        prefix: &str,
        known: impl IntoIterator<Item = &'a NodeId>,
    ) -> Result<NodeId, PrefixError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < MIN_PREFIX_LEN {
            return Err(PrefixError::TooShort(prefix.len()));
        }
        if !prefix.chars().all(is_base32_char) {
            return Err(PrefixError::NotBase32(prefix));
        }
        let mut candidates: Vec<NodeId> = known
            .into_iter()
            .filter(|id| id.to_string().starts_with(&prefix))
            .copied()
            .collect();
        candidates.sort();
        candidates.dedup();
        match candidates.len() {
            0 => Err(PrefixError::NotFound(prefix)),
            1 => Ok(candidates[0]),
            _ => Err(PrefixError::Ambiguous { prefix, candidates }),
        }
    }
}

fn is_base32_char(c: char) -> bool {
    c.is_ascii_lowercase() || ('2'..='7').contains(&c)
}

/// Lets maps keyed by `NodeId` be searched with raw key bytes (a relay routing
/// packets by the 32 bytes a frame names), without decoding a curve point per
/// lookup. Consistent with `Eq`, `Ord` and `Hash`, which all compare exactly these bytes.
impl std::borrow::Borrow<[u8; 32]> for NodeId {
    fn borrow(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.chars().count() != NODE_ID_TEXT_LEN {
            return Err(IdError::WrongLength(s.chars().count()));
        }
        let lower = s.to_ascii_lowercase();
        if let Some(c) = lower.chars().find(|c| !is_base32_char(*c)) {
            return Err(IdError::BadCharacter(c));
        }
        let bytes = BASE32_NOPAD
            .decode(lower.to_ascii_uppercase().as_bytes())
            // 52 base32 characters carry 260 bits; nonzero trailing bits are not canonical.
            .map_err(|_| IdError::BadCharacter(lower.chars().last().unwrap_or('?')))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdError::WrongLength(s.len()))?;
        NodeId::from_bytes(bytes)
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(64)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Signature, A::Error> {
                let mut out = [0u8; 64];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(out))
            }
        }
        deserializer.deserialize_tuple(64, Visitor)
    }
}

/// A node's secret signing key. Wiped on drop; never printed.
///
/// Cloning shares the one secret (reference-counted); it never copies it. The secret
/// lives in a locked, non-dumpable page once [`crate::memory::protect_secrets`] was
/// called, else on the heap; either way it is wiped when the last clone drops.
#[derive(Clone)]
pub struct NodeKey {
    key: Arc<SecretCell<SigningKey>>,
}

impl NodeKey {
    /// Builds a key from a 32-byte Ed25519 secret (a SLIP-0010 leaf key).
    pub fn from_secret(secret: &Zeroizing<[u8; 32]>) -> Self {
        NodeKey {
            key: Arc::new(SecretCell::new(SigningKey::from_bytes(secret))),
        }
    }

    /// A fresh random key from the OS RNG, for tests and throwaway nodes.
    pub fn generate() -> Self {
        NodeKey {
            key: Arc::new(SecretCell::new(SigningKey::generate(&mut rand_core::OsRng))),
        }
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.get().verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.key.get().sign(message).to_bytes())
    }

    /// The key as PKCS#8 DER, for building a TLS certificate. The buffer is wiped on drop.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let doc = self
            .key
            .get()
            .to_pkcs8_der()
            .expect("encoding an Ed25519 key as PKCS#8 cannot fail");
        Zeroizing::new(doc.as_bytes().to_vec())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(public: {})", self.node_id().short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_is_lowercase_52_chars() {
        let id = NodeKey::generate().node_id();
        let text = id.to_string();
        assert_eq!(text.len(), NODE_ID_TEXT_LEN);
        assert_eq!(text, text.to_ascii_lowercase());
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(text.to_ascii_uppercase().parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert_eq!("abc".parse::<NodeId>(), Err(IdError::WrongLength(3)));
        let mut text = NodeKey::generate().node_id().to_string();
        text.replace_range(5..6, "1");
        assert_eq!(text.parse::<NodeId>(), Err(IdError::BadCharacter('1')));
    }

    #[test]
    fn weak_keys_are_refused() {
        // The identity point (small order) encoded as y = 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(NodeId::from_bytes(identity), Err(IdError::WeakKey));
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = NodeKey::generate();
        let sig = key.sign(b"hello");
        key.node_id().verify(b"hello", &sig).unwrap();
        assert_eq!(
            key.node_id().verify(b"hellO", &sig),
            Err(SignatureError::Invalid)
        );
        let other = NodeKey::generate().node_id();
        assert_eq!(other.verify(b"hello", &sig), Err(SignatureError::Invalid));
    }

    /// Valid ids that share their first five bytes, i.e. an 8-character text prefix.
    fn ids_sharing_prefix(count: usize) -> Vec<NodeId> {
        let base = *NodeKey::generate().node_id().as_bytes();
        (0u8..=255)
            .filter_map(|tail| {
                let mut bytes = base;
                bytes[31] ^= tail;
                NodeId::from_bytes(bytes).ok()
            })
            .take(count)
            .collect()
    }

    #[test]
    fn prefix_lookup_unique_short_missing_not_base32() {
        let ids: Vec<NodeId> = (0..50).map(|_| NodeKey::generate().node_id()).collect();
        let target = ids[7];
        let text = target.to_string();
        assert_eq!(NodeId::resolve_prefix(&text[..20], &ids), Ok(target));
        assert_eq!(
            NodeId::resolve_prefix(&text.to_ascii_uppercase(), &ids),
            Ok(target)
        );
        assert_eq!(
            NodeId::resolve_prefix(&text[..4], &ids),
            Err(PrefixError::TooShort(4))
        );
        assert_eq!(
            NodeId::resolve_prefix("abcdefg1", &ids),
            Err(PrefixError::NotBase32("abcdefg1".into()))
        );
        let absent = NodeKey::generate().node_id().to_string();
        assert_eq!(
            NodeId::resolve_prefix(&absent, &ids),
            Err(PrefixError::NotFound(absent.clone()))
        );
        assert_eq!(
            NodeId::resolve_prefix(&text[..8], [&target, &target]),
            Ok(target)
        );
    }

    #[test]
    fn ambiguous_prefix_lists_every_candidate() {
        let ids = ids_sharing_prefix(3);
        assert_eq!(ids.len(), 3);
        let prefix = ids[0].to_string()[..8].to_string();
        match NodeId::resolve_prefix(&prefix, &ids) {
            Err(err @ PrefixError::Ambiguous { .. }) => {
                for id in &ids {
                    assert!(err.to_string().contains(&id.to_string()), "{err}");
                }
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        // The full text of one of them is unique again.
        assert_eq!(
            NodeId::resolve_prefix(&ids[1].to_string(), &ids),
            Ok(ids[1])
        );
    }

    #[test]
    fn signature_postcard_round_trip_is_64_bytes() {
        let sig = NodeKey::generate().sign(b"x");
        let bytes = postcard::to_allocvec(&sig).unwrap();
        assert_eq!(bytes.len(), 64);
        assert_eq!(postcard::from_bytes::<Signature>(&bytes).unwrap(), sig);
    }

    #[test]
    fn debug_never_prints_secret() {
        let key = NodeKey::generate();
        let dbg = format!("{key:?}");
        assert!(dbg.starts_with("NodeKey(public: "));
        assert_eq!(dbg.len(), "NodeKey(public: )".len() + SHORT_ID_LEN);
    }
}
