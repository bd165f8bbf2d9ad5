//! The relay's packet path: QUIC packets of application connections between its
//! registered clients, carried opaque (framing: [`crate::transport::frames`]).
//!
//! Each registered client may open a packet stream on its link; every frame names a
//! destination, and the state machine ([`Relay::route_packet`](kith_protocol::relay::Relay::route_packet))
//! decides, per packet, whether and where it goes (registered sender with byte quota
//! left, registered destination). The packet then joins the destination's bounded
//! queue, which a writer task drains into the destination's own packet stream. A full
//! queue drops the packet (QUIC retransmits): a slow destination never holds up the
//! reader of any sender, so it cannot stall the others.
//!
//! It must never look inside a packet, answer one, or keep one beyond its queue.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kith_protocol::relay::{ConnId, PacketRoute};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Inner;
use crate::node::now_ms;
use crate::transport::{frames, tls};

/// Packets waiting for one destination, at most; more are dropped.
pub const DESTINATION_QUEUE: usize = 1024;

/// A packet on its way to a destination: its sender's key and its bytes.
pub(super) type Delivery = ([u8; 32], Vec<u8>);

/// Where every forwarded packet's bytes are appended, for tests that check what a
/// relay could see (`KITH_RELAY_TAP=<file>`). Off unless that variable is set.
pub(super) struct Tap(Mutex<std::fs::File>);

impl Tap {
    pub(super) fn from_env() -> Option<Tap> {
        let path = std::env::var_os("KITH_RELAY_TAP")?;
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => {
                warn!(path = %std::path::Path::new(&path).display(), "KITH_RELAY_TAP: recording every relayed packet");
                Some(Tap(Mutex::new(file)))
            }
            Err(e) => {
                warn!(error = %e, "KITH_RELAY_TAP: cannot open the tap file");
                None
            }
        }
    }

    fn record(&self, packet: &[u8]) {
        let _ = self.0.lock().unwrap().write_all(packet);
    }
}

/// Starts the packet path of connection `id` (already through the state machine's
/// `Connected`): only a registered client gets a packet stream, room for it, and a
/// queue others' packets can reach it through.
pub(super) fn start(inner: &Arc<Inner>, id: ConnId, conn: &quinn::Connection) {
    {
        let mut state = inner.state.lock().unwrap();
        if !state.relay.client(id).is_some_and(|c| c.registered) {
            return;
        }
        let (tx, rx) = mpsc::channel(DESTINATION_QUEUE);
        state.packet_queues.insert(id, tx);
        tokio::spawn(write_packets(conn.clone(), rx));
    }
    conn.set_max_concurrent_uni_streams(tls::RELAY_DATA_STREAMS.into());
    conn.set_receive_window(tls::RELAY_LINK_WINDOW.into());
    tokio::spawn(read_packets(inner.clone(), id, conn.clone()));
}

/// Drains a destination's queue into its packet stream, opened with the first packet.
async fn write_packets(conn: quinn::Connection, mut queue: mpsc::Receiver<Delivery>) {
    let mut stream: Option<quinn::SendStream> = None;
    let mut buf = Vec::with_capacity(frames::BATCH_BYTES + frames::HEADER_LEN + 1500);
    // Ends when the connection is forgotten (its sender dropped) or fails.
    while let Some((src, packet)) = queue.recv().await {
        buf.clear();
        frames::encode(&mut buf, &src, &packet);
        while buf.len() < frames::BATCH_BYTES {
            match queue.try_recv() {
                Ok((src, packet)) => frames::encode(&mut buf, &src, &packet),
                Err(_) => break,
            }
        }
        if stream.is_none() {
            let Ok(mut opened) = conn.open_uni().await else {
                return;
            };
            if opened.write_all(&[frames::DATA_STREAM_TAG]).await.is_err() {
                return;
            }
            stream = Some(opened);
        }
        if let Some(s) = stream.as_mut() {
            if s.write_all(&buf).await.is_err() {
                return;
            }
        }
    }
}

/// Reads the packet streams client `id` opens and routes every packet.
async fn read_packets(inner: Arc<Inner>, id: ConnId, conn: quinn::Connection) {
    while let Ok(recv) = conn.accept_uni().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let mut reader = frames::FrameReader::new(recv);
            let mut batch = Vec::new();
            loop {
                match reader.next_batch(&mut batch).await {
                    Ok(true) => inner.route_packets(id, &mut batch),
                    Ok(false) => return,
                    Err(e) => {
                        debug!(conn = id, error = %e, "a packet stream ended");
                        reader.stop();
                        return;
                    }
                }
            }
        });
    }
}

impl Inner {
    /// Packets from client `id`, each for the node its frame names: routed by the
    /// state machine (under one lock for the batch), then queued for the destination
    /// or dropped. Empties `batch`.
    fn route_packets(&self, id: ConnId, batch: &mut Vec<frames::Frame>) {
        let now = now_ms();
        let mut state = self.state.lock().unwrap();
        for (dst, packet) in batch.drain(..) {
            let len = packet.len();
            let PacketRoute::Deliver { conn, src } = state.relay.route_packet(now, id, &dst, len)
            else {
                continue;
            };
            if let Some(tap) = &self.tap {
                tap.record(&packet);
            }
            let queued = state
                .packet_queues
                .get(&conn)
                .is_some_and(|queue| queue.try_send((*src.as_bytes(), packet)).is_ok());
            if !queued {
                state.relay.note_packet_dropped(len);
            }
        }
    }
}
