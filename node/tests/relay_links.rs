//! A node's relay links under hostile tickets and hints: real nodes and a real relay,
//! in process, over real QUIC on loopback.
//!
//! In process rather than through the binary so the tests can hold silent UDP
//! sockets, time deliveries and shorten the idle timeout of relay links.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use kith_keys::NodeKey;
use kith_node::node::{Delivery, LinkState, Node, NodeBuilder, RelayStatus};
use kith_node::relay::{RelayOptions, RelayServer};
use kith_node::ticket::Ticket;
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::relay::{ForwardResult, RelayConfig};
use kith_protocol::wire::{AckStatus, MAX_REACH_ADDRS, Message, Reach, RelayNotice, RelayRef};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn relay() -> RelayServer {
    RelayServer::spawn(
        NodeKey::generate(),
        RelayOptions {
            listen: loopback(),
            advertise: Vec::new(),
            config: RelayConfig::default(),
            max_per_address: kith_node::relay::MAX_PER_ADDRESS,
        },
    )
    .await
    .unwrap()
}

async fn node(builder: NodeBuilder) -> Node {
    builder.listen(loopback()).spawn().await.unwrap()
}

/// A private node homed at `relay`, registered there.
async fn private_at(relay: &RelayServer) -> Node {
    private_with(relay, NodeBuilder::new(NodeKey::generate())).await
}

