//! The relay state machine: what a kith relay decides, with no I/O.
//!
//! A relay carries signed envelopes for nodes that cannot be dialled. Each node
//! (private or not) that connects to it is a *client*, known by the NodeId its
//! TLS certificate proved; a client the relay may route to is *registered*. A
//! client asks the relay to [forward](RelayInput::Forward) an envelope; the relay
//! [pushes](RelayOutput::Push) it at once over the destination's connection, or
//! queues it (bounded per destination and in total, with a TTL) until the
//! destination registers again, and [answers](RelayOutput::Answer) the sender
//! with what happened.
//!
//! [`Relay::handle`] takes one [`RelayInput`] and the current time and returns
//! every [`RelayOutput`] that follows, in order. Nothing else happens implicitly;
//! the caller (`kith relay`, or the simulator) owns the connections and carries
//! the outputs out. Call [`RelayInput::Tick`] at [`Relay::next_deadline`].
//!
//! This module must never read a clock, touch a socket, or look inside an
//! envelope beyond routing: it never verifies or alters signatures. It cannot
//! forge anything (envelopes are signed end to end) and a relay that alters or
//! replays one gets it refused by the destination's own validation. The few
//! checks it makes — the envelope's `from` is the authenticated sender, the
//! version is known, the text is within bounds — only keep it from spending
//! memory on envelopes every destination would refuse.
//!
//! Decisions, in order, for a [`RelayInput::Forward`]: the connection must be a
//! client; the sender's rate limit (a token bucket per NodeId); `body.from` must
//! be the connection's node; the envelope must be well-formed; then route:
//! registered → push (the newest registration wins); registered before and
//! offline for less than [`RelayConfig::remember_ms`] → queue; otherwise
//! unknown destination.
//!
//! Identity conflicts: a NodeId registering again *from the same address*
//! replaces its old connection (a reconnect: two live sockets cannot share one
//! address). From *another* address it may be a crashed process restarted
//! behind a NAT that picked a new port, or really a second copy of the node. The
//! relay routes to the newest connection at once and
//! [probes](RelayOutput::Probe) the older one: if it answers
//! ([`RelayInput::Alive`]) both are live and a [`RelayOutput::Conflict`] names
//! every connection, so each side is told; if it does not answer within
//! [`RelayConfig::probe_ms`] it is [closed](RelayOutput::Close). With
//! `probe_ms == 0` the conflict is reported at once, without a probe. When a node
//! so reported is down to one connection (the others closed, or failed a probe),
//! that connection is told the conflict is over ([`RelayOutput::ConflictOver`]).
//! A copy that reconnects from its own address within one input is not "over".

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use kith_keys::NodeId;
use serde::{Deserialize, Serialize};

use crate::validate::check_text;
use crate::wire::{Envelope, MAX_TEXT_CHARS, PROTOCOL_VERSION};
mod packets;
mod types;

pub use types::{
    ClientInfo, ConnId, DEFAULT_PACKET_BURST_BYTES, DEFAULT_PACKET_BYTES_PER_SEC,
    DEFAULT_QUEUE_TTL_MS, DropReason, ForwardResult, MAX_PACKET_LEN, PacketRefusal, PacketRoute,
    RelayConfig, RelayInput, RelayOutput, RelayRefusal, RelayStats,
};

/// A registered node now offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Gone {
    at_ms: u64,
    settled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Queued {
    envelope: Envelope,
    expires_ms: u64,
}

/// Token bucket in thousandths of a token, so refill needs no division.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    milli: u64,
    at_ms: u64,
}

