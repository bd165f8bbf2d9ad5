//! kith-node: the kith daemon and its command line.
//!
//! # Layout
//!
//! - [`node`]: [`Node`] — a QUIC endpoint, the trust state machine and its store, wired
//!   together; embeddable (see examples/two_nodes.rs). Its private `link` submodule is
//!   the relay client: the home relay connection (keep-alive, reconnect with backoff and
//!   jitter, registration) and forwarding through relays. Its private `app` submodule
//!   gates application connections on trust ([`Node::connect`], [`Node::accept`]);
//!   `core` owns the trust machine and the store (group commit); `admission` and
//!   `budget` bound inbound connections and what their streams may buffer.
//!   - `builder`: [`NodeBuilder`]: opens the store, binds the endpoint, starts the tasks.
//!   - `deliver`: dialling, exchanges, delivery over every path, the outbox and the resender.
//!   - `serve`: the accept loop, serving inbound connections and streams, one message each way.
//! - [`service`]: services a node exposes to trusted peers (`kith expose`, `connect`,
//!   `forward`) and their protocol, `kith-svc/1`, on top of application connections.
//! - [`daemon`]: `kith run` — a node bound to a data dir, answering on its control socket.
//! - [`control`]: the control socket protocol between `kith` subcommands and the daemon.
//! - [`hooks`]: the `--on-request` hook's bounded queue, which never drops a run silently.
//! - [`store`]: the redb database: its owner, peers, allow and deny lists, audit log
//!   (capped), reach records, outbox markers, services; `store::migrate` upgrades old schemas.
//! - [`metrics`]: Prometheus exposition for `kith run --metrics` and `kith relay --metrics`.
//! - [`reach`]: how each peer is reached (direct addresses, its home relay, the last
//!   path that worked) and the order delivery tries them in.
//! - [`relay`]: `kith relay` — a relay server: a QUIC endpoint driving the sans-IO
//!   `kith_protocol::relay::Relay`, with its own control socket.
//! - [`transport`]: what carries QUIC: [`transport::tls`] (node certificates and the
//!   verifiers that bind a QUIC connection to a NodeId) and [`transport::path`] (the
//!   node's socket, whose packets go direct over UDP or through a relay).
//! - [`ticket`]: the pasteable string that says who a node is and how to reach it.
//! - [`addrs`]: which local addresses go into a ticket.
//! - [`datadir`], [`unlock`], [`harden`]: the data directory, unlocking the keystore,
//!   and process hardening (and the process's effective uid).
//! - [`instance`]: the instance record that tells a copied data dir from a moved one,
//!   and [`instance_secret`], the per-instance secret it rests on, kept outside the data dir.
//! - [`cli`]: the `kith` command line (the binary's `main` is [`cli::main`]); [`demo`].
//!
//! Imports point one way: `cli` → `daemon`/`relay` → `service` → `node` → `store`,
//! `transport`, `reach` → the protocol crate. docs/design.md ("Layout") has the map.

pub mod addrs;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod datadir;
pub mod demo;
pub mod harden;
pub mod hooks;
pub mod instance;
pub mod instance_secret;
pub mod metrics;
pub mod node;
pub mod reach;
pub mod relay;
pub mod service;
pub mod store;
pub mod ticket;
pub mod transport;
pub mod unlock;

pub use node::{Accepted, ConnectError, Delivery, Node, NodeBuilder, NodeError, StoreLocation};

/// The UDP port a kith node listens on by default.
pub const DEFAULT_PORT: u16 = 7444;
/// The UDP port a kith relay listens on by default.
pub const DEFAULT_RELAY_PORT: u16 = 7445;
