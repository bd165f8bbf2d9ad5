//! The QUIC transport parameters of kith's connections: timeouts, keep-alives,
//! stream counts and flow-control windows, per kind of connection (an unvetted peer's,
//! a trusted application's, a relay link's). Each bound here is part of the node's
//! memory arithmetic (docs/design.md, Transport); it must never hand a peer more room
//! than that arithmetic counts on.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

/// How long a connection may be silent before it is dropped. The smaller of both
/// sides' values applies.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the dialling side of an otherwise silent connection sends a
/// keep-alive. A third of the idle timeout, so two lost keep-alives do not yet kill
/// the connection, and short enough to keep typical NAT bindings (often 30 s or more
/// for UDP) open. Only the dialler sends them (it is the side behind a NAT, and its
/// keep-alives keep both sides' idle timers fresh): a listener that sent them would
/// keep every idle connection a stranger opened alive for it.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Concurrent bidirectional streams a peer may open. The protocol uses one short
/// request/response stream per exchange; 8 leaves room for pipelining while
/// bounding what an untrusted (not yet vetted) peer can make us hold open: each
/// open stream may hold a frame in our read buffer.
pub const MAX_BIDI_STREAMS: u32 = 8;
/// The protocol uses no unidirectional streams, so a peer may open none.
const MAX_UNI_STREAMS: u32 = 0;

/// Unread bytes any connection may hold across all its streams until the peer is
/// found trusted for an application: one largest kith frame, whatever the
/// per-stream window. Several small messages fit at once, and a connection whose
/// streams the node stops reading (its read budget is spent) holds no more than
/// this. See docs/design.md, Transport, for the sum over all connections.
pub const UNVETTED_CONNECTION_WINDOW: u32 = kith_protocol::frame::MAX_FRAME_LEN as u32 + 4;

/// Connection limits shared by both directions. Deliberately small: a peer is
/// untrusted until the protocol layer says otherwise, so it gets bounded resources
/// and a dead peer is noticed within the idle timeout. The per-stream window is the
/// data connections' ([`APP_STREAM_WINDOW`]) because a server announces it in the
/// handshake, before it knows which protocol the connection speaks; the connection
/// window keeps what an unvetted peer can make us buffer where it was. A kith message
/// is still at most one frame: its reader stops at [`kith_protocol::frame::MAX_FRAME_LEN`].
/// Only a dialled connection sends keep-alives (`keep_alive`).
pub(super) fn transport_config(keep_alive: bool) -> Arc<TransportConfig> {
    Arc::new(base_transport(keep_alive))
}

/// [`transport_config`] before it is shared, for the variants below.
fn base_transport(keep_alive: bool) -> TransportConfig {
    let mut transport = TransportConfig::default();
    // IdleTimeout from a VarInt is in milliseconds and cannot fail.
    transport.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
        IDLE_TIMEOUT.as_millis() as u32,
    ))));
    transport.keep_alive_interval(keep_alive.then_some(KEEP_ALIVE));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS));
    transport.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    transport.stream_receive_window(VarInt::from_u32(APP_STREAM_WINDOW));
    transport.receive_window(VarInt::from_u32(UNVETTED_CONNECTION_WINDOW));
    // No path MTU discovery: a kith message fits in the 1,200-byte datagram every
    // QUIC path carries, and each probe is ~1,450 bytes of PADDING that the receiver
    // parses frame by frame. Probing cost a direct handshake ~60 µs at p50 (bench).
    transport.mtu_discovery_config(None);
    transport
}

/// Unread bytes a relay link may hold, each way, once it carries packets (the node
/// dials with it; the relay raises a registered client's connection to it). The relay
/// and the node read packet streams as fast as they come, so this bounds bursts, not
/// a backlog.
pub const RELAY_LINK_WINDOW: u32 = 2 << 20;
/// Unidirectional streams either side of a relay link may open at once: the packet
/// stream, and its successor while the old one is being torn down.
pub const RELAY_DATA_STREAMS: u32 = 2;

/// The transport of a relay link as the node dials it: [`transport_config`] with
/// room for the relay's packet stream ([`super::frames`]).
pub(super) fn relay_link_transport_config() -> Arc<TransportConfig> {
    let mut transport = base_transport(true);
    transport.max_concurrent_uni_streams(VarInt::from_u32(RELAY_DATA_STREAMS));
    transport.stream_receive_window(VarInt::from_u32(RELAY_LINK_WINDOW));
    transport.receive_window(VarInt::from_u32(RELAY_LINK_WINDOW));
    // Path MTU discovery on (unlike other kith connections): a link is long-lived
    // and carries relayed QUIC packets of ~1,450 bytes, which in 1,200-byte outer
    // packets would each take two.
    transport.mtu_discovery_config(Some(quinn::MtuDiscoveryConfig::default()));
    Arc::new(transport)
}

/// The transport of the relay's side of its links: [`transport_config`] (small
/// windows and no unidirectional streams until a client registers, see
/// `relay::packets`) with path MTU discovery on, as on the node's side.
pub(super) fn relay_server_transport_config() -> Arc<TransportConfig> {
    let mut transport = base_transport(false);
    transport.mtu_discovery_config(Some(quinn::MtuDiscoveryConfig::default()));
    Arc::new(transport)
}

/// Flow-control windows of an application (data) connection. A stream's window bounds
/// one stream's throughput to window / RTT (4 MiB at 50 ms RTT is ~80 MiB/s); the
/// connection's bounds what all its streams may hold unread at once.
pub const APP_STREAM_WINDOW: u32 = 4 << 20;
/// Unread bytes a trusted application connection may hold across all its streams.
pub const APP_CONNECTION_WINDOW: u32 = 16 << 20;
/// Streams a trusted peer may open at once on an application connection, each way.
pub const APP_MAX_STREAMS: u32 = 256;

/// The transport of a connection this node dials for an application: the windows
/// above, both stream kinds, the same timeouts and keep-alive as every connection.
/// The accepting side starts every connection with `transport_config`'s small
/// limits (and no keep-alives of its own) and raises them only once the peer is
/// found trusted.
pub fn app_transport_config() -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    transport.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
        IDLE_TIMEOUT.as_millis() as u32,
    ))));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(APP_MAX_STREAMS));
    transport.max_concurrent_uni_streams(VarInt::from_u32(APP_MAX_STREAMS));
    transport.stream_receive_window(VarInt::from_u32(APP_STREAM_WINDOW));
    transport.receive_window(VarInt::from_u32(APP_CONNECTION_WINDOW));
    transport.send_window(u64::from(APP_CONNECTION_WINDOW));
    Arc::new(transport)
}
