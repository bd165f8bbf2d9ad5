//! Which addresses a node puts in its ticket.
//!
//! A node bound to a specific address advertises exactly that. One bound to the
//! unspecified address advertises each up interface's address with the bound port,
//! non-loopback first; it must never advertise an address it is not listening on.

use std::net::{IpAddr, SocketAddr};

/// The addresses at which `bound` can be reached.
pub fn advertised(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let want_v6 = bound.is_ipv6();
    let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| iface.ip())
        .filter(|ip| matches!(ip, IpAddr::V4(_)) || want_v6)
        .filter(|ip| !is_link_local(ip))
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect();
    addrs.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6()));
    addrs.dedup();
    addrs.truncate(crate::ticket::MAX_ADDRS);
    addrs
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_address_is_advertised_as_is() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(advertised(addr), vec![addr]);
    }

    #[test]
    fn unspecified_lists_interfaces_with_the_port_loopback_last() {
        let addrs = advertised("0.0.0.0:4100".parse().unwrap());
        assert!(!addrs.is_empty(), "every machine has at least loopback");
        assert!(addrs.iter().all(|a| a.port() == 4100 && a.is_ipv4()));
        let first_loopback = addrs.iter().position(|a| a.ip().is_loopback());
        if let Some(i) = first_loopback {
            assert!(addrs[i..].iter().all(|a| a.ip().is_loopback()));
        }
    }
}
