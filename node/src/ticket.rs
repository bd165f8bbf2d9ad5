//! Tickets: one pasteable string that says who a node is and how to reach it.
//!
//! Text form: `kith1` followed by lowercase unpadded base32 of a postcard-encoded
//! [`Ticket`]. A ticket carries no secret and no authority: whoever dials its
//! addresses still has to find the NodeId it names at the other end (TLS checks it).
//!
//! A node with a home relay puts the relay in its ticket (a private node puts only
//! the relay: no direct address). A relay's own ticket is an ordinary ticket (its
//! NodeId and addresses) and is what `kith run --relay` takes. Tickets written
//! before relays existed (no relay field) still parse.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use kith_keys::NodeId;
use kith_protocol::wire::{Reach, RelayRef};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "kith1";
/// More addresses than anyone needs; bounds what a pasted ticket can make us dial.
pub const MAX_ADDRS: usize = 16;

/// Who a node is, where it listens, and which relay carries its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub node_id: NodeId,
    /// Direct addresses; empty for a private node.
    pub addrs: Vec<SocketAddr>,
    /// The node's home relay, if it has one.
    pub relay: Option<RelayRef>,
}

/// The ticket layout before relays: still accepted.
#[derive(Deserialize)]
struct LegacyTicket {
    node_id: NodeId,
    addrs: Vec<SocketAddr>,
}

impl Ticket {
    /// A ticket with direct addresses only (no relay), e.g. a relay's own ticket.
    pub fn direct(node_id: NodeId, addrs: Vec<SocketAddr>) -> Ticket {
        Ticket {
            node_id,
            addrs,
            relay: None,
        }
    }

    /// How to reach this node, as a reply hint says it.
    pub fn reach(&self) -> Reach {
        Reach {
            direct: self.addrs.clone(),
            relay: self.relay.clone(),
        }
    }

