//! One test per refusal rule: the envelope is refused with its own kind, and
//! nothing changes — the machine's serialized snapshot is identical, and the
//! output has no writes and nothing to send.

mod common;

use common::*;
use kith_keys::NodeKey;
use kith_protocol::{
    AckStatus, Command, Config, Envelope, EventKind, Kind, MAX_TEXT_CHARS, Output, Refusal,
};

/// A local node (seed 1) that already has a pending request from peer seed 2,
/// received at T0 with timestamp T0, so there is state to disturb.
fn setup() -> (Node, NodeKey) {
    let mut local = Node::new(1, Config::default());
    let peer = key(2);
    let out = local.recv(T0, envelope(&peer, local.id(), request("hello"), T0, 1));
    assert_eq!(out.ack(), Some(&AckStatus::Pending));
    (local, peer)
}

fn assert_refused(node: &Node, before: &[u8], out: &Output, want: Refusal) {
    assert_eq!(out.refusal(), Some(&want), "{out:?}");
    assert!(out.writes.is_empty(), "a refusal wrote {:?}", out.writes);
    assert!(out.send.is_empty(), "a refusal sent {:?}", out.send);
    assert_eq!(node.snapshot(), before, "a refusal changed the machine");
    assert!(matches!(
        &out.events[..],
        [e] if e.kind == EventKind::Refused { refusal: want.clone() }
    ));
}

/// Feeds `env` (direct, from its signer) and checks it is refused with `want`.
fn refused(node: &mut Node, now: u64, env: Envelope, want: Refusal) {
    let before = node.snapshot();
    let out = node.recv(now, env);
    assert_refused(node, &before, &out, want);
}

#[test]
fn unknown_version() {
    let (mut local, peer) = setup();
    let mut env = envelope(&peer, local.id(), Kind::Accept, T0 + 1, 2);
    env.version = 2;
    refused(&mut local, T0 + 1, env, Refusal::UnknownVersion(2));
}

#[test]
fn text_too_long_counts_characters() {
    let (mut local, peer) = setup();
    let long = "ü".repeat(MAX_TEXT_CHARS + 1);
    for (n, kind) in [
        request(&long),
        Kind::Reject {
            reason: long.clone(),
        },
        Kind::Revoke {
            reason: long.clone(),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let env = envelope(&peer, local.id(), kind, T0 + 1, 10 + n as u8);
        refused(
            &mut local,
            T0 + 1,
            env,
            Refusal::TextTooLong {
                chars: MAX_TEXT_CHARS as u64 + 1,
            },
        );
    }
    // Exactly the limit is fine.
    let ok = envelope(
        &peer,
        local.id(),
        request(&"ü".repeat(MAX_TEXT_CHARS)),
        T0 + 2,
        20,
    );
    assert_eq!(local.recv(T0 + 2, ok).ack(), Some(&AckStatus::Pending));
}

#[test]
fn text_not_printable() {
    let (mut local, peer) = setup();
    let nul = envelope(&peer, local.id(), request("hi\0there"), T0 + 1, 2);
    refused(&mut local, T0 + 1, nul, Refusal::TextNotPrintable);
    let flood = envelope(&peer, local.id(), reject("\x07\x07\x1b[H\r\n"), T0 + 1, 3);
    refused(&mut local, T0 + 1, flood, Refusal::TextNotPrintable);
    // A couple of escape sequences in real text pass (and are escaped for display).
    let ok = envelope(
        &peer,
        local.id(),
        request("see \x1b[1mthis\x1b[0m, thanks"),
        T0 + 2,
        4,
    );
    assert_eq!(local.recv(T0 + 2, ok).ack(), Some(&AckStatus::Pending));
}

#[test]
fn wrong_addressee() {
    let (mut local, peer) = setup();
    let env = envelope(&peer, key(9).node_id(), Kind::Accept, T0 + 1, 2);
    refused(&mut local, T0 + 1, env, Refusal::WrongAddressee);
}

#[test]
fn from_self() {
    let (mut local, _) = setup();
    let me = key(1);
    let env = envelope(&me, me.node_id(), request("me"), T0 + 1, 2);
    let before = local.snapshot();
    let out = local.recv_from(T0 + 1, env, None, None);
    assert_refused(&local, &before, &out, Refusal::FromSelf);
}

#[test]
fn bad_signature() {
    let (mut local, peer) = setup();
    // Flipped bit.
    let mut env = envelope(&peer, local.id(), Kind::Accept, T0 + 1, 2);
    env.signature.0[10] ^= 0x40;
    refused(&mut local, T0 + 1, env, Refusal::BadSignature);
    // Altered body.
    let mut env = envelope(&peer, local.id(), request("a"), T0 + 1, 3);
    env.body.kind = request("b");
    refused(&mut local, T0 + 1, env, Refusal::BadSignature);
    // Signed by someone else, claiming to be `peer` (via a relay: no TLS identity).
    let forger = key(3);
    let mut env = envelope(&forger, local.id(), revoke("x"), T0 + 1, 4);
    env.body.from = peer.node_id();
    env.signature = forger.sign(&Envelope::signed_bytes(&env.body));
    let before = local.snapshot();
    let out = local.recv_from(T0 + 1, env, None, None);
    assert_refused(&local, &before, &out, Refusal::BadSignature);
    // Non-canonical S (s + L) is refused by strict verification.
    let mut env = envelope(&peer, local.id(), Kind::Accept, T0 + 1, 5);
    add_group_order(&mut env.signature.0[32..]);
    refused(&mut local, T0 + 1, env, Refusal::BadSignature);
}

/// Adds the Ed25519 group order L to a little-endian scalar (malleability).
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let v = *b as u16 + l as u16 + carry;
        *b = v as u8;
        carry = v >> 8;
    }
}

