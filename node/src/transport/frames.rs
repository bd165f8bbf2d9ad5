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
fn encode(buf: &mut Vec<u8>, key: &[u8; 32], packet: &[u8]) {
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
    #[error("cannot open the packet stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    #[error("the stream failed: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Writes a packet stream: frames are pushed into a batch, and each flush writes the
/// batch at once, opening the stream (with its tag) on the first.
pub struct FrameWriter {
    conn: quinn::Connection,
    stream: Option<quinn::SendStream>,
    buf: Vec<u8>,
}

impl FrameWriter {
    pub fn new(conn: quinn::Connection) -> Self {
        FrameWriter {
            conn,
            stream: None,
            buf: Vec::with_capacity(BATCH_BYTES + HEADER_LEN + u16::MAX as usize),
        }
    }

    /// Adds a frame to the batch.
    pub fn push(&mut self, key: &[u8; 32], packet: &[u8]) {
        encode(&mut self.buf, key, packet);
    }

    /// Whether the batch holds [`BATCH_BYTES`] or more.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= BATCH_BYTES
    }

    /// Writes the batch.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let mut opened = self.conn.open_uni().await?;
                opened.write_all(&[DATA_STREAM_TAG]).await?;
                self.stream.insert(opened)
            }
        };
        stream.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }
}

/// A frame: the key it names and the packet.
pub type Frame = ([u8; 32], Vec<u8>);

/// Reads a packet stream in large chunks and cuts them into frames, so that a
/// stream of small packets costs one read (and one lock of the connection) per
/// chunk, not two per packet.
pub struct FrameReader {
    recv: quinn::RecvStream,
    cutter: Cutter,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader {
            recv,
            cutter: Cutter::default(),
        }
    }

    /// Waits for the next frames and appends every complete one to `out` (at least
    /// one). `Ok(false)` at a clean end of the stream between frames.
    pub async fn next_batch(&mut self, out: &mut Vec<Frame>) -> Result<bool, FrameError> {
        loop {
            self.cutter.cut(out)?;
            if !out.is_empty() {
                return Ok(true);
            }
            match self.recv.read_chunk(BATCH_BYTES, true).await? {
                Some(chunk) => self.cutter.feed(&chunk.bytes),
                None if self.cutter.is_empty() => return Ok(false),
                None => return Err(FrameError::Truncated),
            }
        }
    }

    /// Stops the stream: we will not read it.
    pub fn stop(&mut self) {
        let _ = self.recv.stop(0u32.into());
    }
}

/// The stream's bytes not yet cut into frames: at most one chunk and one partial
/// frame.
#[derive(Default)]
struct Cutter {
    buf: Vec<u8>,
    pos: usize,
    tagged: bool,
}

impl Cutter {
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.extend_from_slice(bytes);
    }

    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Appends every complete frame to `out`.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(frames: &[Frame]) -> Vec<u8> {
        let mut bytes = vec![DATA_STREAM_TAG];
        for (key, packet) in frames {
            encode(&mut bytes, key, packet);
        }
        bytes
    }

    #[test]
    fn frames_come_back_whole_however_the_stream_is_chunked() {
        let frames: Vec<Frame> = (0..50u8)
            .map(|n| ([n; 32], vec![n; 1 + usize::from(n) * 97]))
            .collect();
        let bytes = stream_of(&frames);
        for chunk in [1, 7, 34, 35, 1500, 64 << 10] {
            let mut cutter = Cutter::default();
            let mut out = Vec::new();
            for piece in bytes.chunks(chunk) {
                cutter.feed(piece);
                cutter.cut(&mut out).unwrap();
                // Never more than a chunk and a partial frame held.
                assert!(cutter.buf.len() <= chunk + HEADER_LEN + 50 * 97);
            }
            assert_eq!(out, frames, "chunks of {chunk}");
            assert!(cutter.is_empty());
        }
    }

    #[test]
    fn a_stream_without_the_tag_or_with_an_empty_frame_is_refused() {
        let mut cutter = Cutter::default();
        cutter.feed(&[0x00, 1, 2, 3]);
        assert!(matches!(
            cutter.cut(&mut Vec::new()),
            Err(FrameError::NotAPacketStream)
        ));
        let mut cutter = Cutter::default();
        let mut bytes = vec![DATA_STREAM_TAG];
        bytes.extend_from_slice(&[9; 32]);
        bytes.extend_from_slice(&[0, 0]);
        cutter.feed(&bytes);
        assert!(matches!(
            cutter.cut(&mut Vec::new()),
            Err(FrameError::Empty)
        ));
        // Empty and oversized packets are never framed.
        let mut buf = Vec::new();
        encode(&mut buf, &[1; 32], &[]);
        encode(&mut buf, &[1; 32], &vec![0; 70_000]);
        assert!(buf.is_empty());
    }
}
