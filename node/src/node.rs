//! The node: a QUIC endpoint, the trust state machine and its store, wired together.
//!
//! The [`core`] owns the [`TrustMachine`] and the [`Store`]. Everything that can
//! change trust — an envelope off the network, an operator command, a timer — is
//! submitted to it as an [`Input`]; it handles a batch of inputs, commits all their
//! store writes in one durable transaction, and only then releases their replies,
//! events and outgoing envelopes. So nothing is acknowledged before it is on disk,
//! and a burst of handshakes costs one fsync. The rest only moves bytes: it must
//! never decide trust itself, and never send a reply the core has not released.
//!
//! Reaching peers: an envelope goes over an open connection to its peer, else to a
//! direct address, else through a relay (the peer's home relay, the relay it last
//! came through, our own home relay) — see [`crate::reach`]. A node with a home
//! relay keeps a connection to it ([`link`]) and receives envelopes pushed through
//! it like any other, with no transport peer and no source address. A private node
//! (`--private`) refuses every inbound connection and advertises no direct address.
//! Reply hints ([`Reach`]) learned from envelopes are stored by the core in the same
//! transaction as the envelope's effects, and only if it was applied.

mod admission;
mod app;
mod budget;
mod core;
mod link;
mod refusals;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use app::{Accepted, ConnectError};
pub use link::{
    BACKOFF_MAX, BACKOFF_MIN, ConflictInfo, LINK_IDLE, LinkState, RelayEvent, RelayEventKind,
    RelayStatus,
};

use kith_keys::{NodeId, NodeKey};
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::machine::{
    Command, Config, Event, Input, PeerRecord, Reply, TrustMachine, TrustState,
};
use kith_protocol::relay::ForwardResult;
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{Ack, AckStatus, Envelope, Message, Reach, RelayRef};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, info, warn};

pub use self::admission::{
    MAX_HANDSHAKES, MAX_INBOUND_CONNECTIONS, MAX_PER_ADDRESS, MAX_PER_IDENTITY,
    MAX_PER_TRUSTED_IDENTITY, TRUSTED_RESERVE,
};
pub use self::budget::MAX_BUFFERED;
use self::core::Core;
use crate::metrics::NodeMetrics;
use crate::reach::{PathKind, PeerReach, Targets};
use crate::service::spec::ServiceSpec;
use crate::store::{Store, StoreError};
use crate::ticket::Ticket;
use crate::tls::{self, TlsError};

/// The most that inbound connections can make a node buffer, in bytes: quinn's
/// unread data (one connection window per connection) plus the node's read budget
/// for streams being read. Within [`MEMORY_BUDGET`]; see docs/design.md.
pub const INBOUND_BUFFER_BOUND: usize =
    MAX_INBOUND_CONNECTIONS * tls::UNVETTED_CONNECTION_WINDOW as usize + MAX_BUFFERED;
/// What a node may spend on buffering inbound data, at most.
pub const MEMORY_BUDGET: usize = 320 << 20;
const _: () = assert!(INBOUND_BUFFER_BOUND <= MEMORY_BUDGET);

