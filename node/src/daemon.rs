//! `kith run`: a [`Node`] bound to a data dir, answering on the control socket until
//! told to stop.
//!
//! This module translates control requests into node calls and node state into the
//! views the CLI prints. It must never decide trust itself (that is the state
//! machine's job) nor answer a control client before the node has committed.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kith_keys::{NodeId, NodeKey};
use kith_protocol::machine::{
    Command, Config, Event, EventKind, PeerRecord, TrustMachine, TrustState,
};
use kith_protocol::validate::escape_for_display;
use kith_protocol::wire::{AckStatus, RelayRef};
use serde::Serialize;
use tokio::io::BufReader;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use crate::control::{
    self, ClockSkewView, ConflictView, ControlError, EventView, ListedView, PeerView, PendingView,
    PingView, RelayLinkView, Request, Response, SentView, StatusView,
};
use crate::datadir::DataDir;
use crate::hooks::Hooks;
use crate::node::{
    Delivery, FinalRefusal, Node, NodeBuilder, NodeError, RelayEvent, RelayEventKind, RelayStatus,
    StoreLocation, now_ms,
};
use crate::reach::PeerReach;
use crate::service::{SERVICE_ALPN, ServiceClient};
use crate::ticket::Ticket;

mod advice;
mod offline;
mod operator;
mod relay_report;
mod resolve;
mod services;
pub use offline::answer as answer_offline;
pub use operator::conflict_advice;
pub use resolve::{MIN_TRUST_PREFIX_LEN, resolve_peer, resolve_peer_to_trust};

/// How `kith run` was configured.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub listen: SocketAddr,
    pub advertise: Vec<SocketAddr>,
    pub config: Config,
    pub keystore_encrypted: bool,
    pub hardened: bool,
    /// A shell command run for every incoming request, with its details in KITH_* variables.
    pub on_request: Option<String>,
    /// The home relay (`--relay`).
    pub relay: Option<RelayRef>,
    /// Refuse inbound connections, advertise no direct address (`--private`).
    pub private: bool,
    /// Serve Prometheus metrics on this address (`--metrics`).
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the node")]
    Node(#[from] NodeError),
    #[error("cannot open the control socket")]
    Control(#[from] ControlError),
    #[error("the node stopped: {0}")]
    Failed(String),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

struct Daemon {
    node: Arc<Node>,
    /// Opens streams to peers' services for `kith connect` and `kith forward`.
    services: ServiceClient,
    data_dir: DataDir,
    options: DaemonOptions,
    started_at_ms: u64,
    /// The most recent events, for `kith events` without `--follow`, and the live
    /// stream of new ones (both fed by `watch_events`, under the same lock).
    recent: Mutex<VecDeque<EventView>>,
    /// The `--on-request` hook's queue and runner, when there is a hook.
    hooks: Option<Arc<Hooks>>,
    live: tokio::sync::broadcast::Sender<EventView>,
}

/// Events kept for `kith events`.
const RECENT_EVENTS: usize = 1000;

/// Runs the daemon until `shutdown` resolves, then shuts the node down cleanly.
pub async fn run(
    data_dir: DataDir,
    key: NodeKey,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let mut builder = NodeBuilder::new(key)
        .listen(options.listen)
        .advertise(options.advertise.clone())
        .store(StoreLocation::File(data_dir.store()))
        .config(options.config.clone())
        .private(options.private)
        .protocol(SERVICE_ALPN);
    if let Some(relay) = &options.relay {
        builder = builder.relay(relay.clone());
    }
    let node = Arc::new(builder.spawn().await?);
    let listener = control::bind(&data_dir.control_socket()).await?;
    info!(node_id = %node.node_id(), listen = %node.local_addr(), "kith node running");
    eprintln!(
        "kith node {} listening on {} (control socket {}){}",
        node.node_id(),
        node.local_addr(),
        data_dir.control_socket().display(),
        match (&options.relay, options.private) {
            (Some(r), true) => format!(
                "; private: reachable only through relay {}, joining it",
                r.node_id.short()
            ),
            (Some(r), false) => format!("; home relay {}, joining it", r.node_id.short()),
            (None, true) => "; private, and without a relay nobody can reach it".to_string(),
            (None, false) => String::new(),
        }
    );
    let reporter = tokio::spawn(relay_report::report_first_outcome(node.clone()));
    let (live, _) = tokio::sync::broadcast::channel(1024);
    let serving = tokio::spawn(crate::service::serve(node.clone()));
    let metrics = match options.metrics {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).await?;
            if let Ok(addr) = listener.local_addr() {
                eprintln!("metrics on http://{addr}/metrics");
            }
            let node = node.clone();
            let render: crate::metrics::Render = Arc::new(move || {
                let node = node.clone();
                Box::pin(async move { node.metrics().await.unwrap_or_default() })
            });
            Some(tokio::spawn(crate::metrics::serve(listener, render)))
        }
        None => None,
    };
    let hooks = options.on_request.clone().map(Hooks::start);
    let daemon = Arc::new(Daemon {
        services: ServiceClient::new(node.clone()),
        node,
        data_dir,
        options,
        started_at_ms: now_ms(),
        recent: Mutex::new(VecDeque::new()),
        hooks,
        live,
    });
    let watcher = tokio::spawn(watch_events(
        daemon.clone(),
        daemon.node.subscribe(),
        daemon.node.subscribe_relay(),
        daemon.node.subscribe_final_refusals(),
    ));
    let failure = tokio::select! {
        () = shutdown => {
            info!("shutting down");
            None
        }
        () = serve_control(listener, daemon.clone()) => None,
        cause = daemon.node.failed() => Some(cause),
    };
    watcher.abort();
    reporter.abort();
    let _ = watcher.await;
    serving.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    let _ = std::fs::remove_file(daemon.data_dir.control_socket());
    // Control clients (`kith events --follow`) may still hold the daemon: shut the
    // node down through the shared handle rather than waiting for them.
    daemon.node.shutdown().await;
    failure.map_or(Ok(()), |cause| Err(DaemonError::Failed(cause)))
}

