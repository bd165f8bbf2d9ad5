//! Services: TCP targets a node's operator exposes to trusted peers by name
//! (`kith expose`), and the protocol that joins a peer's stream to one
//! (`kith connect`, `kith forward`).
//!
//! The protocol is an application protocol of the node, ALPN [`SERVICE_ALPN`], so
//! every connection is gated on trust both ways before a stream is read (see
//! [`Node::connect`]). One bidirectional stream carries one TCP connection: the
//! dialling side sends one frame naming the service, the serving side connects to the
//! service's target and answers one frame, and from then on the stream carries the
//! TCP bytes both ways, each direction ending when its side finishes. A revoke,
//! expiry or ignore closes the QUIC connection, which ends every stream on it.
//!
//! This module must never connect a peer to anything but a target the local operator
//! exposed, never to a service that does not admit that peer, and never read more
//! than one bounded frame from a peer before its answer.

pub mod spec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_keys::NodeId;
use kith_protocol::frame::encode_frame;
use quinn::{RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

pub use spec::{
    MAX_NAME_LEN, MAX_SERVICE_PEERS, MAX_SERVICES, MAX_TARGET_LEN, ServiceSpec, SpecError,
    check_name, check_target,
};

use crate::node::{Accepted, ConnectError, Node, NodeError, now_ms};

/// The application protocol of services.
pub const SERVICE_ALPN: &[u8] = b"kith-svc/1";
/// How long a peer may take to name the service on a new stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the serving side tries to connect to a target.
const TARGET_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest opening or answer frame body: a name or a reason, far below this.
const MAX_HEADER_LEN: usize = 4096;

/// The first frame on a service stream, from the dialling side.
#[derive(Debug, Serialize, Deserialize)]
struct Open {
    name: String,
}

/// The serving side's one answer.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    /// Connected to the target: the stream now carries its bytes.
    Ready,
    UnknownService,
    /// The service exists but is limited to other peers.
    NotAdmitted,
    /// The target did not take the connection.
    TargetFailed {
        reason: String,
    },
}

/// Why a service could not be exposed, or reached.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "{peer} has no service named {name:?}; its operator exposes one with \
         `kith expose {name} --to HOST:PORT`"
    )]
    UnknownService { peer: NodeId, name: String },
    #[error(
        "{peer}'s service {name:?} is limited to other peers; its operator can add this \
         node with `kith expose {name} --to HOST:PORT --peer <this node>`"
    )]
    NotAdmitted { peer: NodeId, name: String },
    #[error("{peer} could not connect its service {name:?}: {reason}")]
    TargetFailed {
        peer: NodeId,
        name: String,
        reason: String,
    },
    #[error("the service stream to {peer} failed: {reason}")]
    Stream { peer: NodeId, reason: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("no service named {0:?} is exposed here")]
    NotExposed(String),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Exposes `name` (replacing a service of that name) after checking it; returns once
/// it is committed. `peers` empty: every trusted peer may use it.
pub async fn expose(
    node: &Node,
    name: &str,
    target: &str,
    peers: Vec<NodeId>,
) -> Result<ServiceSpec, ServiceError> {
    check_name(name)?;
    check_target(target)?;
    if peers.len() > MAX_SERVICE_PEERS {
        return Err(SpecError::TooManyPeers.into());
    }
    let services = node.services();
    if !services.contains_key(name) && services.len() >= MAX_SERVICES {
        return Err(SpecError::TooManyServices.into());
    }
    let mut peers = peers;
    peers.sort();
    peers.dedup();
    let spec = ServiceSpec {
        target: target.to_string(),
        peers,
        added_ms: now_ms(),
    };
    node.set_service(name.to_string(), Some(spec.clone()))
        .await?;
    Ok(spec)
}

/// Stops exposing `name`. Streams already joined to it run on until either end closes.
pub async fn unexpose(node: &Node, name: &str) -> Result<(), ServiceError> {
    if !node.services().contains_key(name) {
        return Err(ServiceError::NotExposed(name.to_string()));
    }
    node.set_service(name.to_string(), None).await?;
    Ok(())
}

/// Serves the node's services to trusted peers until the node stops. The node must
/// have been built with `.protocol(SERVICE_ALPN)`.
pub async fn serve(node: Arc<Node>) {
    while let Some(accepted) = node.accept(SERVICE_ALPN).await {
        tokio::spawn(serve_connection(node.clone(), accepted));
    }
}

