//! The QUIC/TLS identity layer over real QUIC on 127.0.0.1: who may connect, and
//! which NodeId a connection is bound to. Every await is bounded so a bug fails
//! the test instead of hanging it.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kith_keys::{IdError, NodeId, NodeKey};
use kith_node::transport::tls::{
    ALPN, Identity, SERVER_NAME, TlsError, dial, make_endpoint, node_certificate,
    node_id_from_certificate, peer_node_id,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, SignatureScheme};

const LOCALHOST: &str = "127.0.0.1:0";

/// Awaits `fut`, failing the test if it takes more than a few seconds.
async fn within<T>(fut: impl IntoFuture<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("timed out: a handshake or stream operation hung")
}

fn localhost() -> SocketAddr {
    LOCALHOST.parse().unwrap()
}

/// A listening node endpoint and its address.
fn node(key: &NodeKey) -> (quinn::Endpoint, SocketAddr) {
    let endpoint = make_endpoint(&Identity::new(key).unwrap(), localhost()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    (endpoint, addr)
}

/// Accepts the next incoming connection attempt and returns how its handshake ended.
async fn next_handshake(
    server: &quinn::Endpoint,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let incoming = within(server.accept())
        .await
        .expect("the server endpoint closed");
    within(incoming).await
}

/// A server verifier that accepts any certificate but still checks the handshake
/// signature: a stand-in for a misbehaving or foreign client.
#[derive(Debug)]
struct AcceptAnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A client endpoint built from raw rustls, outside the tls module: it offers
/// `alpn` and presents `client_cert` (or no certificate at all).
fn foreign_client(alpn: &[u8], client_cert: Option<CertifiedKey>) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnyServer(provider.signature_verification_algorithms));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match client_cert {
        Some(certified) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut endpoint = quinn::Endpoint::client(localhost()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// Whether the client side of a handshake the server refuses ends refused. A TLS 1.3
/// client may consider its handshake done before the server has checked the client
/// certificate, so "refused" is either a failed handshake or a connection the server
/// closes at once (never one that closes locally or merely times out).
async fn client_is_refused(connecting: quinn::Connecting) -> bool {
    match within(connecting).await {
        Err(_) => true,
        Ok(conn) => matches!(
            within(conn.closed()).await,
            quinn::ConnectionError::ConnectionClosed(_) | quinn::ConnectionError::TransportError(_)
        ),
    }
}

/// The signing key of `key` alone (as a rustls key), for building impostors.
fn rustls_signer(key: &NodeKey) -> Arc<dyn rustls::sign::SigningKey> {
    let pkcs8 = key.to_pkcs8_der();
    rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8.as_slice())).unwrap()
}

#[tokio::test]
async fn two_nodes_connect_see_each_others_ids_and_echo() {
    let (alice_key, bob_key) = (NodeKey::generate(), NodeKey::generate());
    let (alice, _) = node(&alice_key);
    let (bob, bob_addr) = node(&bob_key);

    let bob_side = tokio::spawn(async move {
        let conn = next_handshake(&bob).await.expect("bob accepts alice");
        let peer = peer_node_id(&conn).unwrap();
        let (mut send, mut recv) = within(conn.accept_bi()).await.unwrap();
        let request = within(recv.read_to_end(1024)).await.unwrap();
        send.write_all(&request).await.unwrap();
        send.finish().unwrap();
        // Hold the connection until alice has read the reply and closed.
        within(conn.closed()).await;
        peer
    });

    let alice_identity = Identity::new(&alice_key).unwrap();
    let conn = within(dial(&alice, &alice_identity, bob_addr, bob_key.node_id()))
        .await
        .unwrap();
    assert_eq!(peer_node_id(&conn).unwrap(), bob_key.node_id());
    assert_eq!(
        conn.handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .as_deref(),
        Some(ALPN)
    );

    let (mut send, mut recv) = within(conn.open_bi()).await.unwrap();
    let message = b"kith echo \x00\xff".to_vec();
    send.write_all(&message).await.unwrap();
    send.finish().unwrap();
    let echoed = within(recv.read_to_end(1024)).await.unwrap();
    assert_eq!(echoed, message);
    conn.close(0u32.into(), b"done");

    let seen_by_bob = within(bob_side).await.unwrap();
    assert_eq!(seen_by_bob, alice_key.node_id());
    assert_ne!(seen_by_bob, bob_key.node_id());
}

