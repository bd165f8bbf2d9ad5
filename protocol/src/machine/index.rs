//! The indexes that bound the trust machine's work: what is pending (by age, by
//! source network, by relay), which trust expires when, and which declined records
//! are due to be reaped. They are derived from the records (except the relay
//! buckets) and never decide anything themselves; the machine asks them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use kith_keys::NodeId;

use super::{PeerRecord, TrustState};

/// Source network of a request, for the per-source bound: an IPv4 address, or
/// an IPv6 /64 (one host usually owns a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum SourceNet {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl SourceNet {
    pub(super) fn of(addr: &SocketAddr) -> SourceNet {
        match addr.ip() {
            IpAddr::V4(v4) => SourceNet::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceNet::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    SourceNet::V6(o[..8].try_into().expect("eight bytes"))
                }
            },
        }
    }
}

/// The records that bound the machine's work, indexed so that admitting a request or
/// finding the next deadline costs the same with ten thousand peers as with ten: the
/// incoming-pending records by age (for eviction and expiry) and by source network
/// (for the per-source bound), and the trusted records that expire, by expiry.
/// Derived from `peers`; every record change goes through `put_peer`/`remove_peer`,
/// which keep it current (checked after every input in debug builds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct RecordIndex {
    by_age: BTreeSet<(u64, NodeId)>,
    by_source: BTreeMap<SourceNet, usize>,
    /// What each pending record is indexed under, so the entry can be undone.
    entries: BTreeMap<NodeId, (u64, Option<SourceNet>)>,
    /// Trusted records with an expiry, by expiry.
    expiries: BTreeSet<(u64, NodeId)>,
    /// The expiry each of those is indexed under.
    expires: BTreeMap<NodeId, u64>,
    /// Records we declined ([`Declined::ByUs`]), by [`last_word`].
    rejected: BTreeSet<(u64, NodeId)>,
    /// Records the peer declined with no request of ours standing ([`Declined::ByPeer`]).
    declined: BTreeSet<(u64, NodeId)>,
    /// What each of those two is indexed under.
    declined_of: BTreeMap<NodeId, (Declined, u64)>,
}

impl RecordIndex {
    pub(super) fn build(peers: &BTreeMap<NodeId, PeerRecord>) -> Self {
        let mut index = RecordIndex::default();
        for (id, rec) in peers {
            index.update(*id, Some(rec));
        }
        index
    }