async fn serve_connection(node: Arc<Node>, accepted: Accepted) {
    let Accepted { peer, connection } = accepted;
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(serve_stream(node.clone(), peer, send, recv));
    }
}

async fn serve_stream(node: Arc<Node>, peer: NodeId, mut send: SendStream, mut recv: RecvStream) {
    let open = match tokio::time::timeout(OPEN_TIMEOUT, read_frame::<Open>(&mut recv)).await {
        Ok(Ok(open)) => open,
        Ok(Err(reason)) => {
            debug!(%peer, %reason, "bad service stream");
            let _ = send.reset(0u32.into());
            return;
        }
        Err(_) => {
            let _ = send.reset(0u32.into());
            return;
        }
    };
    let (answer, tcp) = match node.services().get(&open.name) {
        None => (Answer::UnknownService, None),
        Some(spec) if !spec.admits(&peer) => (Answer::NotAdmitted, None),
        Some(spec) => {
            match tokio::time::timeout(TARGET_TIMEOUT, TcpStream::connect(&spec.target)).await {
                Ok(Ok(tcp)) => (Answer::Ready, Some(tcp)),
                Ok(Err(e)) => (
                    Answer::TargetFailed {
                        reason: format!("{}: {e}", spec.target),
                    },
                    None,
                ),
                Err(_) => (
                    Answer::TargetFailed {
                        reason: format!("{}: no answer within {TARGET_TIMEOUT:?}", spec.target),
                    },
                    None,
                ),
            }
        }
    };
    let Ok(frame) = encode_frame(&answer) else {
        return;
    };
    if send.write_all(&frame).await.is_err() {
        return;
    }
    let Some(mut tcp) = tcp else {
        let _ = send.finish();
        return;
    };
    debug!(%peer, service = %open.name, "joined a service stream");
    let mut stream = tokio::io::join(recv, send);
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
    let _ = stream.shutdown().await;
}

/// The dialling side: opens streams to peers' services, over one connection per peer.
pub struct ServiceClient {
    node: Arc<Node>,
    conns: Mutex<HashMap<NodeId, quinn::Connection>>,
}

impl ServiceClient {
    pub fn new(node: Arc<Node>) -> Self {
        ServiceClient {
            node,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// A stream joined to `peer`'s service `name`, ready to carry its bytes.
    pub async fn open(
        &self,
        peer: NodeId,
        name: &str,
    ) -> Result<(SendStream, RecvStream), ServiceError> {
        check_name(name)?;
        let (mut send, mut recv) = self.stream(peer).await?;
        let stream_err = |reason: String| ServiceError::Stream { peer, reason };
        let frame = encode_frame(&Open {
            name: name.to_string(),
        })
        .map_err(|e| stream_err(e.to_string()))?;
        send.write_all(&frame)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        let answer = tokio::time::timeout(
            OPEN_TIMEOUT + TARGET_TIMEOUT,
            read_frame::<Answer>(&mut recv),
        )
        .await
        .map_err(|_| stream_err("no answer in time".into()))?
        .map_err(stream_err)?;
        let name = name.to_string();
        match answer {
            Answer::Ready => Ok((send, recv)),
            Answer::UnknownService => Err(ServiceError::UnknownService { peer, name }),
            Answer::NotAdmitted => Err(ServiceError::NotAdmitted { peer, name }),
            Answer::TargetFailed { reason } => {
                Err(ServiceError::TargetFailed { peer, name, reason })
            }
        }
    }

    /// A new stream on the open connection to `peer`, or on a new one.
    async fn stream(&self, peer: NodeId) -> Result<(SendStream, RecvStream), ServiceError> {
        let cached = self
            .conns
            .lock()
            .unwrap()
            .get(&peer)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        if let Some(conn) = cached {
            if let Ok(pair) = conn.open_bi().await {
                return Ok(pair);
            }
        }
        let conn = self.node.connect(peer, SERVICE_ALPN).await?;
        self.conns.lock().unwrap().insert(peer, conn.clone());
        conn.open_bi().await.map_err(|e| ServiceError::Stream {
            peer,
            reason: e.to_string(),
        })
    }
}

/// Reads one length-prefixed postcard frame, and nothing after it.
async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER_LEN {
        return Err(format!(
            "a {len}-byte header; at most {MAX_HEADER_LEN} are allowed"
        ));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    postcard::from_bytes(&body).map_err(|e| format!("undecodable header: {e}"))
}