#[tokio::test]
async fn dialler_refuses_a_server_with_another_key() {
    let (client_key, expected_key, actual_key) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    let (client, _) = node(&client_key);
    let (server, server_addr) = node(&actual_key);

    let client_identity = Identity::new(&client_key).unwrap();
    let (dialled, accepted) = tokio::join!(
        within(dial(
            &client,
            &client_identity,
            server_addr,
            expected_key.node_id()
        )),
        next_handshake(&server),
    );
    match dialled {
        Err(
            err @ TlsError::WrongPeer {
                expected,
                presented,
            },
        ) => {
            assert_eq!(expected, expected_key.node_id());
            assert_eq!(presented, actual_key.node_id());
            let text = err.to_string();
            assert!(text.contains(&actual_key.node_id().to_string()), "{text}");
            assert!(text.contains(&expected_key.node_id().to_string()), "{text}");
        }
        other => panic!("expected WrongPeer, got {other:?}"),
    }
    assert!(
        accepted.is_err(),
        "the server must not see an established connection"
    );
}

#[tokio::test]
async fn server_replaying_the_expected_nodes_certificate_is_refused() {
    // The impostor presents the expected node's (public) certificate but can only
    // sign the handshake with its own key.
    let (client_key, victim_key, impostor_key) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    let (victim_cert, _) = node_certificate(&victim_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            vec![victim_cert],
            rustls_signer(&impostor_key),
        ))));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let impostor = quinn::Endpoint::server(config, localhost()).unwrap();
    let impostor_addr = impostor.local_addr().unwrap();
    let (client, _) = node(&client_key);

    let client_identity = Identity::new(&client_key).unwrap();
    let (dialled, accepted) = tokio::join!(
        within(dial(
            &client,
            &client_identity,
            impostor_addr,
            victim_key.node_id()
        )),
        next_handshake(&impostor),
    );
    assert!(dialled.is_err(), "dial must fail: {dialled:?}");
    assert!(!matches!(dialled, Err(TlsError::WrongPeer { .. })));
    assert!(accepted.is_err());
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let server_key = NodeKey::generate();
    let (server, server_addr) = node(&server_key);
    let client = foreign_client(ALPN, None);

    let connecting = client.connect(server_addr, SERVER_NAME).unwrap();
    let (client_refused, accepted) =
        tokio::join!(client_is_refused(connecting), next_handshake(&server));
    let err = accepted.expect_err("the server must refuse a client without a certificate");
    assert!(
        err.to_string().contains("certificate"),
        "the refusal should say why: {err}"
    );
    assert!(client_refused);
}

#[tokio::test]
async fn client_replaying_another_nodes_certificate_is_refused() {
    let (server_key, victim_key, impostor_key) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    let (server, server_addr) = node(&server_key);
    let (victim_cert, _) = node_certificate(&victim_key).unwrap();
    let client = foreign_client(
        ALPN,
        Some(CertifiedKey::new(
            vec![victim_cert],
            rustls_signer(&impostor_key),
        )),
    );

    let connecting = client.connect(server_addr, SERVER_NAME).unwrap();
    let (client_refused, accepted) =
        tokio::join!(client_is_refused(connecting), next_handshake(&server));
    assert!(
        accepted.is_err(),
        "the handshake signature does not match the certificate"
    );
    assert!(client_refused);
}

#[tokio::test]
async fn client_with_a_non_ed25519_certificate_is_refused() {
    let server_key = NodeKey::generate();
    let (server, server_addr) = node(&server_key);
    // An ECDSA certificate, paired with an Ed25519 signing key so the client really
    // presents it (an ECDSA key could not answer the Ed25519-only request at all).
    let ecdsa = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kith".to_string()])
        .unwrap()
        .self_signed(&ecdsa)
        .unwrap();
    let client = foreign_client(
        ALPN,
        Some(CertifiedKey::new(
            vec![cert.der().clone()],
            rustls_signer(&NodeKey::generate()),
        )),
    );

    let connecting = client.connect(server_addr, SERVER_NAME).unwrap();
    let (client_refused, accepted) =
        tokio::join!(client_is_refused(connecting), next_handshake(&server));
    let err = accepted.expect_err("the server must refuse a non-Ed25519 certificate");
    assert!(err.to_string().contains("Ed25519"), "{err}");
    assert!(client_refused);
}

#[tokio::test]
async fn client_presenting_a_certificate_chain_is_refused() {
    // A genuine node certificate and key, but followed by an "intermediate": a node
    // presents exactly one self-signed certificate.
    let server_key = NodeKey::generate();
    let (server, server_addr) = node(&server_key);
    let client_key = NodeKey::generate();
    let (cert, _) = node_certificate(&client_key).unwrap();
    let (extra, _) = node_certificate(&NodeKey::generate()).unwrap();
    let client = foreign_client(
        ALPN,
        Some(CertifiedKey::new(
            vec![cert, extra],
            rustls_signer(&client_key),
        )),
    );

    let connecting = client.connect(server_addr, SERVER_NAME).unwrap();
    let (client_refused, accepted) =
        tokio::join!(client_is_refused(connecting), next_handshake(&server));
    let err = accepted.expect_err("the server must refuse a certificate chain");
    assert!(err.to_string().contains("chain"), "{err}");
    assert!(client_refused);
}

