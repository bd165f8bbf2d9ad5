//! The node's socket: one QUIC endpoint whose packets take the direct path (the
//! node's UDP socket) or a relay, as iroh's magicsock does it.
//!
//! quinn addresses every peer by a `SocketAddr`. A peer reached through a relay gets
//! a *mapped address*: an address no network uses, made up by this process, one per
//! (relay, peer) pair. On an IPv6 socket it is a unique-local address
//! (`fdXX:…/64`, a random prefix per process and random host bits); on an IPv4
//! socket an address in 240.0.0.0/4 (reserved, never assigned), so that quinn never
//! has to mix address families. Every mapped address has the port [`MAPPED_PORT`].
//! [`PathSocket::try_send`] to a mapped address queues the packet for that relay's
//! link (the link code carries it, see [`super::frames`]); to any other address it
//! is plain UDP. [`PathSocket::poll_recv`] takes UDP datagrams and relayed packets in
//! turn, the latter with their source rewritten to the sender's mapped address.
//!
//! The table of mapped addresses is bounded ([`MAX_MAPPINGS`]): a mapping no packet
//! used for [`MAPPING_IDLE`] (longer than any QUIC idle timeout, so no connection
//! lives on it) may be evicted to make room, and when none may, a relayed packet
//! from a new sender is dropped. A relay that names a flood of fresh senders cannot
//! grow this node's memory.
//!
//! What it must never do: block or fail a send (a full relay queue drops the packet
//! and QUIC retransmits; an error would kill every connection on the endpoint, and
//! `WouldBlock` with nothing to wake us would stall it), or vouch for who sent a
//! relayed packet: the relay names a sender, but only the connection's TLS handshake
//! proves one, and [`RelayPaths::lookup`] lets the accepting side compare the two.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kith_keys::NodeId;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime as _, UdpPoller};
use rand_core::RngCore;
use tokio::sync::mpsc;

/// The port of every mapped address.
pub const MAPPED_PORT: u16 = 7444;
/// Most mapped addresses at once.
pub const MAX_MAPPINGS: usize = 4096;
/// A mapping no packet used for this long may be evicted: twice the QUIC idle
/// timeout, so no connection can still be using it.
pub const MAPPING_IDLE: Duration = Duration::from_secs(60);
/// Packets waiting for one relay link, at most; more are dropped.
pub const RELAY_SEND_QUEUE: usize = 1024;
/// Relayed packets waiting for the endpoint, at most; more are dropped.
pub const RELAY_RECV_QUEUE: usize = 1024;
/// Longest relayed packet handed to the endpoint: the UDP payload size a quinn
/// endpoint announces it accepts (quinn's default `max_udp_payload_size`), so no
/// peer sends a longer one and a relay's longer frames are dropped, not queued.
pub const MAX_RELAYED_DATAGRAM: usize = 1472;

/// A peer reached through a relay: the relay and the peer's key as the relay names it
/// (raw bytes, never decoded: only a TLS handshake proves a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayedPeer {
    pub relay: NodeId,
    pub peer: [u8; 32],
}

/// This process's IPv6 prefix for mapped addresses: `fd` and 7 random bytes.
fn v6_prefix() -> [u8; 8] {
    static PREFIX: OnceLock<[u8; 8]> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        let mut p = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut p);
        p[0] = 0xfd;
        p
    })
}

/// Whether `addr` is a mapped address (of this process).
pub fn is_mapped(addr: &SocketAddr) -> bool {
    if addr.port() != MAPPED_PORT {
        return false;
    }
    match addr.ip() {
        IpAddr::V6(ip) => ip.octets()[..8] == v6_prefix(),
        IpAddr::V4(ip) => ip.octets()[0] >> 4 == 0xf,
    }
}

/// A fresh random mapped address of the family `v6`.
fn fresh_address(v6: bool) -> SocketAddr {
    let ip = if v6 {
        let mut octets = [0u8; 16];
        octets[..8].copy_from_slice(&v6_prefix());
        rand_core::OsRng.fill_bytes(&mut octets[8..]);
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        // 240.0.0.0/4 with 28 random bits; never 255.255.255.255 (broadcast).
        let bits = 0xf000_0000 | (rand_core::OsRng.next_u32() & 0x0fff_fffe);
        IpAddr::V4(Ipv4Addr::from(bits))
    };
    SocketAddr::new(ip, MAPPED_PORT)
}

struct Mapping {
    peer: RelayedPeer,
    last_ms: u64,
}