async fn serve_control(listener: UnixListener, daemon: Arc<Daemon>) {
    control::serve(listener, move |request, mut stream| {
        let daemon = daemon.clone();
        async move {
            let response = match request {
                Request::Events { follow } => {
                    daemon.stream_events(&mut stream, follow).await;
                    return;
                }
                Request::Connect { peer, service } => {
                    daemon.connect(&mut stream, &peer, &service).await;
                    return;
                }
                request => daemon.dispatch(request).await,
            };
            if let Err(e) = control::write_response(&mut stream, &response).await {
                debug!(error = %e, "control client went away");
            }
        }
    })
    .await
}

fn ok<T: Serialize>(data: T) -> Response {
    match serde_json::to_value(data) {
        Ok(data) => Response::Ok { data },
        Err(e) => Response::Error {
            message: format!("cannot encode the answer: {e}"),
        },
    }
}

fn err(message: impl std::fmt::Display) -> Response {
    Response::Error {
        message: message.to_string(),
    }
}

/// The name a peer state has in tables and JSON.
pub fn state_name(state: &TrustState) -> &'static str {
    match state {
        TrustState::OutgoingPending => "outgoing_pending",
        TrustState::IncomingPending => "incoming_pending",
        TrustState::Trusted => "trusted",
        TrustState::Rejected => "rejected",
        TrustState::RejectedByPeer => "rejected_by_peer",
        TrustState::Revoked => "revoked",
        TrustState::RevokedByPeer => "revoked_by_peer",
        TrustState::Expired => "expired",
        // Never shown: the machine hides forgotten records from every view.
        TrustState::Forgotten => "forgotten",
    }
}

fn peer_view(record: &PeerRecord, now: u64, reach: Option<&PeerReach>) -> PeerView {
    let state =
        if record.state == TrustState::Trusted && record.expires_at_ms.is_some_and(|e| e <= now) {
            "expired"
        } else {
            state_name(&record.state)
        };
    PeerView {
        node_id: record.id.to_string(),
        short_id: record.id.short(),
        name: record.name.clone(),
        note: record.note.clone(),
        state: state.to_string(),
        since_ms: record.since_ms,
        address: record.source.or(record.address).map(|a| a.to_string()),
        justification: record.justification.clone(),
        reason: record.reason.clone(),
        expires_at_ms: record.expires_at_ms,
        path: reach
            .and_then(|r| r.last_path)
            .map(|p| p.as_str().to_string()),
        relay: reach
            .and_then(|r| r.relay.as_ref())
            .map(|r| r.node_id.to_string()),
    }
}

