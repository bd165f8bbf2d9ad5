//! `kith ticket`: this node's ticket from the daemon, and `kith ticket inspect`,
//! which reads a ticket someone sent without dialling anything.

use clap::Args;

use super::common::call;
use super::output::print_json;
use super::{Context, exit};
use crate::control::Request;

/// Print this node's ticket: the one string another operator needs to reach it.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith ticket                     print it; send it to the other operator, who runs
                                  kith request <TICKET> --justification \"why\"
  kith ticket | xclip             copy it

The ticket is printed alone on stdout. It holds no secret: only the node id and addresses.
`kith ticket inspect <TICKET>` shows what a ticket someone sent you says, before you use it.")]
pub struct TicketArgs {
    #[command(subcommand)]
    action: Option<TicketAction>,
}

#[derive(Debug, clap::Subcommand)]
enum TicketAction {
    /// Show a ticket's node id, addresses and relay (reads only the ticket; the daemon
    /// need not run).
    Inspect {
        /// The ticket to read.
        ticket: String,
    },
}

/// `kith ticket inspect`: what the ticket says, without dialling anything.
fn inspect_ticket(ctx: &Context, text: &str) -> anyhow::Result<u8> {
    let ticket: crate::ticket::Ticket = text
        .parse()
        .map_err(|e| super::UsageError(format!("that is not a kith ticket: {e}")))?;
    let addrs: Vec<String> = ticket.addrs.iter().map(|a| a.to_string()).collect();
    if ctx.json {
        print_json(&serde_json::json!({
            "node_id": ticket.node_id.to_string(),
            "addrs": addrs,
            "relay": ticket.relay.as_ref().map(|r| serde_json::json!({
                "node_id": r.node_id.to_string(),
                "addrs": r.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            })),
        }))?;
        return Ok(exit::OK);
    }
    outln!("node      {}", ticket.node_id)?;
    if addrs.is_empty() {
        outln!("addresses none (reachable only through its relay)")?;
    } else {
        outln!("addresses {}", addrs.join(", "))?;
    }
    match &ticket.relay {
        Some(relay) => {
            let relay_addrs: Vec<String> = relay.addrs.iter().map(|a| a.to_string()).collect();
            outln!("relay     {} at {}", relay.node_id, relay_addrs.join(", "))?;
        }
        None => outln!("relay     none")?,
    }
    outln!(
        "A ticket is no proof: whoever answers at these addresses must hold this node id's key, \
         which the connection checks. It cannot tell a relay's ticket from a node's."
    )?;
    Ok(exit::OK)
}

pub fn ticket(ctx: &Context, args: TicketArgs) -> anyhow::Result<u8> {
    if let Some(TicketAction::Inspect { ticket }) = &args.action {
        return inspect_ticket(ctx, ticket);
    }
    let data: serde_json::Value = call(ctx, Request::Ticket)?;
    if ctx.json {
        print_json(&data)?;
    } else {
        outln!("{}", data["ticket"].as_str().unwrap_or_default())?;
    }
    Ok(exit::OK)
}
