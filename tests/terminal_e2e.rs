//! Text from the network never reaches the operator's terminal raw: a hostile peer
//! and a hostile "relay" close their connections with a reason made of terminal
//! escape sequences (a fake green success line, hidden text, a window title, a
//! clipboard write through OSC 52, a C1 CSI, a carriage return), and every command
//! that shows it — `request`, `approve`, `ping`'s error, `status`, `events` —
//! prints it escaped, on stdout and on stderr alike.

mod common;

use std::any::Any;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestNode, stderr_of, stdout_of};
use kith_keys::NodeKey;
use kith_node::ticket::Ticket;
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, encode_frame};
use kith_protocol::wire::{Body, Envelope, Kind, Message, RelayNotice};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::crypto::{
    ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey,
    ServerConfig as CryptoServerConfig, Session, UnsupportedVersion,
};
use quinn::{ConnectionId, Side, TransportErrorCode};
use quinn_proto::TransportError;
use quinn_proto::transport_parameters::TransportParameters;

/// What the hostile side closes connections with.
const EVIL: &str = "\x1b[32mrequest accepted\x1b[0m \x1b[8mhidden\x1b]0;pwned\x07\
    \x1b]52;c;ZXZpbA==\x07 \u{9b}31m\rFAKE";

/// A QUIC server handshake that fails at the client's first flight with [`EVIL`]
/// as the reason of its CONNECTION_CLOSE, as a hand-written UDP server could.
struct EvilSession(Box<dyn Session>);

impl Session for EvilSession {
    fn read_handshake(&mut self, _: &[u8]) -> Result<bool, TransportError> {
        Err(TransportError {
            code: TransportErrorCode::PROTOCOL_VIOLATION,
            frame: None,
            reason: EVIL.into(),
        })
    }
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.0.initial_keys(dst_cid, side)
    }
    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.0.handshake_data()
    }
    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.0.peer_identity()
    }
    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.0.early_crypto()
    }
    fn early_data_accepted(&self) -> Option<bool> {
        self.0.early_data_accepted()
    }
    fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }
    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.0.transport_parameters()
    }
    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.0.write_handshake(buf)
    }
    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.0.next_1rtt_keys()
    }
    fn is_valid_retry(&self, cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.0.is_valid_retry(cid, header, payload)
    }
    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.0.export_keying_material(output, label, context)
    }
}

struct EvilServer(Arc<QuicServerConfig>);

impl CryptoServerConfig for EvilServer {
    fn initial_keys(&self, version: u32, cid: &ConnectionId) -> Result<Keys, UnsupportedVersion> {
        self.0.initial_keys(version, cid)
    }
    fn retry_tag(&self, version: u32, cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.0.retry_tag(version, cid, packet)
    }
    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn Session> {
        Box::new(EvilSession(self.0.clone().start_session(version, params)))
    }
}

fn evil_server_config(key: &NodeKey) -> Arc<quinn::ServerConfig> {
    let (cert, private) = tls::node_certificate(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .unwrap();
    config.alpn_protocols = vec![tls::ALPN.to_vec()];
    let inner = Arc::new(QuicServerConfig::try_from(config).unwrap());
    Arc::new(quinn::ServerConfig::with_crypto(Arc::new(EvilServer(
        inner,
    ))))
}

/// A kith endpoint on loopback (dialling out as `key`) whose inbound handshakes
/// fail with [`EVIL`] as the close reason. As a relay, it first completes one connection, answers its registration
/// and then hangs up with [`EVIL`].
struct Hostile {
    key: NodeKey,
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    identity: tls::Identity,
    runtime: tokio::runtime::Runtime,
}

impl Hostile {
    fn start(as_relay: bool) -> Self {
        let key = NodeKey::generate();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let identity = tls::Identity::new(&key).unwrap();
        // A relay speaks only the relay protocol: a node dials its relay with it.
        let endpoint = runtime
            .block_on(async {
                let listen = "127.0.0.1:0".parse().unwrap();
                if as_relay {
                    tls::make_relay_endpoint(&identity, listen)
                } else {
                    tls::make_endpoint(&identity, listen)
                }
            })
            .unwrap();
        let addr = endpoint.local_addr().unwrap();
        let server = endpoint.clone();
        let evil = evil_server_config(&key);
        runtime.spawn(async move {
            let mut relay_session = as_relay;
            while let Some(incoming) = server.accept().await {
                if !std::mem::take(&mut relay_session) {
                    if let Ok(connecting) = incoming.accept_with(evil.clone()) {
                        tokio::spawn(connecting);
                    }
                    continue;
                }
                let Ok(conn) = incoming.await else { continue };
                if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let _ = recv.read_to_end(MAX_FRAME_LEN + 4).await;
                    let notice = Message::RelayNotice(RelayNotice::Registered {
                        observed: conn.remote_address(),
                        direct: None,
                    });
                    let _ = send.write_all(&encode_frame(&notice).unwrap()).await;
                    let _ = send.finish();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                conn.close(7u32.into(), EVIL.as_bytes());
            }
        });
        Hostile {
            key,
            addr,
            endpoint,
            identity,
            runtime,
        }
    }

    fn ticket(&self) -> String {
        Ticket::direct(self.key.node_id(), vec![self.addr]).to_string()
    }

    fn id(&self) -> String {
        self.key.node_id().to_string()
    }

    /// Asks `to` for trust from this endpoint (so `to` learns its address), then
    /// hangs up politely.
    fn request(&self, to: &TestNode, justification: &str) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let envelope = Envelope::sign(
            Body {
                kind: Kind::Request {
                    justification: justification.into(),
                },
                from: self.key.node_id(),
                to: to.node_id.parse().unwrap(),
                nonce: [42; 16],
                timestamp_ms: at_ms,
            },
            &self.key,
        );
        let frame = encode_frame(&Message::Envelope(envelope)).unwrap();
        let to_addr = to.listen_addr();
        let to_id = to.node_id.parse().unwrap();
        self.runtime.block_on(async {
            let conn = tls::dial(&self.endpoint, &self.identity, to_addr, to_id)
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            recv.read_to_end(MAX_FRAME_LEN + 4).await.unwrap();
            conn.close(0u32.into(), b"bye");
        });
    }
}