#[tokio::test]
async fn client_offering_another_alpn_is_refused() {
    let server_key = NodeKey::generate();
    let (server, server_addr) = node(&server_key);
    let client_key = NodeKey::generate();
    let (cert, _) = node_certificate(&client_key).unwrap();
    // A genuine node certificate and key: only the ALPN is wrong.
    let client = foreign_client(
        b"h3",
        Some(CertifiedKey::new(vec![cert], rustls_signer(&client_key))),
    );

    let connecting = client.connect(server_addr, SERVER_NAME).unwrap();
    let (dialled, accepted) = tokio::join!(within(connecting), next_handshake(&server));
    let err = accepted.expect_err("the server must refuse an unknown ALPN");
    // TLS alert 120 is no_application_protocol.
    assert!(err.to_string().contains("error 120"), "{err}");
    // The server refuses at the ClientHello, so the client never completes.
    let client_err = dialled.expect_err("the client must not complete the handshake");
    assert!(client_err.to_string().contains("error 120"), "{client_err}");
}

#[tokio::test]
async fn same_key_with_the_right_alpn_is_accepted_by_a_foreign_client() {
    // Control for the refusal tests above: the raw client setup itself works.
    let server_key = NodeKey::generate();
    let (server, server_addr) = node(&server_key);
    let client_key = NodeKey::generate();
    let (cert, _) = node_certificate(&client_key).unwrap();
    let client = foreign_client(
        ALPN,
        Some(CertifiedKey::new(vec![cert], rustls_signer(&client_key))),
    );

    let connecting = client.connect(server_addr, SERVER_NAME).unwrap();
    let (dialled, accepted) = tokio::join!(within(connecting), next_handshake(&server));
    let server_conn = accepted.unwrap();
    assert_eq!(peer_node_id(&server_conn).unwrap(), client_key.node_id());
    assert_eq!(
        peer_node_id(&dialled.unwrap()).unwrap(),
        server_key.node_id()
    );
}

#[test]
fn node_id_from_certificate_round_trips_for_many_keys() {
    for _ in 0..64 {
        let key = NodeKey::generate();
        let (cert, private) = node_certificate(&key).unwrap();
        assert_eq!(node_id_from_certificate(&cert).unwrap(), key.node_id());
        // The returned private key is the node key itself.
        match private {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                assert_eq!(pkcs8.secret_pkcs8_der(), key.to_pkcs8_der().as_slice())
            }
            other => panic!("expected PKCS#8, got {other:?}"),
        }
        // Deterministic: the same key always yields the same certificate.
        assert_eq!(node_certificate(&key).unwrap().0, cert);
        // The informational name is the id's text form.
        let name = format!("{}.kith", key.node_id());
        assert!(
            cert.as_ref()
                .windows(name.len())
                .any(|w| w == name.as_bytes())
        );
    }
}

#[test]
fn certificate_with_a_non_ed25519_key_is_refused() {
    let ecdsa = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kith".to_string()])
        .unwrap()
        .self_signed(&ecdsa)
        .unwrap();
    assert!(matches!(
        node_id_from_certificate(cert.der()),
        Err(TlsError::NotEd25519)
    ));
}

/// Where the 32 key bytes sit in a node certificate's DER.
fn key_range(cert: &[u8], id: NodeId) -> std::ops::Range<usize> {
    let at = cert
        .windows(32)
        .position(|w| w == id.as_bytes())
        .expect("the certificate carries its key");
    at..at + 32
}

#[test]
fn a_certificate_vouches_for_its_key_and_nothing_else() {
    // Every single bit flip either breaks the certificate, or changes the key it
    // names (a key the presenter would then have to prove it holds), or leaves the
    // key, and so the identity, exactly as it was: names, dates and the
    // self-signature count for nothing.
    let key = NodeKey::generate();
    let (cert, _) = node_certificate(&key).unwrap();
    let bytes = cert.as_ref().to_vec();
    let key_bytes = key_range(&bytes, key.node_id());
    let mut same_identity = 0;
    for index in 0..bytes.len() {
        for bit in 0..8 {
            let mut corrupted = bytes.clone();
            corrupted[index] ^= 1 << bit;
            match node_id_from_certificate(&CertificateDer::from(corrupted)) {
                Err(_) => {}
                Ok(id) if key_bytes.contains(&index) => assert_ne!(
                    id,
                    key.node_id(),
                    "flipping bit {bit} of key byte {index} kept the identity"
                ),
                Ok(id) => {
                    assert_eq!(id, key.node_id(), "bit {bit} of byte {index}");
                    same_identity += 1;
                }
            }
        }
    }
    assert!(
        same_identity > 0,
        "some flips outside the key (the signature, at least) must parse"
    );
}