/// How long a peer may take to send its half of a stream before it is dropped.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial may take before it counts as failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Events buffered for slow subscribers before they start missing some.
const EVENT_BUFFER: usize = 1024;
/// First resend of an unacknowledged message; doubled after each failure.
const RESEND_FIRST: Duration = Duration::from_secs(2);
/// Longest wait between resends to a peer that stays unreachable.
const RESEND_MAX: Duration = Duration::from_secs(300);
/// A message no peer acknowledged for this long is given up (as pending requests expire).
const RESEND_GIVE_UP_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long a direct dial may take before delivery falls back to a relay (when the
/// peer has one): long enough for a handshake over a slow path, short enough that a
/// NAT that drops the dial costs little.
pub const DIRECT_BEFORE_RELAY: Duration = Duration::from_secs(2);

/// QUIC application close codes.
pub mod close_code {
    pub const SHUTDOWN: u32 = 0;
    pub const REVOKED: u32 = 1;
    /// A relay closes a connection that a newer registration replaced.
    pub const REPLACED: u32 = 2;
    /// A relay closes its dial-back connection as soon as it is established.
    pub const DIAL_BACK: u32 = 3;
    /// A relay refuses a client (too many clients).
    pub const RELAY_FULL: u32 = 4;
    /// A node closes an application connection from a peer it does not trust.
    pub const NOT_TRUSTED: u32 = 5;
    /// A node closes an application connection whose peer stopped being trusted;
    /// the reason says the peer's new state (e.g. `trust ended: revoked`).
    pub const TRUST_ENDED: u32 = 6;
    /// A node closes an application connection its application is too slow to take.
    pub const BUSY: u32 = 7;
    /// A node turns a connection away after its handshake (too many from that
    /// address or node, or no room left for untrusted peers).
    pub const TOO_MANY: u32 = 8;
    /// A node closes an untrusted peer's connection that stayed idle.
    pub const IDLE: u32 = 9;
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the node's database failed")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Command(kith_protocol::machine::CommandError),
    #[error("the node is shutting down")]
    Stopped,
    #[error("no address is known for {0}; use its ticket")]
    NoAddress(NodeId),
    #[error("cannot reach {peer}: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    #[error("{peer} refused the message: {refusal}")]
    Refused { peer: NodeId, refusal: Refusal },
    #[error("{0} is not a trusted peer; only trusted peers can be pinged")]
    NotTrusted(NodeId),
    #[error("{peer} answered with something other than an acknowledgement")]
    Protocol { peer: NodeId },
    #[error("relay {relay}: {reason}")]
    Relay { relay: NodeId, reason: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Where the node keeps its database.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    InMemory,
    File(PathBuf),
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    key: NodeKey,
    listen: SocketAddr,
    store: StoreLocation,
    config: Config,
    advertise: Vec<SocketAddr>,
    relay: Option<RelayRef>,
    private: bool,
    protocols: Vec<Vec<u8>>,
    link_idle: Duration,
}

impl NodeBuilder {
    /// A node with this key, listening on 0.0.0.0:7444, with an in-memory store and the default policy.
    pub fn new(key: NodeKey) -> Self {
        NodeBuilder {
            key,
            listen: SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_PORT)),
            store: StoreLocation::InMemory,
            config: Config::default(),
            advertise: Vec::new(),
            relay: None,
            private: false,
            protocols: Vec::new(),
            link_idle: link::LINK_IDLE,
        }
    }

    /// Serves the application protocol `alpn` to trusted peers: their connections
    /// come out of [`Node::accept`]. Any number may be registered; `kith/1` is kith's own.
    pub fn protocol(mut self, alpn: impl Into<Vec<u8>>) -> Self {
        let alpn = alpn.into();
        if !self.protocols.contains(&alpn) {
            self.protocols.push(alpn);
        }
        self
    }

    /// How long a link to a relay other than the home relay may carry nothing
    /// before it is closed (default [`link::LINK_IDLE`]).
    pub fn link_idle(mut self, idle: Duration) -> Self {
        self.link_idle = idle;
        self
    }

    /// The home relay: the node keeps a connection to it, registers there, and its
    /// ticket names it.
    pub fn relay(mut self, relay: RelayRef) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Accept no inbound connection and advertise no direct address: reachable only
    /// through the home relay (and over connections this node opened).
    pub fn private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    pub fn store(mut self, store: StoreLocation) -> Self {
        self.store = store;
        self
    }

    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Addresses to put in tickets instead of the ones found on local interfaces.
    pub fn advertise(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.advertise = addrs;
        self
    }

    /// Opens the store, binds the endpoint and starts the node's tasks.
    pub async fn spawn(self) -> Result<Node, NodeError> {
        let store = match &self.store {
            StoreLocation::InMemory => Store::in_memory()?,
            StoreLocation::File(path) => Store::open(path)?,
        };
        let node_id = self.key.node_id();
        // The store's peers approved one identity: a node never runs on another's.
        if store.bind_owner(node_id)? == crate::store::Ownership::Adopted {
            if let StoreLocation::File(path) = &self.store {
                info!(%node_id, path = %path.display(), "the database recorded no owner; it now belongs to this node");
            }
        }
        let snapshot = store.load()?;
        let mut config = self.config.clone();
        // A policy switched on by command stays on; `--auto-approve` can only add to it.
        config.auto_approve |= snapshot.auto_approve;
        let machine = TrustMachine::restore(
            node_id,
            config,
            snapshot.peers,
            snapshot.allow,
            snapshot.deny,
        );
        for alpn in &self.protocols {
            app::check_alpn(alpn)?;
        }
        let identity = tls::Identity::new(&self.key)?;
        let endpoint = tls::make_endpoint_with(&identity, self.listen, &self.protocols)?;
        let local_addr = endpoint.local_addr().map_err(|source| TlsError::Bind {
            addr: self.listen,
            source,
        })?;
        let advertise_given = !self.advertise.is_empty();
        let advertise = if self.private {
            Vec::new()
        } else if self.advertise.is_empty() {
            crate::addrs::advertised(local_addr)
        } else {
            self.advertise
        };
        let reach: ReachMap = Arc::new(Mutex::new(snapshot.reach.into_iter().collect()));
        let unacked: UnackedMap = Arc::new(Mutex::new(
            snapshot
                .outbox
                .into_iter()
                .map(|(id, since_ms)| (id, Unacked { seq: 0, since_ms }))
                .collect(),
        ));

        let services: ServiceMap = Arc::new(Mutex::new(snapshot.services.into_iter().collect()));
        let metrics = Arc::new(NodeMetrics::default());
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (relay_events, first_relay_subscriber) = broadcast::channel(EVENT_BUFFER);
        let key = Arc::new(self.key);
        let refusals = Arc::new(refusals::Refusals::default());
        let core = Arc::new(Core::new(
            machine,
            store,
            CoreLinks {
                key: key.clone(),
                events: events.clone(),
                reach: reach.clone(),
                unacked: unacked.clone(),
                home: self.relay.clone(),
                services: services.clone(),
                metrics: metrics.clone(),
                refusals: refusals.clone(),
            },
        ));
        let (outbox, outbox_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node_id,
            identity,
            endpoint: endpoint.clone(),
            local_addr,
            advertise,
            advertise_given,
            private: self.private,
            home: self.relay.clone(),
            core,
            events: events.clone(),
            refusals,
            conns: Mutex::new(HashMap::new()),
            outbox,
            reach: reach.clone(),
            unacked: unacked.clone(),
            links: Mutex::new(HashMap::new()),
            link_dial: Mutex::new(HashMap::new()),
            link_idle: self.link_idle,
            relay_status: Mutex::new(self.relay.as_ref().map(link::RelayStatus::new)),
            relay_events,
            first_relay_subscriber: Mutex::new(Some(first_relay_subscriber)),
            apps: app::Apps::new(&self.protocols),
            services,
            metrics,
            admission: Arc::default(),
            budget: budget::ReadBudget::default(),
        });
        let ticker = tokio::spawn(shared.core.clone().run_ticker());
        let accept = tokio::spawn(accept_loop(shared.clone()));
        let outbox = tokio::spawn(run_outbox(shared.clone(), outbox_rx));
        let resender = tokio::spawn(run_resender(shared.clone()));
        let app_watch = tokio::spawn(shared.clone().watch_app_trust());
        let home_link = self
            .relay
            .map(|relay| tokio::spawn(link::run_home(shared.clone(), relay)));
        info!(%node_id, %local_addr, private = self.private, "node started");
        Ok(Node {
            shared,
            ticker,
            accept,
            outbox,
            resender,
            app_watch,
            home_link,
        })
    }
}

/// A running kith node.
pub struct Node {
    shared: Arc<Shared>,
    ticker: tokio::task::JoinHandle<()>,
    accept: tokio::task::JoinHandle<()>,
    outbox: tokio::task::JoinHandle<()>,
    resender: tokio::task::JoinHandle<()>,
    app_watch: tokio::task::JoinHandle<()>,
    home_link: Option<tokio::task::JoinHandle<()>>,
}

/// How each peer is reached; written by the core (after its commit), read by
/// delivery and views.
type ReachMap = Arc<Mutex<HashMap<NodeId, PeerReach>>>;