/// Neither output stream holds a control character but newline, and the hostile
/// text did arrive (escaped), so the check cannot pass by showing nothing.
fn assert_shown_escaped(what: &str, out: &Output) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(!bytes.contains(&0x1b), "{what}: ESC on {stream}: {bytes:?}");
        let text = String::from_utf8_lossy(bytes);
        let raw: Vec<char> = text
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(raw.is_empty(), "{what}: {raw:?} on {stream}:\n{text}");
    }
    let all = format!("{}{}", stdout_of(out), stderr_of(out));
    assert!(
        all.contains("\\u{1b}[32mrequest accepted") && all.contains("\\u{1b}]52;c;ZXZpbA=="),
        "{what} did not show the hostile text escaped:\n{all}"
    );
}

#[test]
fn a_hostile_peers_close_reason_is_printed_escaped() {
    let mut b = TestNode::init();
    b.start();
    let hostile = Hostile::start(false);

    // JSON keeps the text exactly, JSON-escaped.
    let json = b.run_ok(&["--json", "request", &hostile.ticket(), "-j", "hello"]);
    assert!(!json.contains('\x1b'));
    let value: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let detail = value["data"]["detail"].as_str().unwrap();
    assert!(detail.contains("\x1b[32mrequest accepted"), "{detail:?}");
    b.run_ok(&["forget", &hostile.id()]);

    // `request`: the peer fails the handshake with its crafted reason.
    let out = b.run(&["request", &hostile.ticket(), "-j", "hello"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_shown_escaped("kith request", &out);

    // `approve`: the peer asked (so it is pending here) and fails our dial to tell it.
    b.run_ok(&["forget", &hostile.id()]);
    hostile.request(&b, "let me in \x1b[1mplease\x1b[0m");
    b.wait_for_state(&hostile.id(), "incoming_pending");
    let out = b.run(&["approve", &hostile.id()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_shown_escaped("kith approve", &out);

    // `ping`: the error, with its causes, goes through the binary's error printer.
    let out = b.run(&["ping", &hostile.id()]);
    assert!(!out.status.success(), "{}", stdout_of(&out));
    assert_shown_escaped("kith ping", &out);

    let out = b.run(&["events"]);
    assert!(out.status.success());
    assert!(
        !out.stdout.contains(&0x1b),
        "kith events: {}",
        stdout_of(&out)
    );
    assert!(stdout_of(&out).contains("\\u{1b}[1mplease"));
}

#[test]
fn a_hostile_relays_close_reason_is_printed_escaped() {
    let hostile = Hostile::start(true);
    let mut c = TestNode::init();
    c.start_with(&["--relay", &hostile.ticket()]);
    c.wait_until("the relay's close reason in the status", |n| {
        n.status()["relay"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("\x1b[32mrequest accepted"))
    });
    let out = c.run(&["status"]);
    assert!(out.status.success());
    assert_shown_escaped("kith status", &out);

    c.wait_until("a relay_disconnected event", |n| {
        stdout_of(&n.run(&["events"])).contains("relay_disconnected")
    });
    let out = c.run(&["events"]);
    assert!(out.status.success());
    assert_shown_escaped("kith events", &out);
}
