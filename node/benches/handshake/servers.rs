//! What the handshake bench measures against: the bare and the least servers, a
//! real node (direct or private behind an in-process relay) with its pending records
//! counted after shutdown, the relay's forwarding rate with stand-in sinks, and raw
//! connects timed until the server has them. It asserts nothing about the figures:
//! a handshake that fails is counted and shown, not a panic.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kith_keys::{NodeId, NodeKey};
use kith_node::node::LinkState;
use kith_node::node::error_chain;
use kith_node::relay::{RelayOptions, RelayServer};
use kith_node::store::Store;
use kith_node::transport::tls;
use kith_node::{Node, NodeBuilder, StoreLocation};
use kith_protocol::frame::{MAX_FRAME_LEN, PREFIX_LEN, decode_frame, encode_frame};
use kith_protocol::machine::{Config, TrustState};
use kith_protocol::relay::{ForwardResult, RelayConfig};
use kith_protocol::wire::{Ack, AckStatus, Message, Reach};
use tokio::runtime::Runtime;

use super::client::{Client, Op, exchange, loopback, signed_request};
use super::measure::{Counters, Run, SYNC_SLOT, drive, preallocated, slot_offset};
use super::{HANDSHAKE_TIMEOUT, WARMUP};

/// The node's policy for the bench: the defaults, except that the pending-request
/// bounds (1024 total, 16 per source network) are lifted, since every bench client
/// comes from 127.0.0.1 and every handshake must stay pending to be counted.
pub(super) fn bench_config() -> Config {
    Config {
        max_pending_total: 1_000_000,
        max_pending_per_source: 1_000_000,
        ..Config::default()
    }
}

/// A QUIC endpoint with a node certificate, on the node's runtime, that accepts every
/// connection and hands each one, once established, to `serve` in a task of its own.
fn serve_each<F, Fut>(node_rt: &Runtime, key: &NodeKey, serve: F) -> quinn::Endpoint
where
    F: Fn(quinn::Connection) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    node_rt.block_on(async {
        let identity = tls::Identity::new(key).expect("building a server certificate");
        let server = tls::make_endpoint(&identity, loopback()).expect("binding a bench server");
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let serve = serve.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve(conn).await;
                    }
                });
            }
        });
        server
    })
}

/// A bare QUIC endpoint that accepts every connection and does nothing with it.
/// With `established`, it sends the instant each connection came up on its side.
pub(super) fn bare_server(
    node_rt: &Runtime,
    key: &NodeKey,
    established: Option<tokio::sync::mpsc::UnboundedSender<Instant>>,
) -> quinn::Endpoint {
    serve_each(node_rt, key, move |conn| {
        if let Some(tx) = &established {
            let _ = tx.send(Instant::now());
        }
        async move {
            conn.closed().await;
        }
    })
}

/// The least server a durable handshake needs, for the measured floor: on each
/// stream it reads the request, checks the envelope's signature, writes the frame
/// to a preallocated file with one fdatasync (`sync`) right on the serving thread,
/// and answers `Pending`. No trust machine, no database, no hand-off between threads.
pub(super) fn least_server(
    node_rt: &Runtime,
    key: &NodeKey,
    path: &Path,
    sync: bool,
) -> quinn::Endpoint {
    use std::os::unix::fs::FileExt;
    let file = Arc::new(preallocated(path));
    let written = Arc::new(AtomicUsize::new(0));
    let ack = encode_frame(&Message::Ack(Ack {
        status: AckStatus::Pending,
    }))
    .expect("encoding an ack");
    serve_each(node_rt, key, move |conn| {
        let (file, written, ack) = (file.clone(), written.clone(), ack.clone());
        async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let Ok(frame) = recv.read_to_end(MAX_FRAME_LEN + PREFIX_LEN).await else {
                    return;
                };
                let Ok(Some((Message::Envelope(envelope), _))) = decode_frame::<Message>(&frame)
                else {
                    return;
                };
                if envelope.verify().is_err() || frame.len() > SYNC_SLOT {
                    return;
                }
                let offset = slot_offset(written.fetch_add(1, Ordering::Relaxed));
                let stored = file
                    .write_all_at(&frame, offset)
                    .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
                if stored.is_err() {
                    return;
                }
                let _ = send.write_all(&ack).await;
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        }
    })
}

