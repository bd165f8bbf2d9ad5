//! `kith run` and the commands that talk to a running daemon over its control socket.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use kith_protocol::machine::Config;
use kith_protocol::validate::escape_for_display;

use super::common::{
    ago, call, call_live, parse_duration, recent_events, shutdown_signal, table, until,
};
use super::output::print_json;
use super::{Context, exit};
use crate::control::{PeerView, PendingView, Request, SentView};
use crate::daemon::{self, DaemonOptions};
use crate::harden;
use crate::node::now_ms;
use crate::unlock;

/// Run this machine's node: the QUIC endpoint, the database and the control socket.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith run                                   listen on UDP 7444 (IPv6 and IPv4)
  kith run --listen 127.0.0.1:0              loopback only, any free port
  kith run --passphrase-file /etc/kith/pass  unattended start (e.g. under systemd)
  kith run --relay kith1...                  keep a connection to a relay, so nodes that
                                             cannot dial this one reach it through the relay
  kith run --relay kith1... --private        behind NAT: accept no inbound connection; the
                                             ticket names only the relay

Stops cleanly on Ctrl-C or SIGTERM. Other kith commands talk to it through the
control socket in the data directory; share `kith ticket` so others can reach it.

Bounds: every trust decision goes to the audit log in kith.redb, which keeps the
newest 100,000 entries (older ones are dropped). Records of peers that were declined
(rejected by us, or rejected or revoked by them with no request of ours standing)
are removed 30 days after their last message, and at most 4,096 are kept.")]
pub struct RunArgs {
    /// UDP address to listen on [default: [::]:7444, or 0.0.0.0:7444 without IPv6].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Address to put in tickets instead of the local interfaces' (repeatable; not
    /// with --private, whose ticket names only its relay).
    #[arg(long, value_name = "ADDR")]
    advertise: Vec<SocketAddr>,

    #[command(flatten)]
    passphrase: super::PassphraseArgs,

    /// Skip process hardening (no core dumps, not ptrace-able) to debug the daemon.
    #[arg(long)]
    no_harden: bool,

    /// Trust every node that asks (trust on first use). For friendly fleets only.
    #[arg(long)]
    auto_approve: bool,

    /// Drop incoming requests nobody answered after this long.
    #[arg(long, value_parser = parse_duration, default_value = "7d", value_name = "DURATION")]
    pending_ttl: Duration,

    /// Run this shell command for every incoming request, with KITH_PEER_ID,
    /// KITH_JUSTIFICATION (raw; KITH_JUSTIFICATION_ESCAPED is safe to print),
    /// KITH_SOURCE_ADDR and KITH_RECEIVED_AT_MS in its environment. At most 4 run at once.
    #[arg(long, value_name = "CMD")]
    on_request: Option<String>,

    /// Home relay: its ticket (`kith ticket` on the relay). The node stays connected
    /// to it and its ticket names it.
    #[arg(long, value_name = "RELAY-TICKET")]
    relay: Option<String>,

    /// Accept no inbound connection and advertise no direct address: peers reach
    /// this node only through its relay (use with --relay).
    #[arg(long, conflicts_with = "advertise")]
    private: bool,

    /// Serve Prometheus metrics over HTTP on ADDR (127.0.0.1:9464 when given without
    /// one). Off by default; give a non-loopback address only behind a firewall.
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = crate::metrics::DEFAULT_NODE_ADDR)]
    metrics: Option<SocketAddr>,
}

