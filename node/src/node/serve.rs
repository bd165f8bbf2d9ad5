//! Serving inbound connections and streams: the accept loop (within the bounds of
//! admission), the streams a peer opens on a connection (whichever side dialled
//! it), and reading one message and writing one answer on a stream.
//!
//! It only moves bytes: it hands every envelope to the core and must never decide
//! trust itself, nor send a reply the core has not released.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kith_keys::NodeId;
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::machine::{Input, Reply};
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{Ack, AckStatus, Message, Reach};
use tracing::{debug, warn};

use super::{DIAL_TIMEOUT, Learn, STREAM_TIMEOUT, Shared, admission, budget, close_code, now_ms};
use crate::reach::PathKind;
use crate::transport::{path, tls};

/// How long a peer may take to read our answer before the stream is dropped.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// An inbound connection from an untrusted peer with no stream for this long is
/// closed: a stranger needs a connection only to hand over a message, and held
/// idle ones would pile up (nothing of ours keeps them alive either: the server
/// side sends no keep-alives, see `tls`).
pub const UNTRUSTED_IDLE: Duration = Duration::from_secs(10);

/// Takes inbound connections within the bounds of [`admission`]: per source
/// address before the handshake, per identity and the trusted reserve after it.
pub(super) async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let remote = incoming.remote_address();
        if shared.private && !path::is_mapped(&remote) {
            // A private node is reachable only through a relay: refuse at once
            // (CONNECTION_REFUSED), before any handshake work.
            debug!(%remote, "refusing an inbound connection (private node)");
            incoming.refuse();
            continue;
        }
        if shared
            .admission
            .wants_address_proof(incoming.remote_address_validated())
            && incoming.may_retry()
        {
            // Stateless: the client holds nothing of ours until it comes back
            // from the address it claims.
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let handshake = match shared.admission.begin_handshake(remote) {
            Ok(handshake) => handshake,
            Err(why) => {
                debug!(%remote, ?why, "refusing an inbound connection before its handshake");
                incoming.refuse();
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(DIAL_TIMEOUT, incoming).await {
                Ok(Ok(conn)) => serve_inbound(shared, conn, handshake).await,
                Ok(Err(e)) => debug!(%remote, error = %e, "inbound handshake failed"),
                Err(_) => debug!(%remote, "inbound handshake timed out"),
            }
        });
    }
}

/// Admits (or turns away) an inbound connection whose handshake finished, then serves it.
async fn serve_inbound(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    handshake: admission::Handshake,
) {
    let Ok(peer) = tls::peer_node_id(&conn) else {
        conn.close(0u32.into(), b"no node certificate");
        return;
    };
    if let Err(why) = check_relayed(&shared, &conn, peer) {
        debug!(%peer, remote = %conn.remote_address(), why, "closing a relayed connection");
        conn.close(close_code::NOT_TRUSTED.into(), why.as_bytes());
        return;
    }
    let trusted = shared.is_trusted(peer).await;
    match shared.admission.admit(handshake, peer, trusted) {
        Ok(admitted) => serve_connection(shared, conn, Some(admitted)).await,
        Err(why) => {
            debug!(%peer, remote = %conn.remote_address(), ?why, "turning a connection away");
            conn.close(close_code::TOO_MANY.into(), why.reason());
        }
    }
}

/// For a connection that came through a relay (from a mapped address): it must be an
/// application connection (envelopes travel through relays as signed envelopes, and a
/// mapped address means nothing outside this process, so it must never be learned as
/// where the peer speaks from), and the key its TLS handshake proved must be the one
/// the relay named as the sender. The relay cannot forge the handshake; a mismatch
/// means it lies about who is sending, and the connection is dropped before trust is
/// even looked at.
fn check_relayed(
    shared: &Shared,
    conn: &quinn::Connection,
    peer: NodeId,
) -> Result<(), &'static str> {
    let remote = conn.remote_address();
    if !path::is_mapped(&remote) {
        return Ok(());
    }
    if tls::negotiated_alpn(conn).is_none_or(|a| a.as_slice() == tls::ALPN) {
        return Err("only application connections come through a relay");
    }
    match shared.paths.lookup(&remote) {
        Some(relayed) if relayed.peer == *peer.as_bytes() => Ok(()),
        _ => Err("the relay named another sender than the one the handshake proved"),
    }
}

