//! Which inbound connections a node takes: bounds per source address, per identity
//! and in total, with room kept for trusted peers.
//!
//! Before the handshake only the source address is known, so that is what
//! [`Admission::begin_handshake`] bounds; after it, [`Admission::admit`] bounds
//! connections per identity and keeps untrusted ones out of a reserve that only
//! trusted peers use. Both hand out guards whose drop frees the slot, so a slot
//! can never leak on an early return. This module only counts: it never decides
//! trust (the caller says whether the peer is trusted) and never touches a socket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use kith_keys::NodeId;

/// Most inbound connections at once, handshakes included.
pub const MAX_INBOUND_CONNECTIONS: usize = 4096;
/// Of those, kept for trusted peers: untrusted connections never take these.
pub const TRUSTED_RESERVE: usize = 512;
/// Most handshakes in progress at once (each is bounded by the dial timeout).
pub const MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress above which a client must first prove its source
/// address (a QUIC Retry round trip) before it may take a handshake slot. Per-address
/// caps count only what an address can be made to hold, and a host that spoofs
/// source addresses can send first flights from any number of them; a Retry token
/// reaches only a real address. Below this, handshakes cost no extra round trip.
pub const RETRY_ABOVE_HANDSHAKES: usize = MAX_HANDSHAKES / 4;
/// Most handshaking plus untrusted connections from one address (an IPv4 address
/// or an IPv6 /64). An honest node needs one; several nodes behind one NAT fit.
pub const MAX_PER_ADDRESS: usize = 16;
/// Most connections one untrusted identity holds at once. A peer needs one, two
/// while both sides dial each other at the same moment.
pub const MAX_PER_IDENTITY: usize = 4;
/// Most connections one trusted identity holds at once: its kith connection and
/// one per application protocol it uses.
pub const MAX_PER_TRUSTED_IDENTITY: usize = 32;

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every inbound slot (or every handshake slot) is taken.
    Full,
    /// The source address has its share.
    Address,
    /// The identity has its share.
    Identity,
    /// The slots untrusted peers may use are taken.
    Untrusted,
}

impl Refused {
    /// The reason sent in the close frame (a fixed, short text).
    pub fn reason(self) -> &'static [u8] {
        match self {
            Refused::Full | Refused::Untrusted => b"too many connections",
            Refused::Address => b"too many connections from your address",
            Refused::Identity => b"too many connections from your node",
        }
    }
}

/// The address a connection counts against: IPv4 as is (also when IPv4-mapped),
/// IPv6 by its /64, which one host usually has whole.
fn address_key(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// Handshaking plus established connections.
    total: usize,
    handshakes: usize,
    untrusted: usize,
    /// Handshaking plus untrusted connections, by address.
    by_address: HashMap<IpAddr, usize>,
    by_identity: HashMap<NodeId, usize>,
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The inbound connection counts of one node.
#[derive(Debug, Default)]
pub struct Admission {
    counts: Mutex<Counts>,
}

/// A handshake in progress; dropping it frees its slots.
#[derive(Debug)]
pub struct Handshake {
    admission: Arc<Admission>,
    address: IpAddr,
}

/// An admitted connection; dropping it frees its slots.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
    peer: NodeId,
    trusted: bool,
}

impl Admitted {
    /// Whether the peer was trusted when it was admitted.
    pub fn trusted(&self) -> bool {
        self.trusted
    }
}

impl Admission {
    /// Whether a client that has not proved its source address must do so (with a
    /// QUIC Retry) before it may take a handshake slot: only when many handshakes
    /// are in progress, see [`RETRY_ABOVE_HANDSHAKES`].
    pub fn wants_address_proof(&self, address_validated: bool) -> bool {
        !address_validated && self.counts.lock().unwrap().handshakes >= RETRY_ABOVE_HANDSHAKES
    }

