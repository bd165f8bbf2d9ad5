//! Prometheus metrics of a node (`kith run --metrics`) and a relay (`kith relay
//! --metrics`), in the text exposition format, over HTTP.
//!
//! Counters and histograms are updated where things happen (the node's core counts
//! each envelope it handles and times each store commit); gauges are read from the
//! node or relay when scraped. The HTTP side answers `GET /metrics` and nothing else,
//! with a bound on concurrent scrapes and on how long a request may take to arrive.
//!
//! This module must never put text that came from the network (justifications,
//! reasons, names) into a label: every label value is one of a fixed set, so a peer
//! cannot grow the series without bound or inject exposition syntax. It must never
//! block the node: updates are atomic increments, and a scrape reads the node's state
//! like any control command does.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kith_protocol::wire::AckStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::debug;

/// Default address of a node's metrics endpoint: loopback only.
pub const DEFAULT_NODE_ADDR: &str = "127.0.0.1:9464";
/// Default address of a relay's metrics endpoint: loopback only.
pub const DEFAULT_RELAY_ADDR: &str = "127.0.0.1:9465";
/// Scrapes served at once; more wait for a slot.
const MAX_SCRAPES: usize = 8;
/// How long a scraper may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The content type of the OpenMetrics text format `encode` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Path {
    path: &'static str,
}

/// What a node counts as it runs, and the gauges a scrape fills in.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    handshakes: Family<Outcome, Counter>,
    refusals: Family<Reason, Counter>,
    handling: Histogram,
    commits: Histogram,
    peers: Family<State, Gauge>,
    pending: Gauge,
    connections: Family<Path, Gauge>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kith");
        let handshakes = Family::<Outcome, Counter>::default();
        registry.register(
            "envelopes_handled",
            "Handshake envelopes handled, by the acknowledgement they got",
            handshakes.clone(),
        );
        let refusals = Family::<Reason, Counter>::default();
        registry.register(
            "envelopes_refused",
            "Envelopes refused (they changed nothing), by reason",
            refusals.clone(),
        );
        let handling = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register(
            "envelope_handling_seconds",
            "From an envelope reaching the node's core to its durable acknowledgement",
            handling.clone(),
        );
        let commits = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "store_commit_seconds",
            "One durable store commit (a batch of inputs)",
            commits.clone(),
        );
        let peers = Family::<State, Gauge>::default();
        registry.register("peers", "Peer records, by trust state", peers.clone());
        let pending = Gauge::default();
        registry.register(
            "pending_requests",
            "Incoming requests waiting for a decision",
            pending.clone(),
        );
        let connections = Family::<Path, Gauge>::default();
        registry.register(
            "connections",
            "Open connections: direct (trust protocol), relay links, application",
            connections.clone(),
        );
        NodeMetrics {
            registry,
            handshakes,
            refusals,
            handling,
            commits,
            peers,
            pending,
            connections,
        }
    }
}

impl NodeMetrics {
    /// One envelope handled, with its acknowledgement and how long it took.
    pub fn envelope(&self, status: &AckStatus, took: Duration) {
        let outcome = match status {
            AckStatus::Pending => "pending",
            AckStatus::Trusted => "trusted",
            AckStatus::Rejected => "rejected",
            AckStatus::Revoked => "revoked",
            AckStatus::Expired => "expired",
            AckStatus::Refused(refusal) => {
                self.refusals
                    .get_or_create(&Reason {
                        reason: refusal.code(),
                    })
                    .inc();
                "refused"
            }
        };
        self.handshakes.get_or_create(&Outcome { outcome }).inc();
        self.handling.observe(took.as_secs_f64());
    }

    /// One store commit and how long it took.
    pub fn commit(&self, took: Duration) {
        self.commits.observe(took.as_secs_f64());
    }

