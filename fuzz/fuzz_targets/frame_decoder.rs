//! Arbitrary bytes, pushed into a `FrameDecoder` in arbitrary chunks.
//!
//! Checks: no panic; never more than `MAX_BUFFERED` bytes buffered; a refused
//! push takes nothing; and the frames (and errors) that come out are exactly
//! what a straightforward one-pass reference parser finds in the same bytes.
#![no_main]

use kith_protocol::{FrameDecoder, FrameError, MAX_BUFFERED, Message, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

/// One result of decoding a frame, comparable across the two decoders.
#[derive(Debug, PartialEq)]
enum Got {
    Frame(Message),
    Malformed,
}

/// The reference: walk the whole buffer frame by frame.
fn reference(mut buf: &[u8]) -> (Vec<Got>, Option<FrameError>) {
    let mut out = Vec::new();
    loop {
        if buf.len() < 4 {
            return (out, None);
        }
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        if len == 0 {
            return (out, Some(FrameError::Empty));
        }
        if len > kith_protocol::MAX_FRAME_LEN {
            return (out, Some(FrameError::TooLarge { len: len as u64 }));
        }
        if buf.len() < 4 + len {
            return (out, None);
        }
        match decode_frame::<Message>(&buf[..4 + len]) {
            Ok(Some((m, used))) => {
                assert_eq!(used, 4 + len);
                out.push(Got::Frame(m));
            }
            Ok(None) => unreachable!("a whole frame was given"),
            Err(FrameError::Malformed(_)) => out.push(Got::Malformed),
            Err(e) => panic!("unexpected error {e:?}"),
        }
        buf = &buf[4 + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n_ctl, rest)) = data.split_first() else {
        return;
    };
    // The first bytes choose chunk sizes; the rest is the stream.
    let n_ctl = (n_ctl as usize % 8 + 1).min(rest.len());
    let (ctl, stream) = rest.split_at(n_ctl);

    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    let mut fatal = None;
    let mut pos = 0;
    let mut step = 0usize;
    'outer: while pos < stream.len() {
        let c = ctl.get(step % ctl.len().max(1)).copied().unwrap_or(0);
        step += 1;
        // Mostly small chunks, sometimes everything that is left.
        let want = if c == 255 {
            stream.len() - pos
        } else {
            c as usize % 97 + 1
        };
        let chunk = &stream[pos..(pos + want).min(stream.len())];
        let before = dec.buffered();
        match dec.push(chunk) {
            Ok(()) => {
                assert_eq!(dec.buffered(), before + chunk.len());
                pos += chunk.len();
            }
            Err(FrameError::BufferFull { buffered, pushed }) => {
                assert_eq!(buffered, before);
                assert_eq!(pushed, chunk.len());
                assert!(before + pushed > MAX_BUFFERED);
                assert_eq!(dec.buffered(), before, "a refused push takes nothing");
                // Push only what fits. After draining, at least one byte always fits.
                let fit = dec.capacity_left().min(chunk.len());
                if fit == 0 {
                    // Buffer exactly full: it must hold a complete frame.
                    match dec.next_frame::<Message>() {
                        Ok(Some(m)) => got.push(Got::Frame(m)),
                        Err(FrameError::Malformed(_)) => got.push(Got::Malformed),
                        other => panic!("a full buffer must yield a frame, got {other:?}"),
                    }
                    continue;
                }
                match dec.push(&chunk[..fit]) {
                    Ok(()) => pos += fit,
                    Err(e) => {
                        fatal = Some(e);
                        break 'outer;
                    }
                }
            }
            Err(e) => {
                assert!(matches!(e, FrameError::TooLarge { .. } | FrameError::Empty));
                assert!(dec.is_failed());
                assert_eq!(dec.buffered(), before, "a refused prefix stores nothing");
                fatal = Some(e);
                break;
            }
        }
        assert!(dec.buffered() <= MAX_BUFFERED);
        loop {
            match dec.next_frame::<Message>() {
                Ok(Some(m)) => {
                    // Whatever decodes re-encodes to a frame that decodes to it again.
                    let again = encode_frame(&m).expect("a decoded message re-encodes");
                    let (m2, _) = decode_frame::<Message>(&again).unwrap().unwrap();
                    assert_eq!(m2, m);
                    got.push(Got::Frame(m));
                }
                Ok(None) => break,
                Err(FrameError::Malformed(_)) => got.push(Got::Malformed),
                Err(e) => panic!("next_frame failed after a good push: {e:?}"),
            }
        }
    }
    assert!(dec.buffered() <= MAX_BUFFERED);

    let (want, want_fatal) = reference(stream);
    match fatal {
        // Stopped on a bad prefix: what came out is a prefix of the reference
        // (a whole chunk is refused, so frames before the bad prefix in the same
        // chunk may be withheld), and the reference hits the same error.
        Some(e) => {
            assert!(want.len() >= got.len() && want[..got.len()] == got[..]);
            assert_eq!(want_fatal, Some(e));
        }
        None => {
            assert_eq!(got, want);
            assert_eq!(want_fatal, None);
        }
    }
});
