//! Validation: the rules an incoming envelope must pass before it may touch
//! any state, the text rules, and safe display of peer-supplied text.
//!
//! Everything here is a pure function of its arguments. The stateful rules
//! (replayed nonce, high-water mark, pending bounds) are applied by
//! [`crate::machine`], which calls [`check_envelope`] first. Nothing in this
//! module may change state or read a clock: a refused envelope must leave the
//! node exactly as it was.

use std::fmt;

use kith_keys::NodeId;
use serde::{Deserialize, Serialize};

pub use crate::wire::Refusal;
use crate::wire::{Envelope, MAX_TEXT_CHARS, PROTOCOL_VERSION};

/// Default clock-skew window: five minutes either way.
pub const DEFAULT_SKEW_MS: u64 = 5 * 60 * 1000;

/// Why a piece of text is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TextError {
    #[error("{chars} characters long; at most {max} are allowed")]
    TooLong { chars: usize, max: usize },
    #[error("contains NUL or is mostly control characters")]
    NotPrintable,
}

/// Whether `c` could move the cursor, change colours, reorder what follows, or
/// otherwise make printed text lie about itself: every Unicode control (C0, DEL,
/// C1, including ESC and CR), the bidirectional embedding, override and isolate
/// characters, the bidi marks, and the line/paragraph separators.
pub fn is_unsafe_for_display(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}'   // LRE RLE PDF LRO RLO
            | '\u{2066}'..='\u{2069}' // LRI RLI FSI PDI
            | '\u{200E}' | '\u{200F}' | '\u{061C}' // LRM RLM ALM
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
        )
}

/// Checks free text against the rules: at most `max_chars` characters, no NUL,
/// and no more than a quarter of its characters [unsafe for display](is_unsafe_for_display).
///
/// A few escape sequences are tolerated (people paste coloured output), because
/// operators only ever see text through [`escape_for_display`]; a flood of them
/// is refused because it is an attack on the operator, not a message.
pub fn check_text(s: &str, max_chars: usize) -> Result<(), TextError> {
    let chars = s.chars().count();
    if chars > max_chars {
        return Err(TextError::TooLong {
            chars,
            max: max_chars,
        });
    }
    let mut unsafe_chars = 0usize;
    for c in s.chars() {
        if c == '\0' {
            return Err(TextError::NotPrintable);
        }
        if is_unsafe_for_display(c) {
            unsafe_chars += 1;
        }
    }
    if unsafe_chars * 4 > chars {
        return Err(TextError::NotPrintable);
    }
    Ok(())
}

