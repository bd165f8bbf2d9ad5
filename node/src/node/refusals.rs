//! Refused envelopes, counted per reason.
//!
//! A flood of refused envelopes (forged, stale, misaddressed, over a bound) must not
//! flush the events an operator needs from the event stream and the ring `kith
//! events` shows. So every refusal is counted here (shown by `kith status`), and only
//! the first [`REFUSED_EVENTS_PER_MINUTE`] of each minute go on as events. This module
//! only counts: it must never decide whether an envelope is refused.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kith_protocol::validate::Refusal;

/// Refused events let through per minute; the rest are only counted.
pub const REFUSED_EVENTS_PER_MINUTE: u32 = 10;

const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Default)]
pub struct Refusals {
    inner: Mutex<Inner>,
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
}
