//! `kith ping`: a round trip to a trusted peer the way a handshake would go — its
//! open connection or a direct dial, then each relay that may reach it (a private
//! peer has no other way in) — saying which path answered. It only measures: it
//! must never change trust or send an envelope.

use std::time::{Duration, Instant};

use kith_keys::NodeId;
use kith_protocol::wire::{Ack, AckStatus, Message};

use super::{DIAL_TIMEOUT, DIRECT_BEFORE_RELAY, Node, NodeError, dial_addrs, link};
use crate::reach::{PathKind, targets};

/// A peer's answer to a ping.
#[derive(Debug, Clone, PartialEq)]
pub struct Pinged {
    pub rtt: Duration,
    pub path: PathKind,
    /// The relay that carried it, when relayed. Its word that the peer answered
    /// is unsigned, like every relayed acknowledgement.
    pub relay: Option<NodeId>,
}

impl Node {
    /// Round-trip time to a trusted peer over its connection.
    pub async fn ping(&self, peer: NodeId) -> Result<Duration, NodeError> {
        self.ping_path(peer).await.map(|p| p.rtt)
    }

    /// A round trip to a trusted peer: directly if it can be dialled, else through
    /// each relay that may reach it, in delivery order.
    pub async fn ping_path(&self, peer: NodeId) -> Result<Pinged, NodeError> {
        let (trusted, known) = self
            .shared
            .read(move |m, now| (m.is_trusted(&peer, now), dial_addrs(m.peer(&peer))))
            .await?;
        if !trusted {
            return Err(NodeError::NotTrusted(peer));
        }
        let reach = self.shared.reach.lock().unwrap().get(&peer).cloned();
        let plan = targets(&known, reach.as_ref(), self.shared.home.as_ref());
        let id = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let mut failures = Vec::new();
        if self.shared.cached_connection(&peer).is_some() || !plan.direct.is_empty() {
            let dial_timeout = if plan.relays.is_empty() {
                DIAL_TIMEOUT
            } else {
                DIRECT_BEFORE_RELAY
            };
            let started = Instant::now();
            match self
                .shared
                .exchange_within(peer, &plan.direct, &Message::Ping { id }, dial_timeout)
                .await
            {
                Ok(Message::Pong { id: got }) if got == id => {
                    return Ok(Pinged {
                        rtt: started.elapsed(),
                        path: PathKind::Direct,
                        relay: None,
                    });
                }
                // The peer itself answered: a refusal is its last word on this path.
                Ok(Message::Ack(Ack {
                    status: AckStatus::Refused(refusal),
                })) => return Err(NodeError::Refused { peer, refusal }),
                Ok(_) => return Err(NodeError::Protocol { peer }),
                Err(NodeError::Stopped) => return Err(NodeError::Stopped),
                Err(NodeError::Unreachable { reason, .. }) => failures.push(reason),
                Err(e) => failures.push(e.to_string()),
            }
        }
        for relay in &plan.relays {
            let started = Instant::now();
            match link::ping_through(&self.shared, relay, peer, id).await {
                Ok(()) => {
                    return Ok(Pinged {
                        rtt: started.elapsed(),
                        path: PathKind::Relayed,
                        relay: Some(relay.node_id),
                    });
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        if failures.is_empty() {
            return Err(NodeError::NoAddress(peer));
        }
        Err(NodeError::Unreachable {
            peer,
            reason: failures.join("; "),
        })
    }
}
