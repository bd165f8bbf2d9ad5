//! Arbitrary bytes as a script of inputs to one `TrustMachine`: raw bytes
//! decoded as envelopes, fuzzer-chosen bodies properly signed by one of three
//! peers (so the state machine is reached, not just the signature check),
//! replays of anything seen so far, operator commands, and clock movement.
//!
//! Checks: no panic; a refused envelope or a failed command changes nothing
//! and produces no writes or sends; and the machine's invariants hold after
//! every step.
#![no_main]

use std::net::SocketAddr;

use kith_keys::{NodeId, NodeKey};
use kith_protocol::{
    AckStatus, Body, Command, Config, Envelope, Input, Kind, Reply, TrustMachine, TrustState,
};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use zeroize::Zeroizing;

const T0: u64 = 1_700_000_000_000;

fn key(seed: u8) -> NodeKey {
    NodeKey::from_secret(&Zeroizing::new([seed; 32]))
}

/// Reads the script.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fuzz_target!(|data: &[u8]| {
    let local = key(1);
    let peers = [key(2), key(3), key(4)];
    let ids: Vec<NodeId> = peers.iter().map(|k| k.node_id()).collect();
    let config = Config {
        nonce_cache_capacity: 4,
        max_pending_total: 2,
        max_pending_per_source: 1,
        skew_ms: 60_000,
        pending_ttl_ms: 600_000,
        ..Config::default()
    };
    let mut m = TrustMachine::new(local.node_id(), config.clone());
    let mut rng = StdRng::seed_from_u64(7);
    let mut now = T0;
    let mut seen: Vec<Envelope> = Vec::new();
    let mut s = Script(data);
    let sources: [Option<SocketAddr>; 3] = [
        None,
        Some("192.0.2.1:7444".parse().unwrap()),
        Some("[2001:db8::1]:7444".parse().unwrap()),
    ];

    for _ in 0..64 {
        let Some(op) = s.byte() else { break };
        let arg = s.byte().unwrap_or(0);
        let who = arg as usize % 3;
        let transport_peer = match arg / 3 % 3 {
            0 => None,
            1 => Some(ids[who]),
            _ => Some(ids[(who + 1) % 3]),
        };
        let source = sources[arg as usize / 9 % 3];
        let input = match op % 6 {
            // Raw bytes as an envelope.
            0 => {
                let n = s.byte().unwrap_or(0) as usize * 2;
                let raw = s.bytes(n);
                let Ok((envelope, _)) = postcard::take_from_bytes::<Envelope>(raw) else {
                    continue;
                };
                seen.push(envelope.clone());
                Input::Envelope {
                    envelope,
                    transport_peer,
                    source,
                    via_relay: None,
                }
            }
            // A fuzzer-chosen kind, signed by peer `who`, mostly valid otherwise.
            1 | 2 => {
                let sel = s.byte().unwrap_or(0);
                let text_len = s.byte().unwrap_or(0) as usize;
                let text = String::from_utf8_lossy(s.bytes(text_len)).into_owned();
                let kind = match sel % 4 {
                    0 => Kind::Request {
                        justification: text,
                    },
                    1 => Kind::Accept,
                    2 => Kind::Reject { reason: text },
                    _ => Kind::Revoke { reason: text },
                };
                let mut nonce = [0u8; 16];
                nonce[..2].copy_from_slice(&[s.byte().unwrap_or(0), s.byte().unwrap_or(0)]);
                let offset = s.byte().unwrap_or(128) as i64 - 128;
                let timestamp_ms = (now as i64 + offset * 1000) as u64;
                let to = if sel & 0x80 == 0 {
                    local.node_id()
                } else {
                    ids[(who + 1) % 3]
                };
                let body = Body {
                    kind,
                    from: ids[who],
                    to,
                    nonce,
                    timestamp_ms,
                };
                let mut envelope = Envelope::sign(body, &peers[who]);
                if sel & 0x40 != 0 {
                    envelope.signature.0[sel as usize % 64] ^= 1;
                }
                if sel & 0x20 != 0 {
                    envelope.version = sel as u16;
                }
                seen.push(envelope.clone());
                Input::Envelope {
                    envelope,
                    transport_peer,
                    source,
                    via_relay: None,
                }
            }
            // Replay something already seen (including what the machine sent).
            3 => {
                if seen.is_empty() {
                    continue;
                }
                let envelope = seen[s.byte().unwrap_or(0) as usize % seen.len()].clone();
                Input::Envelope {
                    envelope,
                    transport_peer,
                    source,
                    via_relay: None,
                }
            }
            // An operator command about peer `who`.
            4 => {
                let peer = ids[who];
                let text = "r".repeat(s.byte().unwrap_or(0) as usize % 3);
                let cmd = match s.byte().unwrap_or(0) % 14 {
                    0 => Command::Request {
                        to: peer,
                        justification: text,
                        address: None,
                    },
                    1 => Command::Approve {
                        peer,
                        name: Some(text),
                        note: None,
                        expires_at_ms: Some(now + (arg as u64) * 1000),
                    },
                    2 => Command::Reject { peer, reason: text },
                    3 => Command::Revoke { peer, reason: text },
                    4 => Command::Dismiss { peer },
                    5 => Command::Cancel { peer },
                    6 => Command::Ignore { peer },
                    7 => Command::Unignore { peer },
                    8 => Command::Allow {
                        peer,
                        name: Some(text),
                    },
                    9 => Command::Disallow { peer },
                    10 => Command::Forget { peer },
                    11 => Command::SetAutoApprove(arg & 1 == 1),
                    12 => Command::Resend { peer },
                    _ => Command::Rename {
                        peer,
                        name: Some(text),
                        note: None,
                    },
                };
                Input::Command(cmd)
            }
            // Time passes (sometimes a lot), then a tick.
            _ => {
                now += (arg as u64) * (arg as u64) * 100;
                Input::Tick
            }
        };

        let before = m.clone();
        let is_envelope = matches!(input, Input::Envelope { .. });
        let out = m.handle(now, input, &local, &mut rng);
        match &out.reply {
            Reply::Ack(ack) => {
                assert!(is_envelope);
                if let AckStatus::Refused(_) = ack.status {
                    assert_eq!(m, before, "a refusal changed state");
                    assert!(out.writes.is_empty() && out.send.is_empty());
                }
            }
            Reply::Failed(_) => {
                assert_eq!(m, before, "a failed command changed state");
                assert!(out.writes.is_empty() && out.send.is_empty());
            }
            Reply::Done | Reply::None => {}
        }
        for env in &out.send {
            assert_eq!(env.body.from, local.node_id());
            env.verify().expect("we sign what we send");
            seen.push(env.clone());
        }

        // Invariants.
        assert!(m.peer(&local.node_id()).is_none());
        assert!(m.pending_incoming() <= config.max_pending_total);
        assert!(m.nonce_cache_len() <= config.nonce_cache_capacity);
        for r in m.peers() {
            if r.state == TrustState::Trusted {
                assert!(r.consent.is_some(), "trusted without our consent");
            }
            if r.state == TrustState::IncomingPending {
                assert!(!m.denylist().any(|d| *d == r.id), "pending from a denied peer");
            }
        }
    }
});
