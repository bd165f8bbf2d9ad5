//! Refused envelopes, counted per reason.
//!
//! A flood of refused envelopes (forged, stale, misaddressed, over a bound) must not
//! flush the events an operator needs from the event stream and the ring `kith
//! events` shows. So every refusal is counted here (shown by `kith status`), and only
//! the first [`REFUSED_EVENTS_PER_MINUTE`] of each minute go on as events. This module
//! only counts: it must never decide whether an envelope is refused.
//!
//! It also keeps the clock-skew warnings for `kith status`: authenticated envelopes
//! whose timestamp is more than [`SKEW_WARN_MS`] from our clock, whether applied
//! (still within the window) or refused for it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kith_keys::NodeId;
use kith_protocol::validate::Refusal;
use serde::Serialize;

/// Refused events let through per minute; the rest are only counted.
pub const REFUSED_EVENTS_PER_MINUTE: u32 = 10;

const MINUTE_MS: u64 = 60_000;

/// A peer's clock this far from ours is worth a warning, before the skew window
/// (5 minutes by default) refuses its envelopes.
pub const SKEW_WARN_MS: u64 = 60_000;

#[derive(Debug, Default)]
pub struct Refusals {
    inner: Mutex<Inner>,
    skew: Mutex<SkewWarnings>,
}

/// Envelopes whose sender's clock is far from ours, since the node started.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct SkewWarnings {
    pub count: u64,
    pub last: Option<SkewSeen>,
}

/// The latest of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkewSeen {
    pub peer: NodeId,
    /// The sender's time minus ours (positive: the sender is ahead).
    pub skew_ms: i64,
    pub at_ms: u64,
    /// Refused for it (outside the skew window), rather than applied.
    pub refused: bool,
}

#[derive(Debug, Default)]
struct Inner {
    counts: BTreeMap<&'static str, u64>,
    /// The minute (ms since the epoch / 60,000) `in_minute` counts events for.
    minute: u64,
    in_minute: u32,
}

impl Refusals {
    /// Counts one refusal at `now_ms`; true when an event for it may still go out.
    pub fn note(&self, refusal: &Refusal, now_ms: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.counts.entry(refusal.code()).or_default() += 1;
        let minute = now_ms / MINUTE_MS;
        if minute != inner.minute {
            inner.minute = minute;
            inner.in_minute = 0;
        }
        inner.in_minute += 1;
        inner.in_minute <= REFUSED_EVENTS_PER_MINUTE
    }

    /// An authenticated envelope from `peer` stamped `skew_ms` from our clock:
    /// remembered when that is more than [`SKEW_WARN_MS`] either way.
    pub fn note_skew(&self, peer: NodeId, skew_ms: i64, refused: bool, now_ms: u64) {
        if skew_ms.unsigned_abs() <= SKEW_WARN_MS {
            return;
        }
        let mut skew = self.skew.lock().unwrap_or_else(|e| e.into_inner());
        skew.count += 1;
        skew.last = Some(SkewSeen {
            peer,
            skew_ms,
            at_ms: now_ms,
            refused,
        });
    }

    /// The clock-skew warnings since the node started.
    pub fn skew(&self) -> SkewWarnings {
        self.skew.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refusals since the node started, per reason ([`Refusal::code`]).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .counts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_counted_and_a_few_per_minute_become_events() {
        let r = Refusals::default();
        let t = 1_700_000_000_000 / MINUTE_MS * MINUTE_MS;
        let passed = (0..100).filter(|i| r.note(&Refusal::Stale, t + i)).count();
        assert_eq!(passed, REFUSED_EVENTS_PER_MINUTE as usize);
        assert!(
            r.note(&Refusal::BadSignature, t + MINUTE_MS),
            "a new minute"
        );
        let counts = r.counts();
        assert_eq!(counts["stale"], 100);
        assert_eq!(counts["bad_signature"], 1);
    }

    #[test]
    fn only_a_skew_beyond_the_warning_is_remembered() {
        let r = Refusals::default();
        let peer = kith_keys::NodeKey::generate().node_id();
        r.note_skew(peer, SKEW_WARN_MS as i64, false, 1);
        r.note_skew(peer, -(SKEW_WARN_MS as i64), false, 2);
        assert_eq!(r.skew(), SkewWarnings::default());
        r.note_skew(peer, -400_000, true, 3);
        let skew = r.skew();
        assert_eq!(skew.count, 1);
        assert_eq!(skew.last.unwrap().skew_ms, -400_000);
    }
}
