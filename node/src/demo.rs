//! `kith demo`: a small kith network in one process on loopback, narrated.
//!
//! Three nodes with throwaway in-memory stores walk through request → pending →
//! approve → ping → revoke, and the demo says what each side sees. It must never
//! touch the operator's real data dir or listen on anything but loopback.

use std::time::Duration;

use kith_keys::NodeKey;
use kith_protocol::machine::{Command, Config, TrustState};

use crate::node::{Delivery, Node, NodeBuilder, NodeError};

fn say(who: &str, what: impl std::fmt::Display) {
    println!("  {who:<6} {what}");
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
    println!(
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

    println!("\n1. alice asks bob for trust, with a justification");
    let ack = alice
        .request(&bob.ticket(), "alice's laptop wants to back up to bob")
        .await?;
    say("alice", format!("sent the signed request: {ack:?}"));
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

    println!(
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

    println!("\n3. trusted peers may use the connection: alice pings bob");
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

    println!("\n4. bob asks carol, whose policy approves at once");
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

    println!("\n5. alice revokes bob: bob is told and the connection is closed");
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

    for node in [alice, bob, carol] {
        node.shutdown().await;
    }
    println!("\nDone. Every step above was a signed envelope over real QUIC on 127.0.0.1.");
    println!("Next: `kith init` and `kith run` on two machines (see README.md).");
    Ok(())
}
