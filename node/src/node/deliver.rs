//! Delivering envelopes: dialling peers (or reusing their connection), one exchange
//! on a stream, one delivery attempt over every path (direct, then each relay), and
//! the tasks that deliver in the background: the outbox (envelopes produced while
//! serving a peer) and the resender (what peers have not acknowledged yet).
//!
//! It only moves bytes the core released: it must never decide trust itself, and
//! never send anything the core has not released.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_keys::NodeId;
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::machine::{Command, Input, Reply};
use kith_protocol::relay::ForwardResult;
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{Ack, AckStatus, Envelope, Kind, Message};
use tracing::{debug, warn};

use super::final_refusal::is_final;
use super::serve::serve_connection;
use super::{
    CoreMsg, DIAL_TIMEOUT, DIRECT_BEFORE_RELAY, Delivery, FinalRefusal, Handled, NodeError,
    Outgoing, RESEND_FIRST, RESEND_GIVE_UP_MS, RESEND_MAX, STREAM_TIMEOUT, Shared, Unacked,
    error_chain, link, now_ms,
};
use crate::reach::PathKind;
use crate::transport::tls;

impl Shared {
    /// The open connection to `peer`, or a new one dialled at `addr`. A dialled
    /// connection is served like an accepted one: the peer opens streams on it too.
    async fn connection(
        self: &Arc<Self>,
        peer: NodeId,
        addrs: &[SocketAddr],
        dial_timeout: Duration,
    ) -> Result<quinn::Connection, NodeError> {
        if let Some(conn) = self.cached_connection(&peer) {
            return Ok(conn);
        }
        if addrs.is_empty() {
            return Err(NodeError::NoAddress(peer));
        }
        let mut failures = Vec::new();
        for &addr in addrs {
            let dialled = tokio::time::timeout(
                dial_timeout,
                tls::dial(&self.endpoint, &self.identity, addr, peer),
            )
            .await;
            match dialled {
                Ok(Ok(conn)) => {
                    self.remember_connection(peer, &conn);
                    tokio::spawn(serve_connection(self.clone(), conn.clone(), None));
                    return Ok(conn);
                }
                Ok(Err(e)) => failures.push(format!("{addr}: {}", error_chain(&e))),
                Err(_) => failures.push(format!("{addr}: no answer within {dial_timeout:?}")),
            }
        }
        Err(NodeError::Unreachable {
            peer,
            reason: failures.join("; "),
        })
    }

    /// Sends one message on a new stream and waits for the single answer.
    pub(super) async fn exchange_within(
        self: &Arc<Self>,
        peer: NodeId,
        addrs: &[SocketAddr],
        message: &Message,
        dial_timeout: Duration,
    ) -> Result<Message, NodeError> {
        let conn = self.connection(peer, addrs, dial_timeout).await?;
        let result = exchange_on(&conn, message, STREAM_TIMEOUT)
            .await
            .map_err(|e| match e {
                ExchangeError::Io(reason) => NodeError::Unreachable { peer, reason },
                ExchangeError::Garbled => NodeError::Protocol { peer },
            });
        if result.is_err() {
            // A broken connection must not be reused for the next attempt.
            self.forget_connection(&peer, &conn);
        }
        result
    }

