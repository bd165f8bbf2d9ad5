//! Relay links: this node's side of relaying.
//!
//! A relay link is negotiated with the relay ALPN ([`tls::RELAY_ALPN`]): only a
//! relay's endpoint offers it, so a ticket or hint naming an ordinary node as a
//! relay cannot make our connection to that node a link.
//!
//! A node with a home relay keeps one QUIC connection to it ([`run_home`]): dial,
//! register (asking for a dial-back unless private), serve what the relay pushes,
//! and when the connection drops, reconnect with exponential backoff and jitter —
//! forever, with no operator action. QUIC keep-alives (see [`crate::transport::limits`]) keep the
//! connection, and the NAT binding under it, open. To reach a peer through a relay
//! that is not its home, the node dials that relay on demand ([`forward`]) and
//! serves that connection the same way while it lasts (the relay may push replies
//! for this node over it).
//!
//! Envelopes a relay pushes go to the core as `Input::Envelope` with no transport
//! peer and no source (the relay is not their author: their signatures are what
//! counts), together with the sender's reply hint and the relay they came through.
//!
//! This module must never decide trust or answer for the core: a pushed envelope
//! is acknowledged only with the ack the core released after its commit. It must
//! never open a second connection to a relay it already has one to (the relay
//! would close the older one as replaced), and never treat a relay's unsigned
//! notices as more than information for the operator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kith_keys::NodeId;
use kith_protocol::frame::decode_frame;
use kith_protocol::machine::{Input, Reply};
use kith_protocol::relay::{ForwardResult, RelayRefusal};
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{
    Ack, AckStatus, Envelope, MAX_REACH_ADDRS, Message, Reach, RelayNotice, RelayRef,
};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{
    DIAL_TIMEOUT, ExchangeError, Learn, NodeError, STREAM_TIMEOUT, Shared, close_code, error_chain,
    exchange_on, now_ms,
};
use crate::reach::PathKind;
use crate::transport::tls;

/// First reconnect delay after the home relay connection drops.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// A link to a relay other than the home relay that carried no stream for this long
/// is closed: it was opened to reach one peer, and a hint naming many relays must
/// not leave a connection (and its keep-alives) open to each for good.
pub const LINK_IDLE: Duration = Duration::from_secs(120);
/// A relay's addresses are dialled this far apart, first answer wins.
const DIAL_STAGGER: Duration = Duration::from_millis(250);
/// Longest a relay dial may take over all its addresses, however many a ticket or
/// hint lists.
const LINK_DIAL_BOUND: Duration = DIAL_TIMEOUT;
/// Registration includes the relay's dial-back (up to a few seconds behind a NAT
/// that drops it).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the home relay connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    Connecting,
    /// Connected, registration not answered yet.
    Connected,
    /// The relay routes envelopes to this node.
    Registered,
    /// Connected, but the relay will not route to this node (it may still forward for it).
    Refused,
    /// Not connected; a reconnect is scheduled.
    Disconnected,
    /// What the ticket names is an ordinary node, not a relay: no reconnect.
    NotARelay,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Registered => "registered",
            LinkState::Refused => "refused",
            LinkState::Disconnected => "disconnected",
            LinkState::NotARelay => "not_a_relay",
        }
    }
}

/// Another live connection under this node's id, as the relay reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictInfo {
    pub others: Vec<SocketAddr>,
    pub at_ms: u64,
}

/// The home relay connection, for `kith status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    pub relay: NodeId,
    pub addrs: Vec<SocketAddr>,
    pub state: LinkState,
    /// When `state` was entered.
    pub since_ms: u64,
    /// The address the relay sees this node at.
    pub observed: Option<SocketAddr>,
    /// The relay's dial-back: could it dial this node directly? `None`: not tested.
    /// The relay's unsigned claim: shown, never acted on unless corroborated.
    pub direct: Option<bool>,
    /// `observed`, once this node reached itself there (its own dial, proving its
    /// own key): only then is it put in the node's hints.
    pub verified_observed: Option<SocketAddr>,
    pub refusal: Option<RelayRefusal>,
    /// An identity conflict reported since the last registration.
    pub conflict: Option<ConflictInfo>,
    pub last_error: Option<String>,
    /// Connections made so far (1 after the first; more after reconnects).
    pub connects: u64,
}

