//! One host cannot take every inbound connection of a real `kith run` daemon: a
//! scripted client opens more connections than the node has slots, from one
//! identity and from many fresh ones, and keeps them alive; an honest node's
//! `kith request` still gets through, and the idle connections are closed.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestNode, stdout_of};
use kith_keys::{NodeId, NodeKey};
use kith_node::transport::tls;

/// More than a node's 4,096 inbound slots.
const FLOOD: usize = 4200;
/// Dials in flight at once.
const CONCURRENCY: usize = 64;

/// Dials `to` `count` times from `from` (a loopback address of the attacker's
/// host), as one identity or a fresh one per connection, and returns every
/// connection that was established.
async fn flood(
    from: &str,
    to: SocketAddr,
    to_id: NodeId,
    count: usize,
    fresh_identities: bool,
) -> Vec<quinn::Connection> {
    let key = NodeKey::generate();
    let identity = tls::Identity::new(&key).unwrap();
    let endpoint = tls::make_endpoint(&identity, from.parse().unwrap()).unwrap();
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let endpoint = endpoint.clone();
        let identity = if fresh_identities {
            tls::Identity::new(&NodeKey::generate()).unwrap()
        } else {
            identity.clone()
        };
        tasks.push(tokio::spawn(async move {
            let dialled = tokio::time::timeout(
                Duration::from_secs(5),
                tls::dial(&endpoint, &identity, to, to_id),
            )
            .await;
            drop(permit);
            dialled.ok()?.ok()
        }));
    }
    let mut conns = Vec::new();
    for task in tasks {
        if let Some(conn) = task.await.unwrap() {
            conns.push(conn);
        }
    }
    conns
}

/// The attacker's side: two worker threads, like the machines these tests run on.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `honest` asks `b` for trust and is heard: the request reached `b`'s pending list.
fn honest_request_gets_through(honest: &TestNode, b: &TestNode) {
    let out = honest.run(&["request", &b.ticket(), "-j", "honest"]);
    assert!(
        out.status.success() && stdout_of(&out).contains("the peer was told"),
        "{}\n{}",
        stdout_of(&out),
        common::stderr_of(&out)
    );
    b.wait_for_state(&honest.node_id, "incoming_pending");
}

fn open(conns: &[quinn::Connection]) -> usize {
    conns.iter().filter(|c| c.close_reason().is_none()).count()
}

#[test]
fn one_host_cannot_take_every_inbound_connection() {
    let (b, honest) = (TestNode::started(), TestNode::started());
    let to = b.listen_addr();
    let to_id: NodeId = b.node_id.parse().unwrap();
    let runtime = client_runtime();

    // The attacker's host is 127.0.0.2 (the honest node is on 127.0.0.1): one
    // identity, more connections than the node has slots, all kept alive by the
    // attacker's own keep-alives.
    let started = Instant::now();
    let one = runtime.block_on(flood("127.0.0.2:0", to, to_id, FLOOD, false));
    // And a fresh identity per connection, from another address of the same host.
    let many = runtime.block_on(flood("127.0.0.3:0", to, to_id, 64, true));
    // Let the node's refusals after the handshake arrive.
    std::thread::sleep(Duration::from_millis(500));
    let (held_one, held_many) = (open(&one), open(&many));
    eprintln!(
        "flood took {:?}: {held_one} of {FLOOD} connections of one identity held, \
         {held_many} of 64 fresh identities",
        started.elapsed()
    );
    // While the attacker holds all it can, an honest stranger's request gets through.
    honest_request_gets_through(&honest, &b);
    assert!(held_one <= 16, "one identity holds {held_one} connections");
    assert!(held_many <= 16, "one address holds {held_many} connections");

    // The attacker's idle connections are closed by the node, keep-alives or not.
    let deadline = Instant::now() + Duration::from_secs(20);
    while open(&one) + open(&many) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} idle connections of an untrusted host still open",
            open(&one) + open(&many)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle_closed = one.iter().chain(&many).any(|c| {
        matches!(
            c.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(ref close)) if &close.reason[..] == b"idle"
        )
    });
    assert!(idle_closed, "the node closed them as idle");
}

/// A client's first flight to `to_id` (a QUIC Initial carrying a ClientHello for
/// kith's ALPN, or a relay link's), captured from a real client on `from` instead
/// of being sent.
async fn captured_initial(from: std::net::IpAddr, to_id: NodeId, relay: bool) -> Vec<u8> {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
    let endpoint = tls::make_endpoint(&identity, SocketAddr::new(from, 0)).unwrap();
    let target = capture.local_addr().unwrap();
    let dialling = tokio::spawn(async move {
        if relay {
            tls::dial_relay(&endpoint, &identity, target, to_id).await
        } else {
            tls::dial(&endpoint, &identity, target, to_id).await
        }
    });
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), capture.recv(&mut buf))
        .await
        .expect("the client sends its Initial")
        .unwrap();
    dialling.abort();
    buf.truncate(n);
    buf
}

#[test]
fn half_open_handshakes_from_many_addresses_do_not_lock_out_an_honest_node() {
    let (b, honest) = (TestNode::started(), TestNode::started());
    let to = b.listen_addr();
    let to_id: NodeId = b.node_id.parse().unwrap();
    let runtime = client_runtime();

    // What a host that spoofs its source addresses can do: send first flights it
    // never follows up, each from another address, so that no per-address cap
    // applies (loopback has 127/8; 20 addresses × 16 each is more than the node's
    // 256 handshake slots).
    let spoofed: Vec<(std::net::UdpSocket, Vec<u8>)> = runtime.block_on(async {
        let mut out = Vec::new();
        for host in 10..30u8 {
            let ip = std::net::IpAddr::from([127, 0, 0, host]);
            for _ in 0..16 {
                let socket = std::net::UdpSocket::bind((ip, 0)).unwrap();
                out.push((socket, captured_initial(ip, to_id, false).await));
            }
        }
        out
    });
    for (socket, initial) in &spoofed {
        socket.send_to(initial, to).unwrap();
    }
    // The half-open handshakes would hold their slots for the dial timeout (5 s):
    // an honest stranger's request, made now, must still get through.
    std::thread::sleep(Duration::from_millis(200));
    honest_request_gets_through(&honest, &b);
    drop(spoofed);
}

#[test]
fn first_flights_spoofed_from_a_nodes_address_do_not_keep_it_from_its_relay() {
    let mut relay = TestNode::init();
    relay.start_relay(&["--max-per-address", "2"]);
    let relay_addr = relay.listen_addr();
    let relay_id: NodeId = relay.node_id.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A spoofer claims the honest node's address (127.0.0.1 here) and keeps sending
    // first flights it never follows up, more than that address's share, resending
    // them as the relay gives their half-open handshakes up.
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    let flights: Vec<Vec<u8>> = runtime.block_on(async {
        let mut out = Vec::new();
        for _ in 0..8 {
            out.push(captured_initial(localhost, relay_id, true).await);
        }
        out
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spoofer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let sockets: Vec<_> = flights
                .iter()
                .map(|_| std::net::UdpSocket::bind((localhost, 0)).unwrap())
                .collect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (socket, flight) in sockets.iter().zip(&flights) {
                    let _ = socket.send_to(flight, relay_addr);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut private = TestNode::init();
    private.start_private(&relay);
    private.wait_registered(1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spoofer.join().unwrap();
}
