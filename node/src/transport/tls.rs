//! The QUIC/TLS identity layer: binds every QUIC connection to the [`NodeId`] of the
//! key at its other end.
//!
//! A node's TLS certificate is self-signed by its node key (Ed25519), and the
//! certificate's public key *is* the NodeId. Both sides present certificates
//! (mutual TLS 1.3) and the TLS handshake signature proves that the peer holds
//! the key, not merely a copy of someone's certificate. A dialler names the
//! NodeId it expects and the handshake fails if the server's differs; a listener
//! accepts any well-formed node certificate and reports the NodeId upwards.
//!
//! What this module must never do:
//!
//! - decide trust. It answers "which key is at the other end", never "should we
//!   talk to it"; that decision belongs to the protocol layer, after the handshake.
//! - rely on names, CAs, validity dates or anything else in the certificate but its
//!   Ed25519 key: the identity is the key, and the certificate is only its carrier.
//! - accept a connection without a fresh proof of key possession: TLS 1.2, session
//!   resumption and 0-RTT are all off, so every connection runs a full TLS 1.3
//!   handshake with certificate signatures.
//! - use a process-wide default crypto provider: the ring provider is passed
//!   explicitly, so nothing depends on (or panics for lack of) global state.
//! - copy the node's secret: handshakes and the certificate are signed through the
//!   node's own `NodeKey` (which the daemon keeps in a locked, non-dumpable page),
//!   never through a key loaded into the crypto provider.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use kith_keys::{IdError, NodeId, NodeKey};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible,
    PeerMisbehaved, SignatureScheme,
};

pub use super::limits::{
    APP_CONNECTION_WINDOW, APP_MAX_STREAMS, APP_STREAM_WINDOW, MAX_BIDI_STREAMS,
    RELAY_DATA_STREAMS, RELAY_LINK_WINDOW, UNVETTED_CONNECTION_WINDOW, app_transport_config,
};
use super::limits::{relay_link_transport_config, relay_server_transport_config, transport_config};
use super::path::{PathSocket, RelayPaths};

/// The one application protocol a kith node speaks. A peer offering anything else
/// (or nothing) is refused by the TLS layer: QUIC requires an ALPN match.
pub const ALPN: &[u8] = b"kith/1";

/// The application protocol of a relay link. A relay's endpoint offers only this and
/// a node dials a relay only with this, so the TLS handshake itself proves the far
/// side is a relay: a node named as a relay by a ticket or hint fails the handshake
/// (no ALPN match) instead of becoming a link, and relay and peer traffic never
/// share a connection.
pub const RELAY_ALPN: &[u8] = b"kith-relay/1";

/// The server name a dialler sends. It is the same for every node on purpose: SNI
/// travels in clear text, so an id-based name would tell every on-path observer
/// which node is being dialled. Verification never looks at names.
pub const SERVER_NAME: &str = "kith";

/// Suffix of the certificate's subject alternative name (`<node id>.kith`). Purely
/// informational, for humans reading a certificate dump.
const SAN_SUFFIX: &str = ".kith";

