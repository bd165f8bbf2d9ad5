//! Routing of relayed QUIC packets: the relay's one decision per packet, kept to a
//! lookup and a token bucket so it costs no more than the bytes it moves.
//!
//! A registered client sends `(destination, packet)`; the relay hands the packet to
//! the destination's registered connection, naming the TLS-authenticated sender as
//! its source. Packets are opaque QUIC ciphertext: this module never looks inside
//! one, never queues one (the caller's per-destination queue drops when full, and
//! QUIC above retransmits), and never answers the sender.

use std::collections::BTreeSet;

use kith_keys::NodeId;

use super::types::{ConnId, MAX_PACKET_LEN, PacketRefusal, PacketRoute};
use super::{Bucket, Relay};

impl Relay {
    /// Routes one packet of `len` bytes from connection `conn` to the node whose key
    /// is `dst` (raw bytes: the relay never decodes a key per packet). The sender
    /// must be a registered client with byte quota left, and `dst` registered here.
    pub fn route_packet(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        dst: &[u8; 32],
        len: usize,
    ) -> PacketRoute {
        let route = self.decide_packet(now_ms, conn, dst, len);
        match route {
            PacketRoute::Deliver { .. } => {
                self.stats.packets_relayed += 1;
                self.stats.packet_bytes_relayed += len as u64;
            }
            PacketRoute::Refused(_) => self.stats.packets_refused += 1,
        }
        route
    }

    /// A routed packet of `len` bytes was dropped: its destination's queue was full.
    pub fn note_packet_dropped(&mut self, len: usize) {
        self.stats.packets_relayed -= 1;
        self.stats.packet_bytes_relayed -= len as u64;
        self.stats.packets_dropped += 1;
        self.stats.packet_bytes_dropped += len as u64;
    }

    fn decide_packet(&mut self, now: u64, conn: ConnId, dst: &[u8; 32], len: usize) -> PacketRoute {
        let Some(client) = self.clients.get(&conn) else {
            return PacketRoute::Refused(PacketRefusal::UnknownConnection);
        };
        if !client.registered {
            return PacketRoute::Refused(PacketRefusal::NotRegistered);
        }
        let src = client.node;
        if len == 0 || len > MAX_PACKET_LEN {
            return PacketRoute::Refused(PacketRefusal::BadLength);
        }
        let Some(route) = self.routes.get(dst).and_then(|c| c.last().copied()) else {
            return PacketRoute::Refused(PacketRefusal::UnknownDestination);
        };
        if !self.take_packet_bytes(now, src, len as u64) {
            return PacketRoute::Refused(PacketRefusal::Quota);
        }
        PacketRoute::Deliver { conn: route, src }
    }

    /// The packet bucket's capacity in thousandths of a byte: never below one
    /// largest packet, or a small burst setting would refuse every big packet.
    fn packet_capacity(&self) -> u64 {
        self.config
            .packet_burst_bytes
            .max(MAX_PACKET_LEN as u64)
            .saturating_mul(1000)
    }

    fn packet_refilled(&self, bucket: &Bucket, now: u64) -> u64 {
        let elapsed = now.saturating_sub(bucket.at_ms);
        bucket
            .milli
            .saturating_add(elapsed.saturating_mul(self.config.packet_bytes_per_sec))
            .min(self.packet_capacity())
    }

    fn take_packet_bytes(&mut self, now: u64, node: NodeId, bytes: u64) -> bool {
        if self.config.packet_burst_bytes == 0 {
            return true;
        }
        let capacity = self.packet_capacity();
        let bucket = self.packet_buckets.get(&node).copied().unwrap_or(Bucket {
            milli: capacity,
            at_ms: now,
        });
        let milli = self.packet_refilled(&bucket, now);
        let at_ms = bucket.at_ms.max(now);
        let (milli, ok) = match milli.checked_sub(bytes.saturating_mul(1000)) {
            Some(left) => (left, true),
            None => (milli, false),
        };
        self.packet_buckets.insert(node, Bucket { milli, at_ms });
        ok
    }

    /// `node` has no connection left: a full bucket is the same as none; a partial
    /// one is kept so that reconnecting does not reset the quota.
    pub(super) fn forget_packet_bucket(&mut self, now: u64, node: NodeId) {
        if self
            .packet_buckets
            .get(&node)
            .is_some_and(|b| self.packet_refilled(b, now) >= self.packet_capacity())
        {
            self.packet_buckets.remove(&node);
        }
    }

    /// Drops the full buckets of nodes no longer connected.
    pub(super) fn prune_packet_buckets(&mut self, now: u64, connected: &BTreeSet<NodeId>) {
        let capacity = self.packet_capacity();
        let buckets = std::mem::take(&mut self.packet_buckets);
        self.packet_buckets = buckets
            .into_iter()
            .filter(|(node, b)| connected.contains(node) || self.packet_refilled(b, now) < capacity)
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RelayConfig, RelayInput};
    use super::*;
    use kith_keys::NodeKey;
    use std::net::SocketAddr;
    use zeroize::Zeroizing;

    fn key(seed: u8) -> NodeKey {
        NodeKey::from_secret(&Zeroizing::new([seed; 32]))
    }

    fn connect(r: &mut Relay, conn: ConnId, k: &NodeKey, port: u16) {
        r.handle(
            0,
            RelayInput::Connected {
                conn,
                node: k.node_id(),
                addr: SocketAddr::from(([10, 0, 0, 1], port)),
            },
        );
    }