/// Renders peer-supplied text so that printing it can never move the cursor,
/// change the terminal's state or reorder the surrounding output.
///
/// `\n`, `\r`, `\t` and `\\` become two-character escapes; every other
/// character for which [`is_unsafe_for_display`] holds becomes `\u{..}` (hex).
/// The backslash is escaped too, so an escaped control character can never be
/// confused with the same characters typed literally by the sender.
pub fn escape_for_display(s: &str) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe_for_display(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The stateless checks on an incoming envelope, in the normative order:
/// version, text bounds, addressee, not from ourselves, signature, clock skew,
/// and (on a direct connection) that the signer is the TLS-authenticated peer.
///
/// The stateful checks (replayed nonce, high-water mark) follow in the machine.
pub fn check_envelope(
    envelope: &Envelope,
    local: &NodeId,
    now_ms: u64,
    skew_ms: u64,
    transport_peer: Option<&NodeId>,
) -> Result<(), Refusal> {
    if envelope.version != PROTOCOL_VERSION {
        return Err(Refusal::UnknownVersion(envelope.version));
    }
    let body = &envelope.body;
    if let Some(text) = body.kind.text() {
        check_text(text, MAX_TEXT_CHARS).map_err(|e| match e {
            TextError::TooLong { chars, .. } => Refusal::TextTooLong {
                chars: chars as u64,
            },
            TextError::NotPrintable => Refusal::TextNotPrintable,
        })?;
    }
    if body.to != *local {
        return Err(Refusal::WrongAddressee);
    }
    // Only our own key can sign this, so it is never an attack from outside; it
    // is refused so that no record for ourselves can ever come into being.
    if body.from == *local {
        return Err(Refusal::FromSelf);
    }
    envelope.verify().map_err(|_| Refusal::BadSignature)?;
    let skew = skew_of(body.timestamp_ms, now_ms);
    if skew.unsigned_abs() > skew_ms {
        return Err(Refusal::ClockSkew { skew_ms: skew });
    }
    if let Some(peer) = transport_peer {
        if *peer != body.from {
            return Err(Refusal::SenderMismatch);
        }
    }
    Ok(())
}

/// `theirs - ours`, saturated to `i64`.
fn skew_of(theirs: u64, ours: u64) -> i64 {
    let d = theirs as i128 - ours as i128;
    d.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_length_is_counted_in_characters() {
        assert_eq!(check_text(&"é".repeat(1024), 1024), Ok(()));
        assert_eq!(
            check_text(&"é".repeat(1025), 1024),
            Err(TextError::TooLong {
                chars: 1025,
                max: 1024
            })
        );
        assert_eq!(
            check_text(&"x".repeat(5000), 1024),
            Err(TextError::TooLong {
                chars: 5000,
                max: 1024
            })
        );
        assert_eq!(check_text("", 1024), Ok(()));
    }

    #[test]
    fn nul_and_control_floods_are_not_printable() {
        assert_eq!(check_text("a\0b", 1024), Err(TextError::NotPrintable));
        // One escape sequence in a sentence is fine...
        assert_eq!(check_text("please \x1b[31mtrust\x1b[0m me", 1024), Ok(()));
        // ...exactly a quarter is fine, more is not.
        assert_eq!(check_text("\x1babc", 1024), Ok(()));
        assert_eq!(check_text("\x1b\x1bab", 1024), Err(TextError::NotPrintable));
        assert_eq!(
            check_text("\u{202E}\u{2066}ab", 1024),
            Err(TextError::NotPrintable)
        );
    }

    #[test]
    fn escaping_leaves_nothing_that_moves_the_cursor() {
        let evil = "a\x1b[2J\r\nb\t\u{7f}\u{85}\u{9b}c\u{202E}d\u{2066}e\u{2069}\\u{1b}";
        let shown = escape_for_display(evil);
        assert_eq!(
            shown,
            "a\\u{1b}[2J\\r\\nb\\t\\u{7f}\\u{85}\\u{9b}c\\u{202e}d\\u{2066}e\\u{2069}\\\\u{1b}"
        );
        assert!(!shown.chars().any(is_unsafe_for_display));
        assert_eq!(escape_for_display("héllo, wörld ✓"), "héllo, wörld ✓");
    }

    #[test]
    fn skew_saturates() {
        assert_eq!(skew_of(0, u64::MAX), i64::MIN);
        assert_eq!(skew_of(u64::MAX, 0), i64::MAX);
        assert_eq!(skew_of(10, 4), 6);
    }

    #[test]
    fn every_refusal_has_a_sentence() {
        for r in [
            Refusal::UnknownVersion(2),
            Refusal::BadSignature,
            Refusal::WrongAddressee,
            Refusal::ClockSkew { skew_ms: -1500 },
            Refusal::ReplayedNonce,
            Refusal::Stale,
            Refusal::SenderMismatch,
            Refusal::TextTooLong { chars: 2000 },
            Refusal::TextNotPrintable,
            Refusal::NotTrusted,
            Refusal::Malformed,
            Refusal::PendingFull,
            Refusal::FromSelf,
            Refusal::Unsolicited,
        ] {
            let s = r.to_string();
            assert!(s.len() > 10 && !s.ends_with('.'), "{s}");
        }
        assert_eq!(
            Refusal::ClockSkew { skew_ms: -1500 }.to_string(),
            "the sender's clock is behind by 1.5 s, outside the allowed window"
        );
    }
}
