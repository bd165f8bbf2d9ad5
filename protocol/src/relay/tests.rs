//! Unit tests of the relay state machine.
use super::*;
use crate::wire::{Body, Kind};
use kith_keys::NodeKey;
use zeroize::Zeroizing;

fn key(seed: u8) -> NodeKey {
    NodeKey::from_secret(&Zeroizing::new([seed; 32]))
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn env(from: &NodeKey, to: &NodeKey, n: u8) -> Envelope {
    Envelope::sign(
        Body {
            kind: Kind::Request {
                justification: "hi".into(),
            },
            from: from.node_id(),
            to: to.node_id(),
            nonce: [n; 16],
            timestamp_ms: 1_000 + n as u64,
        },
        from,
    )
}

fn connect(r: &mut Relay, now: u64, conn: ConnId, k: &NodeKey, port: u16) -> Vec<RelayOutput> {
    r.handle(
        now,
        RelayInput::Connected {
            conn,
            node: k.node_id(),
            addr: addr(port),
        },
    )
}

fn forward(r: &mut Relay, now: u64, conn: ConnId, envelope: Envelope) -> Vec<RelayOutput> {
    r.handle(now, RelayInput::Forward { conn, envelope })
}

fn answer(out: &[RelayOutput]) -> ForwardResult {
    let answers: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            RelayOutput::Answer { result, .. } => Some(result.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "exactly one answer per forward: {out:?}");
    answers[0].clone()
}

#[test]
fn registers_and_pushes_at_once() {
    let (a, b) = (key(1), key(2));
    let mut r = Relay::new(RelayConfig::default());
    assert_eq!(
        connect(&mut r, 0, 1, &a, 1000),
        vec![RelayOutput::Registered {
            conn: 1,
            observed: addr(1000)
        }]
    );
    connect(&mut r, 0, 2, &b, 2000);
    let e = env(&a, &b, 1);
    let out = forward(&mut r, 5, 1, e.clone());
    assert_eq!(
        out,
        vec![
            RelayOutput::Push {
                conn: 2,
                envelope: e
            },
            RelayOutput::Answer {
                conn: 1,
                to: b.node_id(),
                result: ForwardResult::Delivered
            }
        ]
    );
    assert_eq!(r.stats().delivered, 1);
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn unknown_destination_and_sender_mismatch() {
    let (a, b, c) = (key(1), key(2), key(3));
    let mut r = Relay::new(RelayConfig::default());
    connect(&mut r, 0, 1, &a, 1000);
    let out = forward(&mut r, 0, 1, env(&a, &b, 1));
    assert_eq!(answer(&out), ForwardResult::UnknownDestination);
    // Signed by c, sent on a's connection: the relay will not carry it.
    let out = forward(&mut r, 0, 1, env(&c, &b, 1));
    assert_eq!(
        answer(&out),
        ForwardResult::Refused(RelayRefusal::SenderMismatch)
    );
    let out = forward(&mut r, 0, 9, env(&a, &b, 2));
    assert_eq!(
        answer(&out),
        ForwardResult::Refused(RelayRefusal::UnknownConnection)
    );
    let mut bad = env(&a, &b, 3);
    bad.version = 99;
    let out = forward(&mut r, 0, 1, bad);
    assert_eq!(
        answer(&out),
        ForwardResult::Refused(RelayRefusal::Malformed)
    );
}

#[test]
fn queues_for_an_offline_node_and_pushes_on_return() {
    let (a, b) = (key(1), key(2));
    let mut r = Relay::new(RelayConfig::default());
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 0, 2, &b, 2000);
    r.handle(10, RelayInput::Disconnected { conn: 2 });
    let (e1, e2) = (env(&a, &b, 1), env(&a, &b, 2));
    for (i, e) in [&e1, &e2, &e1].into_iter().enumerate() {
        let out = forward(&mut r, 20 + i as u64, 1, e.clone());
        assert_eq!(answer(&out), ForwardResult::Queued);
    }
    assert_eq!(r.queued(), 2, "a retried envelope is queued once");
    assert_eq!(r.next_deadline(), Some(20 + DEFAULT_QUEUE_TTL_MS));
    let out = connect(&mut r, 100, 3, &b, 2001);
    assert_eq!(
        out,
        vec![
            RelayOutput::Registered {
                conn: 3,
                observed: addr(2001)
            },
            RelayOutput::Push {
                conn: 3,
                envelope: e1
            },
            RelayOutput::Push {
                conn: 3,
                envelope: e2
            },
        ]
    );
    assert_eq!(r.queued(), 0);
    assert_eq!(r.next_deadline(), None);
    assert_eq!(r.stats().delivered_from_queue, 2);
}

#[test]
fn queued_envelopes_expire() {
    let (a, b) = (key(1), key(2));
    let cfg = RelayConfig {
        queue_ttl_ms: 1000,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 0, 2, &b, 2000);
    r.handle(0, RelayInput::Disconnected { conn: 2 });
    forward(&mut r, 0, 1, env(&a, &b, 1));
    forward(&mut r, 500, 1, env(&a, &b, 2));
    assert_eq!(r.next_deadline(), Some(1000));
    assert_eq!(r.handle(999, RelayInput::Tick), vec![]);
    assert_eq!(
        r.handle(1000, RelayInput::Tick),
        vec![
            RelayOutput::Expired {
                to: b.node_id(),
                count: 1
            },
            // The sender, still connected, is told.
            RelayOutput::Dropped {
                conn: Some(1),
                to: b.node_id(),
                nonce: [1; 16],
                reason: DropReason::Expired
            }
        ]
    );
    assert_eq!(r.queued(), 1);
    assert_eq!(r.next_deadline(), Some(1500));
    r.handle(1500, RelayInput::Tick);
    assert_eq!(r.queued(), 0);
    assert_eq!(r.next_deadline(), None);
    // Returning later, nothing is pushed.
    let out = connect(&mut r, 2000, 3, &b, 2000);
    assert_eq!(out.len(), 1);
}

#[test]
fn queue_bounds_per_destination_and_total() {
    let (a, b, c) = (key(1), key(2), key(3));
    let cfg = RelayConfig {
        queue_per_destination: 2,
        queue_total: 3,
        rate_burst: 0,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 0, 2, &b, 2000);
    connect(&mut r, 0, 3, &c, 3000);
    r.handle(0, RelayInput::Disconnected { conn: 2 });
    r.handle(0, RelayInput::Disconnected { conn: 3 });
    let fwd = |r: &mut Relay, to: &NodeKey, n: u8| answer(&forward(r, 1, 1, env(&a, to, n)));
    assert_eq!(fwd(&mut r, &b, 1), ForwardResult::Queued);
    assert_eq!(fwd(&mut r, &b, 2), ForwardResult::Queued);
    assert_eq!(
        fwd(&mut r, &b, 3),
        ForwardResult::Refused(RelayRefusal::QueueFull)
    );
    assert_eq!(fwd(&mut r, &c, 4), ForwardResult::Queued);
    assert_eq!(
        fwd(&mut r, &c, 5),
        ForwardResult::Refused(RelayRefusal::QueueFull),
        "the total bound"
    );
    assert_eq!(r.queued(), 3);
}

#[test]
fn forgets_offline_nodes_after_remember_ms() {
    let (a, b) = (key(1), key(2));
    let cfg = RelayConfig {
        remember_ms: 100,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 0, 2, &b, 2000);
    r.handle(0, RelayInput::Disconnected { conn: 2 });
    let out = forward(&mut r, 100, 1, env(&a, &b, 1));
    assert_eq!(answer(&out), ForwardResult::UnknownDestination);
}

#[test]
fn rate_limit_is_per_sender_and_refills() {
    let (a, b, c) = (key(1), key(2), key(3));
    let cfg = RelayConfig {
        rate_burst: 3,
        rate_per_sec: 2,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 0, 2, &b, 2000);
    connect(&mut r, 0, 3, &c, 3000);
    let mut n = 0u8;
    let mut fwd = |r: &mut Relay, now: u64, conn: ConnId, from: &NodeKey| {
        n += 1;
        answer(&forward(r, now, conn, env(from, &b, n)))
    };
    for _ in 0..3 {
        assert_eq!(fwd(&mut r, 0, 1, &a), ForwardResult::Delivered);
    }
    assert_eq!(
        fwd(&mut r, 0, 1, &a),
        ForwardResult::Refused(RelayRefusal::RateLimited)
    );
    assert_eq!(
        fwd(&mut r, 0, 3, &c),
        ForwardResult::Delivered,
        "per sender"
    );
    assert_eq!(
        fwd(&mut r, 499, 1, &a),
        ForwardResult::Refused(RelayRefusal::RateLimited)
    );
    assert_eq!(fwd(&mut r, 500, 1, &a), ForwardResult::Delivered);
    // A reconnect does not reset a partly spent bucket.
    r.handle(500, RelayInput::Disconnected { conn: 1 });
    connect(&mut r, 500, 4, &a, 1001);
    assert_eq!(
        fwd(&mut r, 500, 4, &a),
        ForwardResult::Refused(RelayRefusal::RateLimited)
    );
}

#[test]
fn client_cap_and_allow_list() {
    let (a, b, c, m) = (key(1), key(2), key(3), key(4));
    let cfg = RelayConfig {
        max_clients: 2,
        max_guests: 1,
        allow: Some([a.node_id(), m.node_id()].into()),
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    assert!(matches!(
        connect(&mut r, 0, 1, &a, 1000)[..],
        [RelayOutput::Registered { .. }]
    ));
    assert_eq!(
        connect(&mut r, 0, 2, &b, 2000),
        vec![RelayOutput::Refused {
            conn: 2,
            reason: RelayRefusal::NotAllowed
        }]
    );
    // b may still forward to a member, but nothing is routed to b.
    let out = forward(&mut r, 0, 2, env(&b, &a, 1));
    assert_eq!(answer(&out), ForwardResult::Delivered);
    let out = forward(&mut r, 0, 1, env(&a, &b, 1));
    assert_eq!(answer(&out), ForwardResult::UnknownDestination);
    // The guests' pool is full...
    assert_eq!(
        connect(&mut r, 0, 3, &c, 3000),
        vec![RelayOutput::Refused {
            conn: 3,
            reason: RelayRefusal::TooManyClients
        }]
    );
    assert!(r.client(3).is_none(), "a refused connection is forgotten");
    // ...but guests hold no member's slot: the second member still registers.
    assert!(matches!(
        connect(&mut r, 0, 4, &m, 4000)[..],
        [RelayOutput::Registered { .. }]
    ));
    assert_eq!(r.clients(), 3);
    assert_eq!(
        connect(&mut r, 0, 5, &key(5), 5000),
        vec![RelayOutput::Refused {
            conn: 5,
            reason: RelayRefusal::TooManyClients
        }]
    );
}

#[test]
fn fresh_identities_cannot_take_the_slots_reserved_for_settled_nodes() {
    let honest = key(1);
    let cfg = RelayConfig {
        max_clients: 4,
        reserved_for_settled: 2,
        settled_ms: 1_000,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    // The honest node settles, then drops off (a NAT timeout, say).
    connect(&mut r, 0, 1, &honest, 1000);
    r.handle(2_000, RelayInput::Disconnected { conn: 1 });
    // Strangers fill what is not reserved, and no more.
    let registered = (10..20u8)
        .filter(|&i| {
            matches!(
                connect(&mut r, 3_000, i.into(), &key(i), 2000 + u16::from(i))[..],
                [RelayOutput::Registered { .. }]
            )
        })
        .count();
    assert_eq!(registered, 2);
    assert!(matches!(
        connect(&mut r, 3_001, 2, &honest, 1001)[..],
        [RelayOutput::Registered { .. }, ..]
    ));
}

#[test]
fn reconnect_from_the_same_address_replaces_the_old_connection() {
    let a = key(1);
    let mut r = Relay::new(RelayConfig::default());
    connect(&mut r, 0, 1, &a, 1000);
    let out = connect(&mut r, 5, 2, &a, 1000);
    assert_eq!(
        out,
        vec![
            RelayOutput::Close { conn: 1 },
            RelayOutput::Registered {
                conn: 2,
                observed: addr(1000)
            }
        ]
    );
    assert_eq!(r.route(&a.node_id()), Some(2));
    assert_eq!(r.clients(), 1);
    // The late Disconnected of the old connection changes nothing.
    r.handle(6, RelayInput::Disconnected { conn: 1 });
    assert_eq!(r.route(&a.node_id()), Some(2));
}

#[test]
fn second_address_is_probed_then_reported_as_conflict() {
    let (a, b) = (key(1), key(2));
    let mut r = Relay::new(RelayConfig::default());
    connect(&mut r, 0, 1, &a, 1000);
    let out = connect(&mut r, 10, 2, &a, 1999);
    assert_eq!(
        out,
        vec![
            RelayOutput::Registered {
                conn: 2,
                observed: addr(1999)
            },
            RelayOutput::Probe { conn: 1 }
        ]
    );
    assert_eq!(r.route(&a.node_id()), Some(2), "the newest is the route");
    assert_eq!(r.next_deadline(), Some(5_010));
    assert_eq!(
        r.handle(20, RelayInput::Alive { conn: 1 }),
        vec![RelayOutput::Conflict {
            node: a.node_id(),
            conns: vec![1, 2]
        }]
    );
    assert_eq!(r.next_deadline(), None);
    assert_eq!(r.stats().conflicts, 1);
    // Both stay connected; envelopes go to the newest.
    connect(&mut r, 20, 3, &b, 3000);
    let out = forward(&mut r, 30, 3, env(&b, &a, 1));
    assert!(matches!(out[0], RelayOutput::Push { conn: 2, .. }));
    // The newest leaves: the older one is the route again.
    r.handle(40, RelayInput::Disconnected { conn: 2 });
    assert_eq!(r.route(&a.node_id()), Some(1));
}

#[test]
fn a_reported_conflict_is_over_when_one_connection_is_left() {
    let a = key(1);
    let mut r = Relay::new(RelayConfig::default());
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 10, 2, &a, 1999);
    let out = r.handle(20, RelayInput::Alive { conn: 1 });
    assert!(matches!(out[0], RelayOutput::Conflict { .. }));
    // One copy reconnecting from its own address: still two copies, nothing is over.
    let out = connect(&mut r, 30, 3, &a, 1999);
    assert!(
        !out.iter()
            .any(|o| matches!(o, RelayOutput::ConflictOver { .. })),
        "{out:?}"
    );
    // That copy leaves: the one left is told.
    assert_eq!(
        r.handle(40, RelayInput::Disconnected { conn: 3 }),
        vec![RelayOutput::ConflictOver {
            node: a.node_id(),
            conn: 1
        }]
    );
    // Once only; and a node never reported is never told.
    assert_eq!(r.handle(50, RelayInput::Disconnected { conn: 1 }), vec![]);
    let b = key(2);
    connect(&mut r, 60, 4, &b, 3000);
    connect(&mut r, 60, 5, &b, 3001);
    assert_eq!(r.handle(70, RelayInput::Disconnected { conn: 5 }), vec![]);
}

#[test]
fn unanswered_probe_closes_the_stale_connection() {
    let a = key(1);
    let mut r = Relay::new(RelayConfig::default());
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 10, 2, &a, 1999);
    assert_eq!(r.handle(5_009, RelayInput::Tick), vec![]);
    assert_eq!(
        r.handle(5_010, RelayInput::Tick),
        vec![RelayOutput::Close { conn: 1 }]
    );
    assert_eq!(r.clients(), 1);
    assert_eq!(r.route(&a.node_id()), Some(2));
    // An Alive arriving after the close changes nothing.
    assert_eq!(r.handle(5_020, RelayInput::Alive { conn: 1 }), vec![]);
}

#[test]
fn probe_ms_zero_reports_at_once() {
    let a = key(1);
    let mut r = Relay::new(RelayConfig {
        probe_ms: 0,
        ..RelayConfig::default()
    });
    connect(&mut r, 0, 1, &a, 1000);
    let out = connect(&mut r, 0, 2, &a, 1999);
    assert_eq!(
        out[1],
        RelayOutput::Conflict {
            node: a.node_id(),
            conns: vec![1, 2]
        }
    );
}

#[test]
fn default_ttl_is_inside_the_skew_window() {
    assert!(RelayConfig::default().ttl_within_skew());
}

#[test]
fn wire_enums_round_trip() {
    for r in [
        ForwardResult::Delivered,
        ForwardResult::Queued,
        ForwardResult::UnknownDestination,
        ForwardResult::Refused(RelayRefusal::Malformed),
    ] {
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert_eq!(postcard::from_bytes::<ForwardResult>(&bytes).unwrap(), r);
        assert!(!r.to_string().is_empty());
    }
    assert_eq!(
        postcard::to_allocvec(&ForwardResult::Refused(RelayRefusal::SenderMismatch)).unwrap(),
        vec![3, 4]
    );
}

#[test]
fn snapshot_round_trips() {
    let (a, b) = (key(1), key(2));
    let mut r = Relay::new(RelayConfig::default());
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 0, 2, &b, 2000);
    r.handle(0, RelayInput::Disconnected { conn: 2 });
    forward(&mut r, 1, 1, env(&a, &b, 1));
    let bytes = postcard::to_allocvec(&r).unwrap();
    assert_eq!(postcard::from_bytes::<Relay>(&bytes).unwrap(), r);
}

