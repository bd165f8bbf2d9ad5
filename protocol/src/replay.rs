//! The replay cache: which (sender, nonce) pairs were applied recently.
//!
//! Bounded in size (oldest entry evicted first) and in time (entries are reaped
//! `2 × skew` after they were recorded: by then the skew check alone refuses
//! the envelope). An entry lost to eviction is still covered by the sender's
//! persisted high-water mark, so the cache only has to be a fast, exact first
//! line. It is in memory only; after a restart the high-water marks do the job.
//!
//! It must never be touched by a refused envelope, and never grows past its
//! capacity whatever a peer sends.

use std::collections::{BTreeSet, VecDeque};

use kith_keys::NodeId;
use serde::{Deserialize, Serialize};

/// One remembered envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceEntry {
    pub from: NodeId,
    pub nonce: [u8; 16],
    /// When it was recorded (the caller's `now_ms`).
    pub at_ms: u64,
}

/// Bounded, time-limited set of (sender, nonce).
///
/// Serialized as the list of entries in insertion order (deterministic, so two
/// machines in the same state serialize to the same bytes); the index is rebuilt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<NonceEntry>", into = "Vec<NonceEntry>")]
pub struct NonceCache {
    /// Insertion order, oldest first: eviction and reaping pop from the front.
    order: VecDeque<NonceEntry>,
    /// Membership. Keyed by sender too, so one peer cannot spend another's nonce.
    index: BTreeSet<(NodeId, [u8; 16])>,
}

impl From<Vec<NonceEntry>> for NonceCache {
    fn from(entries: Vec<NonceEntry>) -> Self {
        let mut cache = NonceCache::default();
        for e in entries {
            if cache.index.insert((e.from, e.nonce)) {
                cache.order.push_back(e);
            }
        }
        cache
    }
}

impl From<NonceCache> for Vec<NonceEntry> {
    fn from(cache: NonceCache) -> Self {
        cache.order.into()
    }
}

impl NonceCache {
    pub fn contains(&self, from: &NodeId, nonce: &[u8; 16]) -> bool {
        self.index.contains(&(*from, *nonce))
    }

    /// Records a nonce, evicting the oldest entries beyond `capacity`.
    /// Returns how many were evicted.
    pub fn insert(&mut self, from: NodeId, nonce: [u8; 16], at_ms: u64, capacity: usize) -> usize {
        if !self.index.insert((from, nonce)) {
            return 0;
        }
        self.order.push_back(NonceEntry { from, nonce, at_ms });
        let mut evicted = 0;
        while self.order.len() > capacity {
            self.pop_front();
            evicted += 1;
        }
        evicted
    }

    /// Drops entries recorded at or before `now_ms - ttl_ms`. Entries are popped
    /// from the front only, so if the caller's clock went backwards some entries
    /// live longer than needed — never shorter.
    pub fn reap(&mut self, now_ms: u64, ttl_ms: u64) -> usize {
        let mut reaped = 0;
        while let Some(front) = self.order.front() {
            if front.at_ms.saturating_add(ttl_ms) > now_ms {
                break;
            }
            self.pop_front();
            reaped += 1;
        }
        reaped
    }

    /// When the oldest entry becomes reapable.
    pub fn next_expiry(&self, ttl_ms: u64) -> Option<u64> {
        self.order.front().map(|e| e.at_ms.saturating_add(ttl_ms))
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.order.pop_front() {
            self.index.remove(&(e.from, e.nonce));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;
    use zeroize::Zeroizing;

    fn id(seed: u8) -> NodeId {
        NodeKey::from_secret(&Zeroizing::new([seed; 32])).node_id()
    }

    #[test]
    fn bounded_oldest_first() {
        let mut c = NonceCache::default();
        for i in 0..10u8 {
            c.insert(id(1), [i; 16], i as u64, 4);
        }
        assert_eq!(c.len(), 4);
        assert!(!c.contains(&id(1), &[5; 16]));
        assert!(c.contains(&id(1), &[6; 16]));
        assert!(!c.contains(&id(2), &[9; 16]), "keyed by sender");
    }

    #[test]
    fn reaps_after_ttl_and_round_trips() {
        let mut c = NonceCache::default();
        c.insert(id(1), [1; 16], 100, 10);
        c.insert(id(1), [2; 16], 200, 10);
        assert_eq!(c.next_expiry(50), Some(150));
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<NonceCache>(&bytes).unwrap(), c);
        assert_eq!(c.reap(149, 50), 0);
        assert_eq!(c.reap(150, 50), 1);
        assert!(c.contains(&id(1), &[2; 16]));
        assert_eq!(c.reap(u64::MAX, 50), 1);
        assert!(c.is_empty());
    }
}
