//! The relay server (`kith relay`'s) against scripted clients: a real relay in process,
//! clients speaking the relay wire messages over real QUIC on loopback.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kith_keys::{NodeId, NodeKey};
use kith_node::relay::{NOTICES_PER_CONN, RATE_LIMITED_PAUSE, RelayOptions, RelayServer};
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::relay::{DropReason, ForwardResult, RelayConfig, RelayRefusal};
use kith_protocol::wire::{Body, Envelope, Kind, MAX_REACH_ADDRS, Message, Reach, RelayNotice};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn relay(config: RelayConfig) -> RelayServer {
    RelayServer::spawn(
        NodeKey::generate(),
        RelayOptions {
            listen: loopback(),
            advertise: Vec::new(),
            config,
            max_per_address: kith_node::relay::MAX_PER_ADDRESS,
        },
    )
    .await
    .unwrap()
}

/// A scripted client: its key, its endpoint and its connection to the relay.
struct Client {
    key: NodeKey,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Client {
    async fn connect(relay: &RelayServer) -> Client {
        Client::connect_as(NodeKey::generate(), relay).await
    }

    async fn connect_as(key: NodeKey, relay: &RelayServer) -> Client {
        let identity = tls::Identity::new(&key).unwrap();
        let endpoint = tls::make_endpoint(&identity, loopback()).unwrap();
        let conn = tls::dial_relay(&endpoint, &identity, relay.local_addr(), relay.node_id())
            .await
            .unwrap();
        Client {
            key,
            endpoint,
            conn,
        }
    }

    fn id(&self) -> NodeId {
        self.key.node_id()
    }

    async fn exchange(&self, message: &Message) -> Message {
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
            send.write_all(&encode_frame(message).unwrap())
                .await
                .unwrap();
            send.finish().unwrap();
            let bytes = recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
            decode_frame::<Message>(&bytes).unwrap().unwrap().0
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the relay answers")
    }

    /// Forwards a request to `to` with `reach` as its hint; the relay's result.
    async fn forward(&self, to: NodeId, nonce: u8, reach: Reach) -> ForwardResult {
        self.forward_nonce(to, [nonce; 16], reach).await
    }

    async fn forward_nonce(&self, to: NodeId, nonce: [u8; 16], reach: Reach) -> ForwardResult {
        let envelope = Envelope::sign(
            Body {
                kind: Kind::Request {
                    justification: "hello".into(),
                },
                from: self.id(),
                to,
                nonce,
                timestamp_ms: now_ms(),
            },
            &self.key,
        );
        match self.exchange(&Message::Forward { envelope, reach }).await {
            Message::Forwarded { result, .. } => result,
            other => panic!("expected a relay answer, got {other:?}"),
        }
    }

    async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// A node that registered and left: the relay queues envelopes for it.
async fn offline_node(relay: &RelayServer) -> NodeId {
    let client = Client::connect(relay).await;
    let id = client.id();
    let _ = client.exchange(&Message::Ping { id: 1 }).await;
    client.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relay.snapshot().clients > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the client never left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_reply_hint_is_refused_not_stored() {
    let relay = relay(RelayConfig::default()).await;
    let offline = offline_node(&relay).await;
    let sender = Client::connect(&relay).await;
    let addr: SocketAddr = "192.0.2.1:7444".parse().unwrap();

    let huge = Reach {
        direct: vec![addr; 3_000],
        relay: None,
    };
    assert_eq!(
        sender.forward(offline, 1, huge).await,
        ForwardResult::Refused(RelayRefusal::Malformed)
    );
    assert_eq!(relay.snapshot().queued, 0, "nothing was queued");

    let bounded = Reach {
        direct: vec![addr; MAX_REACH_ADDRS],
        relay: None,
    };
    assert_eq!(
        sender.forward(offline, 2, bounded).await,
        ForwardResult::Queued
    );
    assert_eq!(relay.snapshot().queued, 1);
    sender.close().await;
}

/// The next message the relay opens a stream for on `client`'s connection.
async fn next_pushed(client: &Client) -> Message {
    let (_send, mut recv) = tokio::time::timeout(Duration::from_secs(10), client.conn.accept_bi())
        .await
        .expect("the relay opens a stream")
        .unwrap();
    let bytes = recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
    decode_frame::<Message>(&bytes).unwrap().unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_hears_when_its_queued_envelope_expires_and_quotas_refuse_in_words() {
    let relay = relay(RelayConfig {
        queue_ttl_ms: 300,
        queue_per_sender_destination: 1,
        ..RelayConfig::default()
    })
    .await;
    let offline = offline_node(&relay).await;
    let sender = Client::connect(&relay).await;
    assert_eq!(
        sender.forward(offline, 1, Reach::default()).await,
        ForwardResult::Queued
    );
    assert_eq!(
        sender.forward(offline, 2, Reach::default()).await,
        ForwardResult::Refused(RelayRefusal::SenderQuota)
    );
    assert_eq!(
        next_pushed(&sender).await,
        Message::RelayNotice(RelayNotice::Dropped {
            to: offline,
            nonce: [1; 16],
            reason: DropReason::Expired,
        })
    );
    sender.close().await;
}

/// A sender whose queued envelopes all expire at once hears of at most
/// `NOTICES_PER_CONN` (+ the one under way) of them, one after the other, and the
/// relay counts the rest: before, each notice was a task and a stream attempt of
/// its own for up to the stream timeout, however many a sender made drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_notices_to_one_client_is_bounded_and_the_excess_counted() {
    let burst = NOTICES_PER_CONN + 100;
    let relay = relay(RelayConfig {
        queue_ttl_ms: 500,
        queue_per_sender: burst,
        queue_per_sender_destination: burst,
        queue_per_destination: burst,
        rate_burst: 0,
        ..RelayConfig::default()
    })
    .await;
    let offline = offline_node(&relay).await;
    let sender = Client::connect(&relay).await;
    for n in 0..burst as u32 {
        let mut nonce = [0u8; 16];
        nonce[..4].copy_from_slice(&n.to_le_bytes());
        assert_eq!(
            sender.forward_nonce(offline, nonce, Reach::default()).await,
            ForwardResult::Queued
        );
    }
    // They expire together while the sender reads nothing; then it reads every
    // notice that reaches it (and answers none, dropping each stream after it).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(relay.snapshot().queued, 0, "they expired");
    let mut heard = 0;
    while let Ok(Ok((_send, mut recv))) =
        tokio::time::timeout(Duration::from_secs(3), sender.conn.accept_bi()).await
    {
        let bytes = recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
        match decode_frame::<Message>(&bytes).unwrap().unwrap().0 {
            Message::RelayNotice(RelayNotice::Dropped {
                reason: DropReason::Expired,
                ..
            }) => heard += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let snapshot = relay.snapshot();
    assert!(
        (1..=NOTICES_PER_CONN + 1).contains(&heard),
        "{heard} notices of {burst} reached the sender"
    );
    assert_eq!(snapshot.notices_dropped, (burst - heard) as u64);
    assert_eq!(
        snapshot.notice_senders, 1,
        "one sender task for the one client"
    );
    sender.close().await;
}

/// A forward refused for its sender's rate is answered only after
/// `RATE_LIMITED_PAUSE`: a flooding sender cannot make the relay refuse as fast as
/// it asks (before, the refusal came at once, and one host's refusals took the CPU
/// honest registrations needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_over_its_rate_waits_for_its_refusal() {
    let relay = relay(RelayConfig {
        rate_burst: 1,
        rate_per_sec: 1,
        ..RelayConfig::default()
    })
    .await;
    let offline = offline_node(&relay).await;
    let sender = Client::connect(&relay).await;
    assert_eq!(
        sender.forward(offline, 1, Reach::default()).await,
        ForwardResult::Queued
    );
    let asked = std::time::Instant::now();
    assert_eq!(
        sender.forward(offline, 2, Reach::default()).await,
        ForwardResult::Refused(RelayRefusal::RateLimited)
    );
    assert!(
        asked.elapsed() >= RATE_LIMITED_PAUSE,
        "refused after {:?}",
        asked.elapsed()
    );
    sender.close().await;
}