/// QUIC application close code a dialler uses when the connection it got is not
/// bound to the node it asked for (only reachable if a verifier were bypassed).
const CLOSE_WRONG_PEER: u32 = 1;

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key bytes (RFC 8410 §4):
/// SEQUENCE(42) { SEQUENCE(5) { OID 1.3.101.112 }, BIT STRING(33) { 0 unused bits, <32 bytes> } }.
/// DER is canonical and RFC 8410 forbids algorithm parameters, so every Ed25519 SPKI
/// is exactly these 12 bytes followed by the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a certificate, TLS configuration or connection could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server presented node {presented}, expected {expected}")]
    WrongPeer { expected: NodeId, presented: NodeId },
    #[error("the certificate's key is not Ed25519; kith nodes are identified only by Ed25519 keys")]
    NotEd25519,
    #[error("the certificate carries an unusable node key: {0}")]
    BadKey(#[source] IdError),
    #[error("bad node certificate: {0}")]
    BadCertificate(String),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("could not build the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS configuration is unusable for QUIC: {0}")]
    QuicCrypto(#[from] NoInitialCipherSuite),
    #[error("could not open a QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start a QUIC connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("QUIC connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

/// The node's self-signed certificate and its private key as PKCS#8.
///
/// The certificate's SubjectPublicKeyInfo is the node's Ed25519 key and its subject
/// alternative name is `<node id>.kith`. It is valid from 1975 to 9999: the identity
/// is the key, so the certificate never expires and validity dates are never checked.
/// The same key always yields the same certificate (Ed25519 signatures and rcgen's
/// key-derived serial number are deterministic).
///
/// The returned [`PrivateKeyDer`] is a plain copy of the secret that is *not* wiped
/// on drop; prefer [`server_config`] / [`client_config`], which never make one.
pub fn node_certificate(
    key: &NodeKey,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let pkcs8 = key.to_pkcs8_der();
    let cert = self_signed_certificate(key.node_id(), signing_key(key))?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    Ok((cert, private))
}

/// The NodeId a node certificate carries: its Ed25519 key.
///
/// Refuses anything that is not a well-formed X.509 v3 certificate (parsed by
/// rustls-webpki), whose key is not Ed25519, or whose key is weak or invalid.
/// Nothing else in the certificate is checked or trusted, not even its
/// self-signature: anyone can present a copy of a node's genuine certificate, so
/// only the TLS handshake signature, verified under this key, proves who is at the
/// other end. Verifying the self-signature as well proved nothing more and cost
/// ~40 µs on each side of every connection (about a tenth of a handshake's CPU).
pub fn node_id_from_certificate(cert: &CertificateDer<'_>) -> Result<NodeId, TlsError> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| {
        TlsError::BadCertificate(format!("not a well-formed X.509 certificate: {e}"))
    })?;
    let raw_key: [u8; 32] = parsed
        .subject_public_key_info()
        .as_ref()
        .strip_prefix(ED25519_SPKI_PREFIX.as_slice())
        .and_then(|rest| rest.try_into().ok())
        .ok_or(TlsError::NotEd25519)?;
    NodeId::from_bytes(raw_key).map_err(TlsError::BadKey)
}

/// A node's TLS identity: its certificate, built once, and its key to sign handshakes
/// with. Cheap to clone; every endpoint and dial of one node shares one.
#[derive(Clone, Debug)]
pub struct Identity {
    node_id: NodeId,
    certified: Arc<SingleCertAndKey>,
}

impl Identity {
    /// Builds `key`'s self-signed certificate (one rcgen encoding and one signature,
    /// which every endpoint and dial would otherwise repeat).
    pub fn new(key: &NodeKey) -> Result<Self, TlsError> {
        let signer = signing_key(key);
        let cert = self_signed_certificate(key.node_id(), signer.clone())?;
        let certified = CertifiedKey::new(vec![cert], signer);
        // Guards against a certificate that does not match the key that will sign handshakes.
        certified.keys_match()?;
        Ok(Identity {
            node_id: key.node_id(),
            certified: Arc::new(SingleCertAndKey::from(certified)),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }
}

/// The QUIC server configuration of a node: TLS 1.3 only, ALPN `kith/1`, this
/// node's certificate, and a mandatory client certificate from every peer.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    server_config_with(identity, &[])
}

/// [`server_config`] that also accepts the application protocols `apps` (each
/// connection negotiates one ALPN; `kith/1` stays first). What may flow on an
/// application connection is decided after the handshake, by trust
/// ([`crate::node::Node::connect`], [`crate::node::Node::accept`]).
pub fn server_config_with(
    identity: &Identity,
    apps: &[Vec<u8>],
) -> Result<quinn::ServerConfig, TlsError> {
    let alpns = std::iter::once(ALPN.to_vec())
        .chain(apps.iter().cloned())
        .collect();
    server_config_offering(identity, alpns, transport_config(false))
}

fn server_config_offering(
    identity: &Identity,
    alpns: Vec<Vec<u8>>,
    transport: Arc<TransportConfig>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = ring_provider();
    let verifier = Arc::new(AnyNodeClientVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.certified.clone());
    tls.alpn_protocols = alpns;
    // No session tickets or session cache: a resumed TLS 1.3 session skips the
    // certificate exchange, so the peer would not prove its key on that connection.
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // `max_early_data_size` stays 0: 0-RTT data is replayable by an on-path attacker.

    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport);
    Ok(config)
}