impl Daemon {
    async fn resolve(&self, text: &str) -> Result<NodeId, Response> {
        let text = text.to_string();
        self.answer(move |m| resolve_peer(m, &text)).await
    }

    async fn sent(&self, peer: NodeId, deliveries: Vec<Delivery>) -> Response {
        let state = self
            .node
            .read(move |m, _| {
                m.peer(&peer)
                    .map(|p| state_name(&p.state))
                    .unwrap_or("none")
            })
            .await
            .unwrap_or("unknown");
        let first = deliveries.into_iter().next();
        let refused = matches!(
            first.as_ref().and_then(Delivery::ack),
            Some(AckStatus::Refused(_))
        );
        let (delivered, detail, path, queued) = match first {
            Some(Delivery::Acked(status)) => (
                !matches!(status, AckStatus::Refused(_)),
                status.to_string(),
                Some("direct"),
                false,
            ),
            Some(Delivery::Relayed { relay, ack }) => (
                ack.as_ref()
                    .is_some_and(|a| !matches!(a, AckStatus::Refused(_))),
                match ack {
                    Some(status) => status.to_string(),
                    None => format!("handed to {} by relay {}", peer.short(), relay.short()),
                },
                Some("relayed"),
                false,
            ),
            Some(Delivery::Queued { relay }) => (
                false,
                format!(
                    "{} is offline; relay {} holds it until it reconnects",
                    peer.short(),
                    relay.short()
                ),
                Some("relayed"),
                true,
            ),
            Some(Delivery::Retrying { reason }) => (false, reason, None, false),
            None => (true, "nothing to send".to_string(), None, false),
        };
        ok(SentView {
            from: self.node.node_id().to_string(),
            node_id: peer.to_string(),
            state: state.to_string(),
            delivered,
            detail,
            path: path.map(str::to_string),
            queued,
            refused,
        })
    }

