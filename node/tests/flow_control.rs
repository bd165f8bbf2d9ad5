//! What a peer can make a node buffer, over real QUIC on loopback: peers open as
//! many streams as they are allowed on many connections and write without ever
//! finishing a stream. Every byte a sender gets to write was granted by the node's
//! flow control, so the bytes written are what the node holds for them; they must
//! stay within the stated bounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kith_keys::{NodeId, NodeKey};
use kith_node::NodeBuilder;
use kith_node::node::{MAX_BUFFERED, MAX_PER_ADDRESS};
use kith_node::transport::tls;
use kith_protocol::frame::MAX_FRAME_LEN;

/// What each stream tries to write: one byte short of a whole frame, so no stream
/// is ever too long to be read (and none finishes).
const PER_STREAM: usize = MAX_FRAME_LEN + 4 - 1;

/// Opens every stream `conn` allows and writes [`PER_STREAM`] bytes on each
/// without finishing; returns the streams (dropping them would finish them) and
/// how many were opened. `written` counts the bytes flow control let through.
async fn fill(
    conn: quinn::Connection,
    written: Arc<AtomicUsize>,
    deadline: tokio::time::Instant,
) -> (Vec<quinn::SendStream>, usize) {
    let mut writers = Vec::new();
    // Twice what is allowed: the extra opens must block.
    for _ in 0..2 * tls::MAX_BIDI_STREAMS {
        let Ok(Ok((mut send, _recv))) =
            tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await
        else {
            break;
        };
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let chunk = vec![0u8; 4096];
            let mut sent = 0;
            while sent < PER_STREAM {
                let n = chunk.len().min(PER_STREAM - sent);
                match tokio::time::timeout_at(deadline, send.write(&chunk[..n])).await {
                    Ok(Ok(n)) => {
                        sent += n;
                        written.fetch_add(n, Ordering::Relaxed);
                    }
                    // Still blocked by flow control at the deadline (or reset).
                    _ => break,
                }
            }
            send
        }));
    }
    let opened = writers.len();
    let mut streams = Vec::new();
    for w in writers {
        streams.push(w.await.unwrap());
    }
    (streams, opened)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_cannot_make_a_node_buffer_beyond_its_bounds() {
    let node = NodeBuilder::new(NodeKey::generate())
        .listen("127.0.0.1:0".parse().unwrap())
        .spawn()
        .await
        .unwrap();
    let to: SocketAddr = node.local_addr();
    let to_id: NodeId = node.node_id();

    // Enough connections, from enough addresses, that unbounded they could hand the
    // node four times its read budget.
    let per_connection = tls::MAX_BIDI_STREAMS as usize * PER_STREAM;
    let connections = (4 * MAX_BUFFERED).div_ceil(per_connection);
    let hosts = connections.div_ceil(MAX_PER_ADDRESS);
    let mut conns = Vec::new();
    for host in 0..hosts {
        let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
        let from: SocketAddr = format!("127.0.1.{}:0", host + 1).parse().unwrap();
        let endpoint = tls::make_endpoint(&identity, from).unwrap();
        for _ in 0..MAX_PER_ADDRESS.min(connections - conns.len()) {
            let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
            let conn = tokio::time::timeout(
                Duration::from_secs(5),
                tls::dial(&endpoint, &identity, to, to_id),
            )
            .await
            .unwrap()
            .unwrap();
            conns.push(conn);
        }
    }
    assert_eq!(conns.len(), connections);

    // Measured before the node's stream timeout (10 s) resets the stalled streams.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let written = Arc::new(AtomicUsize::new(0));
    let fills: Vec<_> = conns
        .iter()
        .map(|c| tokio::spawn(fill(c.clone(), written.clone(), deadline)))
        .collect();
    let mut held = Vec::new();
    let mut most_streams = 0;
    for f in fills {
        let (streams, opened) = f.await.unwrap();
        most_streams = most_streams.max(opened);
        held.push(streams);
    }
    let written = written.load(Ordering::Relaxed);
    let bound = MAX_BUFFERED + connections * tls::UNVETTED_CONNECTION_WINDOW as usize;
    eprintln!(
        "{connections} connections, at most {most_streams} streams each: the node took \
         {written} bytes (bound {bound}, {} tried)",
        connections * per_connection
    );
    assert!(
        most_streams <= tls::MAX_BIDI_STREAMS as usize,
        "a connection opened {most_streams} streams"
    );
    assert!(
        written <= bound,
        "the node took {written} bytes, more than {bound}"
    );
    drop(held);
    node.shutdown().await;
}
