//! What the three parts of the hostile bench share: runtimes, the process's memory,
//! one framed exchange over a QUIC stream, signed envelopes, percentiles and the
//! table cells and PASS/FAIL lines they print. Nothing here measures or decides a
//! goal; each part keeps its own scenario and goals.

use std::net::SocketAddr;
use std::time::Duration;

use comfy_table::{Cell, CellAlignment};
use kith_keys::{NodeId, NodeKey};
use kith_node::node::error_chain;
use kith_protocol::frame::{MAX_FRAME_LEN, PREFIX_LEN, decode_frame, encode_frame};
use kith_protocol::wire::{Body, Envelope, Kind, Message};
use tokio::runtime::Runtime;

/// A multi-threaded runtime with `workers` threads named `name`.
pub fn runtime(name: &str, workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("building a runtime")
}

/// `ip`, any port.
pub fn addr(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, 0))
}

/// 127.0.0.1, any port.
/// A relay with the default configuration on a loopback port, started on `rt`.
pub fn default_relay(rt: &Runtime) -> kith_node::relay::RelayServer {
    use kith_node::relay::{MAX_PER_ADDRESS, RelayOptions, RelayServer};
    rt.block_on(async {
        RelayServer::spawn(
            NodeKey::generate(),
            RelayOptions {
                listen: loopback(),
                advertise: Vec::new(),
                config: kith_protocol::relay::RelayConfig::default(),
                max_per_address: MAX_PER_ADDRESS,
            },
        )
        .await
        .expect("starting the relay")
    })
}

pub fn loopback() -> SocketAddr {
    addr([127, 0, 0, 1])
}

/// A field of /proc/self/status in KiB (0 if unreadable).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// This process's resident memory now, in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// This process's resident memory now, in MiB.
pub fn rss_mib() -> f64 {
    rss_kib() as f64 / 1024.0
}

/// The most this process has had resident so far, in MiB.
pub fn peak_rss_mib() -> f64 {
    status_kib("VmHWM:") as f64 / 1024.0
}

/// One frame out on a new stream, one message back.
pub async fn exchange(conn: &quinn::Connection, message: &Message) -> Result<Message, String> {
    let frame = encode_frame(message).map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| error_chain(&e))?;
    send.write_all(&frame).await.map_err(|e| error_chain(&e))?;
    send.finish().map_err(|e| e.to_string())?;
    let bytes = recv
        .read_to_end(MAX_FRAME_LEN + PREFIX_LEN)
        .await
        .map_err(|e| error_chain(&e))?;
    match decode_frame::<Message>(&bytes) {
        Ok(Some((message, _))) => Ok(message),
        other => Err(format!("undecodable answer: {other:?}")),
    }
}

/// An envelope of `kind` from `key` to `to`, stamped `timestamp_ms`.
pub fn signed(
    key: &NodeKey,
    to: NodeId,
    kind: Kind,
    nonce: [u8; 16],
    timestamp_ms: u64,
) -> Envelope {
    Envelope::sign(
        Body {
            kind,
            from: key.node_id(),
            to,
            nonce,
            timestamp_ms,
        },
        key,
    )
}

/// A nonce made of a counter and a timestamp: unique per sender without a
/// random source.
pub fn counted_nonce(n: u64, timestamp_ms: u64) -> [u8; 16] {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&n.to_le_bytes());
    nonce[8..].copy_from_slice(&timestamp_ms.to_le_bytes());
    nonce
}

/// The `p`th percentile of `samples`, nearest rank (zero if there are none).
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A right-aligned table cell.
pub fn right(s: impl ToString) -> Cell {
    Cell::new(s.to_string()).set_alignment(CellAlignment::Right)
}

/// The PASS/FAIL lines of one part, and whether all passed.
pub struct Verdicts {
    all_pass: bool,
}

impl Verdicts {
    pub fn new() -> Verdicts {
        Verdicts { all_pass: true }
    }

    /// Prints `PASS what` or `FAIL what`.
    pub fn check(&mut self, what: impl std::fmt::Display, pass: bool) {
        self.all_pass &= pass;
        println!("{} {what}", if pass { "PASS" } else { "FAIL" });
    }

    pub fn all_pass(&self) -> bool {
        self.all_pass
    }
}