/// The relay's whole state. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    config: RelayConfig,
    clients: BTreeMap<ConnId, ClientInfo>,
    /// Registered connections among `clients` (the rest are guests).
    members: usize,
    /// Registered connections per node, oldest first; the last one is the route.
    routes: BTreeMap<NodeId, Vec<ConnId>>,
    /// Registered nodes now offline: when they left, and whether they were settled.
    known: BTreeMap<NodeId, Gone>,
    /// The same, in the order they are forgotten when too many are remembered:
    /// unsettled before settled, then longest gone first.
    forget_order: BTreeSet<(bool, u64, NodeId)>,
    queues: BTreeMap<NodeId, VecDeque<Queued>>,
    queued_total: usize,
    /// Envelopes queued per sender (senders with none are not listed).
    queued_by: BTreeMap<NodeId, usize>,
    /// Drops noted while handling one input, output at its end.
    #[serde(skip)]
    dropped: Vec<(NodeId, NodeId, [u8; 16], DropReason)>,
    /// (expiry of the queue's front, destination), one per non-empty queue.
    expiries: BTreeSet<(u64, NodeId)>,
    buckets: BTreeMap<NodeId, Bucket>,
    /// Byte buckets for relayed packets, per sender (see [`Relay::route_packet`]).
    #[serde(default)]
    packet_buckets: BTreeMap<NodeId, Bucket>,
    /// Older connections being probed: their deadline.
    probes: BTreeMap<ConnId, u64>,
    stats: RelayStats,
    /// Nodes reported in a [`RelayOutput::Conflict`] and still on several connections.
    #[serde(default)]
    conflicted: BTreeSet<NodeId>,
    /// Reported nodes that lost a connection while handling one input, checked at its end.
    #[serde(skip)]
    conflict_losses: Vec<NodeId>,
}

impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        Relay {
            config,
            clients: BTreeMap::new(),
            members: 0,
            routes: BTreeMap::new(),
            known: BTreeMap::new(),
            forget_order: BTreeSet::new(),
            queues: BTreeMap::new(),
            queued_total: 0,
            queued_by: BTreeMap::new(),
            dropped: Vec::new(),
            expiries: BTreeSet::new(),
            buckets: BTreeMap::new(),
            packet_buckets: BTreeMap::new(),
            probes: BTreeMap::new(),
            stats: RelayStats::default(),
            conflicted: BTreeSet::new(),
            conflict_losses: Vec::new(),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Envelopes queued in all.
    pub fn queued(&self) -> usize {
        self.queued_total
    }

    /// Bytes of the envelopes queued in all, as encoded (for metrics; walks the queues).
    pub fn queued_bytes(&self) -> usize {
        self.queues
            .values()
            .flatten()
            .map(|q| postcard::to_allocvec(&q.envelope).map_or(0, |b| b.len()))
            .sum()
    }

    /// Envelopes queued for `node`.
    pub fn queued_for(&self, node: &NodeId) -> usize {
        self.queues.get(node).map_or(0, VecDeque::len)
    }

    /// The envelopes queued for `node`, oldest first.
    pub fn queued_envelopes(&self, node: &NodeId) -> impl Iterator<Item = &Envelope> {
        self.queues
            .get(node)
            .into_iter()
            .flat_map(|q| q.iter().map(|e| &e.envelope))
    }

    /// Connected clients, registered or not.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Nodes with at least one registered connection.
    pub fn registered(&self) -> usize {
        self.routes.len()
    }

    pub fn is_registered(&self, node: &NodeId) -> bool {
        self.routes.contains_key(node)
    }

    pub fn client(&self, conn: ConnId) -> Option<&ClientInfo> {
        self.clients.get(&conn)
    }

    /// The connection envelopes to `node` are pushed on.
    pub fn route(&self, node: &NodeId) -> Option<ConnId> {
        self.routes.get(node).and_then(|c| c.last().copied())
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// When the next [`RelayInput::Tick`] is due: the earliest queue expiry or
    /// probe deadline. `None` when nothing is scheduled.
    pub fn next_deadline(&self) -> Option<u64> {
        let queue = self.expiries.first().map(|(at, _)| *at);
        let probe = self.probes.values().min().copied();
        queue.into_iter().chain(probe).min()
    }

    /// Processes one input; returns what to do, in order.
    pub fn handle(&mut self, now_ms: u64, input: RelayInput) -> Vec<RelayOutput> {
        let mut out = Vec::new();
        match input {
            RelayInput::Connected { conn, node, addr } => {
                self.on_connected(now_ms, conn, node, addr, &mut out)
            }
            RelayInput::Disconnected { conn } => self.on_disconnected(now_ms, conn),
            RelayInput::Forward { conn, envelope } => {
                self.on_forward(now_ms, conn, envelope, &mut out)
            }
            RelayInput::Alive { conn } => self.on_alive(conn, &mut out),
            RelayInput::Tick => self.on_tick(now_ms, &mut out),
        }
        for node in std::mem::take(&mut self.conflict_losses) {
            let left = self.routes.get(&node).map_or(&[][..], Vec::as_slice);
            if left.len() <= 1 && self.conflicted.remove(&node) {
                if let Some(&conn) = left.first() {
                    out.push(RelayOutput::ConflictOver { node, conn });
                }
            }
        }
        for (from, to, nonce, reason) in std::mem::take(&mut self.dropped) {
            let conn = self.route(&from).or_else(|| {
                self.clients
                    .iter()
                    .find(|(_, c)| c.node == from)
                    .map(|(id, _)| *id)
            });
            out.push(RelayOutput::Dropped {
                conn,
                to,
                nonce,
                reason,
            });
        }
        out
    }

    /// Accounts for `q` leaving the queue of `to`; `dropped`: undelivered, for this reason.
    fn release(&mut self, to: NodeId, q: &Queued, dropped: Option<DropReason>) {
        let from = q.envelope.body.from;
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.queued_by.entry(from) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        if let Some(reason) = dropped {
            self.dropped.push((from, to, q.envelope.body.nonce, reason));
        }
    }

    fn on_connected(
        &mut self,
        now: u64,
        conn: ConnId,
        node: NodeId,
        addr: SocketAddr,
        out: &mut Vec<RelayOutput>,
    ) {
        if self.clients.contains_key(&conn) {
            // The caller reused a live id: a caller bug. Keep the first.
            return;
        }
        let allowed = self
            .config
            .allow
            .as_ref()
            .is_none_or(|allow| allow.contains(&node));
        if !self.has_room(node, addr, allowed) {
            out.push(RelayOutput::Refused {
                conn,
                reason: RelayRefusal::TooManyClients,
            });
            return;
        }
        self.members += usize::from(allowed);
        self.clients.insert(
            conn,
            ClientInfo {
                node,
                addr,
                registered: allowed,
                since_ms: now,
                settled: false,
            },
        );
        if !allowed {
            out.push(RelayOutput::Refused {
                conn,
                reason: RelayRefusal::NotAllowed,
            });
            return;
        }
        // Older registrations of the same node.
        let older: Vec<ConnId> = self.routes.get(&node).cloned().unwrap_or_default();
        let mut others = Vec::new();
        for old in older {
            if self.clients.get(&old).is_some_and(|c| c.addr == addr) {
                // Same address: the node reconnected; the old connection is stale.
                self.forget_conn(now, old);
                out.push(RelayOutput::Close { conn: old });
            } else {
                others.push(old);
            }
        }
        self.routes.entry(node).or_default().push(conn);
        let settled = self.unremember(&node).is_some_and(|g| g.settled)
            || self.routes[&node]
                .iter()
                .any(|c| self.clients.get(c).is_some_and(|c| c.settled));
        if let Some(client) = self.clients.get_mut(&conn) {
            client.settled = settled;
        }
        out.push(RelayOutput::Registered {
            conn,
            observed: addr,
        });
        if !others.is_empty() {
            if self.config.probe_ms == 0 {
                self.stats.conflicts += 1;
                let conns = self.routes.get(&node).cloned().unwrap_or_default();
                self.conflicted.insert(node);
                out.push(RelayOutput::Conflict { node, conns });
            } else {
                for old in others {
                    if let std::collections::btree_map::Entry::Vacant(e) = self.probes.entry(old) {
                        e.insert(now.saturating_add(self.config.probe_ms));
                        out.push(RelayOutput::Probe { conn: old });
                    }
                }
            }
        }
        // Whatever waited for it goes out now, oldest first.
        if let Some(queue) = self.queues.remove(&node) {
            if let Some(front) = queue.front() {
                self.expiries.remove(&(front.expires_ms, node));
            }
            self.queued_total -= queue.len();
            for q in queue {
                if q.expires_ms <= now {
                    self.release(node, &q, Some(DropReason::Expired));
                    self.stats.expired += 1;
                    continue;
                }
                self.release(node, &q, None);
                self.stats.delivered_from_queue += 1;
                out.push(RelayOutput::Push {
                    conn,
                    envelope: q.envelope,
                });
            }
        }
    }

    /// Whether a new connection of `node` from `addr` fits: guests in their own
    /// pool, members in `max_clients`, the last `reserved_for_settled` of which
    /// only for settled nodes. A reconnect from the same address replaces the old
    /// connection, so it always fits.
    fn has_room(&self, node: NodeId, addr: SocketAddr, member: bool) -> bool {
        if !member {
            return self.clients.len() - self.members < self.config.max_guests;
        }
        let conns = self.routes.get(&node).map_or(&[][..], Vec::as_slice);
        if conns
            .iter()
            .any(|c| self.clients.get(c).is_some_and(|c| c.addr == addr))
        {
            return true;
        }
        if self.members >= self.config.max_clients {
            return false;
        }
        let open = self
            .config
            .max_clients
            .saturating_sub(self.config.reserved_for_settled);
        self.members < open
            || self.is_allow_listed(&node)
            || self.known.get(&node).is_some_and(|g| g.settled)
            || conns
                .iter()
                .any(|c| self.clients.get(c).is_some_and(|c| c.settled))
    }

    fn on_disconnected(&mut self, now: u64, conn: ConnId) {
        self.forget_conn(now, conn);
    }

    /// Drops everything about `conn`; a node left with no registered
    /// connection becomes known-offline, so envelopes to it are queued.
    fn forget_conn(&mut self, now: u64, conn: ConnId) {
        self.probes.remove(&conn);
        let Some(client) = self.clients.remove(&conn) else {
            return;
        };
        self.members -= usize::from(client.registered);
        let node = client.node;
        if self.conflicted.contains(&node) {
            self.conflict_losses.push(node);
        }
        if let Some(conns) = self.routes.get_mut(&node) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.routes.remove(&node);
                let settled = client.settled
                    || self.is_allow_listed(&node)
                    || now.saturating_sub(client.since_ms) >= self.config.settled_ms;
                self.remember(now, node, settled);
            }
        }
        let still_connected = self.clients.values().any(|c| c.node == node);
        if !still_connected {
            // A full bucket is the same as no bucket; a partial one is kept so
            // a reconnect does not reset the limit.
            if self
                .buckets
                .get(&node)
                .is_some_and(|b| self.refilled(b, now) >= self.capacity())
            {
                self.buckets.remove(&node);
            }
            self.forget_packet_bucket(now, node);
        }
    }

    fn is_allow_listed(&self, node: &NodeId) -> bool {
        self.config
            .allow
            .as_ref()
            .is_some_and(|allow| allow.contains(node))
    }

    fn remember(&mut self, now: u64, node: NodeId, settled: bool) {
        self.unremember(&node);
        self.known.insert(
            node,
            Gone {
                at_ms: now,
                settled,
            },
        );
        self.forget_order.insert((settled, now, node));
        while self.known.len() > self.config.remember_max {
            // Forget the unsettled node gone longest (possibly the one just added),
            // with its queue; a settled one only if every remembered node is settled.
            let Some(&(_, _, first)) = self.forget_order.first() else {
                break;
            };
            self.unremember(&first);
            self.drop_queue(first);
        }
    }

    fn unremember(&mut self, node: &NodeId) -> Option<Gone> {
        let gone = self.known.remove(node)?;
        self.forget_order.remove(&(gone.settled, gone.at_ms, *node));
        Some(gone)
    }

    /// Offline nodes remembered (envelopes to them are queued).
    pub fn remembered(&self) -> usize {
        self.known.len()
    }

    fn drop_queue(&mut self, node: NodeId) -> usize {
        let Some(queue) = self.queues.remove(&node) else {
            return 0;
        };
        if let Some(front) = queue.front() {
            self.expiries.remove(&(front.expires_ms, node));
        }
        self.queued_total -= queue.len();
        for q in &queue {
            self.release(node, q, Some(DropReason::Forgotten));
        }
        queue.len()
    }

    fn on_forward(
        &mut self,
        now: u64,
        conn: ConnId,
        envelope: Envelope,
        out: &mut Vec<RelayOutput>,
    ) {
        let to = envelope.body.to;
        let result = self.route_forward(now, conn, envelope, out);
        match &result {
            ForwardResult::Delivered => self.stats.delivered += 1,
            ForwardResult::Queued => self.stats.queued += 1,
            ForwardResult::UnknownDestination => self.stats.unknown_destination += 1,
            ForwardResult::Refused(refusal) => {
                self.stats.refused += 1;
                if *refusal == RelayRefusal::SenderQuota {
                    self.stats.sender_quota += 1;
                }
            }
        }
        self.stats.forwarded += 1;
        out.push(RelayOutput::Answer { conn, to, result });
    }

    fn route_forward(
        &mut self,
        now: u64,
        conn: ConnId,
        envelope: Envelope,
        out: &mut Vec<RelayOutput>,
    ) -> ForwardResult {
        let Some(sender) = self.clients.get(&conn).map(|c| c.node) else {
            return ForwardResult::Refused(RelayRefusal::UnknownConnection);
        };
        if !self.take_token(now, sender) {
            return ForwardResult::Refused(RelayRefusal::RateLimited);
        }
        if envelope.body.from != sender {
            return ForwardResult::Refused(RelayRefusal::SenderMismatch);
        }
        if !well_formed(&envelope) {
            return ForwardResult::Refused(RelayRefusal::Malformed);
        }
        let to = envelope.body.to;
        if let Some(route) = self.route(&to) {
            out.push(RelayOutput::Push {
                conn: route,
                envelope,
            });
            return ForwardResult::Delivered;
        }
        let remembered = self
            .known
            .get(&to)
            .is_some_and(|gone| gone.at_ms.saturating_add(self.config.remember_ms) > now);
        if !remembered {
            return ForwardResult::UnknownDestination;
        }
        // The same envelope forwarded again (a sender's retry) is queued once.
        let queue = self.queues.get(&to);
        if queue.is_some_and(|q| {
            q.iter().any(|e| {
                e.envelope.body.nonce == envelope.body.nonce && e.envelope.body.from == sender
            })
        }) {
            return ForwardResult::Queued;
        }
        let from_sender = queue.map_or(0, |q| {
            q.iter().filter(|e| e.envelope.body.from == sender).count()
        });
        let by_sender = self.queued_by.get(&sender).copied().unwrap_or(0);
        if from_sender >= self.config.queue_per_sender_destination
            || by_sender >= self.config.queue_per_sender
        {
            return ForwardResult::Refused(RelayRefusal::SenderQuota);
        }
        if queue.map_or(0, VecDeque::len) >= self.config.queue_per_destination
            || self.queued_total >= self.config.queue_total
        {
            return ForwardResult::Refused(RelayRefusal::QueueFull);
        }
        *self.queued_by.entry(sender).or_default() += 1;
        let expires_ms = now.saturating_add(self.config.queue_ttl_ms);
        let queue = self.queues.entry(to).or_default();
        if queue.is_empty() {
            self.expiries.insert((expires_ms, to));
        }
        queue.push_back(Queued {
            envelope,
            expires_ms,
        });
        self.queued_total += 1;
        ForwardResult::Queued
    }

    fn on_alive(&mut self, conn: ConnId, out: &mut Vec<RelayOutput>) {
        if self.probes.remove(&conn).is_none() {
            return;
        }
        let Some(node) = self.clients.get(&conn).map(|c| c.node) else {
            return;
        };
        let conns = self.routes.get(&node).cloned().unwrap_or_default();
        if conns.len() > 1 {
            self.stats.conflicts += 1;
            self.conflicted.insert(node);
            out.push(RelayOutput::Conflict { node, conns });
        }
    }

    fn on_tick(&mut self, now: u64, out: &mut Vec<RelayOutput>) {
        // Probes nobody answered: the older connection is stale.
        let stale: Vec<ConnId> = self
            .probes
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stale {
            self.forget_conn(now, conn);
            out.push(RelayOutput::Close { conn });
        }
        // Expired queue entries, earliest first.
        while let Some(&(at, node)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.remove(&(at, node));
            let mut expired = Vec::new();
            if let Some(queue) = self.queues.get_mut(&node) {
                while queue.front().is_some_and(|q| q.expires_ms <= now) {
                    expired.extend(queue.pop_front());
                }
                match queue.front() {
                    Some(front) => {
                        self.expiries.insert((front.expires_ms, node));
                    }
                    None => {
                        self.queues.remove(&node);
                    }
                }
            }
            let count = expired.len();
            for q in &expired {
                self.release(node, q, Some(DropReason::Expired));
            }
            self.queued_total -= count;
            self.stats.expired += count as u64;
            if count > 0 {
                out.push(RelayOutput::Expired { to: node, count });
            }
        }
        // Housekeeping: forget nodes gone too long, and full buckets of
        // nodes no longer connected.
        let remember_ms = self.config.remember_ms;
        let gone: Vec<NodeId> = self
            .known
            .iter()
            .filter(|(_, gone)| gone.at_ms.saturating_add(remember_ms) <= now)
            .map(|(n, _)| *n)
            .collect();
        for node in gone {
            self.unremember(&node);
            let dropped = self.drop_queue(node);
            if dropped > 0 {
                self.stats.expired += dropped as u64;
                out.push(RelayOutput::Expired {
                    to: node,
                    count: dropped,
                });
            }
        }
        let connected: BTreeSet<NodeId> = self.clients.values().map(|c| c.node).collect();
        let capacity = self.capacity();
        let buckets = std::mem::take(&mut self.buckets);
        self.buckets = buckets
            .into_iter()
            .filter(|(node, b)| connected.contains(node) || self.refilled(b, now) < capacity)
            .collect();
        self.prune_packet_buckets(now, &connected);
    }

    fn capacity(&self) -> u64 {
        u64::from(self.config.rate_burst) * 1000
    }

    fn refilled(&self, bucket: &Bucket, now: u64) -> u64 {
        let elapsed = now.saturating_sub(bucket.at_ms);
        bucket
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(self.config.rate_per_sec)))
            .min(self.capacity())
    }

    /// Takes one token from `node`'s bucket; false if it has none.
    fn take_token(&mut self, now: u64, node: NodeId) -> bool {
        if self.config.rate_burst == 0 {
            return true;
        }
        let capacity = self.capacity();
        let bucket = self.buckets.get(&node).copied().unwrap_or(Bucket {
            milli: capacity,
            at_ms: now,
        });
        let milli = self.refilled(&bucket, now);
        // A clock that went backwards refills nothing and is not remembered.
        let at_ms = bucket.at_ms.max(now);
        let (milli, ok) = match milli.checked_sub(1000) {
            Some(left) => (left, true),
            None => (milli, false),
        };
        self.buckets.insert(node, Bucket { milli, at_ms });
        ok
    }
}

/// The cheap checks that keep a relay from storing what every destination refuses.
fn well_formed(envelope: &Envelope) -> bool {
    envelope.version == PROTOCOL_VERSION
        && envelope
            .body
            .kind
            .text()
            .is_none_or(|t| check_text(t, MAX_TEXT_CHARS).is_ok())
}

#[cfg(test)]
mod tests;
