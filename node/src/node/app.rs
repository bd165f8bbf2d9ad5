//! Application connections: QUIC connections between trusted nodes, by node id and
//! ALPN, for whatever the application carries (the daemon's services, or an
//! embedding program's own protocol).
//!
//! An application protocol is registered on the [`NodeBuilder`](super::NodeBuilder)
//! and negotiated by ALPN; `kith/1` is never one, so application bytes and the
//! trust protocol never share a connection. Trust is checked on both sides before
//! any application byte flows:
//!
//! - the dialling side refuses a peer it does not trust at that moment, and hands
//!   the connection over only after the accepting side's verdict: one byte on the
//!   first stream the acceptor opens;
//! - the accepting side checks trust after the handshake, before it accepts a stream
//!   or raises the connection's small initial flow-control limits, and closes an
//!   untrusted peer's connection with [`close_code::NOT_TRUSTED`].
//!
//! Live application connections are tracked by peer. When a peer stops being
//! trusted (revoked either way, expired, ignored, forgotten) every one of them is
//! closed with [`close_code::TRUST_ENDED`] and the peer's new state as the reason:
//! on the event that changed it, and at the latest on the next one-second sweep.
//!
//! This module must never hand an application a connection, or read a byte from one,
//! whose peer is not trusted at that moment, and never decide trust itself: it only
//! reads the trust machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_keys::NodeId;
use kith_protocol::machine::TrustState;
use kith_protocol::relay::RelayRefusal;
use kith_protocol::wire::{Message, RelayNotice, RelayRef};
use quinn::{ConnectionError, VarInt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tracing::debug;

use super::deliver::exchange_on;
use super::{DIAL_TIMEOUT, STREAM_TIMEOUT, Shared, close_code, dial_addrs, error_chain};
use crate::reach::targets;
use crate::transport::tls;

/// How long the dialling side waits for the acceptor's verdict after the handshake.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(5);
/// The verdict byte that says "you are trusted: go ahead".
const VERDICT_TRUSTED: u8 = 1;
/// Accepted connections waiting for the application to take them, per protocol.
/// Beyond it new ones are closed with [`close_code::BUSY`]: a slow application
/// cannot make the node hold connections without bound.
const ACCEPT_BACKLOG: usize = 64;
/// How often live connections are checked against trust, whatever the events said.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a direct dial may take when a relay could carry the connection instead.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest application protocol name (TLS caps an ALPN at 255 bytes).
const MAX_ALPN_LEN: usize = 255;

/// Why a connection to a peer's application could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "{0} is not trusted by this node: ask it for trust with `kith request <its ticket>`, \
         or approve its request with `kith approve`"
    )]
    NotTrusted(NodeId),
    #[error(
        "{0} refused the connection: it does not trust this node (see `kith peers` on both sides)"
    )]
    RefusedByPeer(NodeId),
    #[error("{peer} does not serve the protocol {alpn:?}")]
    UnknownProtocol { peer: NodeId, alpn: String },
    #[error("{peer} has too many connections waiting for its application; try again later")]
    Busy { peer: NodeId },
    #[error("neither an address nor a relay is known for {0}; add its ticket again")]
    NoAddress(NodeId),
    #[error("cannot reach {peer}: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    #[error(
        "the protocol name must be 1 to 255 bytes and not kith's own `kith/1` or `kith-relay/1`"
    )]
    BadProtocol,
    #[error("the node is shutting down")]
    Stopped,
}

/// A trusted peer's connection, as the accepting side's application gets it.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The peer, as its TLS certificate proved.
    pub peer: NodeId,
    pub connection: quinn::Connection,
}

/// One protocol's accepted connections, taken by whichever `accept` call is waiting.
type SharedReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<Accepted>>>;

/// What the node keeps for application connections.
pub(super) struct Apps {
    /// The registered protocols and where their accepted connections go.
    handlers: HashMap<Vec<u8>, mpsc::Sender<Accepted>>,
    receivers: Mutex<HashMap<Vec<u8>, SharedReceiver>>,
    /// Live application connections (both directions), by peer.
    live: Mutex<HashMap<NodeId, Vec<quinn::Connection>>>,
}