    /// This ticket's node as a relay to dial.
    pub fn as_relay(&self) -> RelayRef {
        RelayRef {
            node_id: self.node_id,
            addrs: self.addrs.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("a ticket starts with \"{PREFIX}\" (get one with `kith ticket` on the other node)")]
    BadPrefix,
    #[error("the ticket is not valid base32; was it cut off or changed when pasted?")]
    BadEncoding,
    #[error("the ticket's contents are damaged; was it cut off when pasted?")]
    BadContents,
    #[error("the ticket names a node id that is not a valid key")]
    BadNodeId,
    #[error("the ticket lists {0} addresses; at most {MAX_ADDRS} are allowed")]
    TooManyAddrs(usize),
    #[error("the ticket names a relay without an address")]
    RelayWithoutAddress,
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = postcard::to_allocvec(self).map_err(|_| fmt::Error)?;
        write!(
            f,
            "{PREFIX}{}",
            BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
        )
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let body = s
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &s[PREFIX.len()..])
            .ok_or(TicketError::BadPrefix)?;
        let bytes = BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::BadEncoding)?;
        let ticket: Ticket = match postcard::from_bytes(&bytes) {
            Ok(ticket) => ticket,
            Err(_) => {
                let legacy: LegacyTicket =
                    postcard::from_bytes(&bytes).map_err(|_| TicketError::BadContents)?;
                Ticket::direct(legacy.node_id, legacy.addrs)
            }
        };
        NodeId::from_bytes(*ticket.node_id.as_bytes()).map_err(|_| TicketError::BadNodeId)?;
        if ticket.addrs.len() > MAX_ADDRS {
            return Err(TicketError::TooManyAddrs(ticket.addrs.len()));
        }
        if let Some(relay) = &ticket.relay {
            NodeId::from_bytes(*relay.node_id.as_bytes()).map_err(|_| TicketError::BadNodeId)?;
            if relay.addrs.len() > MAX_ADDRS {
                return Err(TicketError::TooManyAddrs(relay.addrs.len()));
            }
            if relay.addrs.is_empty() {
                return Err(TicketError::RelayWithoutAddress);
            }
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;

    fn sample() -> Ticket {
        Ticket::direct(
            NodeKey::generate().node_id(),
            vec![
                "127.0.0.1:7444".parse().unwrap(),
                "[::1]:7444".parse().unwrap(),
            ],
        )
    }

    #[test]
    fn relay_tickets_round_trip_and_old_tickets_still_parse() {
        let mut ticket = sample();
        ticket.addrs.clear();
        ticket.relay = Some(RelayRef {
            node_id: NodeKey::generate().node_id(),
            addrs: vec!["192.0.2.7:7445".parse().unwrap()],
        });
        assert_eq!(ticket.to_string().parse::<Ticket>().unwrap(), ticket);

        #[derive(Serialize)]
        struct Old {
            node_id: NodeId,
            addrs: Vec<SocketAddr>,
        }
        let old = sample();
        let bytes = postcard::to_allocvec(&Old {
            node_id: old.node_id,
            addrs: old.addrs.clone(),
        })
        .unwrap();
        let text = format!(
            "{PREFIX}{}",
            BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
        );
        assert_eq!(text.parse::<Ticket>().unwrap(), old);

        ticket.relay.as_mut().unwrap().addrs.clear();
        assert_eq!(
            ticket.to_string().parse::<Ticket>(),
            Err(TicketError::RelayWithoutAddress)
        );
    }

    proptest::proptest! {
        /// Whatever a pasted ticket holds, parsing it answers (never panics), and
        /// what it accepts is within bounds and says the same when written again.
        #[test]
        fn any_ticket_text_is_refused_or_read_back_the_same(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let text = format!("{PREFIX}{}", BASE32_NOPAD.encode(&body).to_ascii_lowercase());
            if let Ok(ticket) = text.parse::<Ticket>() {
                proptest::prop_assert!(ticket.addrs.len() <= MAX_ADDRS);
                if let Some(relay) = &ticket.relay {
                    proptest::prop_assert!(!relay.addrs.is_empty() && relay.addrs.len() <= MAX_ADDRS);
                }
                proptest::prop_assert_eq!(ticket.to_string().parse::<Ticket>(), Ok(ticket));
            }
        }

        #[test]
        fn a_ticket_changed_anywhere_is_refused_or_read_whole(
            at in 0usize..200, with in proptest::char::range('0', 'z'),
        ) {
            let text = sample().to_string();
            let at = at % text.len();
            let mut changed = text.clone();
            changed.replace_range(at..at + 1, &with.to_string());
            if let Ok(ticket) = changed.parse::<Ticket>() {
                proptest::prop_assert_eq!(ticket.to_string().parse::<Ticket>(), Ok(ticket));
            }
        }
    }

    #[test]
    fn round_trips_and_is_one_lowercase_word() {
        let ticket = sample();
        let text = ticket.to_string();
        assert!(text.starts_with("kith1"));
        assert!(
            text.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_eq!(text.parse::<Ticket>().unwrap(), ticket);
        assert_eq!(format!("  {text}\n").parse::<Ticket>().unwrap(), ticket);
    }

    #[test]
    fn damaged_tickets_say_what_is_wrong() {
        let text = sample().to_string();
        assert_eq!("hello".parse::<Ticket>(), Err(TicketError::BadPrefix));
        assert_eq!(
            format!("{text}!").parse::<Ticket>(),
            Err(TicketError::BadEncoding)
        );
        // 16 base32 characters decode to 10 bytes: valid base32, but a truncated ticket.
        assert_eq!(text[..21].parse::<Ticket>(), Err(TicketError::BadContents));
    }

    #[test]
    fn too_many_addresses_are_refused() {
        let mut ticket = sample();
        ticket.addrs = vec!["127.0.0.1:1".parse().unwrap(); MAX_ADDRS + 1];
        assert_eq!(
            ticket.to_string().parse::<Ticket>(),
            Err(TicketError::TooManyAddrs(MAX_ADDRS + 1))
        );
    }
}