#[test]
fn clock_skew_both_ways_with_inclusive_window() {
    let (mut local, peer) = setup();
    let skew = Config::default().skew_ms;
    let now = T0 + 10_000_000;
    let ahead = envelope(&peer, local.id(), Kind::Accept, now + skew + 1, 2);
    refused(
        &mut local,
        now,
        ahead,
        Refusal::ClockSkew {
            skew_ms: skew as i64 + 1,
        },
    );
    let behind = envelope(&peer, local.id(), Kind::Accept, now - skew - 1, 3);
    refused(
        &mut local,
        now,
        behind,
        Refusal::ClockSkew {
            skew_ms: -(skew as i64) - 1,
        },
    );
    // Exactly at the edge is inside the window.
    let edge = envelope(&peer, local.id(), request("again"), now - skew, 4);
    assert_eq!(local.recv(now, edge).ack(), Some(&AckStatus::Pending));
}

#[test]
fn sender_mismatch_on_direct_connection_only() {
    let (mut local, peer) = setup();
    let env = envelope(&peer, local.id(), request("x"), T0 + 1, 2);
    let before = local.snapshot();
    let out = local.recv_from(T0 + 1, env.clone(), Some(key(7).node_id()), None);
    assert_refused(&local, &before, &out, Refusal::SenderMismatch);
    // The same envelope through a relay (no TLS identity) is fine.
    let out = local.recv_from(T0 + 1, env, None, None);
    assert_eq!(out.ack(), Some(&AckStatus::Pending));
}

#[test]
fn replayed_nonce() {
    let (mut local, peer) = setup();
    // The request that made the record (a repeat of it would take no cache
    // slot: its mark alone refuses it, as `Stale`).
    let env = envelope(&peer, local.id(), request("hello"), T0, 1);
    refused(&mut local, T0 + 6, env, Refusal::ReplayedNonce);
}

#[test]
fn stale_not_newer_than_high_water() {
    let (mut local, peer) = setup();
    // Same timestamp as the applied request, fresh nonce.
    let same = envelope(&peer, local.id(), request("x"), T0, 2);
    refused(&mut local, T0 + 1, same, Refusal::Stale);
    let older = envelope(&peer, local.id(), revoke("x"), T0 - 1, 3);
    refused(&mut local, T0 + 1, older, Refusal::Stale);
}

#[test]
fn stale_after_nonce_eviction_and_after_restart() {
    let config = Config {
        nonce_cache_capacity: 1,
        ..Config::default()
    };
    let mut local = Node::new(1, config);
    let peer = key(2);
    let first = envelope(&peer, local.id(), request("one"), T0, 1);
    local.recv(T0, first.clone());
    // Another sender's envelope evicts the first nonce from the one-slot cache...
    let other = key(3);
    local.recv(T0, envelope(&other, local.id(), request("two"), T0, 1));
    assert_eq!(local.m.nonce_cache_len(), 1);
    // ...and the high-water mark still refuses the replay.
    refused(&mut local, T0 + 1, first.clone(), Refusal::Stale);

    // After a restart the cache is empty; the persisted mark still refuses it.
    let mut restarted = Node::new(1, Config::default());
    restarted.m = local.restored();
    assert_eq!(restarted.m.nonce_cache_len(), 0);
    refused(&mut restarted, T0 + 2, first, Refusal::Stale);
}