pub fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<u8> {
    // Before anything slow: a bad ticket is a usage mistake.
    let relay = match &args.relay {
        Some(text) => Some(
            text.parse::<crate::ticket::Ticket>()
                .context("--relay needs the relay's ticket (`kith ticket` on the relay)")?
                .as_relay(),
        ),
        None => None,
    };
    if relay.as_ref().is_some_and(|r| r.addrs.is_empty()) {
        bail!("the --relay ticket has no address to dial");
    }
    if args.private && relay.is_none() {
        eprintln!(
            "warning: --private without --relay: no other node can reach this one; it can only \
             send requests and hear answers on connections it opened"
        );
    }
    // Before unlocking: the passphrase and the phrase pass through this process's
    // memory during unlock, and the node key is born in a locked, non-dumpable page.
    let harden_report = (!args.no_harden).then(|| {
        kith_keys::memory::protect_secrets();
        harden::harden_process()
    });
    let unlocked = unlock::unlock(&ctx.data_dir, args.passphrase.file())?;
    unlocked.print_warnings();
    // Two nodes with one identity break every peer's replay defences: never run a copy.
    if let Err(e) = &unlocked.custody {
        anyhow::bail!("refusing to start: {e}");
    }
    let insecure = unlocked.insecure;
    // Only the node key lives on: the recovery entropy, the BIP39 passphrase and the
    // keystore passphrase are wiped here, not when the daemon exits.
    let key = unlocked.into_key();
    if insecure {
        eprintln!(
            "warning: the keystore in {} is not encrypted (--insecure-no-passphrase); \
             anyone who can read it can become this node",
            ctx.data_dir.path().display()
        );
    }
    let hardened = if let Some(report) = harden_report {
        for warning in report.warnings() {
            eprintln!("warning: {warning}");
        }
        let memory = kith_keys::memory::report();
        if memory.lock_failures > 0 {
            eprintln!(
                "warning: could not lock the node key in memory (RLIMIT_MEMLOCK too low?); \
                 it may be written to swap"
            );
        }
        if memory.dontdump_failures > 0 {
            eprintln!("warning: could not exclude the node key's memory from core dumps");
        }
        report.warnings().is_empty() && memory.lock_failures == 0 && memory.dontdump_failures == 0
    } else {
        eprintln!(
            "warning: process hardening is off (--no-harden): core dumps and debuggers can read the node key"
        );
        false
    };
    if args.auto_approve {
        eprintln!(
            "WARNING: --auto-approve is on: every node that asks is trusted at once, without an operator"
        );
    }
    let config = Config {
        auto_approve: args.auto_approve,
        pending_ttl_ms: args.pending_ttl.as_millis() as u64,
        ..Config::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listen = match args.listen {
            Some(addr) => addr,
            None => default_listen().await,
        };
        let options = DaemonOptions {
            listen,
            advertise: args.advertise,
            config,
            keystore_encrypted: !insecure,
            hardened,
            on_request: args.on_request,
            relay,
            private: args.private,
            metrics: args.metrics,
        };
        daemon::run(ctx.data_dir.clone(), key, options, shutdown_signal()).await
    })?;
    Ok(exit::OK)
}

/// `[::]:7444` where IPv6 works (dual stack on Linux), else `0.0.0.0:7444`.
async fn default_listen() -> SocketAddr {
    let v6 = SocketAddr::from(([0u16; 8], crate::DEFAULT_PORT));
    match std::net::UdpSocket::bind(SocketAddr::from(([0u16; 8], 0))) {
        Ok(_) => v6,
        Err(_) => SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_PORT)),
    }
}

/// Ask another node for trust. Its operator sees your justification and approves or rejects.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith request kith1abc... --justification \"backup server for alice's laptop\"

  kith request kith1abc... -j \"ci runner\" --wait --timeout 10m && deploy.sh

The other side sees the request in `kith pending` and runs `kith approve <your-id>`.
Watch the outcome with `kith peers`, or wait for it here with --wait.

Exit codes with --wait: 0 accepted, 3 rejected, 4 timed out (the request stays pending).")]
pub struct RequestArgs {
    /// The other node's ticket (from `kith ticket` there).
    ticket: String,
    /// Why you ask; shown to the other operator (at most 1024 characters).
    #[arg(long, short = 'j', default_value = "")]
    justification: String,
    /// Block until the other side answers.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (e.g. 90s, 10m, 1h).
    #[arg(long, value_parser = parse_duration, requires = "wait", value_name = "DURATION")]
    timeout: Option<Duration>,
}

