//! Framing: a `u32` little-endian length, then that many bytes of postcard.
//!
//! [`FrameDecoder`] is fed whatever bytes a stream yields, in chunks of any
//! size, and hands back whole messages. It works in two phases, as mini-redis
//! does: first *check* that a complete frame is buffered (from the length
//! prefix alone), then *parse* it. A length prefix above [`MAX_FRAME_LEN`] is
//! refused as soon as its four bytes are known, before any of the body is
//! buffered, and the decoder never holds more than [`MAX_BUFFERED`] bytes, so
//! a hostile peer cannot make it allocate.
//!
//! This module must never read from or write to anything itself: the caller
//! owns the stream, its timeouts, and what to do with an error (close it).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest frame body accepted or produced, in bytes (the prefix not included).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Size of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Most bytes a [`FrameDecoder`] ever buffers: one largest frame with its prefix.
pub const MAX_BUFFERED: usize = MAX_FRAME_LEN + PREFIX_LEN;

/// Why bytes could not be framed or unframed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`] bytes. The stream
    /// cannot be resynchronised after this; the decoder keeps returning it.
    #[error("frame of {len} bytes refused: the limit is {MAX_FRAME_LEN} bytes")]
    TooLarge { len: u64 },
    /// A zero-length frame: no message encodes to nothing, so it is garbage.
    #[error("empty frame")]
    Empty,
    /// The frame's body is not a valid encoding of the expected message. The
    /// frame is consumed, so the decoder may continue with the next one.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// [`FrameDecoder::push`] was given more bytes than fit; nothing was taken.
    /// Push at most [`FrameDecoder::capacity_left`] bytes, draining frames between pushes.
    #[error(
        "frame buffer full: {buffered} bytes buffered, {pushed} more pushed, limit {MAX_BUFFERED}"
    )]
    BufferFull { buffered: usize, pushed: usize },
    /// The message could not be encoded (not expected for kith's own types).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `msg` as one frame: length prefix, then postcard.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let out = postcard::to_extend(msg, vec![0u8; PREFIX_LEN])
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - PREFIX_LEN;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: len as u64 });
    }
    let mut out = out;
    out[..PREFIX_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decodes the first frame of `buf`, if it is complete: the message and how
/// many bytes of `buf` it used. `Ok(None)` means more bytes are needed.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < PREFIX_LEN + len {
        return Ok(None);
    }
    let msg = parse(&buf[PREFIX_LEN..PREFIX_LEN + len])?;
    Ok(Some((msg, PREFIX_LEN + len)))
}

/// The body length announced by the prefix at the start of `buf`, checked
/// against the limits; `None` if the prefix is not complete yet.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize;
    check_len(len).map(Some)
}