/// Serves the streams a peer opens on `conn`, whichever side dialled it. An inbound
/// connection (`admitted`) from an untrusted peer is closed once it stays idle for
/// [`UNTRUSTED_IDLE`] with no stream being served.
pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    admitted: Option<admission::Admitted>,
) {
    let peer = match tls::peer_node_id(&conn) {
        Ok(peer) => peer,
        Err(e) => {
            debug!(error = %e, "connection without a usable node certificate");
            conn.close(0u32.into(), b"no node certificate");
            return;
        }
    };
    if let Some(alpn) = tls::negotiated_alpn(&conn).filter(|a| a.as_slice() != tls::ALPN) {
        // An application connection: it holds its inbound slot until it closes.
        shared.accept_app(peer, alpn, conn.clone()).await;
        conn.closed().await;
        return;
    }
    let remote = conn.remote_address();
    shared.remember_connection(peer, &conn);
    let reap = admitted.as_ref().is_some_and(|a| !a.trusted());
    let serving = Arc::new(());
    loop {
        let next = if reap {
            match tokio::time::timeout(UNTRUSTED_IDLE, conn.accept_bi()).await {
                Ok(next) => next,
                Err(_) => {
                    // Only this loop holds `serving` when no stream task is running.
                    if Arc::strong_count(&serving) == 1 && !shared.is_trusted(peer).await {
                        debug!(%peer, %remote, "closing an idle connection of an untrusted peer");
                        conn.close(close_code::IDLE.into(), b"idle");
                        break;
                    }
                    continue;
                }
            }
        } else {
            conn.accept_bi().await
        };
        let Ok((send, recv)) = next else { break };
        let shared = shared.clone();
        let conn = conn.clone();
        let serving = serving.clone();
        tokio::spawn(async move {
            serve_stream(shared, conn, peer, remote, send, recv).await;
            drop(serving);
        });
    }
    shared.forget_connection(&peer, &conn);
    drop(admitted);
}

async fn serve_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: NodeId,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    // Refusals made here, before the machine (which counts its own in the core).
    let refused = |refusal: Refusal| {
        shared.refusals.note(&refusal, now_ms());
        Message::Ack(Ack {
            status: AckStatus::Refused(refusal),
        })
    };
    // `_held` keeps the message's bytes counted until it is answered.
    let Some((bytes, _held)) =
        budget::read_message(&shared.budget, &mut send, &mut recv, MAX_FRAME_LEN + 4).await
    else {
        return;
    };
    let mut close_after = false;
    let decoded = match decode_frame::<Message>(&bytes) {
        Ok(Some((Message::Envelope(envelope), _))) => Ok(Some((
            Message::Deliver {
                envelope,
                reach: Reach::default(),
            },
            0,
        ))),
        other => other,
    };
    let answer = match decoded {
        Ok(Some((Message::Deliver { envelope, reach }, _))) => {
            let from = envelope.body.from;
            let input = Input::Envelope {
                envelope,
                transport_peer: Some(peer),
                source: Some(remote),
                via_relay: None,
            };
            // A plain `Envelope` (no hint) tells nothing about reaching the sender.
            let hinted = reach != Reach::default();
            let learn = Learn {
                peer: Some(from),
                hint: hinted.then_some(reach),
                via: None,
                path: Some(PathKind::Direct),
            };
            match shared.handle_learning(input, Some(learn)).await {
                Ok(handled) => {
                    for out in handled.outgoing {
                        let _ = shared.outbox.send(out);
                    }
                    match handled.reply {
                        Reply::Ack(ack) => {
                            close_after = ack.status == AckStatus::Revoked;
                            Message::Ack(ack)
                        }
                        _ => refused(Refusal::Malformed),
                    }
                }
                Err(e) => {
                    warn!(%peer, error = %e, "could not handle an envelope");
                    let _ = send.reset(0u32.into());
                    return;
                }
            }
        }
        Ok(Some((Message::Ping { id }, _))) => {
            if shared.is_trusted(peer).await {
                Message::Pong { id }
            } else {
                refused(Refusal::NotTrusted)
            }
        }
        Ok(Some(_)) | Ok(None) | Err(_) => refused(Refusal::Malformed),
    };
    write_answer(send, Some(&answer)).await;
    if close_after {
        shared.close_peer(&peer, "revoked");
        conn.close(close_code::REVOKED.into(), b"revoked");
    }
}

/// Reads the one message the other side sends on a stream it opened: at most one
/// frame, within [`STREAM_TIMEOUT`]. A failed or stalled read resets the stream and
/// gives `None`.
pub(crate) async fn read_one_message(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Option<Vec<u8>> {
    match tokio::time::timeout(STREAM_TIMEOUT, recv.read_to_end(MAX_FRAME_LEN + 4)).await {
        Ok(Ok(bytes)) => Some(bytes),
        Ok(Err(e)) => {
            debug!(error = %e, "stream read failed");
            let _ = send.reset(0u32.into());
            None
        }
        Err(_) => {
            debug!("stream stalled; dropping it");
            let _ = send.reset(0u32.into());
            None
        }
    }
}

/// Writes our one answer (if any), finishes the stream, and waits a bounded time for
/// the other side to take it.
pub(crate) async fn write_answer(mut send: quinn::SendStream, answer: Option<&Message>) {
    if let Some(frame) = answer.and_then(|a| encode_frame(a).ok()) {
        let _ = send.write_all(&frame).await;
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, send.stopped()).await;
}
