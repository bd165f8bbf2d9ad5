//! The daemon's views: node state (records, relay links, events, refusals) turned
//! into what the control socket answers and the CLI prints. Pure translation: it
//! must never change state or decide anything.

use kith_keys::NodeId;
use kith_protocol::machine::{Event, EventKind, PeerRecord, TrustMachine, TrustState};

use super::{Daemon, conflict_advice, err, ok, relay_report};
use crate::control::{
    ClockSkewView, ConflictView, EventView, ListedView, PeerView, PendingView, RelayLinkView,
    Response, StatusView,
};
use crate::datadir::DataDir;
use crate::node::{FinalRefusal, Node, RelayEvent, RelayEventKind, RelayStatus};
use crate::reach::PeerReach;

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

pub(super) fn peer_view(record: &PeerRecord, now: u64, reach: Option<&PeerReach>) -> PeerView {
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
    pub(super) async fn status(&self) -> Response {
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

pub(super) fn pending_views(machine: &TrustMachine) -> Vec<PendingView> {
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

pub(super) fn listed<'a>(
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
