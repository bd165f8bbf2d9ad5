//! The node's metrics: its gauges (peers by state, pending, open connections by
//! path) read at scrape time, then the whole registry rendered. Read-only: it must
//! never change the node's state.

use kith_protocol::machine::TrustState;

use super::{Node, NodeError};

impl Node {
    /// The node's metrics in the Prometheus text format, its gauges read now.
    pub async fn metrics(&self) -> Result<String, NodeError> {
        let (peers, pending) = self
            .shared
            .read(|m, now| {
                let mut counts: std::collections::BTreeMap<&'static str, i64> = [
                    TrustState::OutgoingPending,
                    TrustState::IncomingPending,
                    TrustState::Trusted,
                    TrustState::Rejected,
                    TrustState::RejectedByPeer,
                    TrustState::Revoked,
                    TrustState::RevokedByPeer,
                    TrustState::Expired,
                ]
                .iter()
                .map(|s| (s.as_str(), 0))
                .collect();
                for p in m.peers() {
                    let state = if p.state == TrustState::Trusted && !p.is_trusted(now) {
                        TrustState::Expired
                    } else {
                        p.state
                    };
                    *counts.entry(state.as_str()).or_default() += 1;
                }
                (counts, m.pending_incoming() as i64)
            })
            .await?;
        let open = |c: &quinn::Connection| c.close_reason().is_none();
        let direct = self
            .shared
            .conns
            .lock()
            .unwrap()
            .values()
            .filter(|c| open(c))
            .count();
        let relay = self
            .shared
            .links
            .lock()
            .unwrap()
            .values()
            .filter(|c| open(c))
            .count();
        let app = self.shared.apps.total();
        let peers: Vec<(&'static str, i64)> = peers.into_iter().collect();
        self.shared.metrics.set_state(
            &peers,
            pending,
            &[
                ("direct", direct as i64),
                ("relay_link", relay as i64),
                ("application", app as i64),
            ],
        );
        Ok(self.shared.metrics.render())
    }
}