    /// Sets the gauges a scrape reads from the node: peers by state, pending
    /// requests, and open connections by path.
    pub fn set_state(
        &self,
        peers: &[(&'static str, i64)],
        pending: i64,
        connections: &[(&'static str, i64)],
    ) {
        for (state, n) in peers {
            self.peers.get_or_create(&State { state }).set(*n);
        }
        self.pending.set(pending);
        for (path, n) in connections {
            self.connections.get_or_create(&Path { path }).set(*n);
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// What a relay reports when scraped.
#[derive(Debug, Clone)]
pub struct RelayFigures {
    pub clients: usize,
    pub registered: usize,
    pub queued: usize,
    pub queued_bytes: usize,
    pub stats: kith_protocol::relay::RelayStats,
    /// Notices to clients dropped because the client's queue of them was full.
    pub notices_dropped: u64,
}

/// A relay's figures, all read from it when scraped.
#[derive(Debug)]
pub struct RelayMetrics {
    registry: Registry,
    clients: Family<State, Gauge>,
    queued: Gauge,
    queued_bytes: Gauge,
    envelopes: Family<Outcome, Gauge>,
    packets: Family<Outcome, Gauge>,
    packet_bytes: Family<Outcome, Gauge>,
    notices_dropped: Gauge,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kith_relay");
        let clients = Family::<State, Gauge>::default();
        registry.register(
            "links",
            "Connected clients: registered (routed to) or only forwarding",
            clients.clone(),
        );
        let queued = Gauge::default();
        registry.register(
            "queue_depth",
            "Envelopes queued for offline nodes",
            queued.clone(),
        );
        let queued_bytes = Gauge::default();
        registry.register(
            "queue_bytes",
            "Bytes of the envelopes queued for offline nodes",
            queued_bytes.clone(),
        );
        let envelopes = Family::<Outcome, Gauge>::default();
        registry.register(
            "envelopes",
            "Envelopes since start, by what became of them (a counter read from the relay)",
            envelopes.clone(),
        );
        let packets = Family::<Outcome, Gauge>::default();
        registry.register(
            "packets",
            "Relayed QUIC packets of application connections since start, by what became \
             of them (a counter read from the relay)",
            packets.clone(),
        );
        let packet_bytes = Family::<Outcome, Gauge>::default();
        registry.register(
            "packet_bytes",
            "Bytes of relayed QUIC packets since start, relayed or dropped for a full queue",
            packet_bytes.clone(),
        );
        let notices_dropped = Gauge::default();
        registry.register(
            "notices_dropped",
            "Notices to clients (a dropped envelope, an identity conflict) not sent because \
             that client's queue of them was full (a counter read from the relay)",
            notices_dropped.clone(),
        );
        RelayMetrics {
            registry,
            clients,
            queued,
            queued_bytes,
            envelopes,
            packets,
            packet_bytes,
            notices_dropped,
        }
    }
}

impl RelayMetrics {
    /// Fills every figure from what the relay reports, then renders.
    pub fn render(&self, snapshot: &RelayFigures) -> String {
        let registered = snapshot.registered as i64;
        self.clients
            .get_or_create(&State {
                state: "registered",
            })
            .set(registered);
        self.clients
            .get_or_create(&State {
                state: "forwarding",
            })
            .set(snapshot.clients as i64 - registered);
        self.queued.set(snapshot.queued as i64);
        self.queued_bytes.set(snapshot.queued_bytes as i64);
        self.notices_dropped.set(snapshot.notices_dropped as i64);
        let s = &snapshot.stats;
        for (outcome, n) in [
            ("forwarded", s.forwarded),
            ("pushed", s.delivered),
            ("queued", s.queued),
            ("delivered_from_queue", s.delivered_from_queue),
            ("dropped_expired", s.expired),
            ("dropped_unknown_destination", s.unknown_destination),
            ("refused", s.refused - s.sender_quota),
            ("refused_sender_quota", s.sender_quota),
        ] {
            self.envelopes
                .get_or_create(&Outcome { outcome })
                .set(n as i64);
        }
        for (outcome, n) in [
            ("relayed", s.packets_relayed),
            ("refused", s.packets_refused),
            ("dropped_queue_full", s.packets_dropped),
        ] {
            self.packets
                .get_or_create(&Outcome { outcome })
                .set(n as i64);
        }
        for (outcome, n) in [
            ("relayed", s.packet_bytes_relayed),
            ("dropped_queue_full", s.packet_bytes_dropped),
        ] {
            self.packet_bytes
                .get_or_create(&Outcome { outcome })
                .set(n as i64);
        }
        render(&self.registry)
    }
}

fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, registry);
    text
}

/// Produces the exposition text at each scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}")]
pub struct MetricsError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds the metrics endpoint; [`serve`] then answers on it.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })
}

/// Answers `GET /metrics` on `listener` with what `render` produces, until dropped.
pub async fn serve(listener: TcpListener, render: Render) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, render.clone()));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%remote, error = %e, "metrics request failed");
            }
            drop(slot);
        });
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    render: Render,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        Response::builder()
            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(render().await)))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(
                b"only GET /metrics is served here\n",
            )))
    };
    Ok(response.expect("a response from fixed parts"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_protocol::validate::Refusal;

    #[test]
    fn a_relay_reports_its_relayed_and_dropped_packets() {
        let stats = kith_protocol::relay::RelayStats {
            packets_relayed: 7,
            packet_bytes_relayed: 8400,
            packets_refused: 2,
            packets_dropped: 3,
            packet_bytes_dropped: 3600,
            ..Default::default()
        };
        let text = RelayMetrics::default().render(&RelayFigures {
            clients: 2,
            registered: 2,
            queued: 0,
            queued_bytes: 0,
            stats,
            notices_dropped: 4,
        });
        for line in [
            "kith_relay_notices_dropped 4",
            "kith_relay_packets{outcome=\"relayed\"} 7",
            "kith_relay_packets{outcome=\"refused\"} 2",
            "kith_relay_packets{outcome=\"dropped_queue_full\"} 3",
            "kith_relay_packet_bytes{outcome=\"relayed\"} 8400",
            "kith_relay_packet_bytes{outcome=\"dropped_queue_full\"} 3600",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn an_envelope_counts_its_outcome_and_a_refusal_its_reason() {
        let m = NodeMetrics::default();
        m.envelope(&AckStatus::Pending, Duration::from_micros(300));
        m.envelope(
            &AckStatus::Refused(Refusal::BadSignature),
            Duration::from_micros(50),
        );
        m.commit(Duration::from_micros(200));
        m.set_state(&[("trusted", 2)], 1, &[("direct", 3)]);
        let text = m.render();
        assert!(
            text.contains("kith_envelopes_handled_total{outcome=\"pending\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kith_envelopes_handled_total{outcome=\"refused\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kith_envelopes_refused_total{reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kith_envelope_handling_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("kith_store_commit_seconds_count 1"), "{text}");
        assert!(text.contains("kith_peers{state=\"trusted\"} 2"), "{text}");
        assert!(text.contains("kith_pending_requests 1"), "{text}");
        assert!(
            text.contains("kith_connections{path=\"direct\"} 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