    /// Takes a handshake slot for a connection from `remote`, before any
    /// handshake work.
    pub fn begin_handshake(self: &Arc<Self>, remote: SocketAddr) -> Result<Handshake, Refused> {
        let address = address_key(remote);
        let mut c = self.counts.lock().unwrap();
        if c.total >= MAX_INBOUND_CONNECTIONS || c.handshakes >= MAX_HANDSHAKES {
            return Err(Refused::Full);
        }
        let from_address = c.by_address.entry(address).or_default();
        if *from_address >= MAX_PER_ADDRESS {
            return Err(Refused::Address);
        }
        *from_address += 1;
        c.total += 1;
        c.handshakes += 1;
        Ok(Handshake {
            admission: self.clone(),
            address,
        })
    }

    /// Turns a finished handshake by `peer` into an admitted connection.
    pub fn admit(
        self: &Arc<Self>,
        handshake: Handshake,
        peer: NodeId,
        trusted: bool,
    ) -> Result<Admitted, Refused> {
        let address = handshake.address;
        let mut c = self.counts.lock().unwrap();
        let share = if trusted {
            MAX_PER_TRUSTED_IDENTITY
        } else {
            MAX_PER_IDENTITY
        };
        if c.by_identity.get(&peer).copied().unwrap_or(0) >= share {
            return Err(Refused::Identity);
        }
        // The handshake's slot passes to the connection: the total is unchanged.
        if !trusted && c.untrusted >= MAX_INBOUND_CONNECTIONS - TRUSTED_RESERVE {
            return Err(Refused::Untrusted);
        }
        c.handshakes -= 1;
        *c.by_identity.entry(peer).or_default() += 1;
        if trusted {
            // A trusted peer's connection does not hold its address's share.
            decrement(&mut c.by_address, &address);
        } else {
            c.untrusted += 1;
        }
        std::mem::forget(handshake);
        Ok(Admitted {
            admission: self.clone(),
            address,
            peer,
            trusted,
        })
    }