fn start_node(node_rt: &Runtime, store: StoreLocation) -> Node {
    node_rt.block_on(async {
        NodeBuilder::new(NodeKey::generate())
            .listen(loopback())
            .store(store)
            .config(bench_config())
            .spawn()
            .await
            .expect("starting the node")
    })
}

/// Pending records in the store file at `path` (the node must be shut down).
fn pending_in_file(path: &Path) -> Result<usize, String> {
    let store = Store::open(path).map_err(|e| error_chain(&e))?;
    let snapshot = store.load().map_err(|e| error_chain(&e))?;
    Ok(snapshot
        .peers
        .iter()
        .filter(|r| r.state == TrustState::IncomingPending)
        .count())
}

/// A node measured with kith handshakes: started on a fresh store and warmed up.
pub(super) struct NodeUnderTest {
    node: Node,
    store: StoreLocation,
    /// Pending records the warm-up handshakes left.
    warm_pending: usize,
}

impl NodeUnderTest {
    pub(super) fn start(
        node_rt: &Runtime,
        clients: &Runtime,
        store: StoreLocation,
        warmup: usize,
    ) -> Self {
        let node = start_node(node_rt, store.clone());
        if warmup > 0 {
            drive(
                clients,
                Op::Kith,
                node.local_addr(),
                node.node_id(),
                1,
                0,
                warmup,
            );
        }
        let mut started = NodeUnderTest {
            node,
            store,
            warm_pending: 0,
        };
        started.warm_pending = started.pending(node_rt);
        started
    }

    pub(super) fn target(&self) -> (Op, SocketAddr, NodeId) {
        (Op::Kith, self.node.local_addr(), self.node.node_id())
    }

    fn pending(&self, node_rt: &Runtime) -> usize {
        node_rt
            .block_on(self.node.read(|m, _| m.pending_incoming()))
            .unwrap_or(0)
    }

    /// Shuts the node down and records in `run` the pending records its measured
    /// handshakes left in the node and, for a store file, in the reopened file.
    pub(super) fn finish(self, node_rt: &Runtime, run: &mut Run) {
        let in_node = self.pending(node_rt).saturating_sub(self.warm_pending);
        node_rt.block_on(self.node.shutdown());
        let in_file = match &self.store {
            StoreLocation::File(path) => {
                Some(pending_in_file(path).map(|n| n.saturating_sub(self.warm_pending)))
            }
            StoreLocation::InMemory => None,
        };
        run.pending = Some((in_node, in_file));
    }
}

/// Runs kith handshakes against a fresh node with a fresh store (after `warmup`
/// untimed ones), then shuts the node down and, for a store file, counts the
/// pending records in the file.
pub(super) fn kith_run(
    node_rt: &Runtime,
    clients: &Runtime,
    store: StoreLocation,
    concurrency: usize,
    warmup: usize,
    total: usize,
) -> Run {
    let node = NodeUnderTest::start(node_rt, clients, store, warmup);
    let (op, addr, id) = node.target();
    let mut run = drive(clients, op, addr, id, concurrency, 0, total);
    node.finish(node_rt, &mut run);
    run
}

pub(super) fn start_relay(relay_rt: &Runtime, config: RelayConfig) -> RelayServer {
    relay_rt.block_on(async {
        RelayServer::spawn(
            NodeKey::generate(),
            RelayOptions {
                listen: loopback(),
                advertise: Vec::new(),
                config,
                // Every bench client dials from loopback.
                max_per_address: usize::MAX,
            },
        )
        .await
        .expect("starting the relay")
    })
}