#[test]
fn fresh_identities_leaving_do_not_evict_a_settled_node() {
    let (a, honest) = (key(1), key(2));
    let cfg = RelayConfig {
        remember_max: 8,
        settled_ms: 1_000,
        rate_burst: 0,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    connect(&mut r, 0, 1, &a, 1000);
    // The honest node stays registered past `settled_ms`, leaves, and mail waits for it.
    connect(&mut r, 0, 2, &honest, 2000);
    r.handle(5_000, RelayInput::Disconnected { conn: 2 });
    assert_eq!(
        answer(&forward(&mut r, 5_001, 1, env(&a, &honest, 1))),
        ForwardResult::Queued
    );

    // A thousand fresh identities connect and leave at once.
    for i in 0..1_000u64 {
        let mut secret = [7u8; 32];
        secret[..8].copy_from_slice(&i.to_le_bytes());
        let stranger = NodeKey::from_secret(&Zeroizing::new(secret));
        let conn = 100 + i;
        connect(&mut r, 6_000 + i, conn, &stranger, 3000);
        r.handle(6_000 + i, RelayInput::Disconnected { conn });
        assert!(r.remembered() <= 8, "memory stays bounded");
    }
    assert_eq!(r.queued_for(&honest.node_id()), 1, "its queue survived");
    assert_eq!(
        answer(&forward(&mut r, 7_001, 1, env(&a, &honest, 2))),
        ForwardResult::Queued,
        "it is still remembered"
    );
    let out = connect(&mut r, 7_002, 3, &honest, 2000);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, RelayOutput::Push { conn: 3, .. }))
            .count(),
        2
    );
}

