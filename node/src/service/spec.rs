//! What a service is: a name a node's operator chose, the local TCP target it joins
//! peers to, and which trusted peers may use it. Plain data, stored by the node and
//! checked here, so the store and the service protocol agree on what is valid.

use kith_keys::NodeId;
use serde::{Deserialize, Serialize};

/// Longest service name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest target (`HOST:PORT`), in bytes.
pub const MAX_TARGET_LEN: usize = 255;
/// Most peers one service may be limited to.
pub const MAX_SERVICE_PEERS: usize = 256;
/// Most services one node exposes.
pub const MAX_SERVICES: usize = 256;

/// One exposed service, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Where connections go, `HOST:PORT` (resolved at each connection).
    pub target: String,
    /// The trusted peers that may use it; empty: every trusted peer.
    pub peers: Vec<NodeId>,
    /// When it was exposed (ms since the Unix epoch).
    pub added_ms: u64,
}

impl ServiceSpec {
    /// Whether `peer` (already found trusted) may use this service.
    pub fn admits(&self, peer: &NodeId) -> bool {
        self.peers.is_empty() || self.peers.contains(peer)
    }
}

/// Why a service name or target was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "a service name is 1 to {MAX_NAME_LEN} characters of a-z, 0-9, '.', '_' and '-', \
         starting with a letter or digit"
    )]
    BadName,
    #[error("the target must be HOST:PORT with a port from 1 to 65535 (e.g. 127.0.0.1:22)")]
    BadTarget,
    #[error("a service may be limited to at most {MAX_SERVICE_PEERS} peers")]
    TooManyPeers,
    #[error("this node already exposes {MAX_SERVICES} services; unexpose one first")]
    TooManyServices,
}

/// Checks a service name: short, lowercase, safe to print and to pass in a URL or a
/// shell word.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > MAX_NAME_LEN || !first_ok || !name.chars().all(ok_char) {
        return Err(SpecError::BadName);
    }
    Ok(())
}

/// Checks a target: `HOST:PORT` with a non-zero port and a host of printable,
/// space-free ASCII (a name, an IPv4 address, or a bracketed IPv6 address).
pub fn check_target(target: &str) -> Result<(), SpecError> {
    let (host, port) = target.rsplit_once(':').ok_or(SpecError::BadTarget)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_graphic());
    if target.len() > MAX_TARGET_LEN || !port_ok || !host_ok {
        return Err(SpecError::BadTarget);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_words() {
        for good in ["ssh", "db-1", "backup.nightly", "a_b", "9p"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "SSH",
            "-x",
            ".x",
            "a b",
            "a/b",
            "ssh\u{1b}[31m",
            &"a".repeat(65),
        ] {
            assert_eq!(check_name(bad), Err(SpecError::BadName), "{bad:?}");
        }
    }

    #[test]
    fn targets_need_a_host_and_a_real_port() {
        for good in [
            "127.0.0.1:22",
            "localhost:5432",
            "[::1]:8080",
            "db.internal:1",
        ] {
            assert_eq!(check_target(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1",
            ":22",
            "host:0",
            "host:65536",
            "host:ssh",
            "a b:22",
            "",
        ] {
            assert_eq!(check_target(bad), Err(SpecError::BadTarget), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_peer_list_admits_every_trusted_peer() {
        let a = kith_keys::NodeKey::generate().node_id();
        let b = kith_keys::NodeKey::generate().node_id();
        let open = ServiceSpec {
            target: "127.0.0.1:22".into(),
            peers: vec![],
            added_ms: 0,
        };
        assert!(open.admits(&a));
        let limited = ServiceSpec {
            peers: vec![a],
            ..open
        };
        assert!(limited.admits(&a));
        assert!(!limited.admits(&b));
    }
}
