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
use std::net::SocketAddr;

use kith_keys::{NodeId, NodeKey, Signature, SignatureError};
use serde::{Deserialize, Serialize};

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
    /// "My time-limited approval of you expired." Not a no: a request of the
    /// receiver's stands again, for the sender to renew. Appended: variants are
    /// encoded by position.
    Expire,
    /// "I trust you", answering a request of yours: `seen_ms` is the newest of
    /// your timestamps I had applied when I sent it, so that you can tell an
    /// answer to your current request from one to a request you since withdrew.
    /// Sent instead of [`Kind::Accept`], which is still understood.
    AcceptOf { seen_ms: u64 },
}

impl Kind {
    /// The free text carried by this kind, if any.
    pub fn text(&self) -> Option<&str> {
        match self {
            Kind::Request { justification } => Some(justification),
            Kind::Reject { reason } | Kind::Revoke { reason } => Some(reason),
            Kind::Accept | Kind::Expire | Kind::AcceptOf { .. } => None,
        }
    }

    /// A short lowercase name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Request { .. } => "request",
            Kind::Accept | Kind::AcceptOf { .. } => "accept",
            Kind::Reject { .. } => "reject",
            Kind::Revoke { .. } => "revoke",
            Kind::Expire => "expire",
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

/// Most direct addresses in a [`Reach`] or a [`RelayRef`]; a hint with more is ignored.
pub const MAX_REACH_ADDRS: usize = 16;

/// A relay, as a node names it: its NodeId (checked by TLS when dialled) and where
/// it listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelayRef {
    pub node_id: NodeId,
    pub addrs: Vec<SocketAddr>,
}

/// How to reach the sender of an envelope later: a *reply hint*.
///
/// A node that receives a request may answer (accept, reject, revoke) hours later,
/// when no connection to the requester exists, and a private requester can only be
/// reached through its home relay. So every envelope a node sends travels with
/// this hint, next to the envelope (in [`Message::Deliver`], [`Message::Forward`]
/// and [`Message::Relayed`]), and the receiver remembers it once the envelope is
/// applied.
///
/// It is deliberately **not** part of the signed [`Body`]:
///
/// - On a direct connection QUIC's mutual TLS already authenticates it (it comes
///   from the connection's own node).
/// - Through a relay, the relay could alter it — and so only misdirect the
///   receiver's replies, i.e. drop them, which a relay can do anyway by not
///   forwarding them. It can never make a reply say anything else: replies are
///   signed end to end like everything else.
/// - It is applied only with an envelope that passed every check (signature,
///   freshness, replay), so it cannot be injected with a replayed envelope.
/// - Reachability changes (a node moves, changes relay) without touching the
///   signed protocol or the trust state machine, and the signed body stays as
///   docs/design.md gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// Where the sender can be dialled directly. Empty: do not dial it (a private
    /// node, or one its relay found unreachable); reply through `relay`.
    pub direct: Vec<SocketAddr>,
    /// The sender's home relay, if it has one.
    pub relay: Option<RelayRef>,
}

impl Reach {
    /// Within the bounds a receiver accepts ([`MAX_REACH_ADDRS`] each).
    pub fn is_bounded(&self) -> bool {
        self.direct.len() <= MAX_REACH_ADDRS
            && self
                .relay
                .as_ref()
                .is_none_or(|r| r.addrs.len() <= MAX_REACH_ADDRS)
    }
}

/// What a relay tells a connected node about itself.
///
/// Variant order is wire format: append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayNotice {
    /// The relay routes envelopes for this node over this connection. `observed`
    /// is the address the relay sees the node at; `direct` is the result of a
    /// dial-back to it (`None` when none was asked for).
    Registered {
        observed: SocketAddr,
        direct: Option<bool>,
    },
    /// The relay will not route to this node (it may still forward for it after
    /// [`RelayRefusal::NotAllowed`]).
    Refused(RelayRefusal),
    /// The same NodeId is connected to the relay from these other live
    /// addresses too: two running copies of one identity.
    Conflict { others: Vec<SocketAddr> },
    /// An envelope this node forwarded, which the relay answered `Queued`, was
    /// dropped undelivered (identified by destination and nonce).
    Dropped {
        to: NodeId,
        nonce: [u8; 16],
        reason: DropReason,
    },
    /// After a [`RelayNotice::Conflict`]: this is now the only connection under
    /// this node's id (the others closed).
    ConflictOver,
}

