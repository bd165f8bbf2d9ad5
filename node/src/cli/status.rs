//! `kith status`: the node at a glance, in one screen — where it listens, whether
//! peers can reach it, its relay (with the link's round trip and what a refusal
//! means), its peers, the requests waiting longest, what was refused and whose clock
//! is off. `--json` carries the same. It only reads the daemon's answer.

use anyhow::Context as _;
use clap::Args;
use kith_protocol::validate::escape_for_display;

use super::common::{ago, call};
use super::output::print_json;
use super::{Context, exit};
use crate::control::{Request, StatusView};

/// Show this node's id, address, and how many peers it has.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith status
  kith status --json | jq .data.pending_incoming")]
pub struct StatusArgs {}

pub fn status(ctx: &Context, _args: StatusArgs) -> anyhow::Result<u8> {
    let value: serde_json::Value = call(ctx, Request::Status)?;
    if value["role"] == "relay" {
        let relay: crate::control::RelayServerView =
            serde_json::from_value(value).context("the relay's status has an unexpected shape")?;
        return super::relay::print_status(ctx, &relay);
    }
    let status: StatusView =
        serde_json::from_value(value).context("the daemon's answer has an unexpected shape")?;
    if ctx.json {
        print_json(&status)?;
        return Ok(exit::OK);
    }
    outln!("node      {}", status.node_id)?;
    outln!(
        "listening {}{}",
        status.listen,
        if status.private {
            " (private: inbound connections refused)"
        } else {
            ""
        }
    )?;
    outln!(
        "reachable {}",
        match status.reachability.as_str() {
            "unreachable" => "no (private, and no relay registers it)",
            other => other,
        }
    )?;
    if let Some(relay) = &status.relay {
        let mut line = format!("{} ({})", relay.state, relay.node_id);
        if let Some(observed) = &relay.observed {
            line.push_str(&format!(", sees us at {observed}"));
        }
        if let Some(rtt) = relay.rtt_ms {
            line.push_str(&format!(", rtt {rtt:.1} ms"));
        }
        // The refusal and the error carry the relay's own words (close reasons).
        if let Some(refusal) = &relay.refusal {
            line.push_str(&format!(", refused: {}", escape_for_display(refusal)));
        }
        // The summary below says it, with the next step.
        if relay.state != "registered" && relay.summary.is_none() {
            if let Some(err) = &relay.last_error {
                line.push_str(&format!(", last error: {}", escape_for_display(err)));
            }
        }
        outln!("relay     {line}")?;
        // The same sentence `kith run` printed when its first attempt settled.
        if let Some(summary) = relay
            .summary
            .as_ref()
            .filter(|_| relay.state != "registered")
        {
            outln!("\n{}\n", escape_for_display(summary))?;
        }
        if let Some(conflict) = &relay.conflict {
            outln!(
                "\nrelay {} says this node's id is also connected to it from {} ({}).\n{}",
                conflict.reported_by,
                conflict.others.join(", "),
                ago(conflict.at_ms),
                conflict.advice
            )?;
        }
    }
    outln!("data dir  {}", status.data_dir)?;
    outln!(
        "peers     {} trusted, {} waiting for your approval, {} waiting for theirs",
        status.trusted,
        status.pending_incoming,
        status.pending_outgoing
    )?;
    for waiting in &status.longest_waiting {
        let (what, next) = match waiting.direction.as_str() {
            "incoming" => ("asked this node", "`kith pending`"),
            _ => ("was asked by this node", "`kith forget` withdraws it"),
        };
        outln!(
            "waiting   longest: {} {what} {} ({next})",
            waiting.short_id,
            ago(waiting.received_at_ms)
        )?;
    }
    if let Some(skew) = &status.last_clock_skew {
        let secs = skew.skew_ms.unsigned_abs() / 1000;
        outln!(
            "clock     {} envelope(s) stamped over a minute off this clock; latest: {}'s clock \
             is {secs} s {} this one{} ({})",
            status.clock_skew_warnings,
            skew.short_id,
            if skew.skew_ms > 0 {
                "ahead of"
            } else {
                "behind"
            },
            if skew.refused {
                ", refused (outside the skew window)"
            } else {
                ""
            },
            ago(skew.at_ms)
        )?;
    }
    outln!(
        "keystore  {}",
        if status.keystore_encrypted {
            "encrypted"
        } else {
            "NOT encrypted"
        }
    )?;
    outln!("hardened  {}", if status.hardened { "yes" } else { "no" })?;
    if status.auto_approve {
        outln!("policy    auto-approve (every request is trusted)")?;
    }
    if !status.refused.is_empty() {
        let total: u64 = status.refused.values().sum();
        let reasons: Vec<String> = status
            .refused
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        outln!("refused   {total} envelope(s): {}", reasons.join(", "))?;
    }
    if let Some(last) = &status.last_refused_by_peer {
        outln!(
            "given up  {} message(s) refused for good by the peer; latest to {} ({}): {}",
            status.refused_by_peers,
            last.short_id,
            ago(last.at_ms),
            escape_for_display(last.detail.as_deref().unwrap_or_default())
        )?;
    }
    outln!("up since  {}", ago(status.started_at_ms))?;
    outln!("ticket    {}", status.ticket)?;
    super::service::print_services(&status.services)?;
    if status.pending_incoming > 0 {
        outln!(
            "\n{} request(s) wait for you: see `kith pending`",
            status.pending_incoming
        )?;
    }
    Ok(exit::OK)
}
