//! The relay state machine's vocabulary: its configuration, inputs, outputs and
//! answers (see [the machine](super)). Data only: no decisions here, and, like the
//! whole crate, no I/O.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use kith_keys::NodeId;
use serde::{Deserialize, Serialize};

use crate::validate::DEFAULT_SKEW_MS;
use crate::wire::Envelope;
pub use crate::wire::{DropReason, ForwardResult, RelayRefusal};

/// The caller's name for one connection to the relay. Never reused while the
/// connection lives.
pub type ConnId = u64;

/// Default lifetime of a queued envelope: four minutes, below the five-minute
/// skew window (an envelope older than that would be refused by its
/// destination anyway).
pub const DEFAULT_QUEUE_TTL_MS: u64 = 4 * 60 * 1000;

/// Default byte quota of one sender's relayed packets: 16 MiB in a burst.
pub const DEFAULT_PACKET_BURST_BYTES: u64 = 16 << 20;
/// Default byte quota of one sender's relayed packets: 64 MiB/s sustained.
pub const DEFAULT_PACKET_BYTES_PER_SEC: u64 = 64 << 20;
/// Largest packet a relay carries (a QUIC datagram fits many times over).
pub const MAX_PACKET_LEN: usize = u16::MAX as usize;

/// Tunables of a relay. Everything has a sensible [`Default`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayConfig {
    /// Most registered connections at once; more are refused with
    /// [`RelayRefusal::TooManyClients`]. Clients that may not register (not on the
    /// allow list) do not count here: they have their own pool, `max_guests`.
    pub max_clients: usize,
    /// Of `max_clients`, how many only settled nodes (see `settled_ms`; every
    /// allow-listed node is settled) may take: fresh identities cannot fill them.
    pub reserved_for_settled: usize,
    /// Most connections at once of clients that may not register (they may only
    /// forward to registered nodes).
    pub max_guests: usize,
    /// Most envelopes queued for one offline destination.
    pub queue_per_destination: usize,
    /// Most envelopes queued in all.
    pub queue_total: usize,
    /// Most envelopes one sender may have queued, for all destinations together.
    pub queue_per_sender: usize,
    /// Most envelopes one sender may have queued for one destination, so that no
    /// sender can take a destination's whole queue.
    pub queue_per_sender_destination: usize,
    /// How long a queued envelope waits for its destination. Keep it below the
    /// destinations' skew window ([`DEFAULT_SKEW_MS`]).
    pub queue_ttl_ms: u64,
    /// Token bucket per sender: most envelopes forwarded in a burst. `0` turns
    /// rate limiting off.
    pub rate_burst: u32,
    /// Token bucket per sender: sustained envelopes per second.
    pub rate_per_sec: u32,
    /// If set, only these NodeIds may register (be routed to). Others may still
    /// connect and forward — so strangers can ask members for trust — but
    /// nothing is routed or queued for them.
    pub allow: Option<BTreeSet<NodeId>>,
    /// How long an older connection of a NodeId that registered again from
    /// another address has to answer a probe before it is closed as stale.
    /// `0`: report the conflict at once without probing.
    pub probe_ms: u64,
    /// How long after a registered node disconnects envelopes to it are still
    /// queued (rather than answered with [`ForwardResult::UnknownDestination`]).
    pub remember_ms: u64,
    /// Most offline nodes remembered for queueing. Past it the unsettled node gone
    /// longest is forgotten first; a settled one only when no unsettled one is left.
    pub remember_max: usize,
    /// A node that stayed registered this long on one connection (or is on the allow
    /// list) is *settled*: fresh identities connecting and leaving cannot push it out
    /// of the remembered nodes (and so drop its queue).
    pub settled_ms: u64,
    /// Token bucket per sender for relayed QUIC packets ([`Relay::route_packet`](super::Relay::route_packet)):
    /// most bytes in a burst (at least one largest packet is always allowed). `0`
    /// turns the byte quota off.
    #[serde(default)]
    pub packet_burst_bytes: u64,
    /// Token bucket per sender for relayed packets: sustained bytes per second. Each
    /// sender has its own bucket, so one busy sender cannot take the others' share.
    #[serde(default)]
    pub packet_bytes_per_sec: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_clients: 4096,
            reserved_for_settled: 512,
            max_guests: 1024,
            queue_per_destination: 64,
            queue_total: 4096,
            queue_per_sender: 256,
            queue_per_sender_destination: 8,
            queue_ttl_ms: DEFAULT_QUEUE_TTL_MS,
            rate_burst: 128,
            rate_per_sec: 32,
            allow: None,
            probe_ms: 5_000,
            remember_ms: 24 * 60 * 60 * 1000,
            remember_max: 16 * 1024,
            settled_ms: 60 * 60 * 1000,
            packet_burst_bytes: DEFAULT_PACKET_BURST_BYTES,
            packet_bytes_per_sec: DEFAULT_PACKET_BYTES_PER_SEC,
        }
    }
}

