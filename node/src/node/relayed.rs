//! Relayed packets on this node's relay links: the writer that drains a relay's
//! outbound queue (filled by the endpoint's socket, [`crate::transport::path`]) into
//! the link's packet stream, and the reader that hands what the relay delivers back
//! to the socket. Framing: [`crate::transport::frames`].
//!
//! Every link (the home relay's, after each reconnect, and on-demand ones) gets both;
//! a new link to a relay takes the queue over once the old link's writer stopped, so
//! application connections carry on over a relay that restarted.
//!
//! It must never block the endpoint (the queues drop when full) or look into a
//! packet: they are QUIC ciphertext of connections the endpoint authenticates.

use std::sync::Arc;

use kith_keys::NodeId;
use tracing::debug;

use super::Shared;
use crate::transport::frames;

/// Starts carrying packets over `conn`, a link to `relay`, until it closes.
pub(super) fn start(shared: &Arc<Shared>, conn: &quinn::Connection, relay: NodeId) {
    tokio::spawn(write_packets(shared.clone(), conn.clone(), relay));
    tokio::spawn(read_packets(shared.clone(), conn.clone(), relay));
}

async fn write_packets(shared: Arc<Shared>, conn: quinn::Connection, relay: NodeId) {
    let queue = shared.paths.outbound(relay);
    let mut queue = tokio::select! {
        _ = conn.closed() => return,
        queue = queue.lock() => queue,
    };
    let mut writer = frames::FrameWriter::new(conn.clone());
    loop {
        let first = tokio::select! {
            _ = conn.closed() => return,
            next = queue.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        writer.push(&first.dst, &first.packet);
        while !writer.is_full() {
            match queue.try_recv() {
                Ok(next) => writer.push(&next.dst, &next.packet),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.flush().await {
            debug!(%relay, error = %e, "the packet stream failed");
            return;
        }
    }
}

async fn read_packets(shared: Arc<Shared>, conn: quinn::Connection, relay: NodeId) {
    while let Ok(recv) = conn.accept_uni().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut reader = frames::FrameReader::new(recv);
            let mut batch = Vec::new();
            loop {
                match reader.next_batch(&mut batch).await {
                    Ok(true) => shared.paths.deliver(relay, &mut batch),
                    Ok(false) => return,
                    Err(e) => {
                        debug!(%relay, error = %e, "the relay's packet stream ended");
                        reader.stop();
                        return;
                    }
                }
            }
        });
    }
}
