//! Helpers for tests of services: a TCP echo server, `kith connect` with piped
//! stdio, and test data.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::TestNode;

/// A TCP echo server on loopback; counts the connections it accepted.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

pub fn echo_server() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Echo { addr, accepted }
}

/// `kith connect PEER SERVICE` on `node`, with piped stdin and stdout.
pub fn connect(node: &TestNode, peer: &str, service: &str) -> Child {
    node.command(&["connect", peer, service])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kith connect")
}

/// A child's output, read on a thread of its own so that a test waits for bytes with
/// a deadline and fails saying how far it got, instead of hanging.
pub struct OutputReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    held: Vec<u8>,
}

impl OutputReader {
    pub fn new(mut out: impl Read + Send + 'static) -> Self {
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        OutputReader {
            chunks,
            held: Vec::new(),
        }
    }

    /// The next `n` bytes; panics naming `what` if they did not all come within
    /// `limit` (or the output ended first).
    pub fn take(&mut self, n: usize, limit: Duration, what: &str) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        while self.held.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.held.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{what}: {} of {n} bytes came within {limit:?}, then nothing",
                    self.held.len()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "{what}: the output ended after {} of {n} bytes",
                    self.held.len()
                ),
            }
        }
        self.held.drain(..n).collect()
    }

    /// Everything up to the end of the output; panics naming `what` if it had not
    /// ended within `limit`.
    pub fn rest(&mut self, limit: Duration, what: &str) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.held.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => return std::mem::take(&mut self.held),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "{what}: the output had not ended within {limit:?} ({} bytes came)",
                    self.held.len()
                ),
            }
        }
    }
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` through `kith connect PEER SERVICE` on `node` and returns what came
/// back, panicking with the command's stderr if it failed.
pub fn round_trip(node: &TestNode, peer: &str, service: &str, data: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut child = connect(node, peer, service);
    let mut stdin = child.stdin.take().unwrap();
    let sent = data.to_vec();
    let writer = std::thread::spawn(move || {
        // Dropping stdin ends our half; the echo then ends its half.
        let _ = stdin.write_all(&sent);
    });
    let mut got = Vec::with_capacity(data.len());
    let _ = child.stdout.take().unwrap().read_to_end(&mut got);
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "connect failed: {}",
        super::stderr_of(&out)
    );
    got
}

/// Streams through `kith connect PEER SERVICE` on `from` until 1 MiB came back,
/// has `revoker` revoke `from`, and returns how long after the revoke the stream
/// ended (panicking if it had not ended 5 s later).
pub fn stream_end_after_revoke(
    from: &TestNode,
    revoker: &TestNode,
    peer: &str,
    service: &str,
) -> Duration {
    let mut child = connect(from, peer, service);
    let mut stdin = child.stdin.take().unwrap();
    // Keeps sending until the pipe breaks (the stream ended).
    std::thread::spawn(move || {
        let chunk = pattern(64 << 10);
        while stdin.write_all(&chunk).is_ok() {
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0;
    while received < (1 << 20) {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before the revoke");
        received += n;
    }
    // Drain in the background, and note when the stream ends.
    let (ended_tx, ended_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while matches!(stdout.read(&mut buf), Ok(n) if n > 0) {}
        let _ = ended_tx.send(Instant::now());
    });
    revoker.run_ok(&["revoke", &from.node_id, "--reason", "lost laptop"]);
    let revoked = Instant::now();
    let ended = ended_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the stream ended after the revoke");
    let _ = child.wait();
    ended.saturating_duration_since(revoked)
}
