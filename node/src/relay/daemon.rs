//! The `kith relay` daemon around a [`RelayServer`]: its control socket (answering
//! `status` and `ticket`; every other command says this data dir runs a relay), its
//! metrics endpoint, and the ticket it prints when it listens.
//!
//! It must never decide anything about relaying: that is the server's state machine.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use kith_keys::NodeKey;
use tracing::info;

use super::{RelayOptions, RelayServer};
use crate::control::{self, ControlError, RelayServerView, Request, Response};
use crate::datadir::DataDir;
use crate::node::{close_code, now_ms};
use crate::transport::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum RelayDaemonError {
    #[error("cannot start the relay")]
    Tls(#[from] TlsError),
    #[error("cannot open the control socket")]
    Control(#[from] ControlError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// What the relay daemon reports besides the server's own state.
#[derive(Debug, Clone)]
pub struct RelayDaemonInfo {
    pub keystore_encrypted: bool,
    pub hardened: bool,
    /// Serve Prometheus metrics on this address (`--metrics`).
    pub metrics: Option<SocketAddr>,
}

/// Runs a relay bound to `data_dir` (its identity and control socket) until
/// `shutdown` resolves. Prints the relay's ticket on stdout once it listens.
pub async fn run_daemon(
    data_dir: DataDir,
    key: NodeKey,
    options: RelayOptions,
    info: RelayDaemonInfo,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayDaemonError> {
    let server = RelayServer::spawn(key, options).await?;
    let listener = control::bind(&data_dir.control_socket()).await?;
    let metrics_listener = match info.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    eprintln!(
        "kith relay {} listening on {} (control socket {})",
        server.node_id(),
        server.local_addr(),
        data_dir.control_socket().display()
    );
    eprintln!("nodes use it with: kith run --relay <TICKET>; its ticket:");
    println!("{}", server.ticket());
    let server = Arc::new(server);
    let started_at_ms = now_ms();
    let metrics = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            eprintln!("metrics on http://{addr}/metrics");
        }
        let (server, figures) = (
            server.clone(),
            Arc::new(crate::metrics::RelayMetrics::default()),
        );
        let render: crate::metrics::Render = Arc::new(move || {
            let s = server.snapshot();
            let text = figures.render(&crate::metrics::RelayFigures {
                clients: s.clients,
                registered: s.registered,
                queued: s.queued,
                queued_bytes: s.queued_bytes,
                stats: s.stats,
                notices_dropped: s.notices_dropped,
            });
            Box::pin(async move { text })
        });
        tokio::spawn(crate::metrics::serve(listener, render))
    });
    let serve = {
        let server = server.clone();
        let data_dir = data_dir.clone();
        control::serve(listener, move |request, mut stream| {
            let (server, data_dir, info) = (server.clone(), data_dir.clone(), info.clone());
            async move {
                let response = relay_dispatch(&server, &data_dir, &info, started_at_ms, request);
                let _ = control::write_response(&mut stream, &response).await;
            }
        })
    };
    tokio::select! {
        () = shutdown => info!("shutting down"),
        () = serve => {}
    }
    if let Some(metrics) = metrics {
        metrics.abort();
        let _ = metrics.await;
    }
    let _ = std::fs::remove_file(data_dir.control_socket());
    match Arc::try_unwrap(server) {
        Ok(server) => server.shutdown().await,
        Err(server) => server
            .inner
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"relay shutting down"),
    }
    Ok(())
}

fn relay_dispatch(
    server: &RelayServer,
    data_dir: &DataDir,
    info: &RelayDaemonInfo,
    started_at_ms: u64,
    request: Request,
) -> Response {
    let data = match request {
        Request::Status => {
            let s = server.snapshot();
            serde_json::to_value(RelayServerView {
                role: "relay".into(),
                node_id: server.node_id().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                data_dir: data_dir.path().display().to_string(),
                listen: server.local_addr().to_string(),
                ticket: server.ticket().to_string(),
                clients: s.clients,
                registered: s.registered,
                queued: s.queued,
                forwarded: s.stats.forwarded,
                delivered: s.stats.delivered,
                queued_total: s.stats.queued,
                delivered_from_queue: s.stats.delivered_from_queue,
                expired: s.stats.expired,
                unknown_destination: s.stats.unknown_destination,
                refused: s.stats.refused,
                conflicts: s.stats.conflicts,
                packets_relayed: s.stats.packets_relayed,
                packet_bytes_relayed: s.stats.packet_bytes_relayed,
                packets_refused: s.stats.packets_refused,
                packets_dropped: s.stats.packets_dropped,
                max_clients: s.max_clients,
                allow: s.allow,
                keystore_encrypted: info.keystore_encrypted,
                hardened: info.hardened,
                started_at_ms,
            })
        }
        Request::Ticket => Ok(serde_json::json!({
            "ticket": server.ticket().to_string(),
            "node_id": server.node_id().to_string(),
            "addrs": server.ticket().addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "relay": null,
        })),
        _ => {
            return Response::Error {
                message: "this data dir runs a relay (`kith relay`): it has no peers; \
                          only `kith status` and `kith ticket` apply"
                    .into(),
            };
        }
    };
    match data {
        Ok(data) => Response::Ok { data },
        Err(e) => Response::Error {
            message: format!("cannot encode the answer: {e}"),
        },
    }
}