impl RelayStatus {
    pub(super) fn new(relay: &RelayRef) -> Self {
        RelayStatus {
            relay: relay.node_id,
            addrs: relay.addrs.clone(),
            state: LinkState::Connecting,
            since_ms: now_ms(),
            observed: None,
            direct: None,
            verified_observed: None,
            refusal: None,
            conflict: None,
            last_error: None,
            connects: 0,
        }
    }
}

/// Something that happened to the home relay connection (`kith events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayEvent {
    pub at_ms: u64,
    pub relay: NodeId,
    pub kind: RelayEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayEventKind {
    Connected {
        addr: SocketAddr,
    },
    Registered {
        observed: SocketAddr,
        direct: Option<bool>,
    },
    Refused {
        reason: RelayRefusal,
    },
    Disconnected {
        reason: String,
    },
    /// The relay sees this node's id connected from these other addresses too.
    Conflict {
        others: Vec<SocketAddr>,
    },
    /// The home relay's id answered at `addr` as an ordinary node; the link stopped.
    NotARelay {
        addr: SocketAddr,
    },
    /// The relay says the conflict it reported is over (the other copy left).
    ConflictOver,
}

impl Shared {
    fn update_status(&self, f: impl FnOnce(&mut RelayStatus)) {
        if let Some(status) = self.relay_status.lock().unwrap().as_mut() {
            f(status);
        }
    }

    fn relay_event(&self, relay: NodeId, kind: RelayEventKind) {
        let _ = self.relay_events.send(RelayEvent {
            at_ms: now_ms(),
            relay,
            kind,
        });
    }

    fn live_link(&self, relay: &NodeId) -> Option<quinn::Connection> {
        self.links
            .lock()
            .unwrap()
            .get(relay)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    fn forget_link(&self, relay: &NodeId, conn: &quinn::Connection) {
        let mut links = self.links.lock().unwrap();
        if links
            .get(relay)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            links.remove(relay);
        }
    }

    /// The lock held while dialling `relay`. Locks nobody holds or waits for are
    /// dropped here, so the map stays as small as the dials in flight.
    fn dial_lock(&self, relay: &NodeId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.link_dial.lock().unwrap();
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(*relay).or_default().clone()
    }

    fn is_home(&self, relay: &NodeId) -> bool {
        self.home.as_ref().is_some_and(|h| h.node_id == *relay)
    }
}

/// `d` scaled by a random factor in [0.75, 1.25), so many nodes that lost one
/// relay do not all come back in the same instant.
fn jitter(d: Duration) -> Duration {
    let r = rand_core::OsRng.next_u32() as f64 / u32::MAX as f64;
    d.mul_f64(0.75 + r * 0.5)
}

/// A relay dial that failed, and an address that answered without the relay protocol.
struct DialFailure {
    error: NodeError,
    not_relay: Option<SocketAddr>,
}

/// Dials `relay` at its addresses, a new one every [`DIAL_STAGGER`] until one answers,
/// all within [`LINK_DIAL_BOUND`]: a ticket or hint naming a relay with many silent
/// addresses costs one bounded wait, never one timeout per address.
async fn dial_relay(shared: &Shared, relay: &RelayRef) -> Result<quinn::Connection, DialFailure> {
    let mut not_relay = None;
    let failed = |reason: String, not_relay| DialFailure {
        error: NodeError::Relay {
            relay: relay.node_id,
            reason: format!("cannot connect: {reason}"),
        },
        not_relay,
    };
    if relay.addrs.is_empty() {
        return Err(failed("the relay has no address".into(), None));
    }
    let mut dials = tokio::task::JoinSet::new();
    for (i, &addr) in relay.addrs.iter().take(MAX_REACH_ADDRS).enumerate() {
        let (endpoint, identity, id) = (
            shared.endpoint.clone(),
            shared.identity.clone(),
            relay.node_id,
        );
        let stagger = DIAL_STAGGER * i as u32;
        dials.spawn(async move {
            tokio::time::sleep(stagger).await;
            (addr, tls::dial_relay(&endpoint, &identity, addr, id).await)
        });
    }
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + LINK_DIAL_BOUND;
    loop {
        match tokio::time::timeout_at(deadline, dials.join_next()).await {
            Ok(Some(Ok((_, Ok(conn))))) => return Ok(conn),
            Ok(Some(Ok((addr, Err(e))))) if refused_relay_protocol(&e) => {
                not_relay = Some(addr);
                failures.push(format!(
                    "{addr}: it is not a relay (it does not speak the relay protocol)"
                ))
            }
            Ok(Some(Ok((addr, Err(e))))) if refused_connection(&e) => failures.push(format!(
                "{addr}: the relay refused the connection (it is full, or holds as many \
                 connections from this address as it allows)"
            )),
            Ok(Some(Ok((addr, Err(e))))) => failures.push(format!("{addr}: {}", error_chain(&e))),
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                failures.push(format!(
                    "{} address(es) gave no answer within {LINK_DIAL_BOUND:?}",
                    dials.len()
                ));
                break;
            }
        }
    }
    // Dropping the set aborts the dials still running.
    Err(failed(failures.join("; "), not_relay))
}

