//! A peer that refuses our messages for good (here: it no longer speaks our protocol
//! version) against a real `kith run` daemon. Whichever path carried the request —
//! `kith request` itself or the background resender — the request is withdrawn, the
//! operator is told (event, status, and `kith request --wait`'s answer), and nothing is
//! resent, not even after a restart.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestNode, stderr_of, stdout_of};
use kith_keys::NodeKey;
use kith_node::ticket::Ticket;
use kith_node::transport::tls;
use kith_protocol::frame::{MAX_FRAME_LEN, decode_frame, encode_frame};
use kith_protocol::validate::Refusal;
use kith_protocol::wire::{Ack, AckStatus, Message, PROTOCOL_VERSION};

/// A peer at `addr` that answers every envelope with a refusal no resend can change,
/// and records the kind of each envelope it was sent. Runs until the test ends.
struct RefusingPeer {
    ticket: String,
    kinds: Arc<Mutex<Vec<String>>>,
}

impl RefusingPeer {
    /// The peer's identity and ticket, at a loopback address nothing listens on yet.
    fn identity() -> (NodeKey, String) {
        let key = NodeKey::generate();
        let addr = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let ticket = Ticket::direct(key.node_id(), vec![addr]).to_string();
        (key, ticket)
    }

    /// Starts answering at the ticket's address.
    fn start((key, ticket): (NodeKey, String)) -> Self {
        let addr = ticket.parse::<Ticket>().unwrap().addrs[0];
        let kinds: Arc<Mutex<Vec<String>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let seen = kinds.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let identity = tls::Identity::new(&key).unwrap();
                let endpoint = tls::make_endpoint(&identity, addr).unwrap();
                ready_tx.send(()).unwrap();
                while let Some(incoming) = endpoint.accept().await {
                    let Ok(conn) = incoming.await else { continue };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            let Ok(bytes) = recv.read_to_end(MAX_FRAME_LEN + 4).await else {
                                continue;
                            };
                            let kind = match decode_frame::<Message>(&bytes) {
                                Ok(Some((Message::Deliver { envelope, .. }, _)))
                                | Ok(Some((Message::Envelope(envelope), _))) => {
                                    envelope.body.kind.name().to_string()
                                }
                                _ => "other".to_string(),
                            };
                            seen.lock().unwrap().push(kind);
                            let answer = Message::Ack(Ack {
                                status: AckStatus::Refused(Refusal::UnknownVersion(
                                    PROTOCOL_VERSION,
                                )),
                            });
                            let _ = send.write_all(&encode_frame(&answer).unwrap()).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        });
        ready_rx.recv().unwrap();
        RefusingPeer { ticket, kinds }
    }

    fn node_id(&self) -> String {
        self.ticket.parse::<Ticket>().unwrap().node_id.to_string()
    }

    fn kinds(&self) -> Vec<String> {
        self.kinds.lock().unwrap().clone()
    }
}

/// The request is withdrawn and said so, once, in `kith events` and `kith status`.
fn assert_withdrawn_and_told(a: &TestNode, peer: &str) {
    assert_ne!(a.peer_state(peer).as_deref(), Some("outgoing_pending"));
    assert!(a.json(&["pending"]).as_array().unwrap().is_empty());
    let kinds = a.event_kinds(peer);
    assert_eq!(
        kinds.iter().filter(|k| *k == "request_refused").count(),
        1,
        "{kinds:?}"
    );
    let status = a.status();
    assert!(
        status["refused_by_peers"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let text = a.run_ok(&["status"]);
    assert!(text.contains("refused for good by the peer"), "{text}");
    assert!(
        text.contains("protocol version") || text.contains("was refused"),
        "{text}"
    );
    let events = a.run_ok(&["events"]);
    assert!(events.contains("the request was withdrawn"), "{events}");
}

#[test]
fn a_request_the_resender_delivers_and_the_peer_refuses_for_good_is_withdrawn() {
    let mut a = TestNode::started();
    // The peer is down when asked: the request stays pending and goes to the resender.
    let (key, ticket) = RefusingPeer::identity();
    let out = a.run_ok(&["request", &ticket, "-j", "hello"]);
    assert!(out.contains("resends it"), "{out}");
    let id = ticket.parse::<Ticket>().unwrap().node_id.to_string();
    assert_eq!(a.peer_state(&id).as_deref(), Some("outgoing_pending"));

    let peer = RefusingPeer::start((key, ticket));
    a.wait_until("the resent request refused and withdrawn", |a| {
        a.event_kinds(&id).contains(&"request_refused".to_string())
    });
    a.wait_until("the withdrawal reached the peer", |_| {
        peer.kinds().contains(&"revoke".to_string())
    });
    assert_withdrawn_and_told(&a, &id);
    let status = a.status();
    assert_eq!(status["last_refused_by_peer"]["node_id"], id, "{status}");

    // The withdrawal, refused for good too, is not owed either: a restart, which
    // resends at once whatever the durable outbox still holds, sends nothing.
    let sent = peer.kinds().len();
    a.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(peer.kinds().len(), sent, "resent: {:?}", peer.kinds());
}

#[test]
fn a_request_refused_for_good_at_once_is_withdrawn_and_told_once() {
    let a = TestNode::started();
    let peer = RefusingPeer::start(RefusingPeer::identity());
    let out = a.run(&["request", &peer.ticket, "-j", "hello"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("refused the request"), "{stderr}");
    assert!(stderr.contains("the request was withdrawn"), "{stderr}");
    let id = peer.node_id();
    a.wait_until("the withdrawal reached the peer", |_| {
        peer.kinds().contains(&"revoke".to_string())
    });
    assert_withdrawn_and_told(&a, &id);
}

#[test]
fn request_wait_says_why_when_the_resent_request_is_refused_for_good() {
    let a = TestNode::started();
    // The peer is down when asked: `--wait` waits while the resender delivers it.
    let (key, ticket) = RefusingPeer::identity();
    let mut waiting = a
        .command(&[
            "request",
            &ticket,
            "-j",
            "hello",
            "--wait",
            "--timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(waiting.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("waiting for") {
        assert_ne!(stderr.read_line(&mut said).unwrap(), 0, "{said}");
    }
    let _peer = RefusingPeer::start((key, ticket));
    let out = waiting.wait_with_output().unwrap();
    stderr.read_to_string(&mut said).unwrap();
    let stdout = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{said}");
    assert!(stdout.contains("refused the request"), "{stdout}{said}");
    assert!(stdout.contains("protocol version"), "{stdout}");
    assert!(stdout.contains("the request was withdrawn"), "{stdout}");
}
