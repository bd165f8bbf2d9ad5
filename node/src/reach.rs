//! How this node reaches each peer: direct addresses, the peer's home relay, the
//! relay its messages last came through, and which path last worked.
//!
//! A [`PeerReach`] is built from the peer's ticket (when we ask it) and from the
//! reply hints ([`Reach`]) that travel next to its envelopes, and is kept in the
//! store next to the peer's trust record so that an answer given days later, after
//! restarts, still finds a private peer through its relay. [`targets`] turns it
//! into the ordered list of ways to deliver one envelope.
//!
//! This module only describes paths. It must never decide trust, and a hint may
//! only be recorded once the envelope it came with was applied (the node's core
//! enforces that): a hint can misdirect replies, never change what they say.

use std::net::SocketAddr;

use kith_protocol::wire::{Reach, RelayRef};
use serde::{Deserialize, Serialize};

/// Which way an envelope went (or came).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathKind {
    Direct,
    Relayed,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        }
    }
}

/// What this node knows about reaching one peer. Stored per peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReach {
    /// The direct addresses the peer told us (ticket or hint). `None`: never told,
    /// dial what the trust record knows. `Some(empty)`: the peer is private (or its
    /// relay found it unreachable): do not dial it, use a relay.
    pub direct: Option<Vec<SocketAddr>>,
    /// The peer's home relay, as it told us.
    pub relay: Option<RelayRef>,
    /// The relay its last relayed envelope came through (it was connected there).
    pub via: Option<RelayRef>,
    /// How this node last reached the peer (its last delivered envelope); before
    /// it ever sent one, how the peer's first envelope reached us.
    pub last_path: Option<PathKind>,
    pub last_path_at_ms: u64,
}

impl PeerReach {
    /// Takes what a hint (or ticket) says. An unbounded hint is ignored whole.
    pub fn learn(&mut self, hint: &Reach) {
        if !hint.is_bounded() {
            return;
        }
        self.direct = Some(hint.direct.clone());
        if hint.relay.is_some() {
            self.relay = hint.relay.clone();
        } else if !hint.direct.is_empty() {
            // A node that stopped using a relay says so by naming none.
            self.relay = None;
        }
    }

    pub fn record_path(&mut self, path: PathKind, now_ms: u64) {
        self.last_path = Some(path);
        self.last_path_at_ms = now_ms;
    }
}

/// Where to try delivering one envelope, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// Direct addresses to dial (an open connection to the peer is always tried first).
    pub direct: Vec<SocketAddr>,
    /// Relays to forward through, after the direct attempts.
    pub relays: Vec<RelayRef>,
}

/// The delivery plan for a peer: `known` are the addresses the trust record holds
/// (where it last spoke from on a direct connection, then the address it was asked
/// at); `home` is our own home relay, tried last (the peer may be connected to it).
pub fn targets(
    known: &[SocketAddr],
    reach: Option<&PeerReach>,
    home: Option<&RelayRef>,
) -> Targets {
    let mut t = Targets::default();
    let private = reach.is_some_and(|r| r.direct.as_ref().is_some_and(Vec::is_empty));
    if !private {
        let hinted = reach.and_then(|r| r.direct.as_deref()).unwrap_or_default();
        for addr in known.iter().chain(hinted) {
            if !t.direct.contains(addr) {
                t.direct.push(*addr);
            }
        }
        t.direct.truncate(crate::ticket::MAX_ADDRS);
    }
    let relays = reach
        .into_iter()
        .flat_map(|r| [r.relay.as_ref(), r.via.as_ref()])
        .chain([home])
        .flatten();
    for relay in relays {
        if !t.relays.iter().any(|r| r.node_id == relay.node_id) {
            t.relays.push(relay.clone());
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;

    fn relay(port: u16) -> RelayRef {
        RelayRef {
            node_id: NodeKey::generate().node_id(),
            addrs: vec![SocketAddr::from(([192, 0, 2, 1], port))],
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn unknown_reach_dials_what_the_record_knows() {
        let t = targets(&[addr(1)], None, None);
        assert_eq!(t.direct, vec![addr(1)]);
        assert!(t.relays.is_empty());
    }

    #[test]
    fn a_private_peer_is_never_dialled_and_its_relay_comes_first() {
        let (theirs, ours) = (relay(1), relay(2));
        let mut reach = PeerReach::default();
        reach.learn(&Reach {
            direct: vec![],
            relay: Some(theirs.clone()),
        });
        let t = targets(&[addr(1)], Some(&reach), Some(&ours));
        assert!(t.direct.is_empty());
        assert_eq!(t.relays, vec![theirs, ours]);
    }

    #[test]
    fn hints_add_addresses_and_relays_are_deduplicated() {
        let theirs = relay(1);
        let mut reach = PeerReach::default();
        reach.learn(&Reach {
            direct: vec![addr(1), addr(2)],
            relay: Some(theirs.clone()),
        });
        reach.via = Some(theirs.clone());
        let t = targets(&[addr(1)], Some(&reach), Some(&theirs));
        assert_eq!(t.direct, vec![addr(1), addr(2)]);
        assert_eq!(t.relays, vec![theirs]);
    }

    #[test]
    fn an_unbounded_hint_is_ignored() {
        let mut reach = PeerReach::default();
        reach.learn(&Reach {
            direct: vec![addr(1); kith_protocol::wire::MAX_REACH_ADDRS + 1],
            relay: None,
        });
        assert_eq!(reach, PeerReach::default());
    }
}