/// The QUIC client configuration for dialling the node `expected`: TLS 1.3 only,
/// ALPN `kith/1`, this node's certificate for client authentication, and a server
/// verifier that accepts exactly `expected`'s key.
pub fn client_config(
    identity: &Identity,
    expected: NodeId,
) -> Result<quinn::ClientConfig, TlsError> {
    Ok(client_config_reporting(identity, expected, ALPN, transport_config(true))?.0)
}

/// Whether a failed handshake was the server refusing our ALPN (TLS alert 120,
/// no_application_protocol, carried as QUIC crypto error 0x100 + 120).
pub fn refused_protocol(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ConnectionClosed(close)
        if close.error_code == quinn::TransportErrorCode::crypto(120))
}

/// The ALPN a connection negotiated (`kith/1` or an application protocol).
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The NodeId bound to an established connection: the key of the certificate the
/// peer presented and proved possession of during the handshake.
pub fn peer_node_id(conn: &quinn::Connection) -> Result<NodeId, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| {
            TlsError::BadCertificate("the peer identity is not a certificate chain".into())
        })?;
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    node_id_from_certificate(leaf)
}

/// A QUIC endpoint bound to `listen` (port 0 picks a free port) that accepts
/// connections as `identity` and can dial with [`dial`]. It has no default client
/// configuration on purpose: every outgoing connection must name the NodeId it
/// expects. Must be called within a Tokio runtime.
pub fn make_endpoint(identity: &Identity, listen: SocketAddr) -> Result<quinn::Endpoint, TlsError> {
    make_endpoint_with(identity, listen, &[])
}

/// [`make_endpoint`] whose server side also accepts the application protocols `apps`.
pub fn make_endpoint_with(
    identity: &Identity,
    listen: SocketAddr,
    apps: &[Vec<u8>],
) -> Result<quinn::Endpoint, TlsError> {
    bind_endpoint(listen, server_config_with(identity, apps)?)
}

/// The node's own endpoint: [`make_endpoint_with`] over a [`PathSocket`], so that one
/// endpoint dials and accepts both directly and through relays. Returns the relay
/// side of the socket for the link code, and the UDP socket's local address.
pub fn make_path_endpoint(
    identity: &Identity,
    listen: SocketAddr,
    apps: &[Vec<u8>],
) -> Result<(quinn::Endpoint, Arc<RelayPaths>, SocketAddr), TlsError> {
    let bind_err = |source| TlsError::Bind {
        addr: listen,
        source,
    };
    let socket = bind_udp(listen).map_err(bind_err)?;
    let local = socket.local_addr().map_err(bind_err)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_err(std::io::Error::other("no async runtime is running")))?;
    let (socket, paths) = PathSocket::new(socket).map_err(bind_err)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config_with(identity, apps)?),
        socket,
        runtime,
    )
    .map_err(bind_err)?;
    Ok((endpoint, paths, local))
}

/// [`make_endpoint`] for a relay: it accepts only relay links ([`RELAY_ALPN`]).
pub fn make_relay_endpoint(
    identity: &Identity,
    listen: SocketAddr,
) -> Result<quinn::Endpoint, TlsError> {
    bind_endpoint(
        listen,
        server_config_offering(
            identity,
            vec![RELAY_ALPN.to_vec()],
            relay_server_transport_config(),
        )?,
    )
}

fn bind_endpoint(
    listen: SocketAddr,
    server: quinn::ServerConfig,
) -> Result<quinn::Endpoint, TlsError> {
    let bind_err = |source| TlsError::Bind {
        addr: listen,
        source,
    };
    let socket = bind_udp(listen).map_err(bind_err)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_err(std::io::Error::other("no async runtime is running")))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(bind_err)
}

/// Receive buffer asked for the node's one UDP socket. With the kernel default
/// (~208 KiB) a burst of a few dozen concurrent handshakes overflows it and each
/// dropped packet costs the handshake a ~1 s retransmit. The kernel caps the
/// request at net.core.rmem_max; a smaller grant is not an error.
const RECV_BUFFER: usize = 4 << 20;