#[test]
fn strangers_still_push_out_strangers_gone_longest() {
    let (a, b, c) = (key(1), key(2), key(3));
    let cfg = RelayConfig {
        remember_max: 2,
        settled_ms: 1_000,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    for (i, k) in [&a, &b, &c].into_iter().enumerate() {
        let conn = i as u64 + 1;
        connect(&mut r, 10 * conn, conn, k, 1000 + conn as u16);
        r.handle(10 * conn, RelayInput::Disconnected { conn });
    }
    assert_eq!(r.remembered(), 2);
    connect(&mut r, 100, 9, &key(9), 9000);
    let fwd = |r: &mut Relay, to: &NodeKey| answer(&forward(r, 100, 9, env(&key(9), to, 1)));
    assert_eq!(fwd(&mut r, &a), ForwardResult::UnknownDestination);
    assert_eq!(fwd(&mut r, &c), ForwardResult::Queued);
}

#[test]
fn one_sender_cannot_fill_a_destination_or_the_relay() {
    let (a, b, c, d) = (key(1), key(2), key(3), key(4));
    let cfg = RelayConfig {
        queue_per_sender: 3,
        queue_per_sender_destination: 2,
        rate_burst: 0,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    connect(&mut r, 0, 1, &a, 1000);
    for (conn, k) in [(2, &b), (3, &c)] {
        connect(&mut r, 0, conn, k, 2000 + conn as u16);
        r.handle(0, RelayInput::Disconnected { conn });
    }
    connect(&mut r, 0, 4, &d, 4000);
    let fwd = |r: &mut Relay, conn, from: &NodeKey, to: &NodeKey, n: u8| {
        answer(&forward(r, 1, conn, env(from, to, n)))
    };
    assert_eq!(fwd(&mut r, 1, &a, &b, 1), ForwardResult::Queued);
    assert_eq!(fwd(&mut r, 1, &a, &b, 2), ForwardResult::Queued);
    assert_eq!(
        fwd(&mut r, 1, &a, &b, 3),
        ForwardResult::Refused(RelayRefusal::SenderQuota),
        "a sender's share of one destination's queue"
    );
    assert_eq!(
        fwd(&mut r, 4, &d, &b, 1),
        ForwardResult::Queued,
        "another sender still gets through to b"
    );
    assert_eq!(fwd(&mut r, 1, &a, &c, 4), ForwardResult::Queued);
    assert_eq!(
        fwd(&mut r, 1, &a, &c, 5),
        ForwardResult::Refused(RelayRefusal::SenderQuota),
        "a sender's quota over all destinations"
    );
    assert_eq!(r.queued(), 4);
    assert_eq!(
        r.stats().sender_quota,
        2,
        "both quota refusals are counted as such"
    );
    assert_eq!(r.stats().refused, 2);
    assert!(
        r.queued_bytes() > 4 * 64,
        "four signed envelopes are queued"
    );
    // Delivered envelopes give the quota back.
    connect(&mut r, 2, 5, &b, 2002);
    assert_eq!(fwd(&mut r, 1, &a, &c, 6), ForwardResult::Queued);
}

#[test]
fn a_sender_is_told_when_its_queued_envelope_is_forgotten() {
    let (a, b, c) = (key(1), key(2), key(3));
    let cfg = RelayConfig {
        remember_max: 1,
        ..RelayConfig::default()
    };
    let mut r = Relay::new(cfg);
    connect(&mut r, 0, 1, &a, 1000);
    connect(&mut r, 0, 2, &b, 2000);
    r.handle(1, RelayInput::Disconnected { conn: 2 });
    assert_eq!(
        answer(&forward(&mut r, 2, 1, env(&a, &b, 7))),
        ForwardResult::Queued
    );
    // c leaving makes the relay forget b (both unsettled; b gone longer).
    connect(&mut r, 3, 3, &c, 3000);
    let out = r.handle(4, RelayInput::Disconnected { conn: 3 });
    assert_eq!(
        out,
        vec![RelayOutput::Dropped {
            conn: Some(1),
            to: b.node_id(),
            nonce: [7; 16],
            reason: DropReason::Forgotten
        }]
    );
    assert_eq!(r.queued(), 0);
}