/// Everything that travels on a kith stream, one per frame.
///
/// Variant order is the wire format: append new variants at the end only.
///
/// Exchanges (one request and one answer per bidirectional stream):
///
/// | opened by        | sends                 | answered with                |
/// |------------------|-----------------------|------------------------------|
/// | node → node      | `Envelope`, `Deliver` | `Ack`                        |
/// | either           | `Ping`                | `Pong` (or a refusal `Ack`)  |
/// | node → relay     | `Register`            | `RelayNotice`                |
/// | node → relay     | `Forward`             | `Forwarded`                  |
/// | relay → node     | `Relayed`             | `Ack`                        |
/// | relay → node     | `RelayNotice`         | nothing (the stream is finished) |
/// | node → relay     | `PingThrough`         | `Pong`, or `Forwarded`       |
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
    /// An envelope sent directly, with how to reach its sender later.
    Deliver {
        envelope: Envelope,
        reach: Reach,
    },
    /// To a relay: carry `envelope` to `envelope.body.to`, with the sender's hint.
    Forward {
        envelope: Envelope,
        reach: Reach,
    },
    /// From a relay: what became of a [`Message::Forward`]. With
    /// [`ForwardResult::Delivered`], `ack` is the destination's own answer when it
    /// came back in time. The relay can forge this message (it is unsigned); what
    /// the destination decided arrives later as signed envelopes.
    Forwarded {
        result: ForwardResult,
        ack: Option<Ack>,
    },
    /// From a relay: an envelope some node forwarded to this one.
    Relayed {
        envelope: Envelope,
        reach: Reach,
    },
    /// To a relay: tell me how I am registered; with `dial_back`, first test
    /// whether I can be dialled directly at the address you see.
    Register {
        dial_back: bool,
    },
    /// From a relay: see [`RelayNotice`].
    RelayNotice(RelayNotice),
    /// To a relay: ping the node `to` over its own connection to the relay (a
    /// private node can be reached no other way). Answered with `Pong { id }` when
    /// `to` answered in time — the relay's unsigned word, like
    /// [`Message::Forwarded`] — else with `Forwarded { result, ack: None }`:
    /// `UnknownDestination` (not connected there), `Delivered` (no answer in time)
    /// or a refusal.
    PingThrough {
        to: NodeId,
        id: u64,
    },
}

/// Why an incoming envelope (or message) was refused. One kind per rule; a
/// refusal never changes state. Sent back to the sender in the [`crate::Ack`].
///
/// Variant order is wire format (it travels inside an ack): append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The envelope's protocol version is not one this node speaks.
    UnknownVersion(u16),
    /// The signature does not verify (strictly) for the claimed sender.
    BadSignature,
    /// The envelope is addressed to another node.
    WrongAddressee,
    /// The sender's timestamp is outside the skew window; `skew_ms` is
    /// sender's time minus ours (positive: the sender is ahead).
    ClockSkew { skew_ms: i64 },
    /// This exact envelope (sender and nonce) was already processed.
    ReplayedNonce,
    /// Not newer than the last envelope applied from this sender.
    Stale,
    /// On a direct connection, the signer is not the TLS-authenticated peer.
    SenderMismatch,
    /// Free text longer than [`MAX_TEXT_CHARS`] characters.
    TextTooLong { chars: u64 },
    /// Free text containing NUL or made mostly of control characters.
    TextNotPrintable,
    /// The sender is not trusted (used by the node to gate non-handshake streams).
    NotTrusted,
    /// The frame did not decode as a kith message (used by the node).
    Malformed,
    /// Too many requests are pending from the sender's network address.
    PendingFull,
    /// An envelope claiming to come from this node itself.
    FromSelf,
    /// Authentic, but answers nothing: an accept, reject or revoke from a peer
    /// we hold no record of (no record is created for it).
    Unsolicited,
}

