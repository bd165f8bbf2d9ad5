//! What carries a node's QUIC: the TLS identity layer ([`tls`]), the connections'
//! transport parameters ([`limits`]), the socket under the
//! node's endpoint whose packets take the direct path or a relay ([`path`]), and the
//! framing of packets on a relay link ([`frames`]).
//!
//! Nothing here decides trust: it binds connections to keys and moves packets.

pub mod frames;
pub mod limits;
pub mod path;
pub mod tls;