impl Apps {
    pub(super) fn new(protocols: &[Vec<u8>]) -> Self {
        let mut handlers = HashMap::new();
        let mut receivers = HashMap::new();
        for alpn in protocols {
            let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
            handlers.insert(alpn.clone(), tx);
            receivers.insert(alpn.clone(), Arc::new(tokio::sync::Mutex::new(rx)));
        }
        Apps {
            handlers,
            receivers: Mutex::new(receivers),
            live: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn protocols(&self) -> Vec<Vec<u8>> {
        self.handlers.keys().cloned().collect()
    }

    fn track(&self, peer: NodeId, conn: &quinn::Connection) {
        let mut live = self.live.lock().unwrap();
        let conns = live.entry(peer).or_default();
        conns.retain(|c| c.close_reason().is_none());
        conns.push(conn.clone());
    }

    /// Closes every live application connection to `peer`, saying why.
    fn close_peer(&self, peer: &NodeId, why: &str) {
        let conns = self.live.lock().unwrap().remove(peer).unwrap_or_default();
        for conn in conns {
            conn.close(VarInt::from_u32(close_code::TRUST_ENDED), why.as_bytes());
        }
    }

    /// Peers with a live application connection (dropping the closed ones).
    fn live_peers(&self) -> Vec<NodeId> {
        let mut live = self.live.lock().unwrap();
        live.retain(|_, conns| {
            conns.retain(|c| c.close_reason().is_none());
            !conns.is_empty()
        });
        live.keys().copied().collect()
    }

    /// Live application connections, all peers together.
    pub(super) fn total(&self) -> usize {
        self.live
            .lock()
            .unwrap()
            .values()
            .flatten()
            .filter(|c| c.close_reason().is_none())
            .count()
    }

    /// Live application connections to `peer`.
    pub(super) fn count(&self, peer: &NodeId) -> usize {
        self.live.lock().unwrap().get(peer).map_or(0, |c| {
            c.iter().filter(|c| c.close_reason().is_none()).count()
        })
    }
}

/// One way to dial a peer's application.
enum Path<'a> {
    Direct(SocketAddr),
    Relay(&'a RelayRef),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Direct(addr) => write!(f, "{addr}"),
            Path::Relay(relay) => write!(f, "through relay {}", relay.node_id.short()),
        }
    }
}

/// Checks an application protocol name before it is registered or dialled.
pub(super) fn check_alpn(alpn: &[u8]) -> Result<(), ConnectError> {
    if alpn.is_empty() || alpn.len() > MAX_ALPN_LEN || alpn == tls::ALPN || alpn == tls::RELAY_ALPN
    {
        return Err(ConnectError::BadProtocol);
    }
    Ok(())
}