impl Refusal {
    /// A short stable name for the reason, without its details (for counters).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownVersion(_) => "unknown_version",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongAddressee => "wrong_addressee",
            Refusal::ClockSkew { .. } => "clock_skew",
            Refusal::ReplayedNonce => "replayed_nonce",
            Refusal::Stale => "stale",
            Refusal::SenderMismatch => "sender_mismatch",
            Refusal::TextTooLong { .. } => "text_too_long",
            Refusal::TextNotPrintable => "text_not_printable",
            Refusal::NotTrusted => "not_trusted",
            Refusal::Malformed => "malformed",
            Refusal::PendingFull => "pending_full",
            Refusal::FromSelf => "from_self",
            Refusal::Unsolicited => "unsolicited",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownVersion(v) => write!(
                f,
                "protocol version {v} is not supported (this node speaks version {PROTOCOL_VERSION})"
            ),
            Refusal::BadSignature => f.write_str("the signature does not verify for the sender"),
            Refusal::WrongAddressee => f.write_str("the message is addressed to another node"),
            Refusal::ClockSkew { skew_ms } => write!(
                f,
                "the sender's clock is {} by {:.1} s, outside the allowed window",
                if *skew_ms >= 0 { "ahead" } else { "behind" },
                skew_ms.unsigned_abs() as f64 / 1000.0
            ),
            Refusal::ReplayedNonce => f.write_str("this message was already received (replay)"),
            Refusal::Stale => {
                f.write_str("the message is not newer than the last one applied from the sender")
            }
            Refusal::SenderMismatch => {
                f.write_str("the message is signed by a node other than the connected peer")
            }
            Refusal::TextTooLong { chars } => write!(
                f,
                "the text is {chars} characters long; at most {MAX_TEXT_CHARS} are allowed"
            ),
            Refusal::TextNotPrintable => {
                f.write_str("the text contains NUL or is mostly control characters")
            }
            Refusal::NotTrusted => f.write_str("the sender is not trusted"),
            Refusal::Malformed => f.write_str("the message could not be decoded"),
            Refusal::PendingFull => {
                f.write_str("too many requests are already pending from the sender's address")
            }
            Refusal::FromSelf => f.write_str("the message claims to come from this node itself"),
            Refusal::Unsolicited => {
                f.write_str("the message answers nothing: this node has no record of the sender")
            }
        }
    }
}

/// Why a queued envelope was dropped.
///
/// Variant order is wire format: append only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropReason {
    /// Its destination did not come back within the queue TTL.
    Expired,
    /// The relay forgot its destination (gone too long, or to make room for others).
    Forgotten,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Expired => "its destination did not come back in time",
            DropReason::Forgotten => "the relay forgot its destination",
        })
    }
}

/// What became of a forwarded envelope, as told to its sender.
///
/// Variant order is wire format: append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardResult {
    /// Pushed at once over the destination's connection.
    Delivered,
    /// The destination is offline; the envelope waits for it (up to the queue TTL).
    Queued,
    /// The relay does not know the destination (never registered, or gone too long).
    UnknownDestination,
    /// The relay would not take it.
    Refused(RelayRefusal),
}

impl fmt::Display for ForwardResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardResult::Delivered => f.write_str("delivered"),
            ForwardResult::Queued => f.write_str("queued"),
            ForwardResult::UnknownDestination => f.write_str("unknown destination"),
            ForwardResult::Refused(r) => write!(f, "refused: {r}"),
        }
    }
}