/// Relayed handshakes against a fresh private node (file store) homed at `relay`,
/// after `warmup` untimed ones; pending records are counted like [`kith_run`]'s.
pub(super) fn relayed_run(
    node_rt: &Runtime,
    clients: &Runtime,
    relay: &RelayServer,
    store: StoreLocation,
    warmup: usize,
    total: usize,
) -> Run {
    let node = node_rt.block_on(async {
        NodeBuilder::new(NodeKey::generate())
            .listen(loopback())
            .store(store.clone())
            .config(bench_config())
            .private(true)
            .relay(relay.ticket().as_relay())
            .spawn()
            .await
            .expect("starting the private node")
    });
    let registered = Instant::now();
    while node
        .relay_status()
        .is_none_or(|s| s.state != LinkState::Registered)
    {
        assert!(
            registered.elapsed() < Duration::from_secs(10),
            "the private node did not register at the relay"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let op = Op::Relayed {
        dest: node.node_id(),
    };
    let (addr, id) = (relay.local_addr(), relay.node_id());
    let pending = || {
        node_rt
            .block_on(node.read(|m, _| m.pending_incoming()))
            .unwrap_or(0)
    };
    if warmup > 0 {
        drive(clients, op, addr, id, 1, 0, warmup);
    }
    let before = pending();
    let mut run = drive(clients, op, addr, id, 1, 0, total);
    let in_node = pending().saturating_sub(before);
    node_rt.block_on(node.shutdown());
    let in_file = match &store {
        StoreLocation::File(path) => Some(pending_in_file(path).map(|n| n.saturating_sub(before))),
        StoreLocation::InMemory => None,
    };
    run.pending = Some((in_node, in_file));
    run
}

/// A stand-in destination: connected to the relay (so registered), it answers every
/// pushed envelope with a `Pending` ack at once, without looking at it.
pub(super) async fn sink(
    relay: SocketAddr,
    relay_id: NodeId,
) -> (quinn::Endpoint, quinn::Connection, NodeId) {
    let me = Client::fresh();
    let endpoint = me.endpoint();
    let conn = tls::dial_relay(&endpoint, &me.tls, relay, relay_id)
        .await
        .expect("a sink connects to the relay");
    let ack = encode_frame(&Message::Ack(Ack {
        status: AckStatus::Pending,
    }))
    .unwrap();
    let serving = conn.clone();
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = serving.accept_bi().await {
            let ack = ack.clone();
            tokio::spawn(async move {
                if recv.read_to_end(MAX_FRAME_LEN + PREFIX_LEN).await.is_ok() {
                    let _ = send.write_all(&ack).await;
                    let _ = send.finish();
                }
            });
        }
    });
    (endpoint, conn, me.key.node_id())
}

