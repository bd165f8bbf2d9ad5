//! Answers to the read-only commands (`peers`, `pending`, `allowed`, `ignored`,
//! `events`) while no daemon runs, from a private in-memory copy of the store
//! (`Store::open_copy`): the file is read, never opened by redb, so a daemon starting
//! meanwhile is neither locked out nor raced. The answers have the daemon's shapes.
//! This module must never write the data dir.

use std::collections::HashMap;

use kith_keys::NodeId;
use kith_protocol::machine::{AuditAction, AuditEntry, Config, Decider, TrustMachine};

use super::{err, listed, ok, peer_view, pending_views};
use crate::control::{EventView, Request, Response};
use crate::datadir::DataDir;
use crate::instance::InstanceRecord;
use crate::node::{error_chain, now_ms};
use crate::store::Store;

/// Largest store file read whole without a daemon.
const MAX_STORE_COPY: u64 = 256 * 1024 * 1024;

/// Audit entries `kith events` shows without a daemon, as many as it keeps with one.
const EVENTS_SHOWN: usize = 1000;

/// The daemon's answer to `request`, worked out from the store, for the requests
/// that only read; `None` for the others (they need the daemon).
pub fn answer(data_dir: &DataDir, request: &Request) -> Option<Response> {
    match request {
        Request::Peers
        | Request::Pending
        | Request::Allowed
        | Request::Ignored
        | Request::Events { follow: false } => {}
        Request::Ticket => {
            return Some(err(
                "no kith daemon is running: a ticket names the addresses the daemon listens \
                 on, so start it first (`kith run`); `kith id` prints the node id meanwhile",
            ));
        }
        _ => return None,
    }
    Some(read(data_dir, request).unwrap_or_else(err))
}

fn read(data_dir: &DataDir, request: &Request) -> Result<Response, String> {
    let own: NodeId = InstanceRecord::load(data_dir.path())
        .map_err(|e| error_chain(&e))?
        .and_then(|record| record.node_id.parse().ok())
        .ok_or("no daemon is running, and this data dir does not say which node it is")?;
    let path = data_dir.store();
    // A node that never ran has no store yet: nothing to show, which is the truth.
    let store = if path.exists() {
        Store::open_copy(&path, MAX_STORE_COPY)
    } else {
        Store::in_memory()
    }
    .map_err(|e| format!("no daemon is running, and {}", error_chain(&e)))?;
    if let Request::Events { .. } = request {
        let entries = store
            .audit_tail(EVENTS_SHOWN)
            .map_err(|e| error_chain(&e))?;
        let views: Vec<EventView> = entries.iter().map(|e| audit_view(e, own)).collect();
        return Ok(ok(views));
    }
    let snapshot = store.load().map_err(|e| error_chain(&e))?;
    let reach: HashMap<_, _> = snapshot.reach.into_iter().collect();
    let machine = TrustMachine::restore(
        own,
        Config::default(),
        snapshot.peers,
        snapshot.allow,
        snapshot.deny,
    );
    Ok(match request {
        Request::Peers => {
            let now = now_ms();
            let mut views: Vec<_> = machine
                .peers()
                .map(|p| peer_view(p, now, reach.get(&p.id)))
                .collect();
            views.sort_by(|a, b| a.state.cmp(&b.state).then(a.node_id.cmp(&b.node_id)));
            ok(views)
        }
        Request::Pending => ok(pending_views(&machine)),
        Request::Ignored => ok(listed(machine.denylist().map(|id| (id, None, None)))),
        Request::Allowed => ok(listed(
            machine
                .allowlist()
                .map(|(id, e)| (id, e.name.clone(), Some(e.added_ms))),
        )),
        _ => err("the daemon must run for that"),
    })
}

/// An audit entry as `kith events` shows an event (policy decisions under our own id).
fn audit_view(entry: &AuditEntry, own: NodeId) -> EventView {
    let kind = match &entry.action {
        AuditAction::RequestSent => "request_sent",
        AuditAction::Approved {
            by: Decider::Operator,
        } => "approved",
        AuditAction::Approved { .. } => "auto_approved",
        AuditAction::Rejected => "rejected",
        AuditAction::Revoked => "revoked",
        AuditAction::AcceptedByPeer => "accepted_by_peer",
        AuditAction::RejectedByPeer => "rejected_by_peer",
        AuditAction::RevokedByPeer => "revoked_by_peer",
        AuditAction::TrustExpired => "trust_expired",
        AuditAction::PendingExpired => "pending_expired",
        AuditAction::PendingEvicted => "pending_evicted",
        AuditAction::Dismissed => "dismissed",
        AuditAction::Cancelled => "cancelled",
        AuditAction::Forgotten => "forgotten",
        AuditAction::Ignored => "ignored",
        AuditAction::Unignored => "unignored",
        AuditAction::Allowed => "allowed",
        AuditAction::Disallowed => "disallowed",
        AuditAction::AutoApproveSet(_) => "auto_approve_set",
        AuditAction::Forked => "forked",
        AuditAction::Adopted => "adopted",
        AuditAction::ExpiredByPeer => "expired_by_peer",
    };
    let peer = entry.peer.unwrap_or(own);
    EventView {
        at_ms: entry.at_ms,
        node_id: peer.to_string(),
        short_id: peer.short(),
        kind: kind.to_string(),
        detail: entry.detail.clone(),
        address: None,
    }
}
