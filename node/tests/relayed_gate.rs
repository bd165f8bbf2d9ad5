//! The accepting side's gate on connections that come through a relay: real nodes,
//! real relays (a genuine `RelayServer`, and a lying one scripted here), real QUIC on
//! loopback. The dialler is a bare endpoint on a `PathSocket` whose packets this test
//! carries over its relay link, so it can dial without any trust of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kith_keys::{NodeId, NodeKey};
use kith_node::node::{LinkState, Node, NodeBuilder, close_code};
use kith_node::relay::{RelayOptions, RelayServer};
use kith_node::transport::path::RelayPaths;
use kith_node::transport::{frames, tls};
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::relay::RelayConfig;
use kith_protocol::wire::{Message, RelayNotice, RelayRef};
use tokio::sync::mpsc;

const ALPN: &[u8] = b"gate-test/1";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A private node serving `ALPN`, homed at `relay` and registered there.
async fn private_node(relay: RelayRef) -> Node {
    let node = NodeBuilder::new(NodeKey::generate())
        .protocol(ALPN)
        .private(true)
        .relay(relay)
        .listen(loopback())
        .spawn()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.relay_status().map(|s| s.state) != Some(LinkState::Registered) {
        assert!(Instant::now() < deadline, "the node never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
}

/// A dialler with no node around it: an endpoint over a `PathSocket` whose packets for
/// `relay` this function carries over a link to it, framed as a node's link does.
async fn bare_dialler(relay: RelayRef) -> (tls::Identity, quinn::Endpoint, Arc<RelayPaths>) {
    let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
    let (endpoint, paths, _) = tls::make_path_endpoint(&identity, loopback(), &[]).unwrap();
    let link = tls::dial_relay(&endpoint, &identity, relay.addrs[0], relay.node_id)
        .await
        .unwrap();
    let (out, id) = (paths.outbound(relay.node_id), relay.node_id);
    let writer = link.clone();
    tokio::spawn(async move {
        let mut out = out.lock().await;
        let mut writer = frames::FrameWriter::new(writer);
        while let Some(p) = out.recv().await {
            writer.push(&p.dst, &p.packet);
            if writer.flush().await.is_err() {
                return;
            }
        }
    });
    let inbound = paths.clone();
    tokio::spawn(async move {
        while let Ok(recv) = link.accept_uni().await {
            let paths = inbound.clone();
            tokio::spawn(async move {
                let mut reader = frames::FrameReader::new(recv);
                let mut batch = Vec::new();
                while let Ok(true) = reader.next_batch(&mut batch).await {
                    paths.deliver(id, &mut batch);
                }
            });
        }
    });
    (identity, endpoint, paths)
}

/// Dials `target` through `relay` from the bare dialler and returns why the
/// connection closed (the handshake itself completes: the gate is after it).
async fn dial_and_wait_close(relay: RelayRef, target: NodeId) -> quinn::ConnectionError {
    let (identity, endpoint, paths) = bare_dialler(relay.clone()).await;
    let addr = paths.map(relay.node_id, target).unwrap();
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        tls::dial_app(&endpoint, &identity, addr, target, ALPN),
    )
    .await
    .expect("the handshake through the relay finished in time")
    .expect("the handshake through the relay succeeds");
    if let Ok((mut send, _)) = conn.open_bi().await {
        let _ = send.write_all(b"application bytes").await;
    }
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the node closed the connection")
}

fn assert_closed_with(closed: quinn::ConnectionError, reason: &str) {
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(close_code::NOT_TRUSTED)
            );
            assert_eq!(String::from_utf8_lossy(&close.reason), reason);
        }
        other => panic!("closed for another reason: {other}"),
    }
}

