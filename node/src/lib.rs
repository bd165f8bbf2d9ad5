//! kith-node: the kith daemon and its command line.
//!
//! # Layout
//!
//! - [`datadir`]: where a node keeps its keystore, database and control socket.
//! - [`harden`]: process hardening at daemon start.
//! - [`tls`]: node certificates and the verifiers that bind a QUIC connection to a NodeId.
//! - [`ticket`]: the pasteable string that says who a node is and how to reach it.
//! - [`control`]: the control socket between `kith` subcommands and the daemon.

pub mod control;
pub mod datadir;
pub mod harden;
pub mod ticket;
pub mod tls;
