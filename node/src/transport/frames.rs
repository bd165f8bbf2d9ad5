//! Relayed packets on a relay link: one long-lived unidirectional QUIC stream per
//! direction, opened with [`DATA_STREAM_TAG`], then frames of
//! `[32-byte node key][u16 big-endian length][packet]`.
//!
//! From a node to its relay the key names the destination; from the relay to a node
//! it names the TLS-authenticated sender. Packets ride a stream rather than QUIC
//! DATAGRAM frames because the packets they carry are themselves QUIC packets of at
//! least 1,200 bytes, which an outer datagram (with the outer header) cannot hold.
//!
//! This module only frames bytes: it never decodes a key (routing compares raw
//! bytes, and the node checks the TLS identity of what arrives), and it never
//! reads more than one frame's bytes ahead.

/// First byte of a packet stream: what tells it from any other stream. The link's
/// envelope exchanges use bidirectional streams only, so this is belt and braces
/// against a future unidirectional stream meaning something else.
pub const DATA_STREAM_TAG: u8 = 0xd7;
/// Bytes before each packet: the key and the length.
pub const HEADER_LEN: usize = 34;
/// Frames batched into one stream write, at most (bytes).
pub const BATCH_BYTES: usize = 64 << 10;

/// Appends one frame to `buf`. `packet` must be 1 to 65,535 bytes
/// (callers split and check; a longer one is not framed).
pub fn encode(buf: &mut Vec<u8>, key: &[u8; 32], packet: &[u8]) {
    let Ok(len) = u16::try_from(packet.len()) else {
        return;
    };
    if packet.is_empty() {
        return;
    }
    buf.extend_from_slice(key);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(packet);
}

/// Why a packet stream ended.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the stream does not start with the packet-stream tag")]
    NotAPacketStream,
    #[error("a frame has length 0")]
    Empty,
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("the stream failed: {0}")]
    Read(#[from] quinn::ReadError),
}

/// A frame: the key it names and the packet.
pub type Frame = ([u8; 32], Vec<u8>);

/// Reads a packet stream in large chunks and cuts them into frames, so that a
/// stream of small packets costs one read (and one lock of the connection) per
/// chunk, not two per packet. Holds at most one chunk and one partial frame.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
    pos: usize,
    tagged: bool,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader {
            recv,
            buf: Vec::with_capacity(2 * BATCH_BYTES),
            pos: 0,
            tagged: false,
        }
    }

    /// Waits for the next frames and appends every complete one to `out` (at least
    /// one). `Ok(false)` at a clean end of the stream between frames.
    pub async fn next_batch(&mut self, out: &mut Vec<Frame>) -> Result<bool, FrameError> {
        loop {
            self.cut(out)?;
            if !out.is_empty() {
                return Ok(true);
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            match self.recv.read_chunk(BATCH_BYTES, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(false),
                None => return Err(FrameError::Truncated),
            }
        }
    }

    /// Stops the stream: we will not read it.
    pub fn stop(&mut self) {
        let _ = self.recv.stop(0u32.into());
    }

    fn cut(&mut self, out: &mut Vec<Frame>) -> Result<(), FrameError> {
        if !self.tagged {
            let Some(&tag) = self.buf.get(self.pos) else {
                return Ok(());
            };
            if tag != DATA_STREAM_TAG {
                return Err(FrameError::NotAPacketStream);
            }
            self.tagged = true;
            self.pos += 1;
        }
        loop {
            let rest = &self.buf[self.pos..];
            if rest.len() < HEADER_LEN {
                return Ok(());
            }
            let len = usize::from(u16::from_be_bytes([rest[32], rest[33]]));
            if len == 0 {
                return Err(FrameError::Empty);
            }
            if rest.len() < HEADER_LEN + len {
                return Ok(());
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&rest[..32]);
            out.push((key, rest[HEADER_LEN..HEADER_LEN + len].to_vec()));
            self.pos += HEADER_LEN + len;
        }
    }
}