async fn nothing_accepted(node: &Node) {
    let accepted = tokio::time::timeout(Duration::from_millis(500), node.accept(ALPN)).await;
    assert!(accepted.is_err(), "the application got a connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_through_the_relay_is_closed_as_not_trusted() {
    let relay = RelayServer::spawn(
        NodeKey::generate(),
        RelayOptions {
            listen: loopback(),
            advertise: Vec::new(),
            config: RelayConfig::default(),
            max_per_address: kith_node::relay::MAX_PER_ADDRESS,
        },
    )
    .await
    .unwrap();
    let b = private_node(relay.ticket().as_relay()).await;
    let closed = dial_and_wait_close(relay.ticket().as_relay(), b.node_id()).await;
    assert_closed_with(closed, "not trusted");
    nothing_accepted(&b).await;
    assert!(relay.snapshot().stats.packets_relayed > 0);
}

/// A relay that forwards packets between its clients but names `forged` as the sender
/// of every packet the dialler sends, and delivers packets for `forged` to the dialler.
struct LyingRelay {
    ticket: RelayRef,
}

type Queue = mpsc::Sender<([u8; 32], Vec<u8>)>;
type Queues = Arc<Mutex<HashMap<NodeId, Queue>>>;

async fn lying_relay(forged: NodeId) -> LyingRelay {
    let key = NodeKey::generate();
    let identity = tls::Identity::new(&key).unwrap();
    let endpoint = tls::make_relay_endpoint(&identity, loopback()).unwrap();
    let ticket = RelayRef {
        node_id: key.node_id(),
        addrs: vec![endpoint.local_addr().unwrap()],
    };
    let queues: Queues = Arc::default();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let queues = queues.clone();
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                let client = tls::peer_node_id(&conn).unwrap();
                conn.set_max_concurrent_uni_streams(4u32.into());
                let (tx, mut rx) = mpsc::channel::<([u8; 32], Vec<u8>)>(4096);
                queues.lock().unwrap().insert(client, tx);
                let writer = conn.clone();
                tokio::spawn(async move {
                    let mut writer = frames::FrameWriter::new(writer);
                    while let Some((src, packet)) = rx.recv().await {
                        writer.push(&src, &packet);
                        if writer.flush().await.is_err() {
                            return;
                        }
                    }
                });
                // Answer registrations like a relay.
                let registrar = conn.clone();
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = registrar.accept_bi().await {
                        let bytes = recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
                        if let Ok(Some((Message::Register { .. }, _))) =
                            decode_frame::<Message>(&bytes)
                        {
                            let notice = Message::RelayNotice(RelayNotice::Registered {
                                observed: registrar.remote_address(),
                                direct: None,
                            });
                            let _ = send.write_all(&encode_frame(&notice).unwrap()).await;
                            let _ = send.finish();
                        }
                    }
                });
                while let Ok(recv) = conn.accept_uni().await {
                    let queues = queues.clone();
                    tokio::spawn(async move {
                        let mut reader = frames::FrameReader::new(recv);
                        let mut batch = Vec::new();
                        while let Ok(true) = reader.next_batch(&mut batch).await {
                            for (dst, packet) in batch.drain(..) {
                                let queues = queues.lock().unwrap();
                                if dst == *forged.as_bytes() {
                                    // Replies to the forged sender go to the real one.
                                    if let Some(q) = queues.get(&client_other(&queues, &client)) {
                                        let _ = q.try_send((*client.as_bytes(), packet));
                                    }
                                    continue;
                                }
                                let Some(q) = queues.iter().find(|(id, _)| id.as_bytes() == &dst)
                                else {
                                    continue;
                                };
                                // Whatever the dialler sends claims to come from `forged`.
                                let _ = q.1.try_send((*forged.as_bytes(), packet));
                            }
                        }
                    });
                }
            });
        }
    });
    LyingRelay { ticket }
}

/// The client other than `me` (the relay has exactly two).
fn client_other(queues: &HashMap<NodeId, Queue>, me: &NodeId) -> NodeId {
    *queues.keys().find(|id| *id != me).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_naming_another_sender_gets_the_connection_closed() {
    // The relay claims the dialler's packets come from `forged`; the handshake proves
    // the dialler's own key. The node closes the connection before it reads trust, so
    // this holds whoever `forged` is.
    let forged = NodeKey::generate().node_id();
    let relay = lying_relay(forged).await;
    let b = private_node(relay.ticket.clone()).await;
    let closed = dial_and_wait_close(relay.ticket.clone(), b.node_id()).await;
    assert_closed_with(
        closed,
        "the relay named another sender than the one the handshake proved",
    );
    nothing_accepted(&b).await;
}