    /// Re-indexes `id` as `rec` now is (`None`: removed).
    pub(super) fn update(&mut self, id: NodeId, rec: Option<&PeerRecord>) {
        if let Some(at) = self.expires.remove(&id) {
            self.expiries.remove(&(at, id));
        }
        if let Some(at) = rec
            .filter(|r| r.state == TrustState::Trusted)
            .and_then(|r| r.expires_at_ms)
        {
            self.expires.insert(id, at);
            self.expiries.insert((at, id));
        }
        if let Some((kind, at)) = self.declined_of.remove(&id) {
            self.declined_set(kind).remove(&(at, id));
        }
        if let Some((kind, rec)) = rec.and_then(|r| declined(r).map(|k| (k, r))) {
            let at = last_word(rec);
            self.declined_of.insert(id, (kind, at));
            self.declined_set(kind).insert((at, id));
        }
        if let Some((since, net)) = self.entries.remove(&id) {
            self.by_age.remove(&(since, id));
            if let Some(net) = net {
                if let Some(n) = self.by_source.get_mut(&net) {
                    *n -= 1;
                    if *n == 0 {
                        self.by_source.remove(&net);
                    }
                }
            }
        }
        if let Some(rec) = rec.filter(|r| r.state == TrustState::IncomingPending) {
            let net = rec.source.as_ref().map(SourceNet::of);
            self.entries.insert(id, (rec.since_ms, net));
            self.by_age.insert((rec.since_ms, id));
            if let Some(net) = net {
                *self.by_source.entry(net).or_default() += 1;
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn count_from(&self, net: SourceNet) -> usize {
        self.by_source.get(&net).copied().unwrap_or(0)
    }

    pub(super) fn oldest(&self) -> Option<NodeId> {
        self.by_age.first().map(|(_, id)| *id)
    }

    /// When the oldest pending record expires, the first trusted one lapses, or
    /// the oldest declined record is due to be reaped (`reap`: after how long, and
    /// whether records we rejected count).
    pub(super) fn next_deadline(&self, pending_ttl_ms: u64, reap: Reap) -> Option<u64> {
        let pending = self
            .by_age
            .first()
            .map(|(since, _)| since.saturating_add(pending_ttl_ms));
        let trust = self.expiries.first().map(|(at, _)| *at);
        let declined = self
            .oldest_declined(reap.rejected)
            .map(|(at, _)| at.saturating_add(reap.after_ms));
        pending.into_iter().chain(trust).chain(declined).min()
    }

    fn declined_set(&mut self, kind: Declined) -> &mut BTreeSet<(u64, NodeId)> {
        match kind {
            Declined::ByUs => &mut self.rejected,
            Declined::ByPeer => &mut self.declined,
        }
    }

    /// How many records may be reaped (with those we rejected, or not).
    pub(super) fn declined_len(&self, rejected: bool) -> usize {
        self.declined.len() + if rejected { self.rejected.len() } else { 0 }
    }

    /// The reapable record with the oldest last word, and that word's time.
    pub(super) fn oldest_declined(&self, rejected: bool) -> Option<(u64, NodeId)> {
        let ours = self.rejected.first().filter(|_| rejected);
        self.declined.first().into_iter().chain(ours).min().copied()
    }
}

/// Which reapable kind a record is, if any: declined, never trusted on our side
/// now, and with no consent of ours standing, so that forgetting it changes no
/// later decision (see [`super::TrustMachine`]'s reaping notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Declined {
    /// We rejected their request.
    ByUs,
    /// They rejected or revoked, and no request of ours stands; or we forgot them.
    ByPeer,
}

fn declined(rec: &PeerRecord) -> Option<Declined> {
    match rec.state {
        TrustState::Rejected => Some(Declined::ByUs),
        TrustState::RejectedByPeer | TrustState::RevokedByPeer if rec.consent.is_none() => {
            Some(Declined::ByPeer)
        }
        TrustState::Forgotten => Some(Declined::ByPeer),
        _ => None,
    }
}

/// The last time anything happened to a record: its state change, or the newest
/// envelope applied from the peer (whose timestamp may be up to the skew ahead).
fn last_word(rec: &PeerRecord) -> u64 {
    rec.since_ms.max(rec.high_water_ms)
}

/// How declined records are reaped: after how long past their last word, and
/// whether records we rejected are included.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reap {
    pub(super) after_ms: u64,
    pub(super) rejected: bool,
}

/// Incoming-pending requests that arrived through a relay, counted per relay: a
/// relayed request has no source address, so the per-source bound cannot see it.
/// Not derived from the records (they do not say which relay carried a request)
/// and not stored: after a restart, requests already pending count only against
/// the total bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct RelayBuckets {
    relay_of: BTreeMap<NodeId, NodeId>,
    counts: BTreeMap<NodeId, usize>,
}

impl RelayBuckets {
    /// Counts `peer`'s pending request against `relay` (`None`: against none).
    pub(super) fn set(&mut self, peer: NodeId, relay: Option<NodeId>) {
        if let Some(old) = self.relay_of.remove(&peer) {
            if let Some(n) = self.counts.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&old);
                }
            }
        }
        if let Some(relay) = relay {
            self.relay_of.insert(peer, relay);
            *self.counts.entry(relay).or_default() += 1;
        }
    }

    pub(super) fn count(&self, relay: &NodeId) -> usize {
        self.counts.get(relay).copied().unwrap_or(0)
    }
}