    async fn dispatch(&self, request: Request) -> Response {
        match request {
            Request::Status => self.status().await,
            Request::Ticket => ok(serde_json::json!({
                "ticket": self.node.ticket().to_string(),
                "node_id": self.node.node_id().to_string(),
                "addrs": self.node.ticket().addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "relay": self.node.ticket().relay.map(|r| r.node_id.to_string()),
            })),
            Request::Request {
                ticket,
                justification,
            } => {
                let ticket: Ticket = match ticket.parse() {
                    Ok(t) => t,
                    Err(e) => return err(e),
                };
                if ticket.node_id == self.node.node_id() {
                    return err(
                        "that ticket is this node's own; a node cannot ask itself for trust",
                    );
                }
                if let Some(message) = self.changed_key(&ticket).await {
                    return err(message);
                }
                match self.node.request(&ticket, &justification).await {
                    Ok(Delivery::Acked(AckStatus::Refused(refusal)))
                        if crate::node::is_final(&refusal) =>
                    {
                        self.end_refused_request(&ticket, Some(refusal)).await
                    }
                    // A relay refuses a node's handshake (no common ALPN): only then is
                    // it worth asking whether the ticket is a relay's.
                    Ok(Delivery::Retrying { reason })
                        if reason.contains("handshake failed")
                            && self.node.answers_as_relay(&ticket).await =>
                    {
                        self.end_refused_request(&ticket, None).await
                    }
                    Ok(delivery) => self.sent(ticket.node_id, vec![delivery]).await,
                    Err(e) => err(crate::node::error_chain(&e)),
                }
            }
            Request::Pending => {
                let views = self.node.read(|m, _| pending_views(m)).await;
                match views {
                    Ok(views) => ok(views),
                    Err(e) => err(crate::node::error_chain(&e)),
                }
            }
            Request::Peers => match self
                .node
                .read({
                    let reach = self.node.reach();
                    move |m, now| {
                        m.peers()
                            .map(|p| peer_view(p, now, reach.get(&p.id)))
                            .collect::<Vec<_>>()
                    }
                })
                .await
            {
                Ok(mut views) => {
                    views.sort_by(|a, b| a.state.cmp(&b.state).then(a.node_id.cmp(&b.node_id)));
                    ok(views)
                }
                Err(e) => err(crate::node::error_chain(&e)),
            },
            Request::Approve {
                peer,
                name,
                note,
                expires_in_ms,
            } => {
                let peer = match self.resolve_to_trust(&peer, name.as_deref()).await {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                let expires_at_ms = expires_in_ms.map(|d| now_ms().saturating_add(d));
                self.run_command(
                    peer,
                    Command::Approve {
                        peer,
                        name,
                        note,
                        expires_at_ms,
                    },
                )
                .await
            }
            Request::Reject { peer, reason } => {
                let peer = match self.resolve(&peer).await {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                self.run_command(peer, Command::Reject { peer, reason })
                    .await
            }
            Request::Revoke { peer, reason } => {
                let peer = match self.resolve(&peer).await {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                self.run_command(peer, Command::Revoke { peer, reason })
                    .await
            }
            Request::Dismiss { peer } => self.simple(&peer, |peer| Command::Dismiss { peer }).await,
            Request::Forget { peer } => self.simple(&peer, |peer| Command::Forget { peer }).await,
            Request::Ignore { peer } => self.simple(&peer, |peer| Command::Ignore { peer }).await,
            Request::Unignore { peer } => {
                self.simple(&peer, |peer| Command::Unignore { peer }).await
            }
            Request::Allow { peer, name } => {
                let peer = match self.resolve_to_trust(&peer, name.as_deref()).await {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                self.command_for(peer, Command::Allow { peer, name }).await
            }
            Request::Disallow { peer } => {
                self.simple(&peer, |peer| Command::Disallow { peer }).await
            }
            Request::Rename { peer, name, note } => self.rename(peer, name, note).await,
            Request::Ignored => match self
                .node
                .read(|m, _| listed(m.denylist().map(|id| (id, None, None))))
                .await
            {
                Ok(list) => ok(list),
                Err(e) => err(crate::node::error_chain(&e)),
            },
            Request::Allowed => {
                let list = self
                    .node
                    .read(|m, _| {
                        listed(
                            m.allowlist()
                                .map(|(id, e)| (id, e.name.clone(), Some(e.added_ms))),
                        )
                    })
                    .await;
                match list {
                    Ok(list) => ok(list),
                    Err(e) => err(crate::node::error_chain(&e)),
                }
            }
            Request::Ping { peer } => {
                let peer = match self.resolve(&peer).await {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                let name = self
                    .node
                    .read(move |m, _| m.peer(&peer).and_then(|p| p.name.clone()))
                    .await
                    .ok()
                    .flatten();
                match self.node.ping_path(peer).await {
                    Ok(pinged) => ok(PingView {
                        node_id: peer.to_string(),
                        name,
                        rtt_ms: pinged.rtt.as_secs_f64() * 1000.0,
                        path: Some(pinged.path.as_str().to_string()),
                        relay: pinged.relay.map(|r| r.to_string()),
                    }),
                    Err(e) => err(crate::node::error_chain(&e)),
                }
            }
            Request::Events { .. } | Request::Connect { .. } => {
                err("this request is streamed, not answered")
            }
            Request::Expose {
                name,
                target,
                peers,
            } => self.expose(&name, &target, &peers).await,
            Request::Unexpose { name } => self.unexpose(&name).await,
            Request::Services => ok(self.service_views()),
        }
    }

    /// A command that sends nothing: resolve the peer, run it, answer with the peer's id.
    async fn simple(&self, peer: &str, command: impl FnOnce(NodeId) -> Command) -> Response {
        match self.resolve(peer).await {
            Ok(peer) => self.command_for(peer, command(peer)).await,
            Err(r) => r,
        }
    }

    async fn command_for(&self, peer: NodeId, command: Command) -> Response {
        match self.node.command(command).await {
            Ok(_) => ok(serde_json::json!({ "node_id": peer.to_string() })),
            Err(e) => self.refused(peer, &e).await,
        }
    }

    async fn stream_events(&self, stream: &mut BufReader<tokio::net::UnixStream>, follow: bool) {
        // Subscribe and copy the history under the lock `watch_events` holds while it
        // adds an event to both, so nothing is missed or seen twice.
        let (mut live, history) = {
            let recent = self.recent.lock().unwrap();
            let history: Vec<EventView> = recent.iter().cloned().collect();
            (self.live.subscribe(), history)
        };
        for view in history {
            if control::write_response(stream, &ok(view)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            match live.recv().await {
                Ok(view) => {
                    if control::write_response(stream, &ok(view)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "an events follower fell behind");
                }
                Err(_) => return,
            }
        }
    }

    /// Like ssh's changed-host-key check: a ticket whose address belongs to a peer we
    /// know under another key is refused loudly, never silently treated as a new node.
    async fn changed_key(&self, ticket: &Ticket) -> Option<String> {
        let wanted = ticket.clone();
        let known = self
            .node
            .read(move |m, _| {
                m.peers()
                    .find(|p| {
                        p.id != wanted.node_id
                            && matches!(p.state, TrustState::Trusted | TrustState::OutgoingPending)
                            && [p.address, p.source]
                                .iter()
                                .flatten()
                                .any(|a| wanted.addrs.contains(a))
                    })
                    .map(|p| (p.id, p.name.clone(), p.source.or(p.address)))
            })
            .await
            .ok()??;
        let (old, name, address) = known;
        let name = name
            .map(|n| format!(" ({})", escape_for_display(&n)))
            .unwrap_or_default();
        Some(format!(
            "WARNING: THE NODE AT {} HAS A DIFFERENT KEY! You know {old}{name} at that address, but this \
             ticket names {}. Someone may be impersonating it, or that machine was reinstalled. \
             Nothing was sent. If you are sure the key changed, run `kith forget {}` and ask again.",
            address.map(|a| a.to_string()).unwrap_or_default(),
            ticket.node_id,
            old.short(),
        ))
    }

    async fn run_command(&self, peer: NodeId, command: Command) -> Response {
        match self.node.command(command).await {
            Ok(deliveries) => self.sent(peer, deliveries).await,
            Err(e) => self.refused(peer, &e).await,
        }
    }

    async fn status(&self) -> Response {
        let counts = self
            .node
            .read(|m, now| {
                let mut trusted = 0;
                let mut incoming = 0;
                let mut outgoing = 0;
                for p in m.peers() {
                    match p.state {
                        TrustState::Trusted if m.is_trusted(&p.id, now) => trusted += 1,
                        TrustState::IncomingPending => incoming += 1,
                        TrustState::OutgoingPending => outgoing += 1,
                        _ => {}
                    }
                }
                // Sorted by direction, then oldest first: the first of each waits longest.
                let mut longest = pending_views(m);
                longest.dedup_by(|b, a| a.direction == b.direction);
                (
                    trusted,
                    incoming,
                    outgoing,
                    m.config().auto_approve,
                    longest,
                )
            })
            .await;
        let (trusted, pending_incoming, pending_outgoing, auto_approve, longest_waiting) =
            match counts {
                Ok(c) => c,
                Err(e) => return err(e),
            };
        let (refused_by_peers, latest) = self.node.final_refusals();
        let skew = self.node.clock_skew();
        ok(StatusView {
            node_id: self.node.node_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.data_dir.path().display().to_string(),
            listen: self.node.local_addr().to_string(),
            ticket: self.node.ticket().to_string(),
            trusted,
            pending_incoming,
            pending_outgoing,
            keystore_encrypted: self.options.keystore_encrypted,
            hardened: self.options.hardened,
            auto_approve,
            started_at_ms: self.started_at_ms,
            reachability: self.node.reachability().to_string(),
            private: self.node.is_private(),
            relay: self
                .node
                .relay_status()
                .map(|s| relay_link_view(&s, &self.node, &self.data_dir)),
            services: self.service_views(),
            refused: self.node.refusals(),
            refused_by_peers,
            last_refused_by_peer: latest.last().map(final_refusal_view),
            longest_waiting,
            clock_skew_warnings: skew.count,
            last_clock_skew: skew.last.map(|s| ClockSkewView {
                node_id: s.peer.to_string(),
                short_id: s.peer.short(),
                skew_ms: s.skew_ms,
                at_ms: s.at_ms,
                refused: s.refused,
            }),
        })
    }
}

fn relay_link_view(s: &RelayStatus, node: &Node, data_dir: &DataDir) -> RelayLinkView {
    RelayLinkView {
        rtt_ms: node.home_relay_rtt().map(|d| d.as_secs_f64() * 1000.0),
        summary: relay_report::relay_summary(s, node.node_id(), node.is_private()),
        node_id: s.relay.to_string(),
        addrs: s.addrs.iter().map(|a| a.to_string()).collect(),
        state: s.state.as_str().to_string(),
        since_ms: s.since_ms,
        observed: s.observed.map(|a| a.to_string()),
        direct: s.direct,
        refusal: s.refusal.map(|r| r.to_string()),
        conflict: s.conflict.as_ref().map(|c| ConflictView {
            reported_by: s.relay.to_string(),
            others: c.others.iter().map(|a| a.to_string()).collect(),
            at_ms: c.at_ms,
            advice: conflict_advice(data_dir),
        }),
        last_error: s.last_error.clone(),
        connects: s.connects,
    }
}

/// The name and detail a relay event has in `kith events`.
pub fn relay_event_view(event: &RelayEvent, data_dir: &DataDir) -> EventView {
    let (kind, detail, address) = match &event.kind {
        RelayEventKind::Connected { addr } => ("relay_connected", None, Some(addr.to_string())),
        RelayEventKind::Registered { observed, direct } => (
            "relay_registered",
            Some(match direct {
                Some(true) => "reachable directly".to_string(),
                Some(false) => "relay only: the relay could not dial this node".to_string(),
                None => "relay only".to_string(),
            }),
            Some(observed.to_string()),
        ),
        RelayEventKind::Refused { reason } => ("relay_refused", Some(reason.to_string()), None),
        RelayEventKind::Disconnected { reason } => {
            ("relay_disconnected", Some(reason.clone()), None)
        }
        RelayEventKind::ConflictOver => (
            "identity_conflict_over",
            Some(format!(
                "relay {} says this node's id is no longer connected to it from elsewhere \
                 (its claim; this node has not verified it)",
                event.relay
            )),
            None,
        ),
        RelayEventKind::NotARelay { addr } => (
            "relay_not_a_relay",
            Some(
                "the --relay ticket names an ordinary node, not a relay; not retrying: use \
                 the relay's ticket (`kith ticket` on the relay) and restart"
                    .to_string(),
            ),
            Some(addr.to_string()),
        ),
        // The addresses are the copy's, not the relay's (the event's node): they go in
        // the detail once, not also in `address`, which would print them twice.
        RelayEventKind::Conflict { others } => (
            "identity_conflict",
            Some(format!(
                "relay {} says this node's id is also connected to it from {}; {}",
                event.relay,
                others
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                conflict_advice(data_dir)
            )),
            None,
        ),
    };
    EventView {
        at_ms: event.at_ms,
        node_id: event.relay.to_string(),
        short_id: event.relay.short(),
        kind: kind.to_string(),
        detail,
        address,
    }
}

/// A message of ours the peer refused for good, as `kith events` shows it:
/// `request_refused` when it was our request (now withdrawn).
pub fn final_refusal_view(refusal: &FinalRefusal) -> EventView {
    EventView {
        at_ms: refusal.at_ms,
        node_id: refusal.peer.to_string(),
        short_id: refusal.peer.short(),
        kind: if refusal.kind == "request" {
            "request_refused"
        } else {
            "delivery_refused"
        }
        .to_string(),
        detail: Some(refusal.detail()),
        address: None,
    }
}

fn pending_views(machine: &TrustMachine) -> Vec<PendingView> {
    let mut views: Vec<PendingView> = machine
        .peers()
        .filter_map(|p| {
            let direction = match p.state {
                TrustState::IncomingPending => "incoming",
                TrustState::OutgoingPending => "outgoing",
                _ => return None,
            };
            Some(PendingView {
                node_id: p.id.to_string(),
                short_id: p.id.short(),
                direction: direction.to_string(),
                justification: p.justification.clone().unwrap_or_default(),
                received_at_ms: p.since_ms,
                address: p.source.or(p.address).map(|a| a.to_string()),
            })
        })
        .collect();
    views.sort_by(|a, b| {
        a.direction
            .cmp(&b.direction)
            .then(a.received_at_ms.cmp(&b.received_at_ms))
    });
    views
}

fn listed<'a>(
    entries: impl Iterator<Item = (&'a NodeId, Option<String>, Option<u64>)>,
) -> Vec<ListedView> {
    let mut list: Vec<ListedView> = entries
        .map(|(id, name, added_ms)| ListedView {
            node_id: id.to_string(),
            short_id: id.short(),
            name,
            added_ms,
        })
        .collect();
    list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    list
}

/// The name and detail an event has in `kith events`.
pub fn event_view(event: &Event) -> EventView {
    let (kind, detail, address) = match &event.kind {
        EventKind::RequestReceived {
            justification,
            source,
        } => (
            "request_received",
            Some(justification.clone()),
            source.map(|s| s.to_string()),
        ),
        EventKind::RequestSent => ("request_sent", None, None),
        EventKind::AutoApproved { by } => (
            "auto_approved",
            Some(format!("{by:?}").to_lowercase()),
            None,
        ),
        EventKind::Approved => ("approved", None, None),
        EventKind::Rejected => ("rejected", None, None),
        EventKind::RejectedByPeer { reason } => ("rejected_by_peer", Some(reason.clone()), None),
        EventKind::AcceptedByPeer => ("accepted_by_peer", None, None),
        EventKind::MutualTrust => ("mutual_trust", None, None),
        EventKind::Revoked => ("revoked", None, None),
        EventKind::RevokedByPeer { reason } => ("revoked_by_peer", Some(reason.clone()), None),
        EventKind::TrustExpired => ("trust_expired", None, None),
        EventKind::ExpiredByPeer => ("expired_by_peer", None, None),
        EventKind::ClockBehind { behind_ms } => (
            "clock_behind",
            Some(format!(
                "our clock is {behind_ms} ms behind what we last sent; sent ahead of it"
            )),
            None,
        ),
        EventKind::PendingExpired => ("pending_expired", None, None),
        EventKind::PendingEvicted => ("pending_evicted", None, None),
        EventKind::Ignored => ("ignored", None, None),
        EventKind::Dismissed => ("dismissed", None, None),
        EventKind::Cancelled => ("cancelled", None, None),
        EventKind::Forgotten => ("forgotten", None, None),
        EventKind::Refused { refusal } => ("refused", Some(refusal.to_string()), None),
    };
    EventView {
        at_ms: event.at_ms,
        node_id: event.peer.to_string(),
        short_id: event.peer.short(),
        kind: kind.to_string(),
        detail,
        address,
    }
}

/// Keeps the recent-events ring and the live stream (trust events and relay
/// events), and runs the `--on-request` hook.
/// Keeps an event for `kith events` and hands it to followers, under one lock so a
/// new follower sees it either in the history or live, never both or neither.
fn record_event(daemon: &Daemon, view: EventView) {
    let mut recent = daemon.recent.lock().unwrap();
    if recent.len() == RECENT_EVENTS {
        recent.pop_front();
    }
    recent.push_back(view.clone());
    let _ = daemon.live.send(view);
}

async fn watch_events(
    daemon: Arc<Daemon>,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    mut relay_events: tokio::sync::broadcast::Receiver<RelayEvent>,
    mut final_refusals: tokio::sync::broadcast::Receiver<FinalRefusal>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut relay_open = true;
    let mut final_open = true;
    loop {
        let view = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => event_view(&event),
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, "fell behind the node's events; `kith events` misses them");
                    if let Some(hooks) = &daemon.hooks {
                        hooks.missed(missed);
                    }
                    continue;
                }
                Err(_) => return,
            },
            event = relay_events.recv(), if relay_open => match event {
                Ok(event) => relay_event_view(&event, &daemon.data_dir),
                Err(RecvError::Lagged(_)) => continue,
                Err(_) => {
                    relay_open = false;
                    continue;
                }
            },
            refusal = final_refusals.recv(), if final_open => match refusal {
                Ok(refusal) => final_refusal_view(&refusal),
                Err(RecvError::Lagged(_)) => continue,
                Err(_) => {
                    final_open = false;
                    continue;
                }
            },
        };
        record_event(&daemon, view.clone());
        if view.kind == "request_received" {
            if let Some(hooks) = &daemon.hooks {
                hooks.request(&view);
            }
        }
    }
}
