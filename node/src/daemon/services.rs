//! The daemon's service requests: `kith expose`, `unexpose`, `connect` (and so
//! `forward`, which is a `connect` per local TCP connection). It turns control
//! requests into [`crate::service`] calls; it must never join a control client to a
//! service before the service's answer said the stream is ready.

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tracing::debug;

use super::{Daemon, err, ok};
use crate::control::{self, ServiceView};
use crate::node::error_chain;
use crate::service::{self, ServiceSpec};

impl Daemon {
    pub(super) async fn expose(
        &self,
        name: &str,
        target: &str,
        peers: &[String],
    ) -> control::Response {
        let mut ids = Vec::with_capacity(peers.len());
        for peer in peers {
            match self.resolve(peer).await {
                Ok(id) => ids.push(id),
                Err(response) => return response,
            }
        }
        match service::expose(&self.node, name, target, ids).await {
            Ok(spec) => ok(view(name, &spec)),
            Err(e) => err(error_chain(&e)),
        }
    }

    pub(super) async fn unexpose(&self, name: &str) -> control::Response {
        match service::unexpose(&self.node, name).await {
            Ok(()) => ok(serde_json::json!({ "name": name })),
            Err(e) => err(error_chain(&e)),
        }
    }

    pub(super) fn service_views(&self) -> Vec<ServiceView> {
        self.node
            .services()
            .iter()
            .map(|(name, spec)| view(name, spec))
            .collect()
    }

    /// Answers one line, then (on success) carries bytes between the control client
    /// and the peer's service until either side ends.
    pub(super) async fn connect(&self, stream: &mut BufReader<UnixStream>, peer: &str, name: &str) {
        let peer = match self.resolve(peer).await {
            Ok(id) => id,
            Err(response) => {
                let _ = control::write_response(stream, &response).await;
                return;
            }
        };
        let (send, recv) = match self.services.open(peer, name).await {
            Ok(pair) => pair,
            Err(e) => {
                let _ = control::write_response(stream, &err(error_chain(&e))).await;
                return;
            }
        };
        let ready = ok(serde_json::json!({ "peer": peer.to_string(), "service": name }));
        if control::write_response(stream, &ready).await.is_err() {
            return;
        }
        let mut quic = tokio::io::join(recv, send);
        match tokio::io::copy_bidirectional(stream, &mut quic).await {
            Ok((up, down)) => debug!(%peer, service = name, up, down, "service stream ended"),
            Err(e) => debug!(%peer, service = name, error = %e, "service stream broke"),
        }
        let _ = quic.shutdown().await;
    }
}

fn view(name: &str, spec: &ServiceSpec) -> ServiceView {
    ServiceView {
        name: name.to_string(),
        target: spec.target.clone(),
        peers: spec.peers.iter().map(|p| p.to_string()).collect(),
        added_ms: spec.added_ms,
    }
}
