//! Two kith nodes in one program reach trust over real QUIC on loopback.
//!
//! Run with `cargo run --example two_nodes`. Each node has a fresh identity and an
//! in-memory store; the same `Node` type is what `kith run` wraps.

use std::time::Duration;

use kith::keys::NodeKey;
use kith::node::NodeBuilder;
use kith::protocol::machine::{Command, TrustState};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loopback = "127.0.0.1:0".parse()?;
    let alice = NodeBuilder::new(NodeKey::generate())
        .listen(loopback)
        .spawn()
        .await?;
    let bob = NodeBuilder::new(NodeKey::generate())
        .listen(loopback)
        .spawn()
        .await?;
    println!("alice {} on {}", alice.node_id(), alice.local_addr());
    println!("bob   {} on {}", bob.node_id(), bob.local_addr());

    // Alice asks Bob, using the ticket Bob's operator would have shared.
    let delivery = alice
        .request(&bob.ticket(), "example: alice wants to talk to bob")
        .await?;
    println!("alice's request: {delivery:?}");

    // Bob's side sees the request pending, and approves it.
    let alice_id = alice.node_id();
    wait_until(&bob, alice_id, TrustState::IncomingPending).await?;
    bob.command(Command::Approve {
        peer: alice_id,
        name: Some("alice".into()),
        note: None,
        expires_at_ms: None,
    })
    .await?;

    // Both now trust each other, and a trusted peer may ping.
    wait_until(&alice, bob.node_id(), TrustState::Trusted).await?;
    println!(
        "both trusted; ping alice → bob: {:?}",
        alice.ping(bob.node_id()).await?
    );

    alice.shutdown().await;
    bob.shutdown().await;
    Ok(())
}

async fn wait_until(
    node: &kith::node::Node,
    peer: kith::keys::NodeId,
    state: TrustState,
) -> anyhow::Result<()> {
    for _ in 0..500 {
        let now = node
            .read(move |m, _| m.peer(&peer).map(|p| p.state))
            .await?;
        if now == Some(state) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{peer} never reached {state:?}")
}
