//! Baseline cost of the QUIC/TLS identity layer over loopback: a full mutual-TLS
//! handshake (`dial`), a small request/response on an established connection, and
//! bulk echo throughput. It measures transport overhead only; no protocol logic.

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kith_keys::NodeKey;
use kith_node::transport::tls::{Identity, dial, make_endpoint};
use tokio::runtime::Runtime;

/// Largest message the echo server accepts (and the bulk benchmark sends).
const BULK: usize = 1 << 20;

/// Echoes every bidirectional stream of every connection `server` accepts.
async fn echo_server(server: quinn::Endpoint) {
    while let Some(incoming) = server.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(data) = recv.read_to_end(BULK).await {
                        let _ = send.write_all(&data).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

async fn round_trip(conn: &quinn::Connection, message: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(message).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(BULK).await.unwrap()
}

fn quic_baseline(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Identity::new(&NodeKey::generate()).unwrap();
    let me = Identity::new(&NodeKey::generate()).unwrap();
    let server_id = server.node_id();
    let (client, server_addr) = rt.block_on(async {
        let server = make_endpoint(&server, loopback).unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(echo_server(server));
        (make_endpoint(&me, loopback).unwrap(), server_addr)
    });

    let mut group = c.benchmark_group("quic");
    group.measurement_time(Duration::from_secs(3));

    group.bench_function("handshake", |b| {
        b.iter(|| {
            rt.block_on(async {
                let conn = dial(&client, &me, server_addr, server_id).await.unwrap();
                conn.close(0u32.into(), b"");
            })
        })
    });

    let conn = rt
        .block_on(dial(&client, &me, server_addr, server_id))
        .unwrap();
    let small = vec![0x5a; 64];
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("echo_64B", |b| {
        b.iter(|| assert_eq!(rt.block_on(round_trip(&conn, &small)).len(), small.len()))
    });

    let bulk = vec![0xa5; BULK];
    group.throughput(Throughput::Bytes(bulk.len() as u64));
    group.sample_size(20);
    group.bench_function("echo_1MiB", |b| {
        b.iter(|| assert_eq!(rt.block_on(round_trip(&conn, &bulk)).len(), bulk.len()))
    });
    group.finish();
}

criterion_group!(benches, quic_baseline);
criterion_main!(benches);