async fn private_with(relay: &RelayServer, builder: NodeBuilder) -> Node {
    let node = node(builder.private(true).relay(relay.ticket().as_relay())).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.relay_status().map(|s| s.state) != Some(LinkState::Registered) {
        assert!(
            Instant::now() < deadline,
            "the private node never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node
}

/// The ticket of a private node whose "relay" is `relay`.
fn ticket_via(relay: RelayRef) -> Ticket {
    Ticket {
        node_id: NodeKey::generate().node_id(),
        addrs: Vec::new(),
        relay: Some(relay),
    }
}

fn delivered(delivery: &Delivery) -> bool {
    matches!(
        delivery,
        Delivery::Relayed {
            ack: Some(AckStatus::Pending),
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_silent_addresses_stalls_no_other_relayed_delivery() {
    let relay = relay().await;
    let private = private_at(&relay).await;
    let public = node(NodeBuilder::new(NodeKey::generate())).await;

    // A hint naming a "relay" at the most addresses a hint may carry, each a bound
    // UDP socket that never answers.
    let silent: Vec<UdpSocket> = (0..MAX_REACH_ADDRS)
        .map(|_| UdpSocket::bind(loopback()).unwrap())
        .collect();
    let stalling = ticket_via(RelayRef {
        node_id: NodeKey::generate().node_id(),
        addrs: silent.iter().map(|s| s.local_addr().unwrap()).collect(),
    });
    let public = std::sync::Arc::new(public);
    let stalled = tokio::spawn({
        let public = public.clone();
        async move {
            let started = Instant::now();
            let delivery = public.request(&stalling, "hello?").await.unwrap();
            (delivery, started.elapsed())
        }
    });
    // Let the silent dial start first.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let honest = ticket_via(relay.ticket().as_relay());
    let honest = Ticket {
        node_id: private.node_id(),
        ..honest
    };
    let delivery = tokio::time::timeout(
        Duration::from_secs(15),
        public.request(&honest, "let me in"),
    )
    .await
    .expect("a relayed delivery through another relay waits for no silent dial");
    assert!(delivered(&delivery.unwrap()));

    let (delivery, took) = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("the silent relay's dial is bounded as a whole")
        .unwrap();
    assert!(
        matches!(delivery, Delivery::Retrying { .. }),
        "{delivery:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "{MAX_REACH_ADDRS} silent addresses cost one bounded wait, not one per address: {took:?}"
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_node_named_as_a_relay_does_not_become_a_link() {
    let a = node(NodeBuilder::new(NodeKey::generate())).await;
    let t = node(NodeBuilder::new(NodeKey::generate())).await;

    // A hint (here a ticket) that names the honest node t as some node's relay.
    let delivery = a
        .request(&ticket_via(t.ticket().as_relay()), "through t?")
        .await
        .unwrap();
    let Delivery::Retrying { reason } = delivery else {
        panic!("t is no relay, yet {delivery:?}");
    };
    assert!(reason.contains("not a relay"), "{reason}");

    // t's own messages to a are still answered as a peer's.
    let delivery = t.request(&a.ticket(), "hello a").await.unwrap();
    assert_eq!(delivery, Delivery::Acked(AckStatus::Pending));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_a_relay_that_is_not_home_is_closed_when_idle() {
    let idle = Duration::from_millis(800);
    let relay = relay().await;
    let private = private_with(
        &relay,
        NodeBuilder::new(NodeKey::generate()).link_idle(idle),
    )
    .await;
    let public = node(NodeBuilder::new(NodeKey::generate()).link_idle(idle)).await;
    let ticket = Ticket {
        node_id: private.node_id(),
        ..ticket_via(relay.ticket().as_relay())
    };
    assert!(delivered(&public.request(&ticket, "hi").await.unwrap()));
    assert_eq!(relay.snapshot().clients, 2, "the public node's link is up");

    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.snapshot().clients > 1 {
        assert!(
            Instant::now() < deadline,
            "the idle link stays open (keep-alives)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Well past the idle timeout, the private node's home link is still the first one.
    tokio::time::sleep(idle * 2).await;
    let home: RelayStatus = private.relay_status().unwrap();
    assert_eq!((home.state, home.connects), (LinkState::Registered, 1));
    assert_eq!(relay.snapshot().registered, 1);

    // The closed link is redialled when needed again.
    assert!(delivered(&public.request(&ticket, "again").await.unwrap()));
}

/// A home relay played by the test: it answers `Register` with the given claim
/// (`observed: None`: the address it really sees) and reports the reply hint of
/// every envelope the node forwards through it.
async fn claiming_relay(
    observed: Option<SocketAddr>,
    direct: Option<bool>,
) -> (
    quinn::Endpoint,
    RelayRef,
    tokio::sync::mpsc::UnboundedReceiver<Reach>,
) {
    let key = NodeKey::generate();
    let endpoint =
        tls::make_relay_endpoint(&tls::Identity::new(&key).unwrap(), loopback()).unwrap();
    let relay = RelayRef {
        node_id: key.node_id(),
        addrs: vec![endpoint.local_addr().unwrap()],
    };
    let (hints, rx) = tokio::sync::mpsc::unbounded_channel();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let hints = hints.clone();
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let bytes = recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
                    let answer = match decode_frame::<Message>(&bytes).unwrap().unwrap().0 {
                        Message::Register { .. } => Message::RelayNotice(RelayNotice::Registered {
                            observed: observed.unwrap_or(conn.remote_address()),
                            direct,
                        }),
                        Message::Forward { reach, .. } => {
                            let _ = hints.send(reach);
                            Message::Forwarded {
                                result: ForwardResult::Queued,
                                ack: None,
                            }
                        }
                        _ => Message::Pong { id: 0 },
                    };
                    let _ = send.write_all(&encode_frame(&answer).unwrap()).await;
                    let _ = send.finish();
                }
            });
        }
    });
    (endpoint, relay, rx)
}

/// The hint `node` sends with an envelope through its home relay.
async fn hint_through(
    node: &Node,
    relay: &RelayRef,
    hints: &mut tokio::sync::mpsc::UnboundedReceiver<Reach>,
) -> Reach {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.relay_status().map(|s| s.state) != Some(LinkState::Registered) {
        assert!(Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.request(&ticket_via(relay.clone()), "hi")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), hints.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_relays_claims_change_the_hint_only_once_corroborated() {
    let given: SocketAddr = "198.51.100.1:7444".parse().unwrap();
    let builder = || NodeBuilder::new(NodeKey::generate()).advertise(vec![given]);

    // "Not reachable directly" does not hide the address the operator gave.
    let (_e1, relay, mut hints) = claiming_relay(None, Some(false)).await;
    let n = node(builder().relay(relay.clone())).await;
    let hint = hint_through(&n, &relay, &mut hints).await;
    assert_eq!(hint.direct, vec![given]);
    n.shutdown().await;

    // "Reachable at an address of my choosing": the node's own dial there fails,
    // so it is never advertised.
    let bogus: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (_e2, relay, mut hints) = claiming_relay(Some(bogus), Some(true)).await;
    let n = node(builder().relay(relay.clone())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hint = hint_through(&n, &relay, &mut hints).await;
    assert_eq!(hint.direct, vec![given]);
    assert_eq!(n.relay_status().unwrap().verified_observed, None);
    n.shutdown().await;

    // The truth, once the node reached itself there, is advertised first.
    let (_e3, relay, mut hints) = claiming_relay(None, Some(true)).await;
    let n = node(builder().relay(relay.clone())).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.relay_status().and_then(|s| s.verified_observed).is_none() {
        assert!(
            Instant::now() < deadline,
            "the true address was never verified"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hint = hint_through(&n, &relay, &mut hints).await;
    assert_eq!(hint.direct, vec![n.local_addr(), given]);
    n.shutdown().await;
}
