//! Application data over kith against raw quinn on the same machine, on loopback.
//!
//! `cargo bench -p kith-node --bench app` (about a minute) measures, in turns so the
//! host's drift falls on both alike:
//!
//! 1. throughput of one stream: the client writes `STREAM_BYTES` on one
//!    bidirectional stream and finishes it; the server reads to the end and answers
//!    one byte. MiB/s from the first write to the answer.
//! 2. throughput of 16 streams at once on one connection, `STREAM_BYTES` / 16 each.
//! 3. connection setup: from dialling until the connection can carry application
//!    bytes. Raw: the QUIC/TLS handshake. kith: `Node::connect`, i.e. the local trust
//!    check, the mutual-TLS handshake, the peer's trust check and its verdict.
//! 4. throughput of 1 and 16 streams through a relay: two `--private` nodes homed at
//!    an in-process `RelayServer` on loopback (the same `Node::connect`, its packets
//!    carried by the relay), against raw quinn's figure of the same round. The relay's
//!    per-sender byte quota is off here: this measures what the relay can carry.
//!
//! "Raw quinn" is two plain quinn endpoints with a self-signed certificate, server
//! authentication only, kith's TLS 1.3 cipher suites and the same flow-control
//! windows as kith's data connections (`tls::app_transport_config`), so what
//! differs is kith. The kith side
//! is two real `Node`s that trust each other, one serving the protocol `bench/1`.
//! It prints a table with PASS/FAIL per target and asserts nothing about the figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfy_table::{Cell, CellAlignment, Table, presets};
use kith_keys::NodeKey;
use kith_node::node::LinkState;
use kith_node::relay::{RelayOptions, RelayServer};
use kith_node::transport::tls;
use kith_node::{Node, NodeBuilder};
use kith_protocol::machine::{Command, TrustState};
use kith_protocol::relay::RelayConfig;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

const ALPN: &[u8] = b"bench/1";
/// Bytes per throughput sample.
const STREAM_BYTES: usize = 64 << 20;
const PARALLEL_STREAMS: usize = 16;
const ROUNDS: usize = 5;
const SETUPS_PER_ROUND: usize = 40;
/// Goal: kith's throughput at least this share of raw quinn's.
const THROUGHPUT_GOAL: f64 = 0.9;
/// Goal: MiB/s through a relay on loopback.
const RELAY_GOAL: f64 = 150.0;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let raw = RawPair::new().await;
    let kith = KithPair::new(None).await;
    let relay = RelayServer::spawn(
        NodeKey::generate(),
        RelayOptions {
            listen: loopback(),
            advertise: Vec::new(),
            config: RelayConfig {
                packet_burst_bytes: 0,
                ..RelayConfig::default()
            },
            max_per_address: kith_node::relay::MAX_PER_ADDRESS,
        },
    )
    .await
    .unwrap();
    let relayed = KithPair::new(Some(&relay)).await;
    let mut one = (Vec::new(), Vec::new(), Vec::new());
    let mut many = (Vec::new(), Vec::new(), Vec::new());
    let mut setup = (Vec::new(), Vec::new());
    let raw_conn = raw.connect().await;
    let kith_conn = kith.connect().await;
    let relayed_conn = relayed.connect().await;
    // Warm every path (congestion windows, allocator) before timing.
    throughput(&raw_conn, 1).await;
    throughput(&kith_conn, 1).await;
    throughput(&relayed_conn, 1).await;
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        one.0.push(throughput(&raw_conn, 1).await);
        one.1.push(throughput(&kith_conn, 1).await);
        one.2.push(throughput(&relayed_conn, 1).await);
        many.0.push(throughput(&raw_conn, PARALLEL_STREAMS).await);
        many.1.push(throughput(&kith_conn, PARALLEL_STREAMS).await);
        many.2
            .push(throughput(&relayed_conn, PARALLEL_STREAMS).await);
        for _ in 0..SETUPS_PER_ROUND {
            let started = Instant::now();
            let conn = raw.connect().await;
            setup.0.push(started.elapsed());
            conn.close(0u32.into(), b"");
            let started = Instant::now();
            let conn = kith.connect().await;
            setup.1.push(started.elapsed());
            conn.close(0u32.into(), b"");
        }
    }

    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    table.set_header(["measure", "raw quinn", "kith", "kith / raw", "target", ""]);
    let mut all_pass = true;
    for (name, (raw, kith, through_relay)) in [
        ("1 stream, MiB/s (median)", &one),
        ("16 streams, MiB/s (median)", &many),
    ] {
        let (r, k) = (median_f64(raw), median_f64(kith));
        let ratio = k / r;
        let pass = ratio >= THROUGHPUT_GOAL;
        all_pass &= pass;
        table.add_row(row(
            name,
            format!("{r:.0}"),
            format!("{k:.0}"),
            format!("{ratio:.2}x"),
            format!(">= {THROUGHPUT_GOAL}x"),
            verdict(pass),
        ));
        table.add_row(row(
            "  range over rounds",
            range(raw),
            range(kith),
            String::new(),
            String::new(),
            String::new(),
        ));
        let k = median_f64(through_relay);
        let pass = k >= RELAY_GOAL;
        all_pass &= pass;
        table.add_row(row(
            "  through a relay (median)",
            format!("{r:.0}"),
            format!("{k:.0}"),
            format!("{:.2}x", k / r),
            format!(">= {RELAY_GOAL} MiB/s"),
            verdict(pass),
        ));
        table.add_row(row(
            "  range over rounds",
            String::new(),
            range(through_relay),
            String::new(),
            String::new(),
            String::new(),
        ));
    }
    let (r, k) = (median(&mut setup.0), median(&mut setup.1));
    table.add_row(row(
        "connection setup p50",
        ms(r),
        ms(k),
        format!("{:.2}x", k.as_secs_f64() / r.as_secs_f64()),
        "report".into(),
        String::new(),
    ));
    let (r99, k99) = (
        percentile(&mut setup.0, 0.99),
        percentile(&mut setup.1, 0.99),
    );
    table.add_row(row(
        "connection setup p99",
        ms(r99),
        ms(k99),
        String::new(),
        String::new(),
        String::new(),
    ));
    println!("{table}");
    let stats = relay.snapshot().stats;
    println!(
        "{}: {ROUNDS} rounds of {} MiB per sample, {} setups each; the relay carried {} packets \
         ({} MiB), dropped {} for full queues",
        verdict(all_pass),
        STREAM_BYTES >> 20,
        SETUPS_PER_ROUND * ROUNDS,
        stats.packets_relayed,
        stats.packet_bytes_relayed >> 20,
        stats.packets_dropped
    );
    for pair in [kith, relayed] {
        pair.a.shutdown().await;
        pair.b.shutdown().await;
    }
    relay.shutdown().await;
}