#[test]
fn truncated_extended_or_empty_certificates_are_refused() {
    let (cert, _) = node_certificate(&NodeKey::generate()).unwrap();
    let bytes = cert.as_ref();
    for len in [0, 1, 2, 10, bytes.len() / 2, bytes.len() - 1] {
        let truncated = CertificateDer::from(bytes[..len].to_vec());
        assert!(
            matches!(
                node_id_from_certificate(&truncated),
                Err(TlsError::BadCertificate(_))
            ),
            "accepted a certificate truncated to {len} bytes"
        );
    }
    let mut extended = bytes.to_vec();
    extended.push(0);
    assert!(matches!(
        node_id_from_certificate(&CertificateDer::from(extended)),
        Err(TlsError::BadCertificate(_))
    ));
}

/// An rcgen key pair that claims `public` but signs with `signer` (or garbage).
struct Mismatched {
    public: [u8; 32],
    signer: Option<NodeKey>,
}

impl rcgen::RemoteKeyPair for Mismatched {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(match &self.signer {
            Some(key) => key.sign(msg).0.to_vec(),
            None => vec![7; 64],
        })
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

fn mismatched_certificate(public: [u8; 32], signer: Option<NodeKey>) -> CertificateDer<'static> {
    let key_pair = rcgen::KeyPair::from_remote(Box::new(Mismatched { public, signer })).unwrap();
    rcgen::CertificateParams::new(vec!["kith".to_string()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap()
        .der()
        .clone()
}

#[test]
fn a_certificate_is_read_for_the_key_it_names_whoever_signed_it() {
    // A certificate naming one key but signed by another names that key: the
    // handshake signature, not the certificate's, must then prove possession
    // (see `client_replaying_another_nodes_certificate_is_refused`).
    let named = NodeKey::generate();
    let cert = mismatched_certificate(*named.node_id().as_bytes(), Some(NodeKey::generate()));
    assert_eq!(node_id_from_certificate(&cert).unwrap(), named.node_id());
}

#[test]
fn certificate_with_a_weak_key_is_refused() {
    // The identity point (small order), encoded as y = 1.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let cert = mismatched_certificate(weak, None);
    assert!(matches!(
        node_id_from_certificate(&cert),
        Err(TlsError::BadKey(IdError::WeakKey))
    ));
}

/// kith's messages fit in the 1,200-byte minimum datagram, so path MTU discovery
/// would buy nothing, and each of its probes is ~1,450 bytes of PADDING that the
/// receiver parses byte by byte (it was a visible share of a handshake's CPU).
#[tokio::test]
async fn connections_send_no_path_mtu_probes() {
    let (alice_key, bob_key) = (NodeKey::generate(), NodeKey::generate());
    let (alice, _) = node(&alice_key);
    let (bob, bob_addr) = node(&bob_key);
    let bob_side = tokio::spawn(async move {
        let conn = next_handshake(&bob).await.expect("bob accepts alice");
        let (mut send, mut recv) = within(conn.accept_bi()).await.unwrap();
        let request = within(recv.read_to_end(1024)).await.unwrap();
        send.write_all(&request).await.unwrap();
        send.finish().unwrap();
        within(conn.closed()).await;
        conn.stats().path
    });
    let alice_identity = Identity::new(&alice_key).unwrap();
    let conn = within(dial(&alice, &alice_identity, bob_addr, bob_key.node_id()))
        .await
        .unwrap();
    let (mut send, mut recv) = within(conn.open_bi()).await.unwrap();
    send.write_all(b"ping").await.unwrap();
    send.finish().unwrap();
    within(recv.read_to_end(1024)).await.unwrap();
    // With discovery on, both sides probe as soon as the handshake is confirmed: on
    // loopback that is well within this.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alice_path = conn.stats().path;
    conn.close(0u32.into(), b"done");
    let bob_path = within(bob_side).await.unwrap();
    for (side, path) in [("dialler", alice_path), ("server", bob_path)] {
        assert_eq!(path.sent_plpmtud_probes, 0, "{side} probed the path MTU");
        assert_eq!(path.current_mtu, 1200, "{side}'s MTU moved");
    }
}
