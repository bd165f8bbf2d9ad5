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

/// Whether `ip` can be reached from the internet at large: not private, loopback,
/// link-local, shared (CGNAT), unique-local or a documentation address. Conservative:
/// it decides only whether the node itself sees a reason to doubt a relay's claim.
pub fn is_global(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
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
    fn global_addresses() {
        for ip in [
            "203.0.113.9",
            "198.51.100.1",
            "10.1.2.3",
            "192.168.1.1",
            "100.64.0.1",
        ] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "100.128.0.1",
        ] {
            assert!(is_global(ip.parse().unwrap()), "{ip}");
        }
    }

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
