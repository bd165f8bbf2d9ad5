//! kith-node: the kith daemon and its command line.
//!
//! # Layout
//!
//! - [`tls`]: node certificates and the verifiers that bind a QUIC connection to a NodeId.

pub mod tls;
