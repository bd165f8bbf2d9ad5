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

use kith_protocol::relay::MAX_PACKET_LEN;

/// First byte of a packet stream: what tells it from any other stream. The link's
/// envelope exchanges use bidirectional streams only, so this is belt and braces
/// against a future unidirectional stream meaning something else.
pub const DATA_STREAM_TAG: u8 = 0xd7;
/// Bytes before each packet: the key and the length.
pub const HEADER_LEN: usize = 34;
/// Frames batched into one stream write, at most (bytes).
pub const BATCH_BYTES: usize = 64 << 10;

/// Appends one frame to `buf`. `packet` must be 1 to [`MAX_PACKET_LEN`] bytes
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
    #[error("the stream failed: {0}")]
    Read(#[from] quinn::ReadExactError),
}

/// Reads the stream's tag.
pub async fn read_tag(recv: &mut quinn::RecvStream) -> Result<(), FrameError> {
    let mut tag = [0u8; 1];
    recv.read_exact(&mut tag).await?;
    if tag[0] != DATA_STREAM_TAG {
        return Err(FrameError::NotAPacketStream);
    }
    Ok(())
}

/// Reads the next frame: the key and the packet. `Ok(None)` at a clean end of stream
/// between frames.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> Result<Option<([u8; 32], Vec<u8>)>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&header[..32]);
    let len = usize::from(u16::from_be_bytes([header[32], header[33]]));
    if len == 0 {
        return Err(FrameError::Empty);
    }
    debug_assert!(len <= MAX_PACKET_LEN);
    let mut packet = vec![0u8; len];
    recv.read_exact(&mut packet).await?;
    Ok(Some((key, packet)))
}
