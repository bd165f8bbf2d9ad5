//! `kith relay`: a relay server for nodes that cannot be dialled.
//!
//! A relay is a kith endpoint with its own identity (its data dir is initialised
//! like any node's) and a public address. Every node that connects is a client,
//! known by the NodeId its TLS certificate proved. This module moves bytes: it
//! accepts connections and streams, turns them into [`RelayInput`]s for the sans-IO
//! [`Relay`] state machine (`kith_protocol::relay`), and carries out the
//! [`RelayOutput`]s — pushing envelopes over destinations' connections, answering
//! senders, sending notices, probing and closing connections. Every decision
//! (routing, queueing, expiry, limits, conflicts) is the state machine's, so the
//! simulator runs relays with the same code.
//!
//! Also here: the dial-back a node may ask for when it registers (can the relay
//! dial it directly at the address it sees?). Beside it: the daemon around the
//! server (`daemon`: `run_daemon`, the control socket answering `status` and
//! `ticket`), the notices sent to clients unasked (`notices`), relayed packets
//! (`packets`) and per-address connection slots (`slots`).
//!
//! What it must never do: verify, alter, sign or originate an envelope (it has no
//! say in trust; envelopes are signed end to end and checked by their
//! destination), hold the state lock across an await, or keep anything on disk:
//! its queue is memory only, bounded by the state machine.

mod daemon;
mod notices;
mod packets;
mod slots;

pub use daemon::{RelayDaemonError, RelayDaemonInfo, run_daemon};
pub use notices::NOTICES_PER_CONN;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_keys::{NodeId, NodeKey};
use kith_protocol::frame::decode_frame;
use kith_protocol::relay::{
    ConnId, ForwardResult, Relay, RelayConfig, RelayInput, RelayOutput, RelayRefusal, RelayStats,
};
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{Ack, AckStatus, Envelope, Message, Reach, RelayNotice};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::node::{DIAL_TIMEOUT, ExchangeError, close_code, exchange_on, now_ms};
use crate::ticket::Ticket;
use crate::transport::tls::{self, TlsError};

/// How long a destination may take to acknowledge a pushed envelope. Shorter than
/// a sender's wait for the relay's answer, so the sender always hears back.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a forward refused for its sender's rate waits before it is answered.
/// A client has a few streams at once (`MAX_BIDI_STREAMS`), so a sender over its
/// rate gets a few refusals a second per connection, however fast it asks: before,
/// an attacker's 32 connections made the relay answer ~20,000 refusals a second, and
/// the CPU they took doubled honest registrations' latency.
pub const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(1);
/// How long a dial-back may take before the node counts as not directly reachable.
pub const DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(3);

/// How `kith relay` is configured.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub listen: SocketAddr,
    /// Addresses for the ticket instead of the local interfaces'.
    pub advertise: Vec<SocketAddr>,
    pub config: RelayConfig,
    /// Most connections (handshaking or established) from one address (an IPv6
    /// /64) at once; more are refused before the handshake.
    pub max_per_address: usize,
}

/// Default of [`RelayOptions::max_per_address`].
pub const MAX_PER_ADDRESS: usize = 32;

/// A running relay.
pub struct RelayServer {
    inner: Arc<Inner>,
    accept: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
}

struct Inner {
    node_id: NodeId,
    identity: tls::Identity,
    endpoint: quinn::Endpoint,
    /// A second endpoint, on another port, for dial-backs: a NAT lets in whatever
    /// comes from the very address and port the node itself talks to (the relay's
    /// listening socket), so a dial-back from there would prove nothing.
    dial_back: quinn::Endpoint,
    local_addr: SocketAddr,
    advertise: Vec<SocketAddr>,
    state: Mutex<State>,
    /// Wakes the ticker when the machine's next deadline may have moved.
    wake: Notify,
    next_conn: AtomicU64,
    probe_timeout: Duration,
    slots: Arc<slots::AddressSlots>,
    tap: Option<packets::Tap>,
    /// Bytes of relayed packets queued for all destinations (see [`packets`]).
    packet_bytes_queued: Arc<AtomicUsize>,
}

