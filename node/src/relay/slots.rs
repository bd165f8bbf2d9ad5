//! Connection slots per source address, taken before the TLS handshake.
//!
//! One host must not be able to take every connection a relay serves by opening
//! many, each with a fresh identity (identities cost nothing; addresses do). So the
//! accept loop claims a slot for the remote address (an IPv6 address by its /64, the
//! smallest block a host usually gets) before any handshake work, refuses the
//! connection when that address holds its quota, and the slot is given back when the
//! connection ends. This module only counts: it never decides about identities.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Live connections per source address, with a cap.
#[derive(Debug)]
pub struct AddressSlots {
    max: usize,
    taken: Mutex<HashMap<IpAddr, usize>>,
}

/// A claimed slot; given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<AddressSlots>,
    key: IpAddr,
}

impl AddressSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(AddressSlots {
            max,
            taken: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` if that address holds its quota.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = block(ip);
        let mut taken = self.taken.lock().unwrap();
        let n = taken.entry(key).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().unwrap();
        if let Some(n) = taken.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                taken.remove(&self.key);
            }
        }
    }
}

/// What one host is counted as: its IPv4 address, or its IPv6 /64.
fn block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_quota_and_slots_come_back() {
        let slots = AddressSlots::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = slots.claim(a).unwrap();
        let _second = slots.claim(a).unwrap();
        assert!(slots.claim(a).is_none());
        assert!(slots.claim(b).is_some(), "per address");
        drop(first);
        assert!(slots.claim(a).is_some());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let slots = AddressSlots::new(1);
        let _one = slots.claim("2001:db8::1".parse().unwrap()).unwrap();
        assert!(slots.claim("2001:db8::ffff:1".parse().unwrap()).is_none());
        assert!(slots.claim("2001:db8:0:1::1".parse().unwrap()).is_some());
        let _v4 = slots.claim("192.0.2.1".parse().unwrap()).unwrap();
        assert!(slots.claim("::ffff:192.0.2.1".parse().unwrap()).is_none());
    }
}