/// `total` forwards through `relay` from `senders` connections with `in_flight`
/// streams each, to `sinks` sink connections (sender i → sink i mod sinks).
pub(super) fn forwarding_run(
    clients: &Runtime,
    relay: &RelayServer,
    senders: usize,
    in_flight: usize,
    sinks: usize,
    total: usize,
) -> Run {
    let (addr, relay_id) = (relay.local_addr(), relay.node_id());
    clients.block_on(async {
        let mut sink_conns = Vec::new();
        for _ in 0..sinks {
            sink_conns.push(sink(addr, relay_id).await);
        }
        // Sinks register as they connect; give the relay a moment to see the last one.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut sender_conns = Vec::new();
        for i in 0..senders {
            let me = Client::fresh();
            let endpoint = me.endpoint();
            let conn = tls::dial_relay(&endpoint, &me.tls, addr, relay_id)
                .await
                .expect("a sender connects to the relay");
            let to = sink_conns[i % sinks].2;
            let frame = encode_frame(&Message::Forward {
                envelope: signed_request(&me.key, to, "forwarding bench"),
                reach: Reach::default(),
            })
            .unwrap();
            sender_conns.push((endpoint, conn, Arc::new(frame)));
        }
        // Warm-up: one forward per sender.
        for (_, conn, frame) in &sender_conns {
            let _ = exchange(conn, frame).await;
        }
        let next = Arc::new(AtomicUsize::new(0));
        let before = Counters::now();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (_, conn, frame) in &sender_conns {
            for _ in 0..in_flight {
                let (next, conn, frame) = (next.clone(), conn.clone(), frame.clone());
                tasks.push(tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut failures = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        let t = Instant::now();
                        let answer =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange(&conn, &frame))
                                .await
                                .unwrap_or_else(|_| Err("timed out".into()));
                        match answer {
                            Ok(Message::Forwarded {
                                result: ForwardResult::Delivered,
                                ack: Some(_),
                            }) => samples.push(t.elapsed()),
                            Ok(other) => failures.push(format!("answer {other:?}")),
                            Err(e) => failures.push(e),
                        }
                    }
                    (samples, failures)
                }));
            }
        }
        let mut run = Run {
            concurrency: senders * in_flight,
            ..Run::default()
        };
        let mut failures = Vec::new();
        for task in tasks {
            let (s, f) = task.await.expect("a sender task panicked");
            run.samples.extend(s);
            failures.extend(f);
        }
        run.elapsed = started.elapsed();
        run.counters = Counters::now().since(&before);
        run.samples.sort();
        run.failures = failures.len();
        run.first_failure = failures.into_iter().next();
        for (endpoint, conn, _) in sender_conns {
            conn.close(0u32.into(), b"done");
            endpoint.close(0u32.into(), b"done");
        }
        for (endpoint, conn, _) in sink_conns {
            conn.close(0u32.into(), b"done");
            endpoint.close(0u32.into(), b"done");
        }
        run
    })
}

/// Raw connects one at a time, each timed until the *server* has the connection too:
/// the server's half of mutual TLS (checking the client's certificate and handshake
/// signature) ends after the client's, and a kith handshake cannot start serving
/// its request before it.
pub(super) fn raw_until_served(node_rt: &Runtime, clients: &Runtime, iterations: usize) -> Run {
    let server_key = NodeKey::generate();
    let (tx, mut established) = tokio::sync::mpsc::unbounded_channel();
    let server = bare_server(node_rt, &server_key, Some(tx));
    let addr = server.local_addr().expect("bare server address");
    let run = clients.block_on(async {
        let client = Client::fresh().endpoint();
        let mut run = Run {
            name: "raw connect, until the server has it".into(),
            concurrency: 1,
            ..Run::default()
        };
        let before = Counters::now();
        let started = Instant::now();
        for i in 0..WARMUP + iterations {
            let me = Client::fresh();
            let t = Instant::now();
            let dialled = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tls::dial(&client, &me.tls, addr, server_key.node_id()),
            )
            .await;
            let client_done = Instant::now();
            let served = tokio::time::timeout(HANDSHAKE_TIMEOUT, established.recv()).await;
            match (dialled, served) {
                (Ok(Ok(conn)), Ok(Some(server_done))) => {
                    conn.close(0u32.into(), b"bench");
                    if i >= WARMUP {
                        run.samples.push(client_done.max(server_done) - t);
                        run.dials.push(client_done - t);
                    }
                }
                (Ok(Err(e)), _) => {
                    run.failures += 1;
                    run.first_failure.get_or_insert(error_chain(&e));
                }
                _ => {
                    run.failures += 1;
                    run.first_failure
                        .get_or_insert("no connection in time".into());
                }
            }
        }
        run.elapsed = started.elapsed();
        run.counters = Counters::now().since(&before);
        client.close(0u32.into(), b"done");
        run.samples.sort();
        run.dials.sort();
        run
    });
    server.close(0u32.into(), b"done");
    run
}