struct State {
    relay: Relay,
    conns: HashMap<ConnId, quinn::Connection>,
    /// What registering told each connection, for its `Register` request.
    notices: HashMap<ConnId, RelayNotice>,
    /// Reply hints of queued envelopes, by (destination, sender, nonce): the state
    /// machine queues envelopes only; the hint goes out with the envelope when it is
    /// pushed.
    hints: HashMap<(NodeId, NodeId, [u8; 16]), Reach>,
    /// Client connections with a [`Message::PingThrough`] under way (one each).
    pinging: std::collections::HashSet<ConnId>,
    /// Each registered connection's queue of relayed packets (see [`packets`]).
    packet_queues: HashMap<ConnId, packets::PacketQueue>,
    /// Notices sent unasked, in order per connection (see [`notices`]).
    notice_senders: notices::Notices,
}

/// A push to carry out: the destination connection, the envelope and its hint.
struct Push {
    conn_id: ConnId,
    conn: Option<quinn::Connection>,
    envelope: Envelope,
    reach: Reach,
}

/// What the relay thinks of itself, for `kith status`.
#[derive(Debug, Clone)]
pub struct RelaySnapshot {
    pub clients: usize,
    pub registered: usize,
    pub queued: usize,
    /// Bytes of the queued envelopes, as encoded.
    pub queued_bytes: usize,
    pub stats: RelayStats,
    pub max_clients: usize,
    pub allow: Option<usize>,
    /// Notices not sent because their connection's queue was full (see `relay::notices`).
    pub notices_dropped: u64,
    /// Connections with a notice sender task.
    pub notice_senders: usize,
}

