//! The node: a QUIC endpoint, the trust state machine and its store, wired together.
//!
//! The `core` owns the [`TrustMachine`] and the [`Store`](crate::store::Store).
//! Everything that can change trust — an envelope off the network, an operator
//! command, a timer — is submitted to it as an [`Input`]; it handles a batch of
//! inputs, commits all their store writes in one durable transaction, and only then
//! releases their replies, events and outgoing envelopes. So nothing is acknowledged
//! before it is on disk, and a burst of handshakes costs one fsync. The rest
//! (`deliver`, `serve`) only moves bytes: it must never decide trust itself, and
//! never send a reply the core has not released. `builder` wires it all together.
//!
//! Reaching peers: an envelope goes over an open connection to its peer, else to a
//! direct address, else through a relay (the peer's home relay, the relay it last
//! came through, our own home relay) — see [`crate::reach`]. A node with a home
//! relay keeps a connection to it (`link`) and receives envelopes pushed through
//! it like any other, with no transport peer and no source address. A private node
//! (`--private`) refuses every inbound connection and advertises no direct address.
//! Reply hints ([`Reach`]) learned from envelopes are stored by the core in the same
//! transaction as the envelope's effects, and only if it was applied.

mod admission;
mod app;
mod budget;
mod builder;
mod core;
mod deliver;
mod final_refusal;
mod gauges;
mod link;
mod ping;
mod refusals;
mod relayed;
mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use app::{Accepted, ConnectError};
pub use final_refusal::{FinalRefusal, is_final};
pub use link::{
    BACKOFF_MAX, BACKOFF_MIN, ConflictInfo, LINK_IDLE, LinkState, RelayEvent, RelayEventKind,
    RelayStatus,
};
pub use ping::Pinged;
pub use refusals::{SKEW_WARN_MS, SkewSeen, SkewWarnings};

use kith_keys::{NodeId, NodeKey};
use kith_protocol::machine::{Command, Event, Input, PeerRecord, Reply, TrustMachine};
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{AckStatus, Envelope, Reach, RelayRef};
use tokio::sync::{broadcast, oneshot};

pub use self::admission::{
    MAX_HANDSHAKES, MAX_INBOUND_CONNECTIONS, MAX_PER_ADDRESS, MAX_PER_IDENTITY,
    MAX_PER_TRUSTED_IDENTITY, TRUSTED_RESERVE,
};
pub use self::budget::MAX_BUFFERED;
pub use self::builder::NodeBuilder;
use self::core::Core;
pub(crate) use self::deliver::{ExchangeError, exchange_on};
pub use self::serve::UNTRUSTED_IDLE;
pub(crate) use self::serve::{read_one_message, write_answer};
use crate::metrics::NodeMetrics;
use crate::reach::{PathKind, PeerReach, Targets};
use crate::service::spec::ServiceSpec;
use crate::store::StoreError;
use crate::ticket::Ticket;
use crate::transport::tls::{self, TlsError};

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
    /// The relay side of the endpoint's socket: mapped addresses and packet queues.
    paths: Arc<crate::transport::path::RelayPaths>,
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
    /// Messages of ours that peers refused for good.
    final_refusals: final_refusal::FinalRefusals,
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
    /// through its relay (private, or the relay's dial-back failed), "unreachable"
    /// when private and its relay refused it or is no relay (or it has none).
    /// Without a relay nothing tested a public node: "direct (untested)".
    pub fn reachability(&self) -> &'static str {
        let status = self.relay_status();
        if self.shared.private {
            // Refused by its relay, or the relay is none: nobody can reach it.
            let cut_off = status.as_ref().is_some_and(|s| {
                s.state == LinkState::NotARelay
                    || (s.refusal.is_some() && s.state != LinkState::Registered)
            });
            return if cut_off || status.is_none() {
                "unreachable"
            } else {
                "relay only"
            };
        }
        match status.and_then(|s| s.direct) {
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

    /// Authenticated envelopes whose sender's clock was far from ours.
    pub fn clock_skew(&self) -> SkewWarnings {
        self.shared.refusals.skew()
    }

    /// The QUIC round-trip estimate of the home relay connection, while it is up.
    pub fn home_relay_rtt(&self) -> Option<Duration> {
        let home = self.shared.home.as_ref()?;
        let links = self.shared.links.lock().unwrap();
        let conn = links.get(&home.node_id)?;
        conn.close_reason().is_none().then(|| conn.rtt())
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
