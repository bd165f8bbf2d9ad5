//! `kith demo`: a small kith network in one process on loopback, narrated.
//!
//! Three nodes with throwaway in-memory stores walk through request → pending →
//! approve → ping → revoke, then a relay and a private node show the same handshake
//! through the relay. The demo says what each side sees. It must never touch the
//! operator's real data dir or listen on anything but loopback.

use std::io::Write;
use std::time::Duration;

use kith_keys::NodeKey;
use kith_protocol::machine::{Command, Config, TrustState};

use kith_protocol::relay::RelayConfig;
use kith_protocol::wire::RelayRef;

use crate::node::{Delivery, Node, NodeBuilder, NodeError};
use crate::relay::{RelayOptions, RelayServer};

/// `println!` that outlives its reader (`kith demo | head`): the demo still runs to
/// the end and shuts its nodes down; lines nobody reads are dropped, not a panic.
macro_rules! show {
    ($($arg:tt)*) => {
        show_line(format_args!($($arg)*))
    };
}

fn show_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

fn say(who: &str, what: impl std::fmt::Display) {
    show!("  {who:<6} {what}");
}

async fn state_of(node: &Node, peer: kith_keys::NodeId) -> Result<String, NodeError> {
    node.read(move |m, _| {
        m.peer(&peer)
            .map(|p| crate::daemon::state_name(&p.state).replace('_', " "))
            .unwrap_or_else(|| "unknown".into())
    })
    .await
}

async fn wait_for(
    node: &Node,
    peer: kith_keys::NodeId,
    state: TrustState,
) -> Result<(), NodeError> {
    for _ in 0..200 {
        let now = node
            .read(move |m, _| m.peer(&peer).map(|p| p.state))
            .await?;
        if now.as_ref() == Some(&state) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(NodeError::Unreachable {
        peer,
        reason: format!("never reached {state:?}"),
    })
}

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

/// How an envelope got to its peer, in words.
fn describe(delivery: &Delivery) -> String {
    match delivery {
        Delivery::Acked(status) => format!("delivered directly, peer says {status}"),
        Delivery::Relayed {
            ack: Some(status), ..
        } => format!("delivered through the relay, peer says {status}"),
        Delivery::Relayed { ack: None, .. } => "delivered through the relay".into(),
        Delivery::Queued { .. } => "queued at the relay until the peer reconnects".into(),
        Delivery::Retrying { reason } => format!("not delivered yet ({reason}); retrying"),
    }
}

fn delivered(deliveries: &[Delivery]) -> &'static str {
    if deliveries.iter().all(|d| matches!(d, Delivery::Acked(_))) {
        "delivered"
    } else {
        "queued for retry"
    }
}

async fn start(config: Config) -> Result<Node, NodeError> {
    NodeBuilder::new(NodeKey::generate())
        .listen("127.0.0.1:0".parse().expect("loopback address"))
        .config(config)
        .spawn()
        .await
}