/// Whether `id` answers at `addr` as an ordinary node: a handshake with the node
/// protocol proves it holds the id's key. A refused relay protocol alone is no
/// proof (it comes before the server shows its key); this is. The connection is
/// closed at once.
async fn answers_as_node(shared: &Shared, addr: SocketAddr, id: NodeId) -> bool {
    let dial = tls::dial(&shared.endpoint, &shared.identity, addr, id);
    match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
        Ok(Ok(conn)) => {
            conn.close(
                close_code::SHUTDOWN.into(),
                b"only asking whether this is a relay",
            );
            true
        }
        _ => false,
    }
}

/// Whether a dial failed because the server does not offer the relay protocol
/// (TLS alert 120, no_application_protocol): a node, not a relay.
fn refused_relay_protocol(e: &tls::TlsError) -> bool {
    matches!(e, tls::TlsError::Connection(e) if tls::refused_protocol(e))
}

/// Whether the relay refused the connection before the handshake (QUIC
/// CONNECTION_REFUSED): it is full, or has too many connections from our address.
fn refused_connection(e: &tls::TlsError) -> bool {
    matches!(
        e,
        tls::TlsError::Connection(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

/// Keeps the home relay connection up for as long as the node runs.
pub(super) async fn run_home(shared: Arc<Shared>, relay: RelayRef) {
    let mut backoff = BACKOFF_MIN;
    loop {
        shared.update_status(|s| {
            s.state = LinkState::Connecting;
            s.since_ms = now_ms();
        });
        let dialled = {
            let lock = shared.dial_lock(&relay.node_id);
            let _dialling = lock.lock().await;
            dial_relay(&shared, &relay).await
        };
        match dialled {
            Ok(conn) => {
                let started = Instant::now();
                home_session(&shared, &relay, conn).await;
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(DialFailure {
                not_relay: Some(addr),
                ..
            }) if answers_as_node(&shared, addr, relay.node_id).await => {
                // Retrying cannot help: the operator gave a node's ticket for a relay's.
                let reason = format!(
                    "{} at {addr} is an ordinary node, not a relay (it proved that id with the \
                     node protocol and refuses the relay protocol)",
                    relay.node_id
                );
                warn!(relay = %relay.node_id, %addr, "the home relay's ticket is a node's; not retrying");
                shared.update_status(|s| {
                    s.state = LinkState::NotARelay;
                    s.since_ms = now_ms();
                    s.last_error = Some(reason);
                });
                shared.relay_event(relay.node_id, RelayEventKind::NotARelay { addr });
                return;
            }
            Err(DialFailure { error, .. }) => {
                debug!(relay = %relay.node_id, %error, "home relay unreachable");
                shared.update_status(|s| {
                    s.state = LinkState::Disconnected;
                    s.since_ms = now_ms();
                    s.last_error = Some(error.to_string());
                });
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection to the home relay: register, serve, wait for it to end.
async fn home_session(shared: &Arc<Shared>, relay: &RelayRef, conn: quinn::Connection) {
    let id = relay.node_id;
    shared.links.lock().unwrap().insert(id, conn.clone());
    let addr = conn.remote_address();
    shared.update_status(|s| {
        s.state = LinkState::Connected;
        s.since_ms = now_ms();
        s.connects += 1;
        s.observed = None;
        s.direct = None;
        s.verified_observed = None;
        // A refusal (e.g. "relay full") stands until a registration succeeds, so
        // the status says why between attempts.
        s.conflict = None;
    });
    shared.relay_event(id, RelayEventKind::Connected { addr });
    info!(relay = %id, %addr, "connected to the home relay");
    // Serve first: the relay pushes what it queued for us as soon as we connect.
    tokio::spawn(serve_link(shared.clone(), conn.clone(), relay.clone()));
    super::relayed::start(shared, &conn, id);

    let register = Message::Register {
        dial_back: !shared.private,
    };
    match exchange_on(&conn, &register, REGISTER_TIMEOUT).await {
        Ok(Message::RelayNotice(RelayNotice::Registered { observed, direct })) => {
            info!(relay = %id, %observed, ?direct, "registered at the home relay");
            shared.update_status(|s| {
                s.state = LinkState::Registered;
                s.since_ms = now_ms();
                s.observed = Some(observed);
                s.direct = direct;
                s.refusal = None;
                s.last_error = None;
            });
            shared.relay_event(id, RelayEventKind::Registered { observed, direct });
            if direct == Some(true) && !shared.private {
                tokio::spawn(verify_observed(shared.clone(), conn.clone(), observed));
            }
        }
        Ok(Message::RelayNotice(RelayNotice::Refused(reason))) => {
            warn!(relay = %id, %reason, "the home relay refused to register this node");
            shared.update_status(|s| {
                s.state = LinkState::Refused;
                s.since_ms = now_ms();
                s.refusal = Some(reason);
            });
            shared.relay_event(id, RelayEventKind::Refused { reason });
            if reason == RelayRefusal::TooManyClients {
                conn.close(0u32.into(), b"relay full");
            }
        }
        other => {
            let reason = match other {
                Err(ExchangeError::Io(e)) => format!("registration failed: {e}"),
                _ => "it did not answer as a relay (is that ticket a relay's?)".to_string(),
            };
            warn!(relay = %id, %reason, "home relay registration failed");
            shared.update_status(|s| s.last_error = Some(reason.clone()));
            // If the relay closed the connection, its reason is read below.
            if conn.close_reason().is_none() {
                conn.close(0u32.into(), b"not a relay");
            }
        }
    }
    let closed = conn.closed().await;
    shared.forget_link(&id, &conn);
    let full = matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
        if c.error_code == quinn::VarInt::from_u32(close_code::RELAY_FULL));
    let reason = if full {
        // Said in words (and as a refusal), not as a bare "closed".
        shared.update_status(|s| s.refusal = Some(RelayRefusal::TooManyClients));
        shared.relay_event(
            id,
            RelayEventKind::Refused {
                reason: RelayRefusal::TooManyClients,
            },
        );
        "the relay is full (it serves as many nodes as it may); retrying".to_string()
    } else {
        closed.to_string()
    };
    info!(relay = %id, %reason, "home relay connection closed; reconnecting");
    shared.update_status(|s| {
        s.state = LinkState::Disconnected;
        s.since_ms = now_ms();
        s.last_error = Some(reason.clone());
    });
    shared.relay_event(id, RelayEventKind::Disconnected { reason });
}

/// How long the node's own dial to the address its relay says it sees may take.
const SELF_DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks the home relay's claim that this node is reachable at `observed` by
/// dialling itself there from a fresh port: only if the handshake proves this node's
/// own key does `observed` go into its hints. A relay naming an address of its
/// choosing gets nothing advertised.
async fn verify_observed(shared: Arc<Shared>, home: quinn::Connection, observed: SocketAddr) {
    let any = match observed {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let verified = async {
        let endpoint = tls::make_endpoint(&shared.identity, any).ok()?;
        endpoint.set_server_config(None);
        let dial = tls::dial(&endpoint, &shared.identity, observed, shared.node_id);
        let result = tokio::time::timeout(SELF_DIAL_TIMEOUT, dial).await;
        let ok = matches!(result, Ok(Ok(_)));
        if let Ok(Ok(conn)) = result {
            conn.close(0u32.into(), b"self check");
        }
        endpoint.close(0u32.into(), b"");
        ok.then_some(())
    }
    .await
    .is_some();
    debug!(%observed, verified, "checked the address the home relay sees us at");
    // Only for the same connection: a newer registration starts its own check.
    if verified && home.close_reason().is_none() {
        shared.update_status(|s| {
            if s.observed == Some(observed) {
                s.verified_observed = Some(observed);
            }
        });
    }
}

/// The connection to `relay`: the open one, or (for a relay other than our home
/// relay, whose connection only [`run_home`] makes) a new one.
pub(super) async fn link(
    shared: &Arc<Shared>,
    relay: &RelayRef,
) -> Result<quinn::Connection, NodeError> {
    if let Some(conn) = shared.live_link(&relay.node_id) {
        return Ok(conn);
    }
    if shared.is_home(&relay.node_id) {
        return Err(NodeError::Relay {
            relay: relay.node_id,
            reason: "not connected to the home relay right now (reconnecting)".into(),
        });
    }
    // One dial per relay at a time (a second connection would replace the first at
    // the relay); dials to different relays never wait for each other.
    let lock = shared.dial_lock(&relay.node_id);
    let _dialling = lock.lock().await;
    if let Some(conn) = shared.live_link(&relay.node_id) {
        return Ok(conn);
    }
    let conn = dial_relay(shared, relay).await.map_err(|f| f.error)?;
    shared
        .links
        .lock()
        .unwrap()
        .insert(relay.node_id, conn.clone());
    tokio::spawn(serve_link(shared.clone(), conn.clone(), relay.clone()));
    super::relayed::start(shared, &conn, relay.node_id);
    tokio::spawn(close_when_idle(shared.clone(), conn.clone(), relay.node_id));
    Ok(conn)
}

/// Closes a link to a relay that is not our home relay once no stream crossed it
/// (in either direction) for [`Shared::link_idle`]. QUIC keep-alives are no use.
/// Relayed packets are stream data, so a link carrying a live application
/// connection (whose own keep-alives cross it every few seconds) is never idle.
async fn close_when_idle(shared: Arc<Shared>, conn: quinn::Connection, relay: NodeId) {
    let streams = |c: &quinn::Connection| {
        let stats = c.stats();
        stats.frame_rx.stream + stats.frame_tx.stream
    };
    let idle = shared.link_idle;
    let mut seen = streams(&conn);
    let mut quiet_since = Instant::now();
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            () = tokio::time::sleep(idle / 4) => {}
        }
        let now = streams(&conn);
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= idle {
            debug!(%relay, "closing an idle relay link");
            shared.forget_link(&relay, &conn);
            conn.close(0u32.into(), b"idle");
            return;
        }
    }
}

/// Asks `relay` to carry `envelope`; its answer, with the destination's ack when
/// the relay pushed it at once.
pub(super) async fn forward(
    shared: &Arc<Shared>,
    relay: &RelayRef,
    envelope: &Envelope,
) -> Result<(ForwardResult, Option<Ack>), NodeError> {
    let conn = link(shared, relay).await?;
    let message = Message::Forward {
        envelope: envelope.clone(),
        reach: shared.own_reach(),
    };
    let failed = |reason: String| NodeError::Relay {
        relay: relay.node_id,
        reason,
    };
    // A link whose far side answers as no relay would is dropped, not reused.
    let drop_link = |reason: String| {
        conn.close(0u32.into(), b"not a relay");
        shared.forget_link(&relay.node_id, &conn);
        failed(reason)
    };
    match exchange_on(&conn, &message, STREAM_TIMEOUT).await {
        Ok(Message::Forwarded { result, ack }) => Ok((result, ack)),
        Ok(Message::Ack(Ack {
            status: AckStatus::Refused(refusal),
        })) => Err(drop_link(format!("not a relay (it answered: {refusal})"))),
        Ok(_) => Err(drop_link(
            "answered with something other than a relay answer".into(),
        )),
        Err(ExchangeError::Garbled) => Err(drop_link("sent an answer that does not decode".into())),
        Err(ExchangeError::Io(reason)) => {
            if conn.close_reason().is_some() {
                shared.forget_link(&relay.node_id, &conn);
            }
            Err(failed(reason))
        }
    }
}

/// Asks `relay` to ping `peer` over the peer's own link to it; Ok when the relay
/// says the peer answered (its unsigned word: see [`Message::PingThrough`]).
pub(super) async fn ping_through(
    shared: &Arc<Shared>,
    relay: &RelayRef,
    peer: NodeId,
    id: u64,
) -> Result<(), NodeError> {
    let conn = link(shared, relay).await?;
    let failed = |reason: String| NodeError::Relay {
        relay: relay.node_id,
        reason,
    };
    match exchange_on(
        &conn,
        &Message::PingThrough { to: peer, id },
        STREAM_TIMEOUT,
    )
    .await
    {
        Ok(Message::Pong { id: got }) if got == id => Ok(()),
        Ok(Message::Forwarded {
            result: ForwardResult::Delivered,
            ..
        }) => Err(failed(format!("{} did not answer in time", peer.short()))),
        Ok(Message::Forwarded { result, .. }) => Err(failed(result.to_string())),
        // An older relay does not know the message and refuses it as malformed.
        Ok(Message::Ack(_)) => Err(failed(
            "this relay cannot ping through (it predates that; upgrade it)".into(),
        )),
        Ok(_) | Err(ExchangeError::Garbled) => Err(failed("answered with something else".into())),
        Err(ExchangeError::Io(reason)) => Err(failed(reason)),
    }
}

/// Serves what a relay opens on our connection to it: pushed envelopes, notices, pings.
async fn serve_link(shared: Arc<Shared>, conn: quinn::Connection, relay: RelayRef) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let shared = shared.clone();
        let relay = relay.clone();
        tokio::spawn(async move { serve_link_stream(shared, relay, send, recv).await });
    }
    if !shared.is_home(&relay.node_id) {
        shared.forget_link(&relay.node_id, &conn);
    }
}

async fn serve_link_stream(
    shared: Arc<Shared>,
    relay: RelayRef,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some(bytes) = crate::node::read_one_message(&mut send, &mut recv).await else {
        return;
    };
    let refused = |refusal: Refusal| {
        shared.refusals.note(&refusal, crate::node::now_ms());
        Some(Message::Ack(Ack {
            status: AckStatus::Refused(refusal),
        }))
    };
    let answer = match decode_frame::<Message>(&bytes) {
        Ok(Some((Message::Relayed { envelope, reach }, _))) => {
            let from = envelope.body.from;
            let input = Input::Envelope {
                envelope,
                transport_peer: None,
                source: None,
                via_relay: Some(relay.node_id),
            };
            let hinted = reach != Reach::default();
            let learn = Learn {
                peer: Some(from),
                hint: hinted.then_some(reach),
                via: Some(relay.clone()),
                path: Some(PathKind::Relayed),
            };
            match shared.handle_learning(input, Some(learn)).await {
                Ok(handled) => {
                    for out in handled.outgoing {
                        let _ = shared.outbox.send(out);
                    }
                    match handled.reply {
                        Reply::Ack(ack) => Some(Message::Ack(ack)),
                        _ => refused(Refusal::Malformed),
                    }
                }
                Err(e) => {
                    warn!(relay = %relay.node_id, error = %e, "could not handle a relayed envelope");
                    let _ = send.reset(0u32.into());
                    return;
                }
            }
        }
        Ok(Some((Message::RelayNotice(notice), _))) => {
            on_notice(&shared, &relay, notice);
            None
        }
        Ok(Some((Message::Ping { id }, _))) => Some(Message::Pong { id }),
        _ => refused(Refusal::Malformed),
    };
    crate::node::write_answer(send, answer.as_ref()).await;
}

fn on_notice(shared: &Shared, relay: &RelayRef, notice: RelayNotice) {
    match notice {
        RelayNotice::Conflict { others } if shared.is_home(&relay.node_id) => {
            warn!(
                relay = %relay.node_id,
                ?others,
                "the home relay says this node's id is also connected to it from elsewhere (its unverified claim)"
            );
            let info = ConflictInfo {
                others: others.clone(),
                at_ms: now_ms(),
            };
            shared.update_status(|s| s.conflict = Some(info));
            shared.relay_event(relay.node_id, RelayEventKind::Conflict { others });
        }
        RelayNotice::ConflictOver if shared.is_home(&relay.node_id) => {
            let mut had = false;
            shared.update_status(|s| had = s.conflict.take().is_some());
            if had {
                info!(relay = %relay.node_id, "the home relay says the identity conflict is over (its unverified claim)");
                shared.relay_event(relay.node_id, RelayEventKind::ConflictOver);
            }
        }
        RelayNotice::Dropped { to, reason, .. } => {
            // Only information: the envelope stays owed until `to` acknowledges it,
            // and the resender sends it again.
            info!(relay = %relay.node_id, %to, %reason, "the relay dropped an envelope it had queued for a peer");
        }
        other => debug!(relay = %relay.node_id, ?other, "relay notice"),
    }
}