fn check_len(len: usize) -> Result<usize, FrameError> {
    if len > MAX_FRAME_LEN {
        Err(FrameError::TooLarge { len: len as u64 })
    } else if len == 0 {
        Err(FrameError::Empty)
    } else {
        Ok(len)
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    // Trailing bytes would make two different frames decode to one message;
    // refuse them so every accepted frame is exactly one canonical-length message.
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Incremental frame decoder for one stream.
///
/// ```
/// # use kith_protocol::{FrameDecoder, Message, encode_frame};
/// let mut dec = FrameDecoder::new();
/// let bytes = encode_frame(&Message::Ping { id: 1 }).unwrap();
/// for chunk in bytes.chunks(3) {
///     dec.push(chunk).unwrap();
/// }
/// assert_eq!(dec.next_frame::<Message>().unwrap(), Some(Message::Ping { id: 1 }));
/// ```
#[derive(Clone, Debug, Default)]
pub struct FrameDecoder {
    /// Bytes received and not yet handed out; live data is `buf[start..]`.
    buf: Vec<u8>,
    /// Offset of the first byte not yet consumed by `next_frame`.
    start: usize,
    /// Offset (absolute, into `buf`) of the next length prefix that has not been
    /// checked yet: every frame before it has a valid length.
    unchecked: usize,
    /// Set once a prefix is refused: the stream cannot be resynchronised.
    failed: Option<FrameError>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes received from the stream.
    ///
    /// Every length prefix that becomes complete is checked before any body
    /// byte is stored, so an oversized frame is refused from its prefix alone.
    /// Refuses (taking nothing) a push that would buffer more than
    /// [`MAX_BUFFERED`] bytes; see [`FrameDecoder::capacity_left`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        self.compact();
        // Phase one: walk the prefixes that the new bytes complete, without
        // storing anything, so a bad prefix is refused before its body is kept.
        let live = self.buf.len();
        let total = live + bytes.len();
        let mut pos = self.unchecked;
        while pos + PREFIX_LEN <= total {
            let mut prefix = [0u8; PREFIX_LEN];
            for (i, b) in prefix.iter_mut().enumerate() {
                let at = pos + i;
                *b = if at < live {
                    self.buf[at]
                } else {
                    bytes[at - live]
                };
            }
            let len = u32::from_le_bytes(prefix) as usize;
            if let Err(err) = check_len(len) {
                self.failed = Some(err.clone());
                return Err(err);
            }
            pos += PREFIX_LEN + len;
        }
        if total > MAX_BUFFERED {
            return Err(FrameError::BufferFull {
                buffered: live,
                pushed: bytes.len(),
            });
        }
        self.unchecked = pos;
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Phase two: the next complete frame, parsed, or `Ok(None)` if none is
    /// complete yet. A malformed frame is consumed and reported; the decoder can
    /// go on with the frame after it.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let live = &self.buf[self.start..];
        // Lengths were checked in `push`; this cannot fail, but stay defensive.
        let Some(len) = frame_len(live)? else {
            return Ok(None);
        };
        if live.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        let frame = &live[PREFIX_LEN..PREFIX_LEN + len];
        let result = parse(frame);
        self.start += PREFIX_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.unchecked = 0;
        }
        result.map(Some)
    }

    /// Bytes currently buffered (never more than [`MAX_BUFFERED`]).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many more bytes `push` accepts now. After draining every complete
    /// frame this is at least 1, so a reader sized by it always makes progress.
    pub fn capacity_left(&self) -> usize {
        MAX_BUFFERED - self.buffered()
    }

    /// Whether a refused length prefix has ended this stream.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Moves live bytes to the front so `buf` never grows past [`MAX_BUFFERED`].
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.unchecked -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Message;

    fn ping(id: u64) -> Vec<u8> {
        encode_frame(&Message::Ping { id }).unwrap()
    }

    #[test]
    fn frame_is_le_length_then_postcard() {
        let f = ping(5);
        assert_eq!(&f[..4], &2u32.to_le_bytes());
        assert_eq!(&f[4..], &[2, 5]);
    }

    #[test]
    fn one_shot_decode_needs_whole_frame() {
        let f = ping(300);
        for cut in 0..f.len() {
            assert_eq!(decode_frame::<Message>(&f[..cut]), Ok(None));
        }
        let mut two = f.clone();
        two.extend(ping(1));
        assert_eq!(
            decode_frame::<Message>(&two),
            Ok(Some((Message::Ping { id: 300 }, f.len())))
        );
    }

    #[test]
    fn byte_at_a_time_and_many_frames_in_one_push() {
        let mut all = Vec::new();
        for id in 0..100 {
            all.extend(ping(id));
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &all {
            dec.push(std::slice::from_ref(b)).unwrap();
            while let Some(m) = dec.next_frame::<Message>().unwrap() {
                got.push(m);
            }
        }
        let mut dec2 = FrameDecoder::new();
        dec2.push(&all).unwrap();
        let mut got2 = Vec::new();
        while let Some(m) = dec2.next_frame::<Message>().unwrap() {
            got2.push(m);
        }
        let want: Vec<_> = (0..100).map(|id| Message::Ping { id }).collect();
        assert_eq!(got, want);
        assert_eq!(got2, want);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_is_buffered() {
        let mut dec = FrameDecoder::new();
        let len = (MAX_FRAME_LEN + 1) as u32;
        dec.push(&len.to_le_bytes()[..2]).unwrap();
        assert_eq!(
            dec.push(&len.to_le_bytes()[2..]),
            Err(FrameError::TooLarge { len: len as u64 })
        );
        assert_eq!(dec.buffered(), 2, "the completing bytes were not stored");
        assert!(dec.is_failed());
        assert!(dec.push(&[0]).is_err());
        assert!(dec.next_frame::<Message>().is_err());

        // A refused prefix behind a valid frame in the same chunk: the valid frame
        // is not delivered either, the whole chunk is refused.
        let mut dec = FrameDecoder::new();
        let mut chunk = ping(1);
        chunk.extend(u32::MAX.to_le_bytes());
        assert_eq!(
            dec.push(&chunk),
            Err(FrameError::TooLarge {
                len: u32::MAX as u64
            })
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn empty_frames_are_refused_both_ways() {
        assert_eq!(encode_frame(&()), Err(FrameError::Empty));
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.push(&[0, 0, 0, 0]), Err(FrameError::Empty));
        assert_eq!(
            decode_frame::<Message>(&[0, 0, 0, 0]),
            Err(FrameError::Empty)
        );
    }

    #[test]
    fn encode_refuses_oversized_messages() {
        let big = vec![7u8; MAX_FRAME_LEN];
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::TooLarge { .. })
        ));
        let fits = vec![7u8; MAX_FRAME_LEN - 3];
        let f = encode_frame(&fits).unwrap();
        assert_eq!(f.len(), MAX_BUFFERED);
        let mut dec = FrameDecoder::new();
        dec.push(&f).unwrap();
        assert_eq!(dec.capacity_left(), 0);
        assert_eq!(dec.next_frame::<Vec<u8>>().unwrap(), Some(fits));
        assert_eq!(dec.capacity_left(), MAX_BUFFERED);
    }

    #[test]
    fn pushing_past_the_limit_is_refused_and_takes_nothing() {
        let mut dec = FrameDecoder::new();
        // A frame announcing MAX_FRAME_LEN bytes, of which we send all but one.
        let mut f = (MAX_FRAME_LEN as u32).to_le_bytes().to_vec();
        f.extend(vec![0u8; MAX_FRAME_LEN - 1]);
        dec.push(&f).unwrap();
        assert_eq!(dec.capacity_left(), 1);
        assert_eq!(
            dec.push(&[1, 2]),
            Err(FrameError::BufferFull {
                buffered: MAX_BUFFERED - 1,
                pushed: 2
            })
        );
        assert_eq!(dec.buffered(), MAX_BUFFERED - 1);
        assert!(!dec.is_failed());
        dec.push(&[1]).unwrap();
        assert_eq!(dec.capacity_left(), 0);
    }

    #[test]
    fn malformed_frame_is_consumed_and_decoding_continues() {
        let mut dec = FrameDecoder::new();
        // Variant index 9 does not exist.
        dec.push(&[1, 0, 0, 0, 9]).unwrap();
        dec.push(&ping(4)).unwrap();
        assert!(matches!(
            dec.next_frame::<Message>(),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(
            dec.next_frame::<Message>().unwrap(),
            Some(Message::Ping { id: 4 })
        );
        // Trailing bytes inside a frame are malformed too.
        let mut f = ping(4);
        f[0] += 1;
        f.push(0);
        assert!(matches!(
            decode_frame::<Message>(&f),
            Err(FrameError::Malformed(m)) if m.contains("trailing")
        ));
    }
}