pub fn request(ctx: &Context, args: RequestArgs) -> anyhow::Result<u8> {
    let asked_ms = now_ms();
    let sent: SentView = call(
        ctx,
        Request::Request {
            ticket: args.ticket,
            justification: args.justification,
        },
    )?;
    if sent.refused {
        // Nothing changed at the peer, so there is nothing to wait for.
        if ctx.json {
            print_json(&sent)?;
            return Ok(exit::FAILURE);
        }
        if sent.state == "outgoing_pending" {
            bail!(
                "{} refused the request for now: {}; it stays pending and is resent",
                sent.node_id,
                sent.detail
            );
        }
        bail!("{} refused the request: {}", sent.node_id, sent.detail);
    }
    if args.wait {
        return wait_for_answer(ctx, &sent, asked_ms, args.timeout);
    }
    if ctx.json {
        print_json(&sent)?;
        return Ok(exit::OK);
    }
    outln!("request for {}: {}", sent.node_id, how_it_went(&sent))?;
    if sent.state == "outgoing_pending" {
        outln!(
            "the other operator approves it with:\n  kith approve {}",
            sent.from
        )?;
    }
    Ok(exit::OK)
}

/// Polls the peer's state until it answers or `timeout` passes. `asked_ms`: when the
/// request was asked for.
fn wait_for_answer(
    ctx: &Context,
    sent: &SentView,
    asked_ms: u64,
    timeout: Option<Duration>,
) -> anyhow::Result<u8> {
    // An absurd --timeout cannot overflow the clock: it just never expires.
    let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    let mut state = sent.state.clone();
    let mut reason = None;
    if state == "outgoing_pending" && !ctx.json {
        eprintln!(
            "waiting for {} to answer; its operator approves with:",
            sent.node_id
        );
        eprintln!("  kith approve {}", sent.from);
    }
    while state == "outgoing_pending" {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let peers: Vec<PeerView> = call_live(ctx, Request::Peers)?;
        let peer = peers.into_iter().find(|p| p.node_id == sent.node_id);
        state = peer
            .as_ref()
            .map(|p| p.state.clone())
            .unwrap_or_else(|| "none".into());
        reason = peer.and_then(|p| p.reason).filter(|r| !r.is_empty());
    }
    let (code, outcome) = match state.as_str() {
        "trusted" => (exit::OK, "accepted"),
        "rejected_by_peer" => (exit::REJECTED, "rejected"),
        "outgoing_pending" => (exit::TIMED_OUT, "timed_out"),
        _ => (exit::FAILURE, "ended"),
    };
    // Ended without an answer: the peer may have refused the resent request for good
    // (it was then withdrawn); the daemon's events say why.
    let refused = if outcome == "ended" {
        refused_for_good_since(ctx, &sent.node_id, asked_ms)
    } else {
        None
    };
    if refused.is_some() {
        reason = refused.clone();
    }
    if ctx.json {
        print_json(&serde_json::json!({
            "node_id": sent.node_id,
            "outcome": outcome,
            "state": state,
            "reason": reason,
        }))?;
    } else {
        match outcome {
            "accepted" => outln!("{} accepted: you trust each other now", sent.node_id)?,
            "rejected" => match &reason {
                Some(reason) => outln!(
                    "{} rejected the request: {}",
                    sent.node_id,
                    escape_for_display(reason)
                )?,
                None => outln!("{} rejected the request (no reason given)", sent.node_id)?,
            },
            "timed_out" => outln!(
                "no answer yet from {}; the request stays pending",
                sent.node_id
            )?,
            _ => match &refused {
                Some(detail) => outln!(
                    "{} refused the request: {}",
                    sent.node_id,
                    escape_for_display(detail)
                )?,
                None => outln!(
                    "the request to {} ended: {}",
                    sent.node_id,
                    state.replace('_', " ")
                )?,
            },
        }
    }
    Ok(code)
}