struct Shared {
    node_id: NodeId,
    /// The certificate and key every connection of this node authenticates with.
    identity: tls::Identity,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    advertise: Vec<SocketAddr>,
    /// `advertise` was given by the operator (not found on interfaces).
    advertise_given: bool,
    /// Refuse inbound connections; advertise no direct address.
    private: bool,
    /// The home relay, if any.
    home: Option<RelayRef>,
    core: Arc<Core>,
    events: broadcast::Sender<Event>,
    /// Every envelope refused, by the machine or before it, per reason.
    refusals: Arc<refusals::Refusals>,
    /// Direct connections to peers, by peer.
    conns: Mutex<HashMap<NodeId, quinn::Connection>>,
    /// Envelopes produced while serving a peer (auto-approvals, mutual trust), delivered
    /// by the outbox task so that serving never waits on dialling.
    outbox: tokio::sync::mpsc::UnboundedSender<Outgoing>,
    reach: ReachMap,
    /// Peers owed an acknowledged message (mirror of the store's outbox).
    unacked: UnackedMap,
    /// Connections to relays (the home relay's and ones dialled to reach a peer), by relay.
    links: Mutex<HashMap<NodeId, quinn::Connection>>,
    /// One lock per relay being dialled, held while dialling it, so two deliveries
    /// never open two connections to one relay (the relay would close the older one
    /// as replaced) while dials to different relays proceed side by side.
    link_dial: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// How long a link to a relay other than the home relay may stay unused.
    link_idle: Duration,
    /// The home relay connection's state, for `kith status`.
    relay_status: Mutex<Option<link::RelayStatus>>,
    relay_events: broadcast::Sender<RelayEvent>,
    /// Subscribed before the home link starts, so the first subscriber (the daemon)
    /// sees the relay events of the first moments too.
    first_relay_subscriber: Mutex<Option<broadcast::Receiver<RelayEvent>>>,
    /// Application protocols, their accepted connections, and the live ones by peer.
    apps: app::Apps,
    /// The services this node exposes (see [`crate::service`]).
    services: ServiceMap,
    /// Counters and histograms for `--metrics`.
    metrics: Arc<NodeMetrics>,
    /// Inbound connection slots: per address, per identity, and the trusted reserve.
    admission: Arc<admission::Admission>,
    /// Bytes all streams being read may hold at once.
    budget: budget::ReadBudget,
}

/// A read of the state machine, run by the core after the commit of its batch.
type ReadFn = Box<dyn FnOnce(&TrustMachine, u64) + Send>;
/// Where a handled input's result goes; `None` for the core's own ticks.
type ReplyTo = Option<oneshot::Sender<Result<Handled, NodeError>>>;

enum CoreMsg {
    Handle {
        // Boxed: an envelope makes `Input` large, and most messages are small.
        input: Box<Input>,
        /// What to remember about reaching the peer if the input is applied.
        learn: Option<Box<Learn>>,
        reply: oneshot::Sender<Result<Handled, NodeError>>,
        /// When it was submitted, for the handling-time metric.
        arrived: std::time::Instant,
    },
    Read(ReadFn),
    /// Which path last reached a peer (after a delivery); stored with the next batch.
    Path {
        peer: NodeId,
        path: PathKind,
    },
    /// The peer acknowledged the message with this sequence number.
    Delivered {
        peer: NodeId,
        seq: u64,
    },
    /// Stop resending to the peer (it never acknowledged within the give-up time).
    Abandon {
        peer: NodeId,
        seq: u64,
    },
    /// Nothing but a batch, which handles first what the machine has due.
    Tick,
    /// Expose (`Some`) or unexpose (`None`) a service; `done` is told after the commit.
    Service {
        name: String,
        spec: Option<ServiceSpec>,
        done: oneshot::Sender<()>,
    },
}

/// A peer owed a message it has not acknowledged (the durable outbox, mirrored).
#[derive(Debug, Clone, Copy)]
struct Unacked {
    /// Of the latest envelope produced for the peer; 0 for one loaded at start.
    seq: u64,
    since_ms: u64,
}

type UnackedMap = Arc<Mutex<HashMap<NodeId, Unacked>>>;

/// Reachability learned with an input: from a ticket (a request command) or from an
/// envelope's reply hint. Recorded only if the input was applied.
#[derive(Debug, Clone, Default)]
struct Learn {
    peer: Option<NodeId>,
    hint: Option<Reach>,
    /// The relay the envelope came through.
    via: Option<RelayRef>,
    /// The path the envelope came by.
    path: Option<PathKind>,
}

/// What the core released for one input, after its writes were committed.
struct Handled {
    reply: Reply,
    outgoing: Vec<Outgoing>,
}

/// A signed envelope to deliver, with the ways the core knows to reach its recipient.
#[derive(Clone)]
struct Outgoing {
    envelope: Envelope,
    targets: Targets,
    /// Its outbox sequence number: an acknowledgement clears the peer's marker only
    /// if no newer message was produced for it meanwhile.
    seq: u64,
}

/// Where to dial a peer: where it last spoke from (its endpoint, on a direct
/// connection), then the address it was asked at.
fn dial_addrs(record: Option<&PeerRecord>) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = record
        .into_iter()
        .flat_map(|r| [r.source, r.address])
        .flatten()
        .collect();
    addrs.dedup();
    addrs
}

/// The outcome of delivering one envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The peer acknowledged it with this status, over a direct connection.
    Acked(AckStatus),
    /// A relay pushed it to the peer; `ack` is the peer's answer if it came back in time.
    Relayed {
        relay: NodeId,
        ack: Option<AckStatus>,
    },
    /// The peer is offline; its relay holds the envelope until it reconnects.
    Queued { relay: NodeId },
    /// The peer could not be reached now; delivery is retried in the background.
    Retrying { reason: String },
}