fn row(a: &str, b: String, c: String, d: String, e: String, f: String) -> Vec<Cell> {
    vec![
        Cell::new(a),
        Cell::new(b).set_alignment(CellAlignment::Right),
        Cell::new(c).set_alignment(CellAlignment::Right),
        Cell::new(d).set_alignment(CellAlignment::Right),
        Cell::new(e),
        Cell::new(f),
    ]
}

fn verdict(pass: bool) -> String {
    if pass { "PASS" } else { "FAIL" }.to_string()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn median_f64(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{lo:.0}-{hi:.0}")
}

fn median(v: &mut [Duration]) -> Duration {
    percentile(v, 0.5)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// MiB/s for `STREAM_BYTES` split over `streams` streams of `conn`.
async fn throughput(conn: &quinn::Connection, streams: usize) -> f64 {
    let per_stream = STREAM_BYTES / streams;
    let chunk = Arc::new(vec![0x5au8; 64 << 10]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let conn = conn.clone();
        let chunk = chunk.clone();
        tasks.push(tokio::spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.expect("open a stream");
            let mut left = per_stream;
            while left > 0 {
                let n = left.min(chunk.len());
                send.write_all(&chunk[..n]).await.expect("write");
                left -= n;
            }
            send.finish().expect("finish");
            recv.read_to_end(1).await.expect("the server's answer");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (per_stream * streams) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

/// Reads each stream to its end and answers one byte.
async fn sink(conn: quinn::Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
            let _ = send.write_all(&[1]).await;
            let _ = send.finish();
        });
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Two plain quinn endpoints.
struct RawPair {
    client: quinn::Endpoint,
    server: SocketAddr,
}

impl RawPair {
    async fn new() -> Self {
        // kith's TLS 1.3 suites (AES-128-GCM, ChaCha20), so the cipher is not what differs.
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        let provider = Arc::new(provider);
        let cert = rcgen::generate_simple_self_signed(vec!["bench".into()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut server_config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        server_config.transport_config(tls::app_transport_config());
        let server = quinn::Endpoint::server(server_config, loopback()).unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        sink(conn).await;
                    }
                });
            }
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut client_config =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        client_config.transport_config(tls::app_transport_config());
        let mut client = quinn::Endpoint::client(loopback()).unwrap();
        client.set_default_client_config(client_config);
        RawPair {
            client,
            server: addr,
        }
    }

    async fn connect(&self) -> quinn::Connection {
        self.client
            .connect(self.server, "bench")
            .unwrap()
            .await
            .expect("raw connect")
    }
}

/// Two kith nodes that trust each other; `b` serves `bench/1`. With a relay, both
/// are private nodes homed there, so the relay is their only path.
struct KithPair {
    a: Node,
    b: Arc<Node>,
}

impl KithPair {
    async fn new(relay: Option<&RelayServer>) -> Self {
        let builder = |b: NodeBuilder| match relay {
            Some(relay) => b.private(true).relay(relay.ticket().as_relay()),
            None => b,
        };
        let a = builder(NodeBuilder::new(NodeKey::generate()))
            .listen(loopback())
            .spawn()
            .await
            .unwrap();
        let b = Arc::new(
            builder(NodeBuilder::new(NodeKey::generate()))
                .listen(loopback())
                .protocol(ALPN)
                .spawn()
                .await
                .unwrap(),
        );
        if relay.is_some() {
            for node in [&a, &*b] {
                while node.relay_status().map(|s| s.state) != Some(LinkState::Registered) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        a.request(&b.ticket(), "bench").await.unwrap();
        let a_id = a.node_id();
        wait_for(&b, a_id, TrustState::IncomingPending).await;
        b.command(Command::Approve {
            peer: a_id,
            name: None,
            note: None,
            expires_at_ms: None,
        })
        .await
        .unwrap();
        wait_for(&a, b.node_id(), TrustState::Trusted).await;
        let server = b.clone();
        tokio::spawn(async move {
            while let Some(accepted) = server.accept(ALPN).await {
                tokio::spawn(sink(accepted.connection));
            }
        });
        KithPair { a, b }
    }

    async fn connect(&self) -> quinn::Connection {
        self.a
            .connect(self.b.node_id(), ALPN)
            .await
            .expect("kith connect")
    }
}

async fn wait_for(node: &Node, peer: kith_keys::NodeId, state: TrustState) {
    for _ in 0..1000 {
        let now = node
            .read(move |m, _| m.peer(&peer).map(|p| p.state))
            .await
            .unwrap();
        if now == Some(state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{peer} never reached {state:?}");
}

/// Accepts any server certificate: the raw baseline measures the transport, not
/// authentication policy.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
