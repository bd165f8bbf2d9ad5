//! What the home relay link means for the operator, in one sentence with the next
//! step: printed once at startup (when the first attempt settles) and shown by `kith
//! status`, from the same function, so the two never disagree. It only builds text
//! from the link's status and must never change it.

use std::time::Duration;

use kith_keys::NodeId;
use kith_protocol::validate::escape_for_display;
use kith_protocol::wire::RelayRefusal;

use crate::node::{BACKOFF_MAX, LinkState, Node, RelayStatus};

/// How long startup waits for the first attempt to settle before saying it has not.
const STARTUP_WAIT: Duration = Duration::from_secs(20);

/// The link's state as one sentence, with the next step where the operator has one
/// to take; `None` while nothing is wrong or settled (connecting).
pub fn relay_summary(status: &RelayStatus, node: NodeId, private: bool) -> Option<String> {
    let relay = status.relay;
    let cut_off = if private {
        "Peers cannot reach this node until a relay registers it (it is private: no other way in)."
    } else {
        "Peers can still dial this node directly."
    };
    let other_relay = "or use another relay (`kith run --relay <RELAY-TICKET>`)";
    // A refusal stands until a registration succeeds (a full relay closes the
    // connection, and the link retries), so it is the state that matters meanwhile.
    let refused = status.state == LinkState::Refused
        || (status.refusal.is_some() && status.state != LinkState::Registered);
    match status.state {
        LinkState::Registered => Some(format!(
            "registered at relay {}: {}",
            relay.short(),
            if private {
                "peers reach this node through it"
            } else {
                "peers may also reach this node through it"
            }
        )),
        LinkState::NotARelay => Some(format!(
            "the --relay ticket is not a relay's: {}. Not retrying. {cut_off} Use the relay's \
             ticket (`kith relay` prints it when it starts, `kith ticket` on the relay prints \
             it again) and restart: `kith run --relay <RELAY-TICKET>`",
            escape_for_display(
                status
                    .last_error
                    .as_deref()
                    .unwrap_or("it answered as a node")
            ),
        )),
        _ if refused => {
            let reason = status
                .refusal
                .map(|r| r.to_string())
                .unwrap_or_else(|| "no reason given".into());
            let next = match status.refusal {
                Some(RelayRefusal::NotAllowed) => format!(
                    "Ask the relay's operator to add this node's id ({node}) to its allow \
                     file (`kith relay --allow FILE`), {other_relay}."
                ),
                Some(RelayRefusal::TooManyClients) => format!(
                    "Retrying every {} s at most while the relay is full; ask its operator to raise \
                     `--max-clients`, {other_relay}.",
                    BACKOFF_MAX.as_secs()
                ),
                _ => format!("Ask the relay's operator, {other_relay}."),
            };
            Some(format!(
                "relay {relay} refused to register this node: {reason}. {cut_off} {next}"
            ))
        }
        LinkState::Refused
        | LinkState::Connecting
        | LinkState::Connected
        | LinkState::Disconnected => None,
    }
}

/// Prints, once, how the first attempt to join the home relay went: the same
/// sentence `kith status` shows. If it has not settled within [`STARTUP_WAIT`], says
/// so and that it keeps trying.
pub async fn report_first_outcome(node: std::sync::Arc<Node>) {
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    loop {
        let Some(status) = node.relay_status() else {
            return;
        };
        if let Some(summary) = relay_summary(&status, node.node_id(), node.is_private()) {
            eprintln!("{summary}");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "relay {}: not registered yet ({}); retrying in the background, `kith status` \
                 shows the link",
                status.relay.short(),
                escape_for_display(
                    status
                        .last_error
                        .as_deref()
                        .unwrap_or("no answer to the registration yet")
                )
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