/// Why a relay refused a registration or a forward.
///
/// Variant order is wire format: append only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayRefusal {
    /// The sender exceeded its rate limit.
    RateLimited,
    /// The destination's queue, or the relay's, is full.
    QueueFull,
    /// The node is not on the relay's allow list.
    NotAllowed,
    /// The relay serves as many clients as it may.
    TooManyClients,
    /// The envelope's `from` is not the connection's authenticated node.
    SenderMismatch,
    /// The connection is not a client of the relay.
    UnknownConnection,
    /// Unknown version or over-long text (every destination would refuse it), or a
    /// reply hint beyond the bounds every destination accepts.
    Malformed,
    /// The sender has as many envelopes queued as it may, in all or for this destination.
    SenderQuota,
}

impl fmt::Display for RelayRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayRefusal::RateLimited => "rate limited",
            RelayRefusal::QueueFull => "the relay's queue is full",
            RelayRefusal::NotAllowed => "not on the relay's allow list",
            RelayRefusal::TooManyClients => "the relay has too many clients",
            RelayRefusal::SenderMismatch => "the envelope is not from the node on this connection",
            RelayRefusal::UnknownConnection => "the connection is not a client of the relay",
            RelayRefusal::Malformed => "the envelope or its reply hint is malformed",
            RelayRefusal::SenderQuota => "the sender has too many envelopes queued at the relay",
        })
    }
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
            Message::Deliver {
                envelope: Envelope::sign(body(&a, &b), &a),
                reach: Reach {
                    direct: vec!["192.0.2.1:7444".parse().unwrap()],
                    relay: Some(RelayRef {
                        node_id: b.node_id(),
                        addrs: vec!["[2001:db8::1]:7445".parse().unwrap()],
                    }),
                },
            },
            Message::Forward {
                envelope: Envelope::sign(body(&a, &b), &a),
                reach: Reach::default(),
            },
            Message::Forwarded {
                result: ForwardResult::Refused(RelayRefusal::QueueFull),
                ack: Some(Ack {
                    status: AckStatus::Pending,
                }),
            },
            Message::Relayed {
                envelope: Envelope::sign(body(&a, &b), &a),
                reach: Reach::default(),
            },
            Message::Register { dial_back: true },
            Message::RelayNotice(RelayNotice::Registered {
                observed: "198.51.100.7:40000".parse().unwrap(),
                direct: Some(false),
            }),
            Message::RelayNotice(RelayNotice::Conflict { others: vec![] }),
            Message::RelayNotice(RelayNotice::ConflictOver),
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
        // The relay messages follow the original four, in this order.
        let first = |m: &Message| postcard::to_allocvec(m).unwrap()[0];
        let (a, b) = (key(1), key(2));
        let env = Envelope::sign(body(&a, &b), &a);
        assert_eq!(
            first(&Message::Deliver {
                envelope: env.clone(),
                reach: Reach::default()
            }),
            4
        );
        assert_eq!(
            first(&Message::Forward {
                envelope: env.clone(),
                reach: Reach::default()
            }),
            5
        );
        assert_eq!(
            first(&Message::Forwarded {
                result: ForwardResult::Queued,
                ack: None
            }),
            6
        );
        assert_eq!(
            first(&Message::Relayed {
                envelope: env,
                reach: Reach::default()
            }),
            7
        );
        assert_eq!(first(&Message::Register { dial_back: false }), 8);
        assert_eq!(
            first(&Message::RelayNotice(RelayNotice::Refused(
                RelayRefusal::NotAllowed
            ))),
            9
        );
        assert_eq!(
            first(&Message::PingThrough {
                to: key(2).node_id(),
                id: 0
            }),
            10
        );
    }

    #[test]
    fn reach_bounds() {
        let addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut reach = Reach {
            direct: vec![addr; MAX_REACH_ADDRS],
            relay: None,
        };
        assert!(reach.is_bounded());
        reach.direct.push(addr);
        assert!(!reach.is_bounded());
        reach.direct.clear();
        reach.relay = Some(RelayRef {
            node_id: key(1).node_id(),
            addrs: vec![addr; MAX_REACH_ADDRS + 1],
        });
        assert!(!reach.is_bounded());
    }
}