impl Delivery {
    /// The peer's acknowledgement, however it came back.
    pub fn ack(&self) -> Option<&AckStatus> {
        match self {
            Delivery::Acked(status) => Some(status),
            Delivery::Relayed { ack, .. } => ack.as_ref(),
            _ => None,
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the core shares with the rest of the node.
struct CoreLinks {
    key: Arc<NodeKey>,
    events: broadcast::Sender<Event>,
    reach: ReachMap,
    unacked: UnackedMap,
    home: Option<RelayRef>,
    services: ServiceMap,
    metrics: Arc<NodeMetrics>,
    /// Refused envelopes, per reason; shared with [`Shared::refusals`].
    refusals: Arc<refusals::Refusals>,
}

/// The services this node exposes, as committed; written by the core after its commit.
type ServiceMap = Arc<Mutex<std::collections::BTreeMap<String, ServiceSpec>>>;

impl Shared {
    async fn handle(&self, input: Input) -> Result<Handled, NodeError> {
        self.handle_learning(input, None).await
    }

    async fn handle_learning(
        &self,
        input: Input,
        learn: Option<Learn>,
    ) -> Result<Handled, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.core.submit(CoreMsg::Handle {
            input: Box::new(input),
            learn: learn.map(Box::new),
            reply: tx,
            arrived: std::time::Instant::now(),
        })?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Records (with the core's next commit) which path last reached `peer`.
    fn note_path(&self, peer: NodeId, path: PathKind) {
        let already = self
            .reach
            .lock()
            .unwrap()
            .get(&peer)
            .is_some_and(|r| r.last_path == Some(path));
        if !already {
            let _ = self.core.submit(CoreMsg::Path { peer, path });
        }
    }

    /// How this node can be reached, as its reply hints say: its direct addresses
    /// (none when private, or when its relay's dial-back found it unreachable; plus
    /// the address its relay sees when the dial-back succeeded) and its home relay.
    fn own_reach(&self) -> Reach {
        let status = self.relay_status.lock().unwrap().clone();
        let mut direct = if self.private {
            Vec::new()
        } else {
            self.advertise.clone()
        };
        // The home relay's notices are unsigned claims: they change the hint only
        // where the node corroborates them (see link::verify_observed).
        if let Some(status) = &status {
            // "Not reachable directly" hides only addresses the node found on its
            // interfaces and that are not global anyway: never an address the operator
            // gave, nor a public one.
            let doubtful =
                self.advertise_given || direct.iter().any(|a| crate::addrs::is_global(a.ip()));
            if status.direct == Some(false) && !doubtful {
                direct.clear();
            }
            if let Some(observed) = status.verified_observed {
                if !self.private && !direct.contains(&observed) {
                    direct.insert(0, observed);
                }
            }
        }
        direct.truncate(crate::ticket::MAX_ADDRS);
        Reach {
            direct,
            relay: self.home.clone(),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TrustMachine, u64) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.core.submit(CoreMsg::Read(Box::new(move |m, now| {
            let _ = tx.send(f(m, now));
        })))?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Whether `peer` is trusted now; `false` if the core cannot answer.
    async fn is_trusted(&self, peer: NodeId) -> bool {
        self.read(move |m, now| m.is_trusted(&peer, now))
            .await
            .unwrap_or(false)
    }

    fn cached_connection(&self, peer: &NodeId) -> Option<quinn::Connection> {
        let conns = self.conns.lock().unwrap();
        conns
            .get(peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    fn remember_connection(&self, peer: NodeId, conn: &quinn::Connection) {
        let mut conns = self.conns.lock().unwrap();
        let replace = conns.get(&peer).is_none_or(|c| c.close_reason().is_some());
        if replace {
            conns.insert(peer, conn.clone());
        }
    }

    fn forget_connection(&self, peer: &NodeId, conn: &quinn::Connection) {
        let mut conns = self.conns.lock().unwrap();
        if conns
            .get(peer)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(peer);
        }
    }

    /// Closes every connection to `peer` at once (after a revocation).
    fn close_peer(&self, peer: &NodeId, reason: &str) {
        if let Some(conn) = self.conns.lock().unwrap().remove(peer) {
            conn.close(close_code::REVOKED.into(), reason.as_bytes());
        }
    }

    /// The open connection to `peer`, or a new one dialled at `addr`. A dialled
    /// connection is served like an accepted one: the peer opens streams on it too.
    async fn connection(
        self: &Arc<Self>,
        peer: NodeId,
        addrs: &[SocketAddr],
        dial_timeout: Duration,
    ) -> Result<quinn::Connection, NodeError> {
        if let Some(conn) = self.cached_connection(&peer) {
            return Ok(conn);
        }
        if addrs.is_empty() {
            return Err(NodeError::NoAddress(peer));
        }
        let mut failures = Vec::new();
        for &addr in addrs {
            let dialled = tokio::time::timeout(
                dial_timeout,
                tls::dial(&self.endpoint, &self.identity, addr, peer),
            )
            .await;
            match dialled {
                Ok(Ok(conn)) => {
                    self.remember_connection(peer, &conn);
                    tokio::spawn(serve_connection(self.clone(), conn.clone(), None));
                    return Ok(conn);
                }
                Ok(Err(e)) => failures.push(format!("{addr}: {}", error_chain(&e))),
                Err(_) => failures.push(format!("{addr}: no answer within {dial_timeout:?}")),
            }
        }
        Err(NodeError::Unreachable {
            peer,
            reason: failures.join("; "),
        })
    }

    /// Sends one message on a new stream and waits for the single answer.
    async fn exchange(
        self: &Arc<Self>,
        peer: NodeId,
        addrs: &[SocketAddr],
        message: &Message,
    ) -> Result<Message, NodeError> {
        self.exchange_within(peer, addrs, message, DIAL_TIMEOUT)
            .await
    }

    async fn exchange_within(
        self: &Arc<Self>,
        peer: NodeId,
        addrs: &[SocketAddr],
        message: &Message,
        dial_timeout: Duration,
    ) -> Result<Message, NodeError> {
        let conn = self.connection(peer, addrs, dial_timeout).await?;
        let result = exchange_on(&conn, message, STREAM_TIMEOUT)
            .await
            .map_err(|e| match e {
                ExchangeError::Io(reason) => NodeError::Unreachable { peer, reason },
                ExchangeError::Garbled => NodeError::Protocol { peer },
            });
        if result.is_err() {
            // A broken connection must not be reused for the next attempt.
            self.forget_connection(&peer, &conn);
        }
        result
    }

    /// One attempt over every path, in order: the open connection or a direct dial,
    /// then each relay.
    async fn deliver_once(self: &Arc<Self>, out: &Outgoing) -> Result<Delivery, NodeError> {
        let peer = out.envelope.body.to;
        let mut failures = Vec::new();
        let has_conn = self.cached_connection(&peer).is_some();
        if has_conn || !out.targets.direct.is_empty() {
            let dial_timeout = if out.targets.relays.is_empty() {
                DIAL_TIMEOUT
            } else {
                DIRECT_BEFORE_RELAY
            };
            let message = Message::Deliver {
                envelope: out.envelope.clone(),
                reach: self.own_reach(),
            };
            match self
                .exchange_within(peer, &out.targets.direct, &message, dial_timeout)
                .await
            {
                Ok(Message::Ack(Ack { status })) => {
                    self.note_path(peer, PathKind::Direct);
                    return Ok(Delivery::Acked(status));
                }
                Ok(_) => failures.push(NodeError::Protocol { peer }.to_string()),
                Err(NodeError::Stopped) => return Err(NodeError::Stopped),
                // The final error says "cannot reach <peer>" once for every path.
                Err(NodeError::Unreachable { reason, .. }) => failures.push(reason),
                Err(e) => failures.push(e.to_string()),
            }
        }
        for relay in &out.targets.relays {
            match link::forward(self, relay, &out.envelope).await {
                Ok((ForwardResult::Delivered, ack)) => {
                    self.note_path(peer, PathKind::Relayed);
                    return Ok(Delivery::Relayed {
                        relay: relay.node_id,
                        ack: ack.map(|a| a.status),
                    });
                }
                Ok((ForwardResult::Queued, _)) => {
                    self.note_path(peer, PathKind::Relayed);
                    return Ok(Delivery::Queued {
                        relay: relay.node_id,
                    });
                }
                Ok((other, _)) => {
                    failures.push(format!("relay {}: {other}", relay.node_id.short()))
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        if failures.is_empty() {
            return Err(NodeError::NoAddress(peer));
        }
        Err(NodeError::Unreachable {
            peer,
            reason: failures.join("; "),
        })
    }

    /// Delivers now if possible. Until the peer acknowledges, its outbox marker stays
    /// and [`run_resender`] re-signs and re-sends what the state implies.
    async fn deliver(self: &Arc<Self>, out: Outgoing) -> Delivery {
        match self.deliver_once(&out).await {
            Ok(delivery) => {
                self.after_delivery(&out, &delivery);
                delivery
            }
            Err(e) => {
                let reason = e.to_string();
                debug!(peer = %out.envelope.body.to, %reason, "delivery failed; it will be resent");
                if matches!(
                    out.envelope.body.kind,
                    kith_protocol::wire::Kind::Revoke { .. }
                ) {
                    // Revoked is revoked at once, whether or not the peer heard it yet.
                    self.close_peer(&out.envelope.body.to, "revoked");
                }
                Delivery::Retrying { reason }
            }
        }
    }

    fn after_delivery(&self, out: &Outgoing, delivery: &Delivery) {
        // Only the peer's own acknowledgement proves receipt: a relay's "queued" or an
        // unanswered push may still be lost (relay restart, dead connection).
        if delivery.ack().is_some_and(settles_debt) {
            let _ = self.core.submit(CoreMsg::Delivered {
                peer: out.envelope.body.to,
                seq: out.seq,
            });
        }
        if let Some(AckStatus::Refused(refusal)) = delivery.ack() {
            warn!(peer = %out.envelope.body.to, %refusal, "peer refused our {} envelope", kind_name(&out.envelope));
        }
        if matches!(
            out.envelope.body.kind,
            kith_protocol::wire::Kind::Revoke { .. }
        ) {
            self.close_peer(&out.envelope.body.to, "revoked");
        }
    }
}

fn kind_name(envelope: &Envelope) -> &'static str {
    envelope.body.kind.name()
}

/// Why one exchange on a connection failed.
pub(crate) enum ExchangeError {
    /// The stream failed or timed out.
    Io(String),
    /// The answer did not decode.
    Garbled,
}

/// Reads the one message the other side sends on a stream it opened: at most one
/// frame, within [`STREAM_TIMEOUT`]. A failed or stalled read resets the stream and
/// gives `None`.
pub(crate) async fn read_one_message(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Option<Vec<u8>> {
    match tokio::time::timeout(STREAM_TIMEOUT, recv.read_to_end(MAX_FRAME_LEN + 4)).await {
        Ok(Ok(bytes)) => Some(bytes),
        Ok(Err(e)) => {
            debug!(error = %e, "stream read failed");
            let _ = send.reset(0u32.into());
            None
        }
        Err(_) => {
            debug!("stream stalled; dropping it");
            let _ = send.reset(0u32.into());
            None
        }
    }
}

/// Writes our one answer (if any), finishes the stream, and waits a bounded time for
/// the other side to take it.
pub(crate) async fn write_answer(mut send: quinn::SendStream, answer: Option<&Message>) {
    if let Some(frame) = answer.and_then(|a| encode_frame(a).ok()) {
        let _ = send.write_all(&frame).await;
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, send.stopped()).await;
}

/// Sends `message` on a new stream of `conn` and waits (at most `timeout`) for the one answer.
pub(crate) async fn exchange_on(
    conn: &quinn::Connection,
    message: &Message,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let frame = encode_frame(message).map_err(|e| ExchangeError::Io(e.to_string()))?;
    let io = |e: &dyn std::fmt::Display| ExchangeError::Io(e.to_string());
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
        send.write_all(&frame).await.map_err(|e| io(&e))?;
        send.finish().map_err(|e| io(&e))?;
        let bytes = recv
            .read_to_end(MAX_FRAME_LEN + 4)
            .await
            .map_err(|e| io(&e))?;
        match decode_frame::<Message>(&bytes) {
            Ok(Some((message, _))) => Ok(message),
            _ => Err(ExchangeError::Garbled),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ExchangeError::Io("timed out waiting for an answer".into()))?
}

/// An error and its causes in one line, for messages that travel as strings.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // Messages that already end with their source's text would say it twice.
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Whether an acknowledgement ends what we owe the peer: any answer but a refusal,
/// or a refusal that resending cannot change (the peer already has something newer
/// from us, or has no record of us at all).
fn settles_debt(status: &AckStatus) -> bool {
    match status {
        AckStatus::Refused(refusal) => matches!(
            refusal,
            Refusal::Stale | Refusal::ReplayedNonce | Refusal::Unsolicited
        ),
        _ => true,
    }
}

/// Re-sends to every peer still owed an acknowledged message: at start (what a
/// crash left undelivered) and then with exponential backoff, each time re-signed
/// by the trust machine (`Command::Resend`), so a message is never too old for the
/// peer's skew window however long the peer was away.
async fn run_resender(shared: Arc<Shared>) {
    struct Due {
        at: tokio::time::Instant,
        backoff: Duration,
    }
    let mut schedule: HashMap<NodeId, Due> = HashMap::new();
    let in_flight: Arc<Mutex<std::collections::HashSet<NodeId>>> = Arc::default();
    loop {
        let owed: Vec<(NodeId, Unacked)> = shared
            .unacked
            .lock()
            .unwrap()
            .iter()
            .map(|(id, u)| (*id, *u))
            .collect();
        schedule.retain(|id, _| owed.iter().any(|(o, _)| o == id));
        let now = tokio::time::Instant::now();
        for (peer, unacked) in owed {
            let due = schedule.entry(peer).or_insert_with(|| Due {
                // Loaded at start: due now. Just produced: its first delivery is under way.
                at: if unacked.seq == 0 {
                    now
                } else {
                    now + RESEND_FIRST
                },
                backoff: RESEND_FIRST,
            });
            if due.at > now || in_flight.lock().unwrap().contains(&peer) {
                continue;
            }
            due.backoff = (due.backoff * 2).min(RESEND_MAX);
            due.at = now + due.backoff;
            if now_ms().saturating_sub(unacked.since_ms) > RESEND_GIVE_UP_MS {
                warn!(%peer, "giving up: the peer acknowledged nothing for 7 days");
                let _ = shared.core.submit(CoreMsg::Abandon {
                    peer,
                    seq: unacked.seq,
                });
                continue;
            }
            in_flight.lock().unwrap().insert(peer);
            let shared = shared.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                if let Ok(handled) = shared
                    .handle(Input::Command(Command::Resend { peer }))
                    .await
                {
                    for out in handled.outgoing {
                        shared.deliver(out).await;
                    }
                }
                in_flight.lock().unwrap().remove(&peer);
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run_outbox(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        let shared = shared.clone();
        tokio::spawn(async move { shared.deliver(out).await });
    }
}

/// How long a peer may take to read our answer before the stream is dropped.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// An inbound connection from an untrusted peer with no stream for this long is
/// closed: a stranger needs a connection only to hand over a message, and held
/// idle ones would pile up (nothing of ours keeps them alive either: the server
/// side sends no keep-alives, see `tls`).
pub const UNTRUSTED_IDLE: Duration = Duration::from_secs(10);

/// Takes inbound connections within the bounds of [`admission`]: per source
/// address before the handshake, per identity and the trusted reserve after it.
async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let remote = incoming.remote_address();
        if shared.private {
            // A private node is reachable only through its relay: refuse at once
            // (CONNECTION_REFUSED), before any handshake work.
            debug!(%remote, "refusing an inbound connection (private node)");
            incoming.refuse();
            continue;
        }
        let handshake = match shared.admission.begin_handshake(remote) {
            Ok(handshake) => handshake,
            Err(why) => {
                debug!(%remote, ?why, "refusing an inbound connection before its handshake");
                incoming.refuse();
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(DIAL_TIMEOUT, incoming).await {
                Ok(Ok(conn)) => serve_inbound(shared, conn, handshake).await,
                Ok(Err(e)) => debug!(%remote, error = %e, "inbound handshake failed"),
                Err(_) => debug!(%remote, "inbound handshake timed out"),
            }
        });
    }
}

/// Admits (or turns away) an inbound connection whose handshake finished, then serves it.
async fn serve_inbound(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    handshake: admission::Handshake,
) {
    let Ok(peer) = tls::peer_node_id(&conn) else {
        conn.close(0u32.into(), b"no node certificate");
        return;
    };
    let trusted = shared.is_trusted(peer).await;
    match shared.admission.admit(handshake, peer, trusted) {
        Ok(admitted) => serve_connection(shared, conn, Some(admitted)).await,
        Err(why) => {
            debug!(%peer, remote = %conn.remote_address(), ?why, "turning a connection away");
            conn.close(close_code::TOO_MANY.into(), why.reason());
        }
    }
}

/// Serves the streams a peer opens on `conn`, whichever side dialled it. An inbound
/// connection (`admitted`) from an untrusted peer is closed once it stays idle for
/// [`UNTRUSTED_IDLE`] with no stream being served.
async fn serve_connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    admitted: Option<admission::Admitted>,
) {
    let peer = match tls::peer_node_id(&conn) {
        Ok(peer) => peer,
        Err(e) => {
            debug!(error = %e, "connection without a usable node certificate");
            conn.close(0u32.into(), b"no node certificate");
            return;
        }
    };
    if let Some(alpn) = tls::negotiated_alpn(&conn).filter(|a| a.as_slice() != tls::ALPN) {
        // An application connection: it holds its inbound slot until it closes.
        shared.accept_app(peer, alpn, conn.clone()).await;
        conn.closed().await;
        return;
    }
    let remote = conn.remote_address();
    shared.remember_connection(peer, &conn);
    let reap = admitted.as_ref().is_some_and(|a| !a.trusted());
    let serving = Arc::new(());
    loop {
        let next = if reap {
            match tokio::time::timeout(UNTRUSTED_IDLE, conn.accept_bi()).await {
                Ok(next) => next,
                Err(_) => {
                    // Only this loop holds `serving` when no stream task is running.
                    if Arc::strong_count(&serving) == 1 && !shared.is_trusted(peer).await {
                        debug!(%peer, %remote, "closing an idle connection of an untrusted peer");
                        conn.close(close_code::IDLE.into(), b"idle");
                        break;
                    }
                    continue;
                }
            }
        } else {
            conn.accept_bi().await
        };
        let Ok((send, recv)) = next else { break };
        let shared = shared.clone();
        let conn = conn.clone();
        let serving = serving.clone();
        tokio::spawn(async move {
            serve_stream(shared, conn, peer, remote, send, recv).await;
            drop(serving);
        });
    }
    shared.forget_connection(&peer, &conn);
    drop(admitted);
}

async fn serve_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: NodeId,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // Refusals made here, before the machine (which counts its own in the core).
    let refused = |refusal: Refusal| {
        shared.refusals.note(&refusal, now_ms());
        Message::Ack(Ack {
            status: AckStatus::Refused(refusal),
        })
    };
    // `_held` keeps the message's bytes counted until it is answered.
    let Some((bytes, _held)) =
        budget::read_message(&shared.budget, &mut send, &mut recv, MAX_FRAME_LEN + 4).await
    else {
        return;
    };
    let mut close_after = false;
    let decoded = match decode_frame::<Message>(&bytes) {
        Ok(Some((Message::Envelope(envelope), _))) => Ok(Some((
            Message::Deliver {
                envelope,
                reach: Reach::default(),
            },
            0,
        ))),
        other => other,
    };
    let answer = match decoded {
        Ok(Some((Message::Deliver { envelope, reach }, _))) => {
            let from = envelope.body.from;
            let input = Input::Envelope {
                envelope,
                transport_peer: Some(peer),
                source: Some(remote),
                via_relay: None,
            };
            // A plain `Envelope` (no hint) tells nothing about reaching the sender.
            let hinted = reach != Reach::default();
            let learn = Learn {
                peer: Some(from),
                hint: hinted.then_some(reach),
                via: None,
                path: Some(PathKind::Direct),
            };
            match shared.handle_learning(input, Some(learn)).await {
                Ok(handled) => {
                    for out in handled.outgoing {
                        let _ = shared.outbox.send(out);
                    }
                    match handled.reply {
                        Reply::Ack(ack) => {
                            close_after = ack.status == AckStatus::Revoked;
                            Message::Ack(ack)
                        }
                        _ => refused(Refusal::Malformed),
                    }
                }
                Err(e) => {
                    warn!(%peer, error = %e, "could not handle an envelope");
                    let _ = send.reset(0u32.into());
                    return;
                }
            }
        }
        Ok(Some((Message::Ping { id }, _))) => {
            if shared.is_trusted(peer).await {
                Message::Pong { id }
            } else {
                refused(Refusal::NotTrusted)
            }
        }
        Ok(Some(_)) | Ok(None) | Err(_) => refused(Refusal::Malformed),
    };
    write_answer(send, Some(&answer)).await;
    if close_after {
        shared.close_peer(&peer, "revoked");
        conn.close(close_code::REVOKED.into(), b"revoked");
    }
}

impl Node {
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The ticket other nodes use to reach this one: its direct addresses (none when
    /// private) and its home relay.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            node_id: self.shared.node_id,
            addrs: self.shared.advertise.clone(),
            relay: self.shared.home.clone(),
        }
    }

    /// Whether this node refuses inbound connections.
    pub fn is_private(&self) -> bool {
        self.shared.private
    }

    /// The home relay connection's state; `None` without a home relay.
    pub fn relay_status(&self) -> Option<RelayStatus> {
        self.shared.relay_status.lock().unwrap().clone()
    }

    /// "direct" when peers can dial this node, "relay only" when they must go
    /// through its relay (private, or the relay's dial-back failed). Without a relay
    /// nothing tested it: "direct (untested)".
    pub fn reachability(&self) -> &'static str {
        if self.shared.private {
            return "relay only";
        }
        match self.relay_status().and_then(|s| s.direct) {
            Some(true) => "direct",
            Some(false) => "relay only",
            None => "direct (untested)",
        }
    }

    /// Relay connection events (connected, registered, refused, identity conflict).
    /// The first call gets every event since the node started.
    pub fn subscribe_relay(&self) -> broadcast::Receiver<RelayEvent> {
        self.shared
            .first_relay_subscriber
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| self.shared.relay_events.subscribe())
    }

    /// How each peer is reached, as far as this node knows.
    pub fn reach(&self) -> HashMap<NodeId, PeerReach> {
        self.shared.reach.lock().unwrap().clone()
    }

    /// Events as they happen (request received, approved, revoked, ...).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Envelopes refused since the node started, per reason; only the first few of
    /// each minute also reach [`Node::subscribe`] as events.
    pub fn refusals(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared.refusals.counts()
    }

    /// Runs an operator command; envelopes it produces are delivered before this returns
    /// (or handed to background retry if the peer cannot be reached now).
    pub async fn command(&self, command: Command) -> Result<Vec<Delivery>, NodeError> {
        let handled = self.shared.handle(Input::Command(command)).await?;
        match handled.reply {
            Reply::Failed(e) => return Err(NodeError::Command(e)),
            Reply::Done | Reply::None | Reply::Ack(_) => {}
        }
        let mut deliveries = Vec::new();
        for out in handled.outgoing {
            deliveries.push(self.shared.deliver(out).await);
        }
        Ok(deliveries)
    }

    /// Asks the node named by `ticket` for trust.
    pub async fn request(
        &self,
        ticket: &Ticket,
        justification: &str,
    ) -> Result<Delivery, NodeError> {
        let command = Command::Request {
            to: ticket.node_id,
            justification: justification.to_string(),
            address: ticket.addrs.first().copied(),
        };
        let learn = Learn {
            peer: Some(ticket.node_id),
            hint: Some(ticket.reach()),
            ..Learn::default()
        };
        let handled = self
            .shared
            .handle_learning(Input::Command(command), Some(learn))
            .await?;
        if let Reply::Failed(e) = handled.reply {
            return Err(NodeError::Command(e));
        }
        let mut deliveries = Vec::new();
        for out in handled.outgoing {
            deliveries.push(self.shared.deliver(out).await);
        }
        Ok(deliveries
            .into_iter()
            .next()
            .unwrap_or(Delivery::Acked(AckStatus::Pending)))
    }

    /// A copy of every peer record.
    pub async fn peers(&self) -> Result<Vec<PeerRecord>, NodeError> {
        self.shared.read(|m, _| m.peers().cloned().collect()).await
    }

    /// Reads the state machine (as of the core's latest commit). `f` runs inside
    /// the core, on whichever task is committing: it must be quick and must not
    /// block, and a panic in it stops the node's core.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TrustMachine, u64) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        self.shared.read(f).await
    }

    pub async fn is_trusted(&self, peer: NodeId) -> Result<bool, NodeError> {
        self.shared
            .read(move |m, now| m.is_trusted(&peer, now))
            .await
    }

    /// Round-trip time to a trusted peer over its connection.
    pub async fn ping(&self, peer: NodeId) -> Result<Duration, NodeError> {
        let (trusted, addrs) = self
            .shared
            .read(move |m, now| (m.is_trusted(&peer, now), dial_addrs(m.peer(&peer))))
            .await?;
        if !trusted {
            return Err(NodeError::NotTrusted(peer));
        }
        let id = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let started = std::time::Instant::now();
        match self
            .shared
            .exchange(peer, &addrs, &Message::Ping { id })
            .await?
        {
            Message::Pong { id: got } if got == id => Ok(started.elapsed()),
            Message::Ack(Ack {
                status: AckStatus::Refused(refusal),
            }) => Err(NodeError::Refused { peer, refusal }),
            _ => Err(NodeError::Protocol { peer }),
        }
    }

    /// A connection to `peer`'s application `alpn`, once both sides found the other
    /// trusted. Fails with a typed [`ConnectError`] when we do not trust the peer, it
    /// does not trust us, it does not serve `alpn`, or it cannot be reached. The
    /// connection is closed (code [`close_code::TRUST_ENDED`]) as soon as either side
    /// stops trusting the other.
    pub async fn connect(
        &self,
        peer: NodeId,
        alpn: &[u8],
    ) -> Result<quinn::Connection, ConnectError> {
        self.shared.connect_app(peer, alpn).await
    }

    /// The next connection from a trusted peer to the application protocol `alpn`
    /// (registered with [`NodeBuilder::protocol`]); `None` if it was not registered
    /// or the node stopped.
    pub async fn accept(&self, alpn: &[u8]) -> Option<Accepted> {
        self.shared.next_app(alpn).await
    }

    /// Exposes (`Some`) or unexposes (`None`) the service `name`, durably: returns
    /// once it is committed. Checks nothing; [`crate::service::expose`] does.
    pub async fn set_service(
        &self,
        name: String,
        spec: Option<ServiceSpec>,
    ) -> Result<(), NodeError> {
        let (done, committed) = oneshot::channel();
        self.shared
            .core
            .submit(CoreMsg::Service { name, spec, done })?;
        committed.await.map_err(|_| NodeError::Stopped)
    }

    /// The services this node exposes, by name.
    pub fn services(&self) -> std::collections::BTreeMap<String, ServiceSpec> {
        self.shared.services.lock().unwrap().clone()
    }

    /// The node's metrics in the Prometheus text format, its gauges read now.
    pub async fn metrics(&self) -> Result<String, NodeError> {
        let (peers, pending) = self
            .shared
            .read(|m, now| {
                let mut counts: std::collections::BTreeMap<&'static str, i64> = [
                    TrustState::OutgoingPending,
                    TrustState::IncomingPending,
                    TrustState::Trusted,
                    TrustState::Rejected,
                    TrustState::RejectedByPeer,
                    TrustState::Revoked,
                    TrustState::RevokedByPeer,
                    TrustState::Expired,
                ]
                .iter()
                .map(|s| (s.as_str(), 0))
                .collect();
                for p in m.peers() {
                    let state = if p.state == TrustState::Trusted && !p.is_trusted(now) {
                        TrustState::Expired
                    } else {
                        p.state
                    };
                    *counts.entry(state.as_str()).or_default() += 1;
                }
                (counts, m.pending_incoming() as i64)
            })
            .await?;
        let open = |c: &quinn::Connection| c.close_reason().is_none();
        let direct = self
            .shared
            .conns
            .lock()
            .unwrap()
            .values()
            .filter(|c| open(c))
            .count();
        let relay = self
            .shared
            .links
            .lock()
            .unwrap()
            .values()
            .filter(|c| open(c))
            .count();
        let app = self.shared.apps.total();
        let peers: Vec<(&'static str, i64)> = peers.into_iter().collect();
        self.shared.metrics.set_state(
            &peers,
            pending,
            &[
                ("direct", direct as i64),
                ("relay_link", relay as i64),
                ("application", app as i64),
            ],
        );
        Ok(self.shared.metrics.render())
    }

    /// The application protocols this node serves.
    pub fn protocols(&self) -> Vec<Vec<u8>> {
        self.shared.apps.protocols()
    }

    /// Whether what answers at the ticket's addresses is a relay: it completes a TLS
    /// handshake for the ticket's id with the relay ALPN, which no node offers. For
    /// telling an operator who pasted a relay's ticket where a node's was wanted; it
    /// decides nothing else, and the connection is closed at once.
    pub async fn answers_as_relay(&self, ticket: &Ticket) -> bool {
        let Some(&addr) = ticket.addrs.first() else {
            return false;
        };
        let dial = tls::dial_relay(
            &self.shared.endpoint,
            &self.shared.identity,
            addr,
            ticket.node_id,
        );
        match tokio::time::timeout(DIRECT_BEFORE_RELAY, dial).await {
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

    /// Resolves, with the cause, if the node stops working on its own: a store
    /// commit failed (nothing of that batch was acknowledged, and nothing more can
    /// be), or a bug stopped its core. The node then answers every call with
    /// [`NodeError::Stopped`]; whoever runs it should shut it down and report the
    /// cause, and a restart reopens the store.
    pub async fn failed(&self) -> String {
        self.shared.core.failed().await
    }

    /// Closes all connections with a reason and stops the core after its last commit.
    pub async fn shutdown(&self) {
        if let Some(home) = &self.home_link {
            home.abort();
        }
        self.shared
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"node shutting down");
        self.accept.abort();
        self.outbox.abort();
        self.resender.abort();
        self.app_watch.abort();
        self.ticker.abort();
        let endpoint = self.shared.endpoint.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        // Commits everything submitted before this, then closes the store. Blocks
        // until the inputs already queued are committed.
        self.shared.core.stop();
    }
}