/// Binds the UDP socket: dual-stack when `listen` is IPv6, with a large receive buffer.
fn bind_udp(listen: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if listen.is_ipv6() {
        // Accept IPv4 too on `[::]`, whatever the system's default is.
        socket.set_only_v6(false)?;
    }
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

/// Connects from `endpoint` to the node `expected` at `addr`, authenticating as
/// `identity`. The returned connection's [`peer_node_id`] is `expected`; a server with
/// any other key fails the handshake with [`TlsError::WrongPeer`].
pub async fn dial(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    addr: SocketAddr,
    expected: NodeId,
) -> Result<quinn::Connection, TlsError> {
    let (config, refused) =
        client_config_reporting(identity, expected, ALPN, transport_config(true))?;
    dial_with(endpoint, config, refused, addr, expected).await
}

/// [`dial`] for a relay link: the handshake fails unless the server is `expected`
/// *and* a relay ([`RELAY_ALPN`]).
pub async fn dial_relay(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    addr: SocketAddr,
    expected: NodeId,
) -> Result<quinn::Connection, TlsError> {
    let (config, refused) = client_config_reporting(
        identity,
        expected,
        RELAY_ALPN,
        relay_link_transport_config(),
    )?;
    dial_with(endpoint, config, refused, addr, expected).await
}

/// [`dial`] for an application protocol: the connection negotiates `alpn` (which the
/// server must have registered) and gets the larger flow-control windows of a data
/// connection ([`app_transport_config`]).
pub async fn dial_app(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    addr: SocketAddr,
    expected: NodeId,
    alpn: &[u8],
) -> Result<quinn::Connection, TlsError> {
    let (config, refused) =
        client_config_reporting(identity, expected, alpn, app_transport_config())?;
    dial_with(endpoint, config, refused, addr, expected).await
}

async fn dial_with(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    refused: Arc<OnceLock<NodeId>>,
    addr: SocketAddr,
    expected: NodeId,
) -> Result<quinn::Connection, TlsError> {
    let connecting = endpoint.connect_with(config, addr, SERVER_NAME)?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        // The verifier recorded why it refused: report that rather than the
        // generic handshake failure quinn sees.
        Err(e) => {
            return Err(match refused.get() {
                Some(&presented) => TlsError::WrongPeer {
                    expected,
                    presented,
                },
                None => e.into(),
            });
        }
    };
    // The verifier already enforced this; checking the finished connection too
    // keeps the guarantee local to this function.
    let presented = match peer_node_id(&conn) {
        Ok(id) => id,
        Err(e) => {
            conn.close(
                VarInt::from_u32(CLOSE_WRONG_PEER),
                b"no usable peer identity",
            );
            return Err(e);
        }
    };
    if presented != expected {
        conn.close(VarInt::from_u32(CLOSE_WRONG_PEER), b"wrong peer");
        return Err(TlsError::WrongPeer {
            expected,
            presented,
        });
    }
    Ok(conn)
}

/// [`client_config`], plus the slot where its verifier records the NodeId of a
/// server it refused (so [`dial`] can report a typed [`TlsError::WrongPeer`]).
fn client_config_reporting(
    identity: &Identity,
    expected: NodeId,
    alpn: &[u8],
    transport: Arc<TransportConfig>,
) -> Result<(quinn::ClientConfig, Arc<OnceLock<NodeId>>), TlsError> {
    let provider = ring_provider();
    let refused = Arc::new(OnceLock::new());
    let verifier = Arc::new(ExpectedNodeServerVerifier {
        expected,
        refused: refused.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity.certified.clone());
    tls.alpn_protocols = vec![alpn.to_vec()];
    // No resumption: every connection proves the server's key afresh (see server_config).
    tls.resumption = rustls::client::Resumption::disabled();
    // `enable_early_data` stays false: no replayable 0-RTT.

    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport);
    Ok((config, refused))
}

/// The ring provider, passed explicitly to every config (never installed globally),
/// with only the TLS 1.3 suites built on SHA-256.
///
/// ring's default puts AES-256-GCM/SHA-384 first, and SHA-384 has no hardware
/// support on x86-64: its key schedule was 5% of all the CPU a handshake costs both
/// sides together (measured in the handshake bench). AES-128-GCM matches the
/// 128-bit strength of the X25519 exchange and Ed25519 keys the connection rests
/// on; ChaCha20-Poly1305 is kept for peers without AES instructions.
fn ring_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256],
        ..rustls::crypto::ring::default_provider()
    })
}