    /// One attempt over every path, in order: the open connection or a direct dial,
    /// then each relay.
    async fn deliver_once(self: &Arc<Self>, out: &Outgoing) -> Result<Delivery, NodeError> {
        let peer = out.envelope.body.to;
        let mut failures = Vec::new();
        let has_conn = self.cached_connection(&peer).is_some();
        if has_conn || !out.targets.direct.is_empty() {
            let dial_timeout = if out.targets.relays.is_empty() {
                DIAL_TIMEOUT
            } else {
                DIRECT_BEFORE_RELAY
            };
            let message = Message::Deliver {
                envelope: out.envelope.clone(),
                reach: self.own_reach(),
            };
            match self
                .exchange_within(peer, &out.targets.direct, &message, dial_timeout)
                .await
            {
                Ok(Message::Ack(Ack { status })) => {
                    self.note_path(peer, PathKind::Direct);
                    return Ok(Delivery::Acked(status));
                }
                Ok(_) => failures.push(NodeError::Protocol { peer }.to_string()),
                Err(NodeError::Stopped) => return Err(NodeError::Stopped),
                // The final error says "cannot reach <peer>" once for every path.
                Err(NodeError::Unreachable { reason, .. }) => failures.push(reason),
                Err(e) => failures.push(e.to_string()),
            }
        }
        for relay in &out.targets.relays {
            match link::forward(self, relay, &out.envelope).await {
                Ok((ForwardResult::Delivered, ack)) => {
                    self.note_path(peer, PathKind::Relayed);
                    return Ok(Delivery::Relayed {
                        relay: relay.node_id,
                        ack: ack.map(|a| a.status),
                    });
                }
                Ok((ForwardResult::Queued, _)) => {
                    self.note_path(peer, PathKind::Relayed);
                    return Ok(Delivery::Queued {
                        relay: relay.node_id,
                    });
                }
                Ok((other, _)) => {
                    failures.push(format!("relay {}: {other}", relay.node_id.short()))
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

    /// Delivers now if possible. Until the peer acknowledges, its outbox marker stays
    /// and [`run_resender`] re-signs and re-sends what the state implies.
    pub(super) async fn deliver(self: &Arc<Self>, out: Outgoing) -> Delivery {
        match self.deliver_once(&out).await {
            Ok(delivery) => {
                self.after_delivery(&out, &delivery);
                if let Delivery::Acked(AckStatus::Refused(refusal)) = &delivery {
                    if is_final(refusal) {
                        self.refused_for_good(&out, refusal.clone()).await;
                    }
                }
                delivery
            }
            Err(e) => {
                let reason = e.to_string();
                debug!(peer = %out.envelope.body.to, %reason, "delivery failed; it will be resent");
                if matches!(out.envelope.body.kind, Kind::Revoke { .. }) {
                    // Revoked is revoked at once, whether or not the peer heard it yet.
                    self.close_peer(&out.envelope.body.to, "revoked");
                }
                Delivery::Retrying { reason }
            }
        }
    }

    fn after_delivery(&self, out: &Outgoing, delivery: &Delivery) {
        // Only the peer's own acknowledgement proves receipt: a relay's "queued" or an
        // unanswered push may still be lost (relay restart, dead connection).
        if delivery.ack().is_some_and(settles_debt) || final_refusal_heard(delivery) {
            let _ = self.core.submit(CoreMsg::Delivered {
                peer: out.envelope.body.to,
                seq: out.seq,
            });
        }
        if let Some(AckStatus::Refused(refusal)) =
            delivery.ack().filter(|_| !final_refusal_heard(delivery))
        {
            warn!(peer = %out.envelope.body.to, %refusal, "peer refused our {} envelope", kind_name(&out.envelope));
        }
        if matches!(out.envelope.body.kind, Kind::Revoke { .. }) {
            self.close_peer(&out.envelope.body.to, "revoked");
        }
    }

    /// The peer itself refused `out` for good (see [`is_final`]): it is no longer
    /// resent ([`Shared::after_delivery`] settled it), a request of ours is withdrawn
    /// (so it neither stays pending nor is resent for days), and the operator is told.
    /// The same whichever path sent it: `kith request`, the outbox or the resender.
    async fn refused_for_good(self: &Arc<Self>, out: &Outgoing, refusal: Refusal) {
        let peer = out.envelope.body.to;
        let request = matches!(out.envelope.body.kind, Kind::Request { .. });
        let withdrawn = request && self.withdraw(peer).await;
        warn!(%peer, %refusal, withdrawn, "peer refused our {} for good; not resending it", kind_name(&out.envelope));
        self.final_refusals.note(FinalRefusal {
            peer,
            kind: kind_name(&out.envelope),
            refusal,
            at_ms: now_ms(),
            withdrawn,
        });
    }

    /// Withdraws our pending request to `peer` (as `kith cancel` does); the peer is
    /// told through the outbox. False if there was no pending request to withdraw.
    async fn withdraw(&self, peer: NodeId) -> bool {
        match self.handle(Input::Command(Command::Cancel { peer })).await {
            Ok(Handled {
                reply: Reply::Failed(_),
                ..
            })
            | Err(_) => false,
            Ok(handled) => {
                for out in handled.outgoing {
                    // Delivered in the background, like everything produced while serving.
                    let _ = self.outbox.send(out);
                }
                true
            }
        }
    }
}

/// Whether the peer itself, over a direct connection, refused for good. A relay's
/// report of a refusal is unsigned, so it never ends what we owe.
fn final_refusal_heard(delivery: &Delivery) -> bool {
    matches!(delivery, Delivery::Acked(AckStatus::Refused(refusal)) if is_final(refusal))
}

fn kind_name(envelope: &Envelope) -> &'static str {
    envelope.body.kind.name()
}

/// Why one exchange on a connection failed.
pub(crate) enum ExchangeError {
    /// The stream failed or timed out.
    Io(String),
    /// The answer did not decode.
    Garbled,
}

/// Sends `message` on a new stream of `conn` and waits (at most `timeout`) for the one answer.
pub(crate) async fn exchange_on(
    conn: &quinn::Connection,
    message: &Message,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let frame = encode_frame(message).map_err(|e| ExchangeError::Io(e.to_string()))?;
    let io = |e: &dyn std::fmt::Display| ExchangeError::Io(e.to_string());
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
        send.write_all(&frame).await.map_err(|e| io(&e))?;
        send.finish().map_err(|e| io(&e))?;
        let bytes = recv
            .read_to_end(MAX_FRAME_LEN + 4)
            .await
            .map_err(|e| io(&e))?;
        match decode_frame::<Message>(&bytes) {
            Ok(Some((message, _))) => Ok(message),
            _ => Err(ExchangeError::Garbled),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ExchangeError::Io("timed out waiting for an answer".into()))?
}

/// Whether an acknowledgement ends what we owe the peer: any answer but a refusal,
/// or a refusal that resending cannot change (the peer already has something newer
/// from us, or has no record of us at all).
fn settles_debt(status: &AckStatus) -> bool {
    match status {
        AckStatus::Refused(refusal) => matches!(
            refusal,
            Refusal::Stale | Refusal::ReplayedNonce | Refusal::Unsolicited
        ),
        _ => true,
    }
}

/// Re-sends to every peer still owed an acknowledged message: at start (what a
/// crash left undelivered) and then with exponential backoff, each time re-signed
/// by the trust machine (`Command::Resend`), so a message is never too old for the
/// peer's skew window however long the peer was away.
pub(super) async fn run_resender(shared: Arc<Shared>) {
    struct Due {
        at: tokio::time::Instant,
        backoff: Duration,
    }
    let mut schedule: HashMap<NodeId, Due> = HashMap::new();
    let in_flight: Arc<Mutex<std::collections::HashSet<NodeId>>> = Arc::default();
    loop {
        let owed: Vec<(NodeId, Unacked)> = shared
            .unacked
            .lock()
            .unwrap()
            .iter()
            .map(|(id, u)| (*id, *u))
            .collect();
        schedule.retain(|id, _| owed.iter().any(|(o, _)| o == id));
        let now = tokio::time::Instant::now();
        for (peer, unacked) in owed {
            let due = schedule.entry(peer).or_insert_with(|| Due {
                // Loaded at start: due now. Just produced: its first delivery is under way.
                at: if unacked.seq == 0 {
                    now
                } else {
                    now + RESEND_FIRST
                },
                backoff: RESEND_FIRST,
            });
            if due.at > now || in_flight.lock().unwrap().contains(&peer) {
                continue;
            }
            due.backoff = (due.backoff * 2).min(RESEND_MAX);
            due.at = now + due.backoff;
            if now_ms().saturating_sub(unacked.since_ms) > RESEND_GIVE_UP_MS {
                warn!(%peer, "giving up: the peer acknowledged nothing for 7 days");
                let _ = shared.core.submit(CoreMsg::Abandon {
                    peer,
                    seq: unacked.seq,
                });
                continue;
            }
            in_flight.lock().unwrap().insert(peer);
            let shared = shared.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                if let Ok(handled) = shared
                    .handle(Input::Command(Command::Resend { peer }))
                    .await
                {
                    for out in handled.outgoing {
                        shared.deliver(out).await;
                    }
                }
                in_flight.lock().unwrap().remove(&peer);
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(super) async fn run_outbox(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(out) = rx.recv().await {
        let shared = shared.clone();
        tokio::spawn(async move { shared.deliver(out).await });
    }
}
