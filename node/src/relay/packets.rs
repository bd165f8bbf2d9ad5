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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kith_protocol::relay::{ConnId, PacketRoute};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Inner;
use crate::node::now_ms;
use crate::transport::{frames, tls};

/// Packets waiting for one destination, at most; more are dropped.
pub const DESTINATION_QUEUE: usize = 1024;
/// Bytes of packets waiting for one destination, at most (a sender choosing large
/// frames must not make a queue of 1,024 packets hold 64 MiB).
pub const DESTINATION_QUEUE_BYTES: usize = 2 << 20;
/// Bytes of packets waiting for all destinations together, at most.
pub const TOTAL_QUEUE_BYTES: usize = 256 << 20;

/// One destination's queue and the bytes in it.
pub(super) struct PacketQueue {
    tx: mpsc::Sender<Delivery>,
    bytes: Arc<AtomicUsize>,
}

/// The receiving end of a [`PacketQueue`]: gives its packets' bytes back to both
/// counts as they leave, and all that is left when it is dropped.
struct Drain {
    rx: mpsc::Receiver<Delivery>,
    bytes: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl Drain {
    fn release(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        self.total.fetch_sub(len, Ordering::Relaxed);
    }

    async fn recv(&mut self) -> Option<Delivery> {
        let next = self.rx.recv().await?;
        self.release(next.1.len());
        Some(next)
    }

    fn try_recv(&mut self) -> Option<Delivery> {
        let next = self.rx.try_recv().ok()?;
        self.release(next.1.len());
        Some(next)
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.rx.close();
        while self.try_recv().is_some() {}
    }
}

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
        let bytes = Arc::new(AtomicUsize::new(0));
        let drain = Drain {
            rx,
            bytes: bytes.clone(),
            total: inner.packet_bytes_queued.clone(),
        };
        state.packet_queues.insert(id, PacketQueue { tx, bytes });
        tokio::spawn(write_packets(conn.clone(), drain));
    }
    conn.set_max_concurrent_uni_streams(tls::RELAY_DATA_STREAMS.into());
    conn.set_receive_window(tls::RELAY_LINK_WINDOW.into());
    tokio::spawn(read_packets(inner.clone(), id, conn.clone()));
}

/// Drains a destination's queue into its packet stream, opened with the first packet.
async fn write_packets(conn: quinn::Connection, mut queue: Drain) {
    let mut writer = frames::FrameWriter::new(conn);
    // Ends when the connection is forgotten (its sender dropped) or fails.
    while let Some((src, packet)) = queue.recv().await {
        writer.push(&src, &packet);
        while !writer.is_full() {
            match queue.try_recv() {
                Some((src, packet)) => writer.push(&src, &packet),
                None => break,
            }
        }
        if writer.flush().await.is_err() {
            return;
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
    /// Queues a packet unless its destination's queue or all queues together are full.
    fn enqueue(&self, queue: &PacketQueue, src: [u8; 32], packet: Vec<u8>) -> bool {
        let len = packet.len();
        // Counted before the send, so the writer never gives back bytes not yet counted.
        let mine = queue.bytes.fetch_add(len, Ordering::Relaxed) + len;
        let all = self.packet_bytes_queued.fetch_add(len, Ordering::Relaxed) + len;
        if mine <= DESTINATION_QUEUE_BYTES
            && all <= TOTAL_QUEUE_BYTES
            && queue.tx.try_send((src, packet)).is_ok()
        {
            return true;
        }
        queue.bytes.fetch_sub(len, Ordering::Relaxed);
        self.packet_bytes_queued.fetch_sub(len, Ordering::Relaxed);
        false
    }

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
                .is_some_and(|queue| self.enqueue(queue, *src.as_bytes(), packet));
            if !queued {
                state.relay.note_packet_dropped(len);
            }
        }
    }
}
