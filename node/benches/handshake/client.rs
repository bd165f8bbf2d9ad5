//! The client side of the handshake bench: client identities, and one handshake of
//! each kind (a raw connect, a kith handshake, a handshake through a relay) with a
//! deadline. A handshake that fails is an `Err` to count and show, never a panic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kith_keys::{NodeId, NodeKey};
use kith_node::node::{error_chain, now_ms};
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, PREFIX_LEN, decode_frame, encode_frame};
use kith_protocol::relay::ForwardResult;
use kith_protocol::wire::{Ack, AckStatus, Body, Envelope, Kind, Message, Reach};
use rand_core::{OsRng, RngCore};

use super::HANDSHAKE_TIMEOUT;

pub(super) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A client identity: its key and its certificate, built before timing (a node
/// builds its certificate once, when it starts).
pub(super) struct Client {
    pub(super) key: NodeKey,
    pub(super) tls: tls::Identity,
}

impl Client {
    pub(super) fn fresh() -> Client {
        let key = NodeKey::generate();
        let tls = tls::Identity::new(&key).expect("building a client certificate");
        Client { key, tls }
    }

    /// A QUIC endpoint on loopback that dials (and would accept) as this client.
    pub(super) fn endpoint(&self) -> quinn::Endpoint {
        tls::make_endpoint(&self.tls, loopback()).expect("binding a client endpoint")
    }
}

/// One connection from a fresh identity, established on the client, then closed.
async fn raw_connect(
    client: &quinn::Endpoint,
    me: &Client,
    server: SocketAddr,
    server_id: NodeId,
) -> Result<(), String> {
    let conn = tls::dial(client, &me.tls, server, server_id)
        .await
        .map_err(|e| format!("dial: {}", error_chain(&e)))?;
    conn.close(0u32.into(), b"bench");
    Ok(())
}

/// A request from `key` to `to`, signed, with a fresh nonce.
pub(super) fn signed_request(key: &NodeKey, to: NodeId, justification: &str) -> Envelope {
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    let body = Body {
        kind: Kind::Request {
            justification: justification.into(),
        },
        from: key.node_id(),
        to,
        nonce,
        timestamp_ms: now_ms(),
    };
    Envelope::sign(body, key)
}

/// A full kith handshake from `key`: dial, signed request, `Pending` ack, close.
/// Returns how long the dial took.
async fn kith_handshake(
    client: &quinn::Endpoint,
    me: &Client,
    server: SocketAddr,
    server_id: NodeId,
) -> Result<Duration, String> {
    let started = Instant::now();
    let conn = tls::dial(client, &me.tls, server, server_id)
        .await
        .map_err(|e| format!("dial: {}", error_chain(&e)))?;
    let dialled = started.elapsed();
    let message = Message::Envelope(signed_request(&me.key, server_id, "handshake bench"));
    let answer = exchange(&conn, &encode_frame(&message).map_err(|e| e.to_string())?).await;
    conn.close(0u32.into(), b"bench");
    match answer? {
        Message::Ack(Ack {
            status: AckStatus::Pending,
        }) => Ok(dialled),
        other => Err(format!("answered {other:?}, expected a pending ack")),
    }
}

/// A kith handshake through a relay: dial the relay (`server`), forward a signed
/// request to `dest`, wait for the relay's answer with `dest`'s `Pending` ack.
/// Returns how long the dial took.
async fn relayed_handshake(
    client: &quinn::Endpoint,
    me: &Client,
    relay: SocketAddr,
    relay_id: NodeId,
    dest: NodeId,
) -> Result<Duration, String> {
    let started = Instant::now();
    let conn = tls::dial_relay(client, &me.tls, relay, relay_id)
        .await
        .map_err(|e| format!("dial: {}", error_chain(&e)))?;
    let dialled = started.elapsed();
    let message = Message::Forward {
        envelope: signed_request(&me.key, dest, "relayed handshake bench"),
        reach: Reach::default(),
    };
    let answer = exchange(&conn, &encode_frame(&message).map_err(|e| e.to_string())?).await;
    conn.close(0u32.into(), b"bench");
    match answer? {
        Message::Forwarded {
            result: ForwardResult::Delivered,
            ack: Some(Ack {
                status: AckStatus::Pending,
            }),
        } => Ok(dialled),
        other => Err(format!(
            "relay answered {other:?}, expected delivered + pending"
        )),
    }
}

/// One frame out on a new stream, one message back.
pub(super) async fn exchange(conn: &quinn::Connection, frame: &[u8]) -> Result<Message, String> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("open: {}", error_chain(&e)))?;
    send.write_all(frame)
        .await
        .map_err(|e| format!("write: {}", error_chain(&e)))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    let bytes = recv
        .read_to_end(MAX_FRAME_LEN + PREFIX_LEN)
        .await
        .map_err(|e| format!("read: {}", error_chain(&e)))?;
    match decode_frame::<Message>(&bytes) {
        Ok(Some((message, _))) => Ok(message),
        other => Err(format!("undecodable answer: {other:?}")),
    }
}

/// Which handshake a measurement runs.
#[derive(Clone, Copy)]
pub(super) enum Op {
    Raw,
    Kith,
    /// Through the relay at the measurement's server address, to this node.
    Relayed {
        dest: NodeId,
    },
}

/// Runs one handshake; returns how long its dial took (all of a raw connect).
pub(super) async fn run_op(
    op: Op,
    client: &quinn::Endpoint,
    me: &Client,
    server: SocketAddr,
    server_id: NodeId,
) -> Result<Duration, String> {
    let one = async {
        match op {
            Op::Raw => {
                let started = Instant::now();
                raw_connect(client, me, server, server_id).await?;
                Ok(started.elapsed())
            }
            Op::Kith => kith_handshake(client, me, server, server_id).await,
            Op::Relayed { dest } => relayed_handshake(client, me, server, server_id, dest).await,
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, one)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {HANDSHAKE_TIMEOUT:?}")))
}
