//! Benchmarks of the hot paths: framing an envelope, signing and verifying
//! it, and the trust machine taking requests from many peers and approving them.
//!
//! `cargo bench -p kith-protocol --bench protocol -- --measurement-time 2 --warm-up-time 1`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kith_keys::{NodeId, NodeKey};
use kith_protocol::{
    Body, Command, Config, Envelope, FrameDecoder, Input, Kind, Message, TrustMachine, encode_frame,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use zeroize::Zeroizing;

const T0: u64 = 1_700_000_000_000;
/// Distinct requesting peers per batch in the `handle` benchmarks.
const PEERS: usize = 256;

fn key(n: u32) -> NodeKey {
    let mut secret = [7u8; 32];
    secret[..4].copy_from_slice(&n.to_le_bytes());
    NodeKey::from_secret(&Zeroizing::new(secret))
}

fn request(from: &NodeKey, to: NodeId, nonce: u8) -> Envelope {
    Envelope::sign(
        Body {
            kind: Kind::Request {
                justification: "we met at the meetup; I run the build cache for the team".into(),
            },
            from: from.node_id(),
            to,
            nonce: [nonce; 16],
            timestamp_ms: T0,
        },
        from,
    )
}

/// `env` as it arrives on a direct connection from its sender.
fn direct(env: &Envelope) -> Input {
    Input::Envelope {
        envelope: env.clone(),
        transport_peer: Some(env.body.from),
        source: None,
        via_relay: None,
    }
}

fn wire(c: &mut Criterion) {
    let (a, b) = (key(1), key(2));
    let env = request(&a, b.node_id(), 1);
    let msg = Message::Envelope(env.clone());
    let frame = encode_frame(&msg).unwrap();

    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode_envelope", |bench| {
        bench.iter(|| encode_frame(black_box(&msg)).unwrap())
    });
    g.bench_function("decode_envelope", |bench| {
        bench.iter(|| {
            let mut dec = FrameDecoder::new();
            dec.push(black_box(&frame)).unwrap();
            dec.next_frame::<Message>().unwrap().unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("envelope");
    g.bench_function("sign", |bench| {
        bench.iter(|| Envelope::sign(black_box(env.body.clone()), &a))
    });
    g.bench_function("verify", |bench| {
        bench.iter(|| black_box(&env).verify().unwrap())
    });
    g.finish();
}

fn machine(c: &mut Criterion) {
    let local = key(0);
    let id = local.node_id();
    let peers: Vec<NodeKey> = (1..=PEERS as u32).map(key).collect();
    let requests: Vec<Envelope> = peers.iter().map(|p| request(p, id, 1)).collect();
    let config = Config {
        max_pending_total: PEERS,
        ..Config::default()
    };
    let mut rng = StdRng::seed_from_u64(1);

    // A machine with every peer's request waiting, for the approve benchmark.
    let mut pending = TrustMachine::new(id, config.clone());
    for env in &requests {
        pending.handle(T0, direct(env), &local, &mut rng);
    }
    assert_eq!(pending.pending_incoming(), PEERS);

    let mut g = c.benchmark_group("handle");
    g.throughput(Throughput::Elements(PEERS as u64));
    g.bench_function("incoming_requests_from_distinct_peers", |bench| {
        bench.iter_batched(
            || TrustMachine::new(id, config.clone()),
            |mut m| {
                for env in &requests {
                    let out = m.handle(T0, direct(env), &local, &mut rng);
                    black_box(out);
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("approve_pending_requests", |bench| {
        bench.iter_batched(
            || pending.clone(),
            |mut m| {
                for p in &peers {
                    let out = m.handle(
                        T0 + 1,
                        Input::Command(Command::Approve {
                            peer: p.node_id(),
                            name: None,
                            note: None,
                            expires_at_ms: None,
                        }),
                        &local,
                        &mut rng,
                    );
                    black_box(out);
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, wire, machine);
criterion_main!(benches);