impl Shared {
    /// Dials `peer`'s application `alpn`, after checking that we trust it, and
    /// returns the connection once the peer said it trusts us too.
    pub(super) async fn connect_app(
        self: &Arc<Self>,
        peer: NodeId,
        alpn: &[u8],
    ) -> Result<quinn::Connection, ConnectError> {
        check_alpn(alpn)?;
        let (trusted, known) = self
            .read(move |m, now| (m.is_trusted(&peer, now), dial_addrs(m.peer(&peer))))
            .await
            .map_err(|_| ConnectError::Stopped)?;
        if !trusted {
            return Err(ConnectError::NotTrusted(peer));
        }
        let reach = self.reach.lock().unwrap().get(&peer).cloned();
        let targets = targets(&known, reach.as_ref(), self.home.as_ref());
        if targets.direct.is_empty() && targets.relays.is_empty() {
            return Err(ConnectError::NoAddress(peer));
        }
        // With a relay to fall back on, a silent direct address costs little time.
        let direct_timeout = if targets.relays.is_empty() {
            DIAL_TIMEOUT
        } else {
            DIRECT_TIMEOUT
        };
        let mut failures = Vec::new();
        let paths = targets
            .direct
            .iter()
            .map(|addr| Path::Direct(*addr))
            .chain(targets.relays.iter().map(Path::Relay));
        for path in paths {
            let dialled = match path {
                Path::Direct(addr) => tokio::time::timeout(
                    direct_timeout,
                    tls::dial_app(&self.endpoint, &self.identity, addr, peer, alpn),
                )
                .await
                .map_err(|_| format!("{addr}: no answer within {direct_timeout:?}")),
                Path::Relay(relay) => self.dial_relayed(peer, relay, alpn).await,
            };
            let conn = match dialled {
                Ok(Ok(conn)) => conn,
                Ok(Err(tls::TlsError::Connection(e))) if tls::refused_protocol(&e) => {
                    return Err(ConnectError::UnknownProtocol {
                        peer,
                        alpn: String::from_utf8_lossy(alpn).into_owned(),
                    });
                }
                Ok(Err(e)) => {
                    failures.push(format!("{path}: {}", error_chain(&e)));
                    continue;
                }
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            // Tracked before the verdict, so that a revoke from now on closes it.
            self.apps.track(peer, &conn);
            return match await_verdict(&conn).await {
                Ok(()) => Ok(conn),
                Err(e) => {
                    conn.close(VarInt::from_u32(close_code::SHUTDOWN), b"");
                    Err(verdict_error(peer, e))
                }
            };
        }
        Err(ConnectError::Unreachable {
            peer,
            reason: failures.join("; "),
        })
    }

    /// Dials `peer` at its mapped address through `relay`: over the link to it
    /// (the home relay's, or one opened for this), the same QUIC and TLS handshake as
    /// a direct dial, end to end; the relay sees only ciphertext. A relay that does
    /// not carry our packets (we are not on its allow list) drops them unanswered, so
    /// meanwhile the relay is asked, and its refusal ends the dial with its reason.
    async fn dial_relayed(
        self: &Arc<Self>,
        peer: NodeId,
        relay: &RelayRef,
        alpn: &[u8],
    ) -> Result<Result<quinn::Connection, tls::TlsError>, String> {
        let via = format!("through relay {}", relay.node_id.short());
        let link = super::link::link(self, relay)
            .await
            .map_err(|e| format!("{via}: {}", error_chain(&e)))?;
        let addr = self
            .paths
            .map(relay.node_id, peer)
            .ok_or_else(|| format!("{via}: too many relayed peers at once"))?;
        let dial = tokio::time::timeout(
            DIAL_TIMEOUT,
            tls::dial_app(&self.endpoint, &self.identity, addr, peer, alpn),
        );
        tokio::select! {
            dialled = dial => dialled.map_err(|_| {
                format!("{via}: no answer within {DIAL_TIMEOUT:?} (is the peer connected to it?)")
            }),
            Some(refusal) = carries_no_packets(&link) => {
                let why = match refusal {
                    RelayRefusal::NotAllowed => "this node is not on the relay's allow list \
                        (only the nodes on it may connect through it)"
                        .to_string(),
                    other => other.to_string(),
                };
                Err(format!("{via}: the relay refused to carry the connection: {why}"))
            }
        }
    }

    /// Serves an inbound connection that negotiated an application protocol: closes
    /// it unless `peer` is trusted, else raises its limits, sends the verdict and
    /// hands it to the application.
    pub(super) async fn accept_app(&self, peer: NodeId, alpn: Vec<u8>, conn: quinn::Connection) {
        let Some(handler) = self.apps.handlers.get(&alpn) else {
            conn.close(VarInt::from_u32(close_code::SHUTDOWN), b"unknown protocol");
            return;
        };
        // Tracked before the check: a trust change committed after the check is seen
        // by the watcher, which then finds this connection.
        self.apps.track(peer, &conn);
        let trusted = self
            .read(move |m, now| m.is_trusted(&peer, now))
            .await
            .unwrap_or(false);
        if !trusted {
            debug!(%peer, "closing an application connection from an untrusted peer");
            conn.close(VarInt::from_u32(close_code::NOT_TRUSTED), b"not trusted");
            return;
        }
        let Ok(permit) = handler.clone().try_reserve_owned() else {
            conn.close(VarInt::from_u32(close_code::BUSY), b"busy");
            return;
        };
        conn.set_receive_window(VarInt::from_u32(tls::APP_CONNECTION_WINDOW));
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(tls::APP_MAX_STREAMS));
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(tls::APP_MAX_STREAMS));
        if send_verdict(&conn).await.is_err() {
            return;
        }
        permit.send(Accepted {
            peer,
            connection: conn,
        });
    }

    /// The next trusted connection for `alpn`; `None` if it is not registered or the
    /// node stopped.
    pub(super) async fn next_app(&self, alpn: &[u8]) -> Option<Accepted> {
        let rx = self.apps.receivers.lock().unwrap().get(alpn).cloned()?;
        let mut rx = rx.lock().await;
        loop {
            let accepted = rx.recv().await?;
            // Trust may have ended while it waited in the backlog.
            if accepted.connection.close_reason().is_none() {
                return Some(accepted);
            }
        }
    }

    /// Closes the application connections of peers that stopped being trusted: at
    /// each event about a peer with live connections, and every [`SWEEP_EVERY`].
    pub(super) async fn watch_app_trust(self: Arc<Self>) {
        let mut events = self.events.subscribe();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let peers = tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => vec![event.peer],
                    Err(RecvError::Lagged(_)) => self.apps.live_peers(),
                    Err(RecvError::Closed) => return,
                },
                _ = sweep.tick() => self.apps.live_peers(),
            };
            let peers: Vec<NodeId> = peers
                .into_iter()
                .filter(|p| self.apps.count(p) > 0)
                .collect();
            if peers.is_empty() {
                continue;
            }
            let Ok(states) = self
                .read(move |m, now| {
                    peers
                        .into_iter()
                        .map(|p| {
                            let state = match m.peer(&p) {
                                Some(r) if r.is_trusted(now) => None,
                                Some(r) if r.state == TrustState::Trusted => {
                                    Some(TrustState::Expired.as_str())
                                }
                                Some(r) => Some(r.state.as_str()),
                                None => Some("forgotten"),
                            };
                            (p, state)
                        })
                        .collect::<Vec<_>>()
                })
                .await
            else {
                return;
            };
            for (peer, ended) in states {
                if let Some(state) = ended {
                    debug!(%peer, state, "trust ended: closing its application connections");
                    self.apps
                        .close_peer(&peer, &format!("trust ended: {state}"));
                }
            }
        }
    }
}

