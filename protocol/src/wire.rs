//! Wire types: what travels between two kith nodes on a handshake stream.
//!
//! This module defines the signed [`Envelope`] (a [`Body`] plus the sender's
//! signature), the unsigned [`Ack`] every envelope is answered with, and
//! [`Message`], the one type that is framed onto a stream. It knows how to sign
//! and verify an envelope, nothing more: it never decides whether an envelope is
//! acceptable (that is [`crate::validate`] and [`crate::machine`]) and never
//! touches a socket or a clock.
//!
//! The encoding is postcard. Enum variants are encoded by their index, so the
//! order of variants here *is* the wire format: new variants are only ever
//! appended, never inserted or reordered.

use std::fmt;

use kith_keys::{NodeId, NodeKey, Signature, SignatureError};
use serde::{Deserialize, Serialize};

use crate::validate::Refusal;

/// The only protocol version this crate speaks. Envelopes carrying any other
/// version are refused with [`Refusal::UnknownVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Upper bound, in characters (not bytes), of any free text on the wire:
/// justifications and reject/revoke reasons.
pub const MAX_TEXT_CHARS: usize = 1024;

/// Domain separation for handshake signatures, so a kith node key can never be
/// tricked into producing a signature that is valid in another context.
pub const SIGNING_DOMAIN: &[u8] = b"kith/handshake/v1";

/// A signed handshake message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub body: Body,
    /// Ed25519 by `body.from` over [`Envelope::signed_bytes`].
    pub signature: Signature,
}

/// The signed part of an [`Envelope`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub kind: Kind,
    pub from: NodeId,
    pub to: NodeId,
    /// Fresh random bytes per envelope; the receiver remembers them for a while
    /// to refuse replays.
    pub nonce: [u8; 16],
    /// Sender's clock, milliseconds since the Unix epoch. Strictly increasing per
    /// (sender, receiver) pair, which is what the receiver's high-water mark relies on.
    pub timestamp_ms: u64,
}

/// What an envelope says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// "Please trust me", with a free-text justification for the operator.
    Request { justification: String },
    /// "I trust you": an approval of a request (or a renewed approval).
    Accept,
    /// "I decline your request."
    Reject { reason: String },
    /// "I no longer trust you."
    Revoke { reason: String },
}

impl Kind {
    /// The free text carried by this kind, if any.
    pub fn text(&self) -> Option<&str> {
        match self {
            Kind::Request { justification } => Some(justification),
            Kind::Reject { reason } | Kind::Revoke { reason } => Some(reason),
            Kind::Accept => None,
        }
    }

    /// A short lowercase name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Request { .. } => "request",
            Kind::Accept => "accept",
            Kind::Reject { .. } => "reject",
            Kind::Revoke { .. } => "revoke",
        }
    }
}

impl Envelope {
    /// Signs `body` with `key`. The key must be the one whose id is `body.from`;
    /// otherwise the envelope is well-formed but every receiver refuses it.
    pub fn sign(body: Body, key: &NodeKey) -> Envelope {
        debug_assert_eq!(
            body.from,
            key.node_id(),
            "an envelope must be signed by its sender"
        );
        let signature = key.sign(&Envelope::signed_bytes(&body));
        Envelope {
            version: PROTOCOL_VERSION,
            body,
            signature,
        }
    }

    /// The exact bytes the signature covers: [`SIGNING_DOMAIN`] then postcard(body).
    ///
    /// The body is re-encoded here rather than taken from the wire, so a
    /// non-canonical encoding on the wire cannot yield a second valid message.
    pub fn signed_bytes(body: &Body) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_extend(body, SIGNING_DOMAIN.to_vec())
            .expect("postcard encoding of a Body cannot fail")
    }

    /// Strictly verifies the signature against `body.from`.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.body
            .from
            .verify(&Envelope::signed_bytes(&self.body), &self.signature)
    }
}

/// The receiver's unsigned answer to one envelope, sent on the same stream.
///
/// Unsigned because it only says what happened to that one message; every
/// decision that matters travels later as a signed [`Envelope`] of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub status: AckStatus,
}