    #[cfg(test)]
    fn snapshot(&self) -> (usize, usize, usize, usize) {
        let c = self.counts.lock().unwrap();
        (
            c.total,
            c.handshakes,
            c.untrusted,
            c.by_address.len() + c.by_identity.len(),
        )
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock().unwrap();
        c.total -= 1;
        c.handshakes -= 1;
        decrement(&mut c.by_address, &self.address);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock().unwrap();
        c.total -= 1;
        decrement(&mut c.by_identity, &self.peer);
        if !self.trusted {
            c.untrusted -= 1;
            decrement(&mut c.by_address, &self.address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_proof_is_asked_only_while_many_handshakes_are_in_progress() {
        let admission = Arc::new(Admission::default());
        assert!(!admission.wants_address_proof(false));
        let held: Vec<_> = (0..RETRY_ABOVE_HANDSHAKES)
            .map(|i| {
                admission
                    .begin_handshake(SocketAddr::from(([198, 51, 100, i as u8], 1)))
                    .unwrap()
            })
            .collect();
        assert!(admission.wants_address_proof(false));
        assert!(!admission.wants_address_proof(true));
        drop(held);
        assert!(!admission.wants_address_proof(false));
    }

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let admission = Arc::new(Admission::default());
        let mut held = Vec::new();
        for _ in 0..MAX_PER_ADDRESS {
            let h = admission.begin_handshake(addr("192.0.2.1:1000")).unwrap();
            held.push(
                admission
                    .admit(h, NodeKey::generate().node_id(), false)
                    .unwrap(),
            );
        }
        assert_eq!(
            admission
                .begin_handshake(addr("192.0.2.1:2000"))
                .unwrap_err(),
            Refused::Address
        );
        // The same host over IPv4-mapped IPv6, or another port: the same share.
        assert_eq!(
            admission
                .begin_handshake(addr("[::ffff:192.0.2.1]:3000"))
                .unwrap_err(),
            Refused::Address
        );
        // Another host is not affected; one connection closing frees one slot.
        assert!(admission.begin_handshake(addr("192.0.2.2:1000")).is_ok());
        held.pop();
        assert!(admission.begin_handshake(addr("192.0.2.1:1000")).is_ok());
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64() {
        let admission = Arc::new(Admission::default());
        let held: Vec<_> = (0..MAX_PER_ADDRESS)
            .map(|i| {
                admission
                    .begin_handshake(addr(&format!("[2001:db8:0:1::{:x}]:7444", i + 1)))
                    .unwrap()
            })
            .collect();
        assert_eq!(
            admission
                .begin_handshake(addr("[2001:db8:0:1:ffff::1]:1"))
                .unwrap_err(),
            Refused::Address
        );
        assert!(
            admission
                .begin_handshake(addr("[2001:db8:0:2::1]:1"))
                .is_ok()
        );
        drop(held);
    }

    #[test]
    fn one_identity_gets_its_share_and_no_more() {
        let admission = Arc::new(Admission::default());
        let peer = NodeKey::generate().node_id();
        let held: Vec<_> = (0..MAX_PER_IDENTITY)
            .map(|i| {
                let h = admission
                    .begin_handshake(addr(&format!("198.51.100.{}:1", i + 1)))
                    .unwrap();
                admission.admit(h, peer, false).unwrap()
            })
            .collect();
        let h = admission.begin_handshake(addr("198.51.100.99:1")).unwrap();
        assert_eq!(
            admission.admit(h, peer, false).unwrap_err(),
            Refused::Identity
        );
        // Trusted, the same node may hold more (one per application protocol).
        let h = admission.begin_handshake(addr("198.51.100.99:1")).unwrap();
        drop(admission.admit(h, peer, true).unwrap());
        drop(held);
        assert_eq!(admission.snapshot(), (0, 0, 0, 0), "every slot came back");
    }

    #[test]
    fn untrusted_peers_never_take_the_trusted_reserve() {
        let admission = Arc::new(Admission::default());
        let mut held = Vec::new();
        // Untrusted peers from many addresses fill every slot they may use.
        for i in 0..(MAX_INBOUND_CONNECTIONS - TRUSTED_RESERVE) {
            let remote = SocketAddr::from((
                [10, (i / 4096) as u8, (i / 16 % 256) as u8, (i % 16) as u8],
                1,
            ));
            let h = admission.begin_handshake(remote).unwrap();
            held.push(
                admission
                    .admit(h, NodeKey::generate().node_id(), false)
                    .unwrap(),
            );
        }
        let h = admission.begin_handshake(addr("203.0.113.1:1")).unwrap();
        assert_eq!(
            admission
                .admit(h, NodeKey::generate().node_id(), false)
                .unwrap_err(),
            Refused::Untrusted
        );
        // A trusted peer still gets in, up to the reserve.
        let trusted: Vec<_> = (0..TRUSTED_RESERVE)
            .map(|i| {
                let remote = SocketAddr::from(([203, 0, 113, (i % 200) as u8], 1));
                let h = admission.begin_handshake(remote).unwrap();
                admission
                    .admit(h, NodeKey::generate().node_id(), true)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            admission
                .begin_handshake(addr("203.0.113.250:1"))
                .unwrap_err(),
            Refused::Full
        );
        drop(trusted);
        drop(held);
        assert_eq!(admission.snapshot(), (0, 0, 0, 0), "every slot came back");
    }

    #[test]
    fn a_failed_handshake_frees_its_slots() {
        let admission = Arc::new(Admission::default());
        let held: Vec<_> = (0..MAX_HANDSHAKES)
            .map(|i| {
                let remote = SocketAddr::from(([10, 1, (i / 16) as u8, (i % 16) as u8], 1));
                admission.begin_handshake(remote).unwrap()
            })
            .collect();
        assert_eq!(
            admission.begin_handshake(addr("10.9.9.9:1")).unwrap_err(),
            Refused::Full
        );
        drop(held);
        assert_eq!(admission.snapshot(), (0, 0, 0, 0));
    }
}