impl RelayConfig {
    /// Whether the queue TTL leaves queued envelopes acceptable to a
    /// destination with the default skew window.
    pub fn ttl_within_skew(&self) -> bool {
        self.queue_ttl_ms < DEFAULT_SKEW_MS
    }
}

/// One thing for the relay to process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayInput {
    /// A connection finished its handshake; `node` is the TLS-authenticated
    /// NodeId and `addr` the address the relay sees it from.
    Connected {
        conn: ConnId,
        node: NodeId,
        addr: SocketAddr,
    },
    /// A connection closed (or was closed after a [`RelayOutput::Close`]).
    Disconnected { conn: ConnId },
    /// A client asks for `envelope` to be carried to `envelope.body.to`.
    /// Always answered by exactly one [`RelayOutput::Answer`] in the same output.
    Forward { conn: ConnId, envelope: Envelope },
    /// A connection that was [probed](RelayOutput::Probe) answered.
    Alive { conn: ConnId },
    /// Time passed: expire queues and probes. Call at [`Relay::next_deadline`](super::Relay::next_deadline).
    Tick,
}

/// Something for the caller to do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayOutput {
    /// Send `envelope` to the client on `conn` (its destination).
    Push { conn: ConnId, envelope: Envelope },
    /// Tell the sender on `conn` what became of its envelope to `to`.
    Answer {
        conn: ConnId,
        to: NodeId,
        result: ForwardResult,
    },
    /// `conn` is registered: tell it the address the relay sees (`observed`).
    Registered { conn: ConnId, observed: SocketAddr },
    /// `conn` may not register. After [`RelayRefusal::TooManyClients`] the relay
    /// forgot the connection: close it. After [`RelayRefusal::NotAllowed`] the
    /// connection may still forward; nothing is routed to it.
    Refused { conn: ConnId, reason: RelayRefusal },
    /// `node` is connected from several live connections: tell each of `conns`.
    Conflict { node: NodeId, conns: Vec<ConnId> },
    /// Check that `conn` is still alive (e.g. a ping); report
    /// [`RelayInput::Alive`] if it answers, or nothing.
    Probe { conn: ConnId },
    /// Close `conn`: the relay has forgotten it (a stale registration).
    Close { conn: ConnId },
    /// `count` envelopes queued for `to` expired undelivered.
    Expired { to: NodeId, count: usize },
    /// A queued envelope was dropped undelivered: tell its sender, connected on
    /// `conn` (`None`: not connected now), so it knows not to count on it.
    Dropped {
        conn: Option<ConnId>,
        to: NodeId,
        nonce: [u8; 16],
        reason: DropReason,
    },
    /// `node`, reported in a [`RelayOutput::Conflict`], is down to the one
    /// connection `conn`: the other copies left. Tell it the conflict is over.
    ConflictOver { node: NodeId, conn: ConnId },
}

/// Counters, for status and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStats {
    pub forwarded: u64,
    pub delivered: u64,
    pub queued: u64,
    /// Queued envelopes pushed when their destination registered.
    pub delivered_from_queue: u64,
    pub expired: u64,
    pub unknown_destination: u64,
    pub refused: u64,
    pub conflicts: u64,
    /// Of `refused`: forwards refused because their sender had its queue quota full.
    #[serde(default)]
    pub sender_quota: u64,
    /// Relayed QUIC packets handed to their destination's queue, and their bytes.
    #[serde(default)]
    pub packets_relayed: u64,
    #[serde(default)]
    pub packet_bytes_relayed: u64,
    /// Packets refused by routing (see [`PacketRefusal`]).
    #[serde(default)]
    pub packets_refused: u64,
    /// Packets routed but dropped because their destination's queue was full, and their bytes.
    #[serde(default)]
    pub packets_dropped: u64,
    #[serde(default)]
    pub packet_bytes_dropped: u64,
}

/// Where a relayed packet goes ([`Relay::route_packet`](super::Relay::route_packet)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketRoute {
    /// Onto the connection `conn`'s packet queue, naming the sender as `src`.
    Deliver {
        conn: ConnId,
        src: NodeId,
    },
    Refused(PacketRefusal),
}

/// Why a relayed packet is not carried. The sender is not told: packets are
/// datagrams, and QUIC above them retransmits or times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketRefusal {
    /// The connection is not (or no longer) a client.
    UnknownConnection,
    /// The sender may not register here (not on the allow list): guests may only
    /// forward envelopes, not carry data.
    NotRegistered,
    /// No registered connection for the destination.
    UnknownDestination,
    /// Empty, or longer than [`MAX_PACKET_LEN`].
    BadLength,
    /// The sender's byte quota is spent for now.
    Quota,
}

/// What the relay knows about one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub node: NodeId,
    pub addr: SocketAddr,
    /// Whether envelopes are routed to it (false: may only forward).
    pub registered: bool,
    pub since_ms: u64,
    /// Settled before this connection (see [`RelayConfig::settled_ms`]).
    pub settled: bool,
}