/// Signs TLS handshakes (and the certificate) with the node key itself.
///
/// Loading the key into ring would put a second copy of the secret on the ordinary
/// heap, outside the locked, non-dumpable page the daemon keeps it in; a `NodeKey`
/// clone shares that one page instead.
#[derive(Debug)]
struct NodeSigningKey(NodeKey);

impl SigningKey for NodeSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(NodeSigner(self.0.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'static>> {
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(self.0.node_id().as_bytes());
        Some(spki.into())
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ED25519
    }
}

#[derive(Debug)]
struct NodeSigner(NodeKey);

impl rustls::sign::Signer for NodeSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.0.sign(message).0.to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

fn signing_key(key: &NodeKey) -> Arc<dyn SigningKey> {
    Arc::new(NodeSigningKey(key.clone()))
}

/// Builds the self-signed certificate for `id`, signing through `signer`.
///
/// rcgen's own `KeyPair::from_pkcs8_der_and_sign_algo` would keep a second copy of
/// the secret in a buffer that is never wiped; signing through the node key does not.
fn self_signed_certificate(
    id: NodeId,
    signer: Arc<dyn SigningKey>,
) -> Result<CertificateDer<'static>, TlsError> {
    let key_pair = rcgen::KeyPair::from_remote(Box::new(TlsKeySigner { id, signer }))?;
    let name = format!("{id}{SAN_SUFFIX}");
    let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.not_before = rcgen::date_time_ymd(1975, 1, 1);
    // RFC 5280 §4.1.2.5: 9999-12-31 means "no well-defined expiration date".
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    let cert = params.self_signed(&key_pair)?;
    Ok(cert.der().clone())
}

/// Lets rcgen sign a certificate with the node's rustls signing key.
struct TlsKeySigner {
    id: NodeId,
    signer: Arc<dyn SigningKey>,
}

impl rcgen::RemoteKeyPair for TlsKeySigner {
    fn public_key(&self) -> &[u8] {
        self.id.as_bytes()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signer = self
            .signer
            .choose_scheme(&[SignatureScheme::ED25519])
            .ok_or(rcgen::Error::RemoteKeyError)?;
        signer.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// Checks the end-entity certificate a peer presented: exactly one node certificate
/// (see [`node_id_from_certificate`]). Names, dates and OCSP are deliberately ignored.
fn check_presented(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<NodeId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(refuse(TlsError::BadCertificate(
            "a kith node presents exactly one self-signed certificate, not a chain".into(),
        )));
    }
    node_id_from_certificate(end_entity).map_err(refuse)
}

/// A rustls certificate error carrying our explanation.
fn refuse(err: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Verifies the peer's TLS 1.3 CertificateVerify signature with its certificate's
/// key. This is the proof of key possession; only Ed25519 is accepted.
fn verify_handshake_signature(
    algorithms: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
}

/// QUIC is TLS 1.3 only and both configs enable nothing else; a TLS 1.2 signature
/// can only mean a misconfiguration, so it is refused rather than checked.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(PeerIncompatible::Tls13RequiredForQuic.into())
}

/// The dialler's verifier: accepts a server iff its certificate carries `expected`.
#[derive(Debug)]
struct ExpectedNodeServerVerifier {
    expected: NodeId,
    /// Where a refused server's NodeId is recorded for [`dial`]'s error.
    refused: Arc<OnceLock<NodeId>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedNodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = check_presented(end_entity, intermediates)?;
        if presented != self.expected {
            // Ignoring the result: one verifier sees one handshake, so the slot is empty.
            let _ = self.refused.set(presented);
            return Err(refuse(TlsError::WrongPeer {
                expected: self.expected,
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(&self.algorithms, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The listener's verifier: requires a client certificate and accepts any node
/// certificate. Whether that node is trusted is the protocol layer's decision.
#[derive(Debug)]
struct AnyNodeClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyNodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CAs: every node certificate is self-signed.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_presented(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(&self.algorithms, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