async fn send_verdict(conn: &quinn::Connection) -> Result<(), quinn::WriteError> {
    let mut stream = conn
        .open_uni()
        .await
        .map_err(quinn::WriteError::ConnectionLost)?;
    stream.write_all(&[VERDICT_TRUSTED]).await?;
    let _ = stream.finish();
    Ok(())
}

enum VerdictError {
    Closed(ConnectionError),
    Garbled,
    TimedOut,
}

async fn await_verdict(conn: &quinn::Connection) -> Result<(), VerdictError> {
    let verdict = async {
        let mut stream = conn.accept_uni().await.map_err(VerdictError::Closed)?;
        let bytes = stream.read_to_end(1).await.map_err(|e| match e {
            quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c)) => {
                VerdictError::Closed(c)
            }
            _ => VerdictError::Garbled,
        })?;
        match bytes.as_slice() {
            [VERDICT_TRUSTED] => Ok(()),
            _ => Err(VerdictError::Garbled),
        }
    };
    tokio::time::timeout(VERDICT_TIMEOUT, verdict)
        .await
        .map_err(|_| VerdictError::TimedOut)?
}

fn verdict_error(peer: NodeId, e: VerdictError) -> ConnectError {
    match e {
        VerdictError::Closed(ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(close_code::NOT_TRUSTED) =>
        {
            ConnectError::RefusedByPeer(peer)
        }
        VerdictError::Closed(ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(close_code::BUSY) =>
        {
            ConnectError::Busy { peer }
        }
        VerdictError::Closed(e) => ConnectError::Unreachable {
            peer,
            reason: e.to_string(),
        },
        VerdictError::Garbled => ConnectError::Unreachable {
            peer,
            reason: "it answered with something other than kith's verdict".into(),
        },
        VerdictError::TimedOut => ConnectError::Unreachable {
            peer,
            reason: format!("no verdict within {VERDICT_TIMEOUT:?} after the handshake"),
        },
    }
}

/// Why the relay at the far end of `link` does not carry this node's packets, if it
/// says so: a `Register` asking no dial-back only reads what the relay decided when
/// the link connected (registered, or refused). `None` if it carries them or did not
/// answer.
async fn carries_no_packets(link: &quinn::Connection) -> Option<RelayRefusal> {
    let register = Message::Register { dial_back: false };
    match exchange_on(link, &register, STREAM_TIMEOUT).await {
        Ok(Message::RelayNotice(RelayNotice::Refused(refusal))) => Some(refusal),
        _ => None,
    }
}
