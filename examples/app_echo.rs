//! An application protocol between two kith nodes: bob serves `echo/1` to the peers
//! he trusts, alice reaches it by bob's node id, and carol, whom bob never approved,
//! is refused before a byte flows.
//!
//! Run with `cargo run --example app_echo`. Real QUIC on loopback, in-memory stores.

use std::sync::Arc;
use std::time::Duration;

use kith::keys::{NodeId, NodeKey};
use kith::node::{ConnectError, Node, NodeBuilder};
use kith::protocol::machine::{Command, TrustState};

const ECHO: &[u8] = b"echo/1";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loopback = "127.0.0.1:0".parse()?;
    let alice = NodeBuilder::new(NodeKey::generate())
        .listen(loopback)
        .spawn()
        .await?;
    let carol = NodeBuilder::new(NodeKey::generate())
        .listen(loopback)
        .spawn()
        .await?;
    let bob = Arc::new(
        NodeBuilder::new(NodeKey::generate())
            .listen(loopback)
            .protocol(ECHO)
            .spawn()
            .await?,
    );

    // Bob's application: echo every stream of every trusted connection.
    let server = bob.clone();
    tokio::spawn(async move {
        while let Some(accepted) = server.accept(ECHO).await {
            println!(
                "bob: connection from trusted peer {}",
                accepted.peer.short()
            );
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = accepted.connection.accept_bi().await {
                    let _ = tokio::io::copy(&mut recv, &mut send).await;
                    let _ = send.finish();
                }
            });
        }
    });

    // Alice and bob establish trust (bob's operator approves alice's request).
    alice
        .request(&bob.ticket(), "alice wants bob's echo")
        .await?;
    wait_for(&bob, alice.node_id(), TrustState::IncomingPending).await?;
    bob.command(Command::Approve {
        peer: alice.node_id(),
        name: Some("alice".into()),
        note: None,
        expires_at_ms: None,
    })
    .await?;
    wait_for(&alice, bob.node_id(), TrustState::Trusted).await?;

    // Alice reaches bob's application by his node id.
    let conn = alice.connect(bob.node_id(), ECHO).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"hello through kith").await?;
    send.finish()?;
    let echoed = recv.read_to_end(1024).await?;
    println!("alice: bob echoed {:?}", String::from_utf8_lossy(&echoed));

    // Carol knows bob's ticket but no trust exists: refused, with a typed error.
    carol.request(&bob.ticket(), "carol tries too").await?;
    match carol.connect(bob.node_id(), ECHO).await {
        Err(ConnectError::NotTrusted(peer)) => {
            println!("carol: refused, {} is not trusted yet", peer.short())
        }
        other => anyhow::bail!("carol should have been refused, got {other:?}"),
    }

    alice.shutdown().await;
    carol.shutdown().await;
    bob.shutdown().await;
    Ok(())
}

async fn wait_for(node: &Node, peer: NodeId, state: TrustState) -> anyhow::Result<()> {
    for _ in 0..500 {
        if node
            .read(move |m, _| m.peer(&peer).map(|p| p.state))
            .await?
            == Some(state)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{peer} never reached {state:?}")
}