    #[test]
    fn a_packet_goes_to_the_destination_naming_the_authenticated_sender() {
        let (a, b) = (key(1), key(2));
        let mut r = Relay::new(RelayConfig::default());
        connect(&mut r, 1, &a, 1);
        connect(&mut r, 2, &b, 2);
        assert_eq!(
            r.route_packet(0, 1, b.node_id().as_bytes(), 1200),
            PacketRoute::Deliver {
                conn: 2,
                src: a.node_id()
            }
        );
        assert_eq!(r.stats().packets_relayed, 1);
        assert_eq!(r.stats().packet_bytes_relayed, 1200);
        r.note_packet_dropped(1200);
        assert_eq!(r.stats().packets_relayed, 0);
        assert_eq!(r.stats().packets_dropped, 1);
        assert_eq!(r.stats().packet_bytes_dropped, 1200);
    }

    #[test]
    fn unknown_senders_guests_strangers_and_bad_lengths_are_refused() {
        let (a, b, c) = (key(1), key(2), key(3));
        let config = RelayConfig {
            allow: Some([a.node_id(), b.node_id()].into_iter().collect()),
            ..RelayConfig::default()
        };
        let mut r = Relay::new(config);
        connect(&mut r, 1, &a, 1);
        connect(&mut r, 3, &c, 3);
        let refused = |p| PacketRoute::Refused(p);
        // No such connection.
        assert_eq!(
            r.route_packet(0, 9, a.node_id().as_bytes(), 100),
            refused(PacketRefusal::UnknownConnection)
        );
        // A guest (not allowed to register) cannot carry data to a member.
        assert_eq!(
            r.route_packet(0, 3, a.node_id().as_bytes(), 100),
            refused(PacketRefusal::NotRegistered)
        );
        // b is not connected; random bytes name nobody.
        assert_eq!(
            r.route_packet(0, 1, b.node_id().as_bytes(), 100),
            refused(PacketRefusal::UnknownDestination)
        );
        assert_eq!(
            r.route_packet(0, 1, &[7; 32], 100),
            refused(PacketRefusal::UnknownDestination)
        );
        // A guest is never a destination either.
        assert_eq!(
            r.route_packet(0, 1, c.node_id().as_bytes(), 100),
            refused(PacketRefusal::UnknownDestination)
        );
        assert_eq!(
            r.route_packet(0, 1, a.node_id().as_bytes(), 0),
            refused(PacketRefusal::BadLength)
        );
        assert_eq!(
            r.route_packet(0, 1, a.node_id().as_bytes(), MAX_PACKET_LEN + 1),
            refused(PacketRefusal::BadLength)
        );
        assert_eq!(r.stats().packets_refused, 7);
        assert_eq!(r.stats().packets_relayed, 0);
        // After a disconnect the destination is gone at once (packets are never queued).
        connect(&mut r, 2, &b, 2);
        r.handle(0, RelayInput::Disconnected { conn: 2 });
        assert_eq!(
            r.route_packet(0, 1, b.node_id().as_bytes(), 100),
            refused(PacketRefusal::UnknownDestination)
        );
    }

    #[test]
    fn each_sender_has_its_own_byte_quota_refilled_over_time() {
        let (a, b, c) = (key(1), key(2), key(3));
        let config = RelayConfig {
            packet_burst_bytes: 100_000,
            packet_bytes_per_sec: 10_000,
            ..RelayConfig::default()
        };
        let mut r = Relay::new(config);
        connect(&mut r, 1, &a, 1);
        connect(&mut r, 2, &b, 2);
        connect(&mut r, 3, &c, 3);
        let to_b = *b.node_id().as_bytes();
        let mut sent = 0;
        while let PacketRoute::Deliver { .. } = r.route_packet(0, 1, &to_b, 1000) {
            sent += 1;
            assert!(sent <= 100, "the burst must be bounded");
        }
        assert_eq!(sent, 100);
        // a's spent quota does not touch c's share.
        assert!(matches!(
            r.route_packet(0, 3, &to_b, 1000),
            PacketRoute::Deliver { .. }
        ));
        // 10 kB/s: after 100 ms, one more 1000-byte packet, not two.
        assert!(matches!(
            r.route_packet(100, 1, &to_b, 1000),
            PacketRoute::Deliver { .. }
        ));
        assert_eq!(
            r.route_packet(100, 1, &to_b, 1000),
            PacketRoute::Refused(PacketRefusal::Quota)
        );
        // Reconnecting does not reset a partial bucket.
        r.handle(100, RelayInput::Disconnected { conn: 1 });
        connect(&mut r, 4, &a, 1);
        assert_eq!(
            r.route_packet(100, 4, &to_b, 1000),
            PacketRoute::Refused(PacketRefusal::Quota)
        );
    }

    #[test]
    fn a_burst_smaller_than_a_packet_still_lets_one_largest_packet_through() {
        let (a, b) = (key(1), key(2));
        let config = RelayConfig {
            packet_burst_bytes: 10,
            packet_bytes_per_sec: 1,
            ..RelayConfig::default()
        };
        let mut r = Relay::new(config);
        connect(&mut r, 1, &a, 1);
        connect(&mut r, 2, &b, 2);
        assert!(matches!(
            r.route_packet(0, 1, b.node_id().as_bytes(), MAX_PACKET_LEN),
            PacketRoute::Deliver { .. }
        ));
    }
}