impl RelayServer {
    /// Binds the endpoint and starts serving. Must be called within a Tokio runtime.
    pub async fn spawn(key: NodeKey, options: RelayOptions) -> Result<RelayServer, TlsError> {
        let identity = tls::Identity::new(&key)?;
        let endpoint = tls::make_relay_endpoint(&identity, options.listen)?;
        let local_addr = endpoint.local_addr().map_err(|source| TlsError::Bind {
            addr: options.listen,
            source,
        })?;
        let advertise = if options.advertise.is_empty() {
            crate::addrs::advertised(local_addr)
        } else {
            options.advertise
        };
        let probe_timeout = Duration::from_millis(options.config.probe_ms.max(1));
        let dial_back = tls::make_endpoint(&identity, SocketAddr::new(local_addr.ip(), 0))?;
        // It only dials.
        dial_back.set_server_config(None);
        let inner = Arc::new(Inner {
            node_id: key.node_id(),
            identity,
            endpoint,
            dial_back,
            local_addr,
            advertise,
            state: Mutex::new(State {
                relay: Relay::new(options.config),
                conns: HashMap::new(),
                notices: HashMap::new(),
                hints: HashMap::new(),
                pinging: Default::default(),
                packet_queues: HashMap::new(),
                notice_senders: Default::default(),
            }),
            wake: Notify::new(),
            next_conn: AtomicU64::new(1),
            probe_timeout,
            slots: slots::AddressSlots::new(options.max_per_address),
            tap: packets::Tap::from_env(),
            packet_bytes_queued: Arc::default(),
        });
        let accept = tokio::spawn(accept_loop(inner.clone()));
        let ticker = tokio::spawn(tick_loop(inner.clone()));
        info!(relay = %inner.node_id, %local_addr, "relay started");
        Ok(RelayServer {
            inner,
            accept,
            ticker,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The ticket nodes pass to `kith run --relay`.
    pub fn ticket(&self) -> Ticket {
        Ticket::direct(self.inner.node_id, self.inner.advertise.clone())
    }

    pub fn snapshot(&self) -> RelaySnapshot {
        let state = self.inner.state.lock().unwrap();
        let r = &state.relay;
        RelaySnapshot {
            clients: r.clients(),
            registered: r.registered(),
            queued: r.queued(),
            queued_bytes: r.queued_bytes(),
            stats: r.stats().clone(),
            max_clients: r.config().max_clients,
            allow: r.config().allow.as_ref().map(|a| a.len()),
            notices_dropped: state.notice_senders.dropped(),
            notice_senders: state.notice_senders.senders(),
        }
    }

    /// Closes every connection and stops.
    pub async fn shutdown(self) {
        self.accept.abort();
        self.ticker.abort();
        self.inner
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"relay shutting down");
        self.inner.dial_back.close(close_code::SHUTDOWN.into(), b"");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }
}

impl Inner {
    /// Runs one input through the machine and carries out every output that needs
    /// no answer from the caller. Returns the pushes (for a `Forward`, the caller
    /// carries them out to learn the destination's ack) and the forward's answer.
    fn step(
        self: &Arc<Self>,
        input: RelayInput,
        hint: Option<Reach>,
    ) -> (Vec<Push>, Option<ForwardResult>) {
        let forwarded = match &input {
            RelayInput::Forward { envelope, .. } => {
                Some((envelope.body.to, envelope.body.from, envelope.body.nonce))
            }
            _ => None,
        };
        let mut pushes = Vec::new();
        let mut answer = None;
        let mut probes = Vec::new();
        {
            let mut state = self.state.lock().unwrap();
            let outputs = state.relay.handle(now_ms(), input);
            for output in outputs {
                match output {
                    RelayOutput::Push { conn, envelope } => {
                        let key = (envelope.body.to, envelope.body.from, envelope.body.nonce);
                        let reach = if forwarded == Some(key) {
                            hint.clone().unwrap_or_default()
                        } else {
                            state.hints.remove(&key).unwrap_or_default()
                        };
                        pushes.push(Push {
                            conn_id: conn,
                            conn: state.conns.get(&conn).cloned(),
                            envelope,
                            reach,
                        });
                    }
                    RelayOutput::Answer { result, .. } => {
                        if let (ForwardResult::Queued, Some(key)) = (&result, forwarded) {
                            if let Some(hint) = &hint {
                                state.hints.entry(key).or_insert_with(|| hint.clone());
                            }
                        }
                        answer = Some(result);
                    }
                    RelayOutput::Registered { conn, observed } => {
                        state.notices.insert(
                            conn,
                            RelayNotice::Registered {
                                observed,
                                direct: None,
                            },
                        );
                    }
                    RelayOutput::Refused { conn, reason } => {
                        if reason == RelayRefusal::TooManyClients {
                            if let Some(c) = state.conns.remove(&conn) {
                                c.close(close_code::RELAY_FULL.into(), b"too many clients");
                            }
                        } else {
                            state.notices.insert(conn, RelayNotice::Refused(reason));
                        }
                    }
                    RelayOutput::Conflict { node, conns } => {
                        warn!(%node, ?conns, "identity conflict: one node id on several live connections");
                        for &c in &conns {
                            let others: Vec<SocketAddr> = conns
                                .iter()
                                .filter(|o| **o != c)
                                .filter_map(|o| state.relay.client(*o).map(|i| i.addr))
                                .collect();
                            if let Some(conn) = state.conns.get(&c).cloned() {
                                let notice = RelayNotice::Conflict { others };
                                state.notice_senders.send(c, &conn, notice);
                            }
                        }
                    }
                    RelayOutput::ConflictOver { node, conn } => {
                        info!(%node, "identity conflict over: one connection left");
                        if let Some(c) = state.conns.get(&conn).cloned() {
                            state
                                .notice_senders
                                .send(conn, &c, RelayNotice::ConflictOver);
                        }
                    }
                    RelayOutput::Probe { conn } => {
                        if let Some(c) = state.conns.get(&conn) {
                            probes.push((conn, c.clone()));
                        }
                    }
                    RelayOutput::Close { conn } => {
                        state.notices.remove(&conn);
                        state.notice_senders.forget(conn);
                        state.packet_queues.remove(&conn);
                        if let Some(c) = state.conns.remove(&conn) {
                            debug!(conn, "closing a replaced registration");
                            c.close(
                                close_code::REPLACED.into(),
                                b"replaced by a newer connection",
                            );
                        }
                    }
                    RelayOutput::Dropped {
                        conn,
                        to,
                        nonce,
                        reason,
                    } => {
                        if let Some((id, c)) =
                            conn.and_then(|id| Some((id, state.conns.get(&id)?.clone())))
                        {
                            let notice = RelayNotice::Dropped { to, nonce, reason };
                            state.notice_senders.send(id, &c, notice);
                        }
                    }
                    RelayOutput::Expired { to, count } => {
                        debug!(%to, count, "queued envelopes expired");
                        let relay = &state.relay;
                        let still: Vec<(NodeId, [u8; 16])> = relay
                            .queued_envelopes(&to)
                            .map(|e| (e.body.from, e.body.nonce))
                            .collect();
                        state
                            .hints
                            .retain(|k, _| k.0 != to || still.contains(&(k.1, k.2)));
                    }
                }
            }
            // Hints of envelopes the machine dropped without an `Expired` (a node
            // forgotten to make room for others): keep the side map within the queue's bound.
            if state.hints.len() > state.relay.config().queue_total {
                let State { relay, hints, .. } = &mut *state;
                hints.retain(|k, _| {
                    relay
                        .queued_envelopes(&k.0)
                        .any(|e| e.body.from == k.1 && e.body.nonce == k.2)
                });
            }
        }
        self.wake.notify_one();
        for (id, conn) in probes {
            let inner = self.clone();
            tokio::spawn(async move { inner.probe(id, conn).await });
        }
        (pushes, answer)
    }

    /// Pings an older connection of a node that registered again from elsewhere.
    async fn probe(self: Arc<Self>, id: ConnId, conn: quinn::Connection) {
        let ping = Message::Ping { id };
        if let Ok(Message::Pong { id: got }) = exchange_on(&conn, &ping, self.probe_timeout).await {
            if got == id {
                self.step(RelayInput::Alive { conn: id }, None);
            }
        }
    }

    /// Carries `envelope` to the destination over `push.conn`; its ack.
    async fn push(push: &Push) -> Result<Ack, String> {
        let Some(conn) = &push.conn else {
            return Err("the destination's connection is gone".into());
        };
        let message = Message::Relayed {
            envelope: push.envelope.clone(),
            reach: push.reach.clone(),
        };
        match exchange_on(conn, &message, PUSH_TIMEOUT).await {
            Ok(Message::Ack(ack)) => Ok(ack),
            Ok(_) => Err("the destination answered with something other than an ack".into()),
            Err(ExchangeError::Garbled) => Err("the destination's answer does not decode".into()),
            Err(ExchangeError::Io(e)) => Err(e),
        }
    }

    /// A client's ping of the node `to` (`kith ping` to a private node): a node
    /// answers its relay's pings over its link, so the relay asks and passes the
    /// answer on. Only a client may ask, one ping at a time per connection, each
    /// bounded by the probe timeout: it costs the destination one stream.
    async fn ping_through(&self, id: ConnId, to: NodeId, ping: u64) -> Message {
        let result = |result| Message::Forwarded { result, ack: None };
        let dest = {
            let mut state = self.state.lock().unwrap();
            if state.relay.client(id).is_none() {
                return result(ForwardResult::Refused(RelayRefusal::UnknownConnection));
            }
            if !state.pinging.insert(id) {
                return result(ForwardResult::Refused(RelayRefusal::RateLimited));
            }
            state
                .relay
                .route(&to)
                .and_then(|c| state.conns.get(&c).cloned())
        };
        let answer = match dest {
            None => result(ForwardResult::UnknownDestination),
            Some(dest) => {
                match exchange_on(&dest, &Message::Ping { id: ping }, self.probe_timeout).await {
                    Ok(Message::Pong { id: got }) if got == ping => Message::Pong { id: ping },
                    _ => result(ForwardResult::Delivered),
                }
            }
        };
        self.state.lock().unwrap().pinging.remove(&id);
        answer
    }

    /// A forward from connection `id`: route it, push it, answer with what happened.
    async fn forward(self: &Arc<Self>, id: ConnId, envelope: Envelope, reach: Reach) -> Message {
        // The hint is kept next to a queued envelope: held to the bounds a receiver
        // accepts, as the envelope is to its own, or it could fill the relay's memory.
        if !reach.is_bounded() {
            return Message::Forwarded {
                result: ForwardResult::Refused(RelayRefusal::Malformed),
                ack: None,
            };
        }
        let mut retried = false;
        loop {
            let (pushes, answer) = self.step(
                RelayInput::Forward {
                    conn: id,
                    envelope: envelope.clone(),
                },
                Some(reach.clone()),
            );
            let result = answer.unwrap_or(ForwardResult::Refused(RelayRefusal::UnknownConnection));
            let Some(push) = pushes.into_iter().next() else {
                if result == ForwardResult::Refused(RelayRefusal::RateLimited) {
                    // A sender over its rate waits for its refusal, holding one of its
                    // few streams: it cannot make the relay refuse as fast as it asks.
                    tokio::time::sleep(RATE_LIMITED_PAUSE).await;
                }
                return Message::Forwarded { result, ack: None };
            };
            match Self::push(&push).await {
                Ok(ack) => {
                    return Message::Forwarded {
                        result,
                        ack: Some(ack),
                    };
                }
                Err(e) => {
                    let closed = push
                        .conn
                        .as_ref()
                        .is_none_or(|c| c.close_reason().is_some());
                    debug!(conn = push.conn_id, error = %e, closed, "push failed");
                    if closed && !retried {
                        // The destination went away under us: once it is known to be
                        // offline, the same forward queues the envelope for it.
                        retried = true;
                        self.state.lock().unwrap().conns.remove(&push.conn_id);
                        self.step(RelayInput::Disconnected { conn: push.conn_id }, None);
                        continue;
                    }
                    return Message::Forwarded { result, ack: None };
                }
            }
        }
    }

    /// Answers a `Register`: the registration outcome, after a dial-back if asked.
    async fn register(&self, id: ConnId, node: NodeId, dial_back: bool) -> Message {
        let notice = self.state.lock().unwrap().notices.get(&id).cloned();
        match notice {
            // One dial-back per connection: a client looping `Register` must not make
            // the relay dial out again and again.
            Some(
                notice @ RelayNotice::Registered {
                    direct: Some(_), ..
                },
            ) => Message::RelayNotice(notice),
            Some(RelayNotice::Registered { observed, .. }) => {
                let direct = if dial_back {
                    Some(self.dial_back(observed, node).await)
                } else {
                    None
                };
                let notice = RelayNotice::Registered { observed, direct };
                self.state
                    .lock()
                    .unwrap()
                    .notices
                    .insert(id, notice.clone());
                Message::RelayNotice(notice)
            }
            Some(notice) => Message::RelayNotice(notice),
            None => Message::RelayNotice(RelayNotice::Refused(RelayRefusal::UnknownConnection)),
        }
    }

    /// Can `node` be dialled directly at `addr`, from a port it never talked to? The
    /// connection is closed at once.
    async fn dial_back(&self, addr: SocketAddr, node: NodeId) -> bool {
        match tokio::time::timeout(
            DIAL_BACK_TIMEOUT,
            tls::dial(&self.dial_back, &self.identity, addr, node),
        )
        .await
        {
            Ok(Ok(conn)) => {
                conn.close(close_code::DIAL_BACK.into(), b"dial-back");
                true
            }
            _ => false,
        }
    }
}

async fn tick_loop(inner: Arc<Inner>) {
    loop {
        let deadline = inner.state.lock().unwrap().relay.next_deadline();
        let wait = match deadline {
            Some(d) => Duration::from_millis(d.saturating_sub(now_ms()).clamp(1, 60_000)),
            None => Duration::from_secs(60),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {
                if deadline.is_some_and(|d| d <= now_ms()) {
                    inner.step(RelayInput::Tick, None);
                }
            }
            () = inner.wake.notified() => {}
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let remote = incoming.remote_address();
        // A per-address share means something only for an address the client has
        // proved it holds: a spoofer could otherwise spend a node's share by sending
        // first flights in its name. A Retry is stateless, and links are long-lived,
        // so the extra round trip is paid once per link.
        if !incoming.remote_address_validated() && incoming.may_retry() {
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        // Before any handshake work: one host gets a bounded share of the relay.
        let Some(slot) = inner.slots.claim(remote.ip()) else {
            debug!(%remote, "refused: too many connections from this address");
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(DIAL_TIMEOUT, incoming).await {
                Ok(Ok(conn)) => serve_connection(inner, conn).await,
                Ok(Err(e)) => debug!(%remote, error = %e, "inbound handshake failed"),
                Err(_) => debug!(%remote, "inbound handshake timed out"),
            }
        });
    }
}

async fn serve_connection(inner: Arc<Inner>, conn: quinn::Connection) {
    let node = match tls::peer_node_id(&conn) {
        Ok(node) => node,
        Err(e) => {
            debug!(error = %e, "connection without a usable node certificate");
            conn.close(0u32.into(), b"no node certificate");
            return;
        }
    };
    let addr = conn.remote_address();
    let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    inner.state.lock().unwrap().conns.insert(id, conn.clone());
    debug!(%node, %addr, conn = id, "client connected");
    let (pushes, _) = inner.step(
        RelayInput::Connected {
            conn: id,
            node,
            addr,
        },
        None,
    );
    packets::start(&inner, id, &conn);
    if !pushes.is_empty() {
        // What waited for this node, in order: a later envelope from one sender must
        // not overtake an earlier one (its high-water mark would refuse the earlier).
        tokio::spawn(async move {
            for push in pushes {
                if let Err(e) = Inner::push(&push).await {
                    debug!(conn = push.conn_id, error = %e, "pushing a queued envelope failed");
                }
            }
        });
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        let inner = inner.clone();
        tokio::spawn(async move { serve_stream(inner, id, node, send, recv).await });
    }
    let known = {
        let mut state = inner.state.lock().unwrap();
        state.notices.remove(&id);
        state.notice_senders.forget(id);
        state.packet_queues.remove(&id);
        state.conns.remove(&id).is_some()
    };
    if known {
        inner.step(RelayInput::Disconnected { conn: id }, None);
    }
    debug!(%node, conn = id, "client disconnected");
}

async fn serve_stream(
    inner: Arc<Inner>,
    id: ConnId,
    node: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some(bytes) = crate::node::read_one_message(&mut send, &mut recv).await else {
        return;
    };
    let answer = match decode_frame::<Message>(&bytes) {
        Ok(Some((Message::Forward { envelope, reach }, _))) => {
            inner.forward(id, envelope, reach).await
        }
        Ok(Some((Message::Register { dial_back }, _))) => inner.register(id, node, dial_back).await,
        Ok(Some((Message::Ping { id }, _))) => Message::Pong { id },
        Ok(Some((Message::PingThrough { to, id: ping }, _))) => {
            inner.ping_through(id, to, ping).await
        }
        _ => Message::Ack(Ack {
            status: AckStatus::Refused(Refusal::Malformed),
        }),
    };
    crate::node::write_answer(send, Some(&answer)).await;
}