#[test]
fn pending_full_per_source_ipv4_and_ipv6_prefix() {
    let config = Config {
        max_pending_per_source: 2,
        ..Config::default()
    };
    let mut local = Node::new(1, config);
    let v4 = Some("198.51.100.7:7444".parse().unwrap());
    let v4_mapped = Some("[::ffff:198.51.100.7]:9000".parse().unwrap());
    let v6a = Some("[2001:db8:1:2::1]:7444".parse().unwrap());
    let v6b = Some("[2001:db8:1:2:ffff::9]:7444".parse().unwrap());
    let v6_other = Some("[2001:db8:1:3::1]:7444".parse().unwrap());
    for (seed, source) in [(10u8, v4), (11, v4), (12, v6a), (13, v6b)] {
        let p = key(seed);
        let env = envelope(&p, local.id(), request("hi"), T0, 1);
        let out = local.recv_from(T0, env, None, source);
        assert_eq!(out.ack(), Some(&AckStatus::Pending));
    }
    // A third from the same IPv4 address (also written v4-mapped) and the same /64.
    for (seed, source) in [(14u8, v4), (15, v4_mapped), (16, v6a)] {
        let p = key(seed);
        let env = envelope(&p, local.id(), request("hi"), T0, 1);
        let before = local.snapshot();
        let out = local.recv_from(T0, env, None, source);
        assert_refused(&local, &before, &out, Refusal::PendingFull);
    }
    // Another /64, and relayed requests (no source), are not affected.
    for (seed, source) in [(17u8, v6_other), (18, None), (19, None), (20, None)] {
        let p = key(seed);
        let env = envelope(&p, local.id(), request("hi"), T0, 1);
        assert_eq!(
            local.recv_from(T0, env, None, source).ack(),
            Some(&AckStatus::Pending)
        );
    }
    // A peer already pending may ask again from the full source.
    let again = envelope(&key(10), local.id(), request("again"), T0 + 1, 2);
    assert_eq!(
        local.recv_from(T0 + 1, again, None, v4).ack(),
        Some(&AckStatus::Pending)
    );
}

#[test]
fn pending_full_when_total_bound_is_zero() {
    let mut local = Node::new(
        1,
        Config {
            max_pending_total: 0,
            ..Config::default()
        },
    );
    let env = envelope(&key(2), local.id(), request("hi"), T0, 1);
    refused(&mut local, T0, env, Refusal::PendingFull);
}

#[test]
fn unsolicited_decisions_from_strangers() {
    let (mut local, _) = setup();
    let stranger = key(5);
    // Accept, reject and revoke from a peer we have no record of: refused, and
    // no record is created for them (a stranger cannot make us store anything).
    for (n, kind) in [Kind::Accept, reject("no"), revoke("no")]
        .into_iter()
        .enumerate()
    {
        let ts = T0 + 1 + n as u64;
        let env = envelope(&stranger, local.id(), kind, ts, 2 + n as u8);
        refused(&mut local, ts, env, Refusal::Unsolicited);
    }
}

#[test]
fn rules_apply_in_the_normative_order() {
    let (mut local, peer) = setup();
    let stranger = key(9).node_id();
    let skew = Config::default().skew_ms;
    let far = T0 + 10 * skew;
    // Each envelope breaks every rule from a point on; the first broken one is reported.
    let mut e = envelope(&peer, stranger, request(&"x".repeat(2000)), far, 1);
    e.version = 7;
    e.signature.0[0] ^= 1;
    refused(&mut local, T0, e.clone(), Refusal::UnknownVersion(7));
    e.version = 1;
    refused(
        &mut local,
        T0,
        e.clone(),
        Refusal::TextTooLong { chars: 2000 },
    );
    e.body.kind = Kind::Accept;
    refused(&mut local, T0, e.clone(), Refusal::WrongAddressee);
    e.body.to = local.id();
    refused(&mut local, T0, e.clone(), Refusal::BadSignature);
    let e = envelope(&peer, local.id(), Kind::Accept, far, 1);
    let before = local.snapshot();
    let out = local.recv_from(T0, e, Some(stranger), None);
    assert_refused(
        &local,
        &before,
        &out,
        Refusal::ClockSkew {
            skew_ms: (far - T0) as i64,
        },
    );
    // The request applied in setup had nonce [1; 16] and timestamp T0.
    let e = envelope(&peer, local.id(), Kind::Accept, T0, 1);
    let before = local.snapshot();
    let out = local.recv_from(T0, e.clone(), Some(stranger), None);
    assert_refused(&local, &before, &out, Refusal::SenderMismatch);
    refused(&mut local, T0, e, Refusal::ReplayedNonce);
    let e = envelope(&peer, local.id(), Kind::Accept, T0, 2);
    refused(&mut local, T0, e, Refusal::Stale);
}

#[test]
fn denied_peers_are_answered_pending_and_nothing_changes() {
    let (mut local, _) = setup();
    let pest = key(6);
    local.ok(
        T0,
        Command::Ignore {
            peer: pest.node_id(),
        },
    );
    let before = local.snapshot();
    let out = local.recv(
        T0 + 1,
        envelope(&pest, local.id(), request("pls"), T0 + 1, 1),
    );
    assert_eq!(out.ack(), Some(&AckStatus::Pending));
    assert!(out.writes.is_empty() && out.send.is_empty());
    assert!(matches!(&out.events[..], [e] if e.kind == EventKind::Ignored));
    assert_eq!(local.snapshot(), before);
}
