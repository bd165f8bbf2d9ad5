//! Building a node: opening its store, binding its endpoint, wiring the [`Shared`]
//! state and starting its tasks (the core's ticker, the accept loop, the outbox, the
//! resender, the application trust watch and the home relay link).
//!
//! It only wires the node together: it must never decide trust itself; everything
//! that changes trust goes to the core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_keys::NodeKey;
use kith_protocol::machine::{Config, TrustMachine};
use kith_protocol::wire::RelayRef;
use tokio::sync::broadcast;
use tracing::info;

use super::core::Core;
use super::deliver::{run_outbox, run_resender};
use super::serve::accept_loop;
use super::{
    CoreLinks, EVENT_BUFFER, Node, NodeError, ReachMap, ServiceMap, Shared, StoreLocation, Unacked,
    UnackedMap, app, budget, final_refusal, link, refusals,
};
use crate::metrics::NodeMetrics;
use crate::store::Store;
use crate::transport::tls;

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
        )
        .with_sent_floor(snapshot.sent_floor);
        for alpn in &self.protocols {
            app::check_alpn(alpn)?;
        }
        let identity = tls::Identity::new(&self.key)?;
        let (endpoint, paths, local_addr) =
            tls::make_path_endpoint(&identity, self.listen, &self.protocols)?;
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
            paths,
            local_addr,
            advertise,
            advertise_given,
            private: self.private,
            home: self.relay.clone(),
            core,
            events: events.clone(),
            refusals,
            final_refusals: final_refusal::FinalRefusals::new(),
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