/// Where the receiver stands after processing an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    /// The request is waiting for a decision (also the quiet answer to a denied peer).
    Pending,
    /// The receiver trusts the sender.
    Trusted,
    /// The receiver has rejected the sender, or recorded the sender's rejection.
    Rejected,
    /// The receiver has revoked the sender, or recorded the sender's revocation.
    Revoked,
    /// The receiver's approval of the sender has expired; ask again.
    Expired,
    /// The envelope was refused and changed nothing.
    Refused(Refusal),
}

impl fmt::Display for AckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AckStatus::Pending => f.write_str("pending"),
            AckStatus::Trusted => f.write_str("trusted"),
            AckStatus::Rejected => f.write_str("rejected"),
            AckStatus::Revoked => f.write_str("revoked"),
            AckStatus::Expired => f.write_str("expired"),
            AckStatus::Refused(r) => write!(f, "refused: {r}"),
        }
    }
}

/// Everything that travels on a kith stream, one per frame.
///
/// Variant order is the wire format: append new variants (relay messages come
/// later) at the end only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Envelope(Envelope),
    Ack(Ack),
    /// Liveness probe; answered with a [`Message::Pong`] carrying the same id.
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn key(seed: u8) -> NodeKey {
        NodeKey::from_secret(&Zeroizing::new([seed; 32]))
    }

    fn body(from: &NodeKey, to: &NodeKey) -> Body {
        Body {
            kind: Kind::Request {
                justification: "hi".into(),
            },
            from: from.node_id(),
            to: to.node_id(),
            nonce: [9; 16],
            timestamp_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn signed_bytes_are_domain_then_postcard_body() {
        let (a, b) = (key(1), key(2));
        let body = body(&a, &b);
        let bytes = Envelope::signed_bytes(&body);
        assert!(bytes.starts_with(SIGNING_DOMAIN));
        assert_eq!(
            &bytes[SIGNING_DOMAIN.len()..],
            postcard::to_allocvec(&body).unwrap().as_slice()
        );
    }

    #[test]
    fn sign_then_verify_and_any_change_breaks_it() {
        let (a, b) = (key(1), key(2));
        let env = Envelope::sign(body(&a, &b), &a);
        assert_eq!(env.version, PROTOCOL_VERSION);
        env.verify().unwrap();

        let mut t = env.clone();
        t.body.timestamp_ms += 1;
        assert!(t.verify().is_err());
        let mut t = env.clone();
        t.body.kind = Kind::Accept;
        assert!(t.verify().is_err());
        let mut t = env.clone();
        t.body.to = a.node_id();
        assert!(t.verify().is_err());
        let mut t = env.clone();
        t.body.from = b.node_id();
        assert!(t.verify().is_err());
        let mut t = env;
        t.signature.0[0] ^= 1;
        assert!(t.verify().is_err());
    }

    #[test]
    fn message_round_trips_through_postcard() {
        let (a, b) = (key(1), key(2));
        for msg in [
            Message::Envelope(Envelope::sign(body(&a, &b), &a)),
            Message::Ack(Ack {
                status: AckStatus::Refused(Refusal::ClockSkew { skew_ms: -5 }),
            }),
            Message::Ping { id: 7 },
            Message::Pong { id: u64::MAX },
        ] {
            let bytes = postcard::to_allocvec(&msg).unwrap();
            assert_eq!(postcard::from_bytes::<Message>(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn variant_indices_are_stable() {
        // The first byte of a postcard enum is its variant index: pin them so an
        // accidental reorder fails here rather than between two deployed nodes.
        assert_eq!(
            postcard::to_allocvec(&Message::Ping { id: 0 }).unwrap()[0],
            2
        );
        assert_eq!(
            postcard::to_allocvec(&Message::Pong { id: 0 }).unwrap()[0],
            3
        );
        let ack = postcard::to_allocvec(&Message::Ack(Ack {
            status: AckStatus::Trusted,
        }))
        .unwrap();
        assert_eq!(ack, vec![1, 1]);
    }
}