/// Runs the demo; returns an error if any step does not turn out as narrated.
pub async fn run() -> Result<(), NodeError> {
    show!(
        "kith demo: three nodes on loopback, each with a fresh identity and an in-memory store.\n"
    );
    let alice = start(Config::default()).await?;
    let bob = start(Config::default()).await?;
    let carol = start(Config {
        auto_approve: true,
        ..Config::default()
    })
    .await?;
    for (name, node) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        say(
            name,
            format!("node {} on {}", node.node_id().short(), node.local_addr()),
        );
    }
    say("carol", "runs with --auto-approve: she trusts whoever asks");

    show!("\n1. alice asks bob for trust, with a justification");
    let sent = alice
        .request(&bob.ticket(), "alice's laptop wants to back up to bob")
        .await?;
    say(
        "alice",
        format!("sent the signed request: {}", describe(&sent)),
    );
    wait_for(&bob, alice.node_id(), TrustState::IncomingPending).await?;
    say(
        "bob",
        format!(
            "sees {} as {}",
            alice.node_id().short(),
            state_of(&bob, alice.node_id()).await?
        ),
    );
    say(
        "alice",
        format!(
            "sees {} as {}",
            bob.node_id().short(),
            state_of(&alice, bob.node_id()).await?
        ),
    );

    show!(
        "\n2. bob's operator approves (`kith approve {}`)",
        alice.node_id().short()
    );
    let sent = bob
        .command(Command::Approve {
            peer: alice.node_id(),
            name: Some("alice".into()),
            note: None,
            expires_at_ms: None,
        })
        .await?;
    say("bob", format!("signed an Accept, {}", delivered(&sent)));
    wait_for(&alice, bob.node_id(), TrustState::Trusted).await?;
    say(
        "alice",
        format!("sees bob as {}", state_of(&alice, bob.node_id()).await?),
    );

    show!("\n3. trusted peers may use the connection: alice pings bob");
    let rtt = alice.ping(bob.node_id()).await?;
    say(
        "alice",
        format!("ping bob: {:.2} ms round trip", rtt.as_secs_f64() * 1000.0),
    );
    match carol.ping(bob.node_id()).await {
        Err(e) => say("carol", format!("ping bob refused, as it should be: {e}")),
        Ok(_) => {
            return Err(NodeError::Protocol {
                peer: bob.node_id(),
            });
        }
    }

    show!("\n4. bob asks carol, whose policy approves at once");
    bob.request(&carol.ticket(), "bob joins carol's fleet")
        .await?;
    wait_for(&bob, carol.node_id(), TrustState::Trusted).await?;
    say(
        "bob",
        format!(
            "sees carol as {} without waiting for an operator",
            state_of(&bob, carol.node_id()).await?
        ),
    );

    show!("\n5. alice revokes bob: bob is told and the connection is closed");
    alice
        .command(Command::Revoke {
            peer: bob.node_id(),
            reason: "laptop retired".into(),
        })
        .await?;
    wait_for(&bob, alice.node_id(), TrustState::RevokedByPeer).await?;
    say(
        "bob",
        format!("sees alice as {}", state_of(&bob, alice.node_id()).await?),
    );
    match alice.ping(bob.node_id()).await {
        Err(e) => say("alice", format!("ping bob now fails: {e}")),
        Ok(_) => {
            return Err(NodeError::Protocol {
                peer: bob.node_id(),
            });
        }
    }

    show!("\n6. a relay, and dave: a private node that accepts no direct connection");
    let relay = RelayServer::spawn(
        NodeKey::generate(),
        RelayOptions {
            listen: loopback(),
            advertise: Vec::new(),
            config: RelayConfig::default(),
            max_per_address: crate::relay::MAX_PER_ADDRESS,
        },
    )
    .await
    .map_err(NodeError::Tls)?;
    say(
        "relay",
        format!("node {} on {}", relay.node_id().short(), relay.local_addr()),
    );
    let dave = NodeBuilder::new(NodeKey::generate())
        .listen(loopback())
        .private(true)
        .relay(RelayRef {
            node_id: relay.node_id(),
            addrs: vec![relay.local_addr()],
        })
        .spawn()
        .await?;
    for _ in 0..200 {
        if dave.relay_status().is_some_and(|s| s.observed.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ticket = dave.ticket();
    say(
        "dave",
        format!(
            "node {}: registered at the relay; ticket has {} direct address(es) and the relay",
            dave.node_id().short(),
            ticket.addrs.len()
        ),
    );
    let sent = alice
        .request(&ticket, "alice wants to reach dave behind his NAT")
        .await?;
    say("alice", format!("asked dave: {}", describe(&sent)));
    wait_for(&dave, alice.node_id(), TrustState::IncomingPending).await?;
    let sent = dave
        .command(Command::Approve {
            peer: alice.node_id(),
            name: None,
            note: None,
            expires_at_ms: None,
        })
        .await?;
    say(
        "dave",
        format!(
            "approved alice: {}",
            sent.first().map(describe).unwrap_or_default()
        ),
    );
    wait_for(&alice, dave.node_id(), TrustState::Trusted).await?;
    say(
        "alice",
        format!("sees dave as {}", state_of(&alice, dave.node_id()).await?),
    );

    for node in [alice, bob, carol, dave] {
        node.shutdown().await;
    }
    relay.shutdown().await;
    show!("\nDone. Every step above was a signed envelope over real QUIC on 127.0.0.1.");
    show!("Next: `kith init` and `kith run` on two machines (see README.md).");
    Ok(())
}