/// Why `peer` refused our request for good, from the daemon's recent events: its
/// `request_refused` event at or after `since_ms`. The node withdraws the request
/// before it records the refusal, so the record is given a moment to follow.
fn refused_for_good_since(ctx: &Context, peer: &str, since_ms: u64) -> Option<String> {
    for _ in 0..5 {
        let found = recent_events(ctx)
            .ok()?
            .into_iter()
            .rev()
            .find(|e| e.node_id == peer && e.kind == "request_refused" && e.at_ms >= since_ms);
        if let Some(event) = found {
            return event.detail;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// List requests waiting for an answer: incoming (yours to approve) and outgoing.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith pending                    who asks, from where, and why
  kith pending --json             for scripts: node_id, justification, received_at_ms, address

Then: kith approve <node> | kith reject <node> | kith dismiss <node> | kith ignore <node>")]
pub struct PendingArgs {}

pub fn pending(ctx: &Context, _args: PendingArgs) -> anyhow::Result<u8> {
    let pending: Vec<PendingView> = call(ctx, Request::Pending)?;
    if ctx.json {
        print_json(&pending)?;
        return Ok(exit::OK);
    }
    if pending.is_empty() {
        outln!("no pending requests")?;
        return Ok(exit::OK);
    }
    let mut t = table(&["direction", "node", "when", "address", "justification"]);
    for p in &pending {
        let when = if p.direction == "outgoing" {
            "sent"
        } else {
            "received"
        };
        t.add_row(vec![
            p.direction.clone(),
            p.short_id.clone(),
            format!("{when} {}", ago(p.received_at_ms)),
            p.address.clone().unwrap_or_else(|| "-".into()),
            escape_for_display(&p.justification),
        ]);
    }
    outln!("{t}")?;
    // The full id, not the table's short one: granting trust needs 13+ characters.
    let incoming: Vec<&PendingView> = pending
        .iter()
        .filter(|p| p.direction == "incoming")
        .collect();
    if !incoming.is_empty() {
        outln!("approve with (or refuse with `kith reject <id>`):")?;
        for p in incoming {
            outln!("  kith approve {}", p.node_id)?;
        }
    }
    Ok(exit::OK)
}

/// List known peers and the trust state of each.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith peers
  kith peers --json | jq -r '.data[] | select(.state==\"trusted\") | .node_id'")]
pub struct PeersArgs {}

pub fn peers(ctx: &Context, _args: PeersArgs) -> anyhow::Result<u8> {
    let peers: Vec<PeerView> = call(ctx, Request::Peers)?;
    if ctx.json {
        print_json(&peers)?;
        return Ok(exit::OK);
    }
    if peers.is_empty() {
        outln!(
            "no peers yet: share `kith ticket`, or ask another node with `kith request <TICKET>`"
        )?;
        return Ok(exit::OK);
    }
    // Reason and expiry only when some peer has one, so the usual table stays narrow.
    let reasons = peers
        .iter()
        .any(|p| p.reason.as_deref().is_some_and(|r| !r.is_empty()));
    let expiries = peers.iter().any(|p| p.expires_at_ms.is_some());
    let mut header = vec!["node", "name", "state", "since", "address", "reached"];
    if expiries {
        header.push("expires");
    }
    if reasons {
        header.push("reason");
    }
    let mut t = table(&header);
    for p in &peers {
        let mut row = vec![
            p.short_id.clone(),
            p.name
                .as_deref()
                .map(escape_for_display)
                .unwrap_or_else(|| "-".into()),
            p.state.replace('_', " "),
            ago(p.since_ms),
            p.address.clone().unwrap_or_else(|| {
                if p.relay.is_some() {
                    "via relay".into()
                } else {
                    "-".into()
                }
            }),
            p.path.clone().unwrap_or_else(|| "-".into()),
        ];
        if expiries {
            row.push(p.expires_at_ms.map(until).unwrap_or_else(|| "-".into()));
        }
        if reasons {
            row.push(
                p.reason
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .map(escape_for_display)
                    .unwrap_or_else(|| "-".into()),
            );
        }
        t.add_row(row);
    }
    outln!("{t}")?;
    Ok(exit::OK)
}

/// Approve a pending request: the peer becomes trusted and is told so.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith approve 4hrqrear5ntvq                by a unique id prefix (13+ characters)
  kith approve 4hrqrear5ntvq --name laptop --note \"alice's laptop\"
  kith approve laptop --expires 30d         trust ends in 30 days, then fails closed

PEER is a node id, a unique prefix of one (13+ characters: a shorter one can be matched
by a key made for the purpose), or a peer's name.")]
pub struct ApproveArgs {
    /// Node id, unique id prefix (13+ characters), or name.
    peer: String,
    /// A name for the peer, usable wherever an id is.
    #[arg(long)]
    name: Option<String>,
    /// A note for your own records.
    #[arg(long)]
    note: Option<String>,
    /// Trust expires after this long (e.g. 30d, 12h, 90m); then it fails closed.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    expires: Option<Duration>,
}

/// Reject a pending request. The peer is told, and may ask again later.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith reject 4hrqrear --reason \"unknown machine\"

To drop a node's requests for good without telling it, use `kith ignore` instead.
PEER is a node id, a unique prefix of one (8+ characters), or a peer's name.")]
pub struct RejectArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
    /// Why; sent to the peer.
    #[arg(long, default_value = "")]
    reason: String,
}

/// Revoke trust in a peer. It is told, and its connections are closed at once.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith revoke laptop --reason \"laptop stolen\"

PEER is a node id, a unique prefix of one (8+ characters), or a peer's name.")]
pub struct RevokeArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
    /// Why; sent to the peer.
    #[arg(long, default_value = "")]
    reason: String,
}

/// What became of the envelope a command sent, in one clause. The detail is
/// escaped: it can quote the peer or a relay (close reasons, error chains).
fn how_it_went(sent: &SentView) -> String {
    let detail = escape_for_display(&sent.detail);
    let via = if sent.path.as_deref() == Some("relayed") {
        " through its relay"
    } else {
        ""
    };
    // What the node really does (node/src/node.rs run_resender): the outbox is on
    // disk, so resends go on across restarts, with backoff up to 5 minutes, until
    // the peer acknowledges or 7 days pass.
    const RESENT: &str = "this node resends it (every few minutes at most, also after a restart) \
                          until the peer answers, for up to 7 days";
    if sent.refused {
        format!("the peer refused it{via} ({detail})")
    } else if sent.delivered {
        format!("the peer was told{via} ({detail})")
    } else if sent.queued {
        format!("queued: {detail}; a relay keeps it only minutes, so {RESENT}")
    } else {
        format!("the peer could not be told yet ({detail}); {RESENT}")
    }
}

fn print_sent(ctx: &Context, verb: &str, sent: &SentView) -> anyhow::Result<u8> {
    if ctx.json {
        print_json(sent)?;
    } else {
        outln!("{verb} {}; {}", sent.node_id, how_it_went(sent))?;
    }
    Ok(exit::OK)
}

pub fn approve(ctx: &Context, args: ApproveArgs) -> anyhow::Result<u8> {
    let sent: SentView = call(
        ctx,
        Request::Approve {
            peer: args.peer,
            name: args.name,
            note: args.note,
            expires_in_ms: args.expires.map(|d| d.as_millis() as u64),
        },
    )?;
    print_sent(ctx, "approved", &sent)
}

pub fn reject(ctx: &Context, args: RejectArgs) -> anyhow::Result<u8> {
    let sent: SentView = call(
        ctx,
        Request::Reject {
            peer: args.peer,
            reason: args.reason,
        },
    )?;
    print_sent(ctx, "rejected", &sent)
}

pub fn revoke(ctx: &Context, args: RevokeArgs) -> anyhow::Result<u8> {
    let sent: SentView = call(
        ctx,
        Request::Revoke {
            peer: args.peer,
            reason: args.reason,
        },
    )?;
    print_sent(ctx, "revoked", &sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `1234567` as `1,234,567`.
    fn grouped(n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn run_help_states_the_bounds_this_build_applies() {
        use clap::Args as _;
        let help = RunArgs::augment_args(clap::Command::new("run"))
            .render_long_help()
            .to_string();
        let config = kith_protocol::machine::Config::default();
        let days = config.declined_ttl_ms / (24 * 3600 * 1000);
        for stated in [
            format!(
                "newest {} entries",
                grouped(crate::store::MAX_AUDIT_ENTRIES)
            ),
            format!("{days} days"),
            format!("at most {} are kept", grouped(config.max_declined as u64)),
        ] {
            assert!(help.contains(&stated), "{stated:?} not in:\n{help}");
        }
    }
}