/// The bounded table of mapped addresses. Pure: time comes in as milliseconds.
pub struct MapTable {
    v6: bool,
    cap: usize,
    idle_ms: u64,
    by_addr: HashMap<SocketAddr, Mapping>,
    by_peer: HashMap<RelayedPeer, SocketAddr>,
    /// While full, no mapping can be evictable before this (the oldest use seen by
    /// the last scan, plus the idle time: uses only move later). A flood of new
    /// senders against a full table of live mappings costs a comparison each, not
    /// a scan of the table.
    full_until_ms: u64,
    #[cfg(test)]
    scans: usize,
}

impl MapTable {
    pub fn new(v6: bool, cap: usize, idle: Duration) -> Self {
        MapTable {
            v6,
            cap,
            idle_ms: idle.as_millis() as u64,
            by_addr: HashMap::new(),
            by_peer: HashMap::new(),
            full_until_ms: 0,
            #[cfg(test)]
            scans: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The mapped address of `peer`, made if needed; `None` when the table is full
    /// of mappings used within the idle time. Either way marks it used `now`.
    /// Also returns the relay of a mapping evicted to make room, if any.
    pub fn map(&mut self, peer: RelayedPeer, now: u64) -> (Option<SocketAddr>, Option<NodeId>) {
        if let Some(addr) = self.by_peer.get(&peer).copied() {
            if let Some(m) = self.by_addr.get_mut(&addr) {
                m.last_ms = now;
            }
            return (Some(addr), None);
        }
        let mut evicted = None;
        if self.by_addr.len() >= self.cap {
            if now < self.full_until_ms {
                return (None, None);
            }
            #[cfg(test)]
            {
                self.scans += 1;
            }
            let oldest = self
                .by_addr
                .iter()
                .min_by_key(|(_, m)| m.last_ms)
                .map(|(a, m)| (*a, m.last_ms));
            match oldest {
                Some((addr, last)) if now.saturating_sub(last) >= self.idle_ms => {
                    if let Some(m) = self.by_addr.remove(&addr) {
                        self.by_peer.remove(&m.peer);
                        evicted = Some(m.peer.relay);
                    }
                }
                Some((_, last)) => {
                    self.full_until_ms = last.saturating_add(self.idle_ms);
                    return (None, None);
                }
                None => return (None, None),
            }
        }
        let addr = loop {
            let addr = fresh_address(self.v6);
            if !self.by_addr.contains_key(&addr) {
                break addr;
            }
        };
        self.by_addr.insert(addr, Mapping { peer, last_ms: now });
        self.by_peer.insert(peer, addr);
        (Some(addr), evicted)
    }

    /// Who `addr` maps to; marks it used `now`.
    pub fn lookup(&mut self, addr: &SocketAddr, now: u64) -> Option<RelayedPeer> {
        let m = self.by_addr.get_mut(addr)?;
        m.last_ms = now;
        Some(m.peer)
    }

    /// Whether any mapping goes through `relay`.
    pub fn uses(&self, relay: &NodeId) -> bool {
        self.by_peer.keys().any(|p| p.relay == *relay)
    }
}

/// A packet for a relay link to carry to `dst`.
pub struct Outbound {
    pub dst: [u8; 32],
    pub packet: Vec<u8>,
}

/// The queue of one relay's outbound packets. Its receiver is taken by whichever
/// link to that relay is live (a reconnected link takes it from the dead one).
struct Pipe {
    tx: mpsc::Sender<Outbound>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Outbound>>>,
}

impl Pipe {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(RELAY_SEND_QUEUE);
        Pipe {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

/// The relay side of the node's socket, shared with the link code: mapped addresses,
/// each relay's outbound queue, and the queue of packets relays delivered.
pub struct RelayPaths {
    start: Instant,
    table: Mutex<MapTable>,
    pipes: Mutex<HashMap<NodeId, Pipe>>,
    inbound_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    inbound_rx: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
}

impl fmt::Debug for RelayPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayPaths")
            .field("mappings", &self.table.lock().unwrap().len())
            .finish_non_exhaustive()
    }
}

impl RelayPaths {
    fn new(v6: bool) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(RELAY_RECV_QUEUE);
        RelayPaths {
            start: Instant::now(),
            table: Mutex::new(MapTable::new(v6, MAX_MAPPINGS, MAPPING_IDLE)),
            pipes: Mutex::new(HashMap::new()),
            inbound_tx,
            inbound_rx: Mutex::new(inbound_rx),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The mapped address to dial `peer` at through `relay`; `None` when the table
    /// is full.
    pub fn map(&self, relay: NodeId, peer: NodeId) -> Option<SocketAddr> {
        let mut table = self.table.lock().unwrap();
        self.map_locked(
            &mut table,
            RelayedPeer {
                relay,
                peer: *peer.as_bytes(),
            },
        )
    }

    /// [`Self::map`] with the table locked; keeps one outbound queue per relay in use.
    fn map_locked(&self, table: &mut MapTable, peer: RelayedPeer) -> Option<SocketAddr> {
        let known = table.len();
        let (addr, evicted) = table.map(peer, self.now());
        if addr.is_some() && (table.len() > known || evicted.is_some()) {
            let mut pipes = self.pipes.lock().unwrap();
            if let Some(relay) = evicted.filter(|r| *r != peer.relay && !table.uses(r)) {
                pipes.remove(&relay);
            }
            pipes.entry(peer.relay).or_insert_with(Pipe::new);
        }
        addr
    }

    /// Who the mapped address `addr` stands for.
    pub fn lookup(&self, addr: &SocketAddr) -> Option<RelayedPeer> {
        let now = self.now();
        self.table.lock().unwrap().lookup(addr, now)
    }

    /// `relay`'s outbound queue, for its link's writer to drain.
    pub fn outbound(&self, relay: NodeId) -> Arc<tokio::sync::Mutex<mpsc::Receiver<Outbound>>> {
        self.pipes
            .lock()
            .unwrap()
            .entry(relay)
            .or_insert_with(Pipe::new)
            .rx
            .clone()
    }

    /// Packets `relay` delivered, each with its sender: handed to the endpoint under
    /// the sender's mapped address, or dropped (table or queue full). Empties `batch`.
    pub fn deliver(&self, relay: NodeId, batch: &mut Vec<([u8; 32], Vec<u8>)>) {
        let mut table = self.table.lock().unwrap();
        for (src, packet) in batch.drain(..) {
            if packet.len() > MAX_RELAYED_DATAGRAM {
                continue;
            }
            if let Some(addr) = self.map_locked(&mut table, RelayedPeer { relay, peer: src }) {
                let _ = self.inbound_tx.try_send((addr, packet));
            }
        }
    }

    /// Queues `contents` (one packet, or several of `segment` bytes each) for the
    /// relay `addr` maps to. Drops what does not fit, and everything when `addr`
    /// maps to nothing.
    fn send(&self, addr: &SocketAddr, contents: &[u8], segment: Option<usize>) {
        let Some(peer) = self.lookup(addr) else {
            return;
        };
        let Some(tx) = self
            .pipes
            .lock()
            .unwrap()
            .get(&peer.relay)
            .map(|p| p.tx.clone())
        else {
            return;
        };
        let segment = segment.unwrap_or(contents.len()).max(1);
        for packet in contents.chunks(segment) {
            let _ = tx.try_send(Outbound {
                dst: peer.peer,
                packet: packet.to_vec(),
            });
        }
    }

    fn poll_inbound(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        let mut rx = self.inbound_rx.lock().unwrap();
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let next = if n == 0 {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(next)) => next,
                    // The sender lives in `self`: never closed while polled.
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            } else {
                match rx.try_recv() {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            let (addr, packet) = next;
            // A packet longer than quinn's buffer is not a QUIC packet it could use.
            if packet.len() > bufs[n].len() {
                continue;
            }
            bufs[n][..packet.len()].copy_from_slice(&packet);
            meta[n] = RecvMeta {
                addr,
                len: packet.len(),
                stride: packet.len(),
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        if n == 0 {
            Poll::Pending
        } else {
            Poll::Ready(n)
        }
    }
}

/// The node endpoint's socket: the real UDP socket and the relay paths. See the
/// [module docs](self).
pub struct PathSocket {
    udp: Arc<dyn AsyncUdpSocket>,
    paths: Arc<RelayPaths>,
    /// Which source `poll_recv` tries first next time, so neither starves the other.
    relay_first: AtomicBool,
}

impl fmt::Debug for PathSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathSocket")
            .field("udp", &self.udp)
            .field("paths", &self.paths)
            .finish()
    }
}

impl PathSocket {
    /// Wraps the bound UDP socket `socket` for the current Tokio runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<(Arc<PathSocket>, Arc<RelayPaths>)> {
        let v6 = socket.local_addr()?.is_ipv6();
        let udp = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        let paths = Arc::new(RelayPaths::new(v6));
        let socket = Arc::new(PathSocket {
            udp,
            paths: paths.clone(),
            relay_first: AtomicBool::new(false),
        });
        Ok((socket, paths))
    }
}

impl PathSocket {
    /// UDP datagrams, less any whose source is a mapped address: those only ever come
    /// out of a relay frame, and one on the wire (a spoofed source in 240.0.0.0/4) is
    /// emptied, which quinn skips.
    fn poll_udp(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.udp.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = polled {
            for m in meta.iter_mut().take(n) {
                if is_mapped(&m.addr) {
                    m.len = 0;
                }
            }
        }
        polled
    }
}

impl AsyncUdpSocket for PathSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Only UDP can be not-writable: relay sends never block.
        self.udp.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if is_mapped(&transmit.destination) {
            self.paths.send(
                &transmit.destination,
                transmit.contents,
                transmit.segment_size,
            );
            return Ok(());
        }
        self.udp.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let relay_first = self.relay_first.fetch_xor(true, Ordering::Relaxed);
        if relay_first {
            if let Poll::Ready(n) = self.paths.poll_inbound(cx, bufs, meta) {
                return Poll::Ready(Ok(n));
            }
            return self.poll_udp(cx, bufs, meta);
        }
        match self.poll_udp(cx, bufs, meta) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.paths.poll_inbound(cx, bufs, meta).map(Ok),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.udp.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.udp.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.udp.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;

    fn peer(relay: &NodeKey, n: u8) -> RelayedPeer {
        RelayedPeer {
            relay: relay.node_id(),
            peer: [n; 32],
        }
    }

    #[test]
    fn each_relayed_peer_gets_one_stable_mapped_address_of_the_socket_family() {
        let relay = NodeKey::generate();
        for v6 in [true, false] {
            let mut t = MapTable::new(v6, 8, MAPPING_IDLE);
            let (a, _) = t.map(peer(&relay, 1), 0);
            let (b, _) = t.map(peer(&relay, 2), 0);
            let (a2, _) = t.map(peer(&relay, 1), 5);
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(Some(a), a2);
            assert_ne!(a, b);
            assert_eq!(a.is_ipv6(), v6);
            assert!(is_mapped(&a) && is_mapped(&b));
            assert_eq!(t.lookup(&a, 6), Some(peer(&relay, 1)));
            assert_eq!(t.lookup(&SocketAddr::from(([127, 0, 0, 1], 7444)), 6), None);
        }
        // The same peer through another relay is another path: another address.
        let other = NodeKey::generate();
        let mut t = MapTable::new(true, 8, MAPPING_IDLE);
        let (a, _) = t.map(peer(&relay, 1), 0);
        let (b, _) = t.map(peer(&other, 1), 0);
        assert_ne!(a, b);
        // Real addresses are never taken for mapped ones.
        assert!(!is_mapped(&SocketAddr::from(([127, 0, 0, 1], MAPPED_PORT))));
        assert!(!is_mapped(&SocketAddr::from((
            [0xfe80, 0, 0, 0, 0, 0, 0, 1],
            MAPPED_PORT
        ))));
    }

    #[test]
    fn a_flood_of_new_senders_cannot_grow_the_table_or_evict_live_mappings() {
        let relay = NodeKey::generate();
        let mut t = MapTable::new(true, 4, Duration::from_millis(1000));
        let live: Vec<SocketAddr> = (0..4)
            .map(|n| t.map(peer(&relay, n), 0).0.unwrap())
            .collect();
        // Table full of mappings used within the idle time: new senders are dropped.
        for n in 10..200 {
            assert_eq!(t.map(peer(&relay, n), 500), (None, None));
        }
        assert_eq!(t.len(), 4);
        for (n, addr) in live.iter().enumerate() {
            assert_eq!(t.lookup(addr, 900), Some(peer(&relay, n as u8)));
        }
        // Keep one in use; once the others were idle long enough, one of them
        // (the least recently used) makes room, and only one.
        t.lookup(&live[0], 1500);
        let (fresh, evicted) = t.map(peer(&relay, 50), 1950);
        assert!(fresh.is_some());
        assert_eq!(evicted, Some(relay.node_id()));
        assert_eq!(t.len(), 4);
        assert_eq!(t.lookup(&live[0], 1950), Some(peer(&relay, 0)));
        let gone = live.iter().filter(|a| t.lookup(a, 1950).is_none()).count();
        assert_eq!(gone, 1);
    }

    #[test]
    fn a_flood_against_a_full_table_of_live_mappings_does_not_scan_it_each_time() {
        let relay = NodeKey::generate();
        let mut t = MapTable::new(true, 64, Duration::from_millis(1000));
        for n in 0..64 {
            t.map(peer(&relay, n), 0);
        }
        for n in 0..10_000u32 {
            let mut key = [0xee; 32];
            key[..4].copy_from_slice(&n.to_le_bytes());
            let flood = RelayedPeer {
                relay: relay.node_id(),
                peer: key,
            };
            assert_eq!(t.map(flood, 500), (None, None));
        }
        assert_eq!(t.scans, 1, "one scan, then a comparison per new sender");
        // Once the oldest could be idle, a new sender may look again.
        assert!(t.map(peer(&relay, 200), 1000).0.is_some());
        assert_eq!(t.scans, 2);
    }
}
