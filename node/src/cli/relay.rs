//! `kith relay`: run a relay for nodes that cannot be dialled, and how `kith status`
//! shows one.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use kith_keys::NodeId;
use kith_protocol::machine::DEFAULT_SKEW_MS;
use kith_protocol::relay::RelayConfig;

use super::common::{ago, parse_duration};
use super::output::print_json;
use super::{Context, exit};
use crate::control::RelayServerView;
use crate::harden;
use crate::relay::{RelayDaemonInfo, RelayOptions};
use crate::unlock;

/// Run a relay: nodes behind NAT keep a connection to it, and others reach them through it.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith init && kith relay                     a public relay on UDP 7445
  kith relay --allow /etc/kith/members        only these nodes may make it their home relay
  kith relay --listen 127.0.0.1:0             loopback, any free port (tests)

The relay has its own identity: initialise its data dir with `kith init` first. It prints
its ticket on stdout (and `kith ticket` prints it again); nodes use it with
`kith run --relay <TICKET>`. It never sees inside trust decisions: every message it
carries is signed end to end, and its destination refuses anything altered or replayed.")]
pub struct RelayArgs {
    /// UDP address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7445")]
    listen: SocketAddr,

    /// Address to put in the ticket instead of the local interfaces' (repeatable).
    #[arg(long, value_name = "ADDR")]
    advertise: Vec<SocketAddr>,

    #[command(flatten)]
    passphrase: super::PassphraseArgs,

    /// Skip process hardening (no core dumps, not ptrace-able) to debug the relay.
    #[arg(long)]
    no_harden: bool,

    /// Only the node ids in this file (one per line; `#` comments) may register here.
    /// Other nodes may still connect to forward envelopes to registered ones.
    #[arg(long, value_name = "FILE")]
    allow: Option<PathBuf>,

    /// Most nodes registered at once (nodes not on the allow list, which may only
    /// forward, have a pool of their own).
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().max_clients)]
    max_clients: usize,

    /// Most connections from one address (an IPv6 /64) at once; more are refused
    /// before the handshake.
    #[arg(long, value_name = "N", default_value_t = crate::relay::MAX_PER_ADDRESS)]
    max_per_address: usize,

    /// Most envelopes queued for one offline node.
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().queue_per_destination)]
    queue_per_destination: usize,

    /// Most envelopes queued in all.
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().queue_total)]
    queue_total: usize,

    /// Most envelopes one sender may have queued, for all nodes together.
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().queue_per_sender)]
    queue_per_sender: usize,

    /// How long a queued envelope waits for its node (below 5 minutes: older ones would be refused).
    #[arg(long, value_parser = parse_duration, default_value = "4m", value_name = "DURATION")]
    queue_ttl: Duration,

    /// Envelopes one sender may forward per second, sustained.
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().rate_per_sec)]
    rate: u32,

    /// Envelopes one sender may forward in a burst (0: no rate limit).
    #[arg(long, value_name = "N", default_value_t = RelayConfig::default().rate_burst)]
    burst: u32,

    /// MiB per second of application data (relayed QUIC packets) one sender may send
    /// through the relay, sustained.
    #[arg(long, value_name = "MIB", default_value_t = RelayConfig::default().packet_bytes_per_sec >> 20)]
    data_rate: u64,

    /// MiB of application data one sender may send in a burst (0: no data quota).
    #[arg(long, value_name = "MIB", default_value_t = RelayConfig::default().packet_burst_bytes >> 20)]
    data_burst: u64,

    /// Serve Prometheus metrics over HTTP on ADDR (127.0.0.1:9465 when given without
    /// one). Off by default.
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = crate::metrics::DEFAULT_RELAY_ADDR)]
    metrics: Option<SocketAddr>,
}

/// Reads an allow file: one node id per line; blank lines and `#` comments ignored.
pub fn read_allow_file(path: &Path) -> anyhow::Result<BTreeSet<NodeId>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the allow file {}", path.display()))?;
    let mut ids = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let id: NodeId = line
            .parse()
            .with_context(|| format!("{}:{}: not a node id: {line:?}", path.display(), n + 1))?;
        ids.insert(id);
    }
    Ok(ids)
}

pub fn run(ctx: &Context, args: RelayArgs) -> anyhow::Result<u8> {
    if args.queue_ttl.as_millis() as u64 >= DEFAULT_SKEW_MS {
        bail!(
            "--queue-ttl must stay below 5 minutes: nodes refuse envelopes older than their \
             clock-skew window"
        );
    }
    let allow = args.allow.as_deref().map(read_allow_file).transpose()?;
    // As for `kith run`: harden before the passphrase and phrase pass through memory.
    let harden_report = (!args.no_harden).then(|| {
        kith_keys::memory::protect_secrets();
        harden::harden_process()
    });
    let unlocked = unlock::unlock(&ctx.data_dir, args.passphrase.file())?;
    unlocked.print_warnings();
    if let Err(e) = &unlocked.custody {
        bail!("refusing to start: {e}");
    }
    let insecure = unlocked.insecure;
    // As for `kith run`: only the key lives on; the other secrets are wiped here.
    let key = unlocked.into_key();
    if insecure {
        eprintln!(
            "warning: the keystore in {} is not encrypted (--insecure-no-passphrase); \
             anyone who can read it can become this relay",
            ctx.data_dir.path().display()
        );
    }
    let hardened = match harden_report {
        Some(report) => {
            for warning in report.warnings() {
                eprintln!("warning: {warning}");
            }
            report.warnings().is_empty()
        }
        None => false,
    };
    let config = RelayConfig {
        max_clients: args.max_clients,
        queue_per_destination: args.queue_per_destination,
        queue_total: args.queue_total,
        queue_per_sender: args.queue_per_sender,
        queue_ttl_ms: args.queue_ttl.as_millis() as u64,
        rate_burst: args.burst,
        rate_per_sec: args.rate,
        packet_bytes_per_sec: args.data_rate.saturating_mul(1 << 20),
        packet_burst_bytes: args.data_burst.saturating_mul(1 << 20),
        allow,
        ..RelayConfig::default()
    };
    let options = RelayOptions {
        max_per_address: args.max_per_address,
        listen: args.listen,
        advertise: args.advertise,
        config,
    };
    let info = RelayDaemonInfo {
        keystore_encrypted: !insecure,
        hardened,
        metrics: args.metrics,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(crate::relay::run_daemon(
        ctx.data_dir.clone(),
        key,
        options,
        info,
        super::common::shutdown_signal(),
    ))?;
    Ok(exit::OK)
}

/// `kith status` on a relay's data dir.
pub fn print_status(ctx: &Context, s: &RelayServerView) -> anyhow::Result<u8> {
    if ctx.json {
        print_json(s)?;
        return Ok(exit::OK);
    }
    outln!("relay     {}", s.node_id)?;
    outln!("listening {}", s.listen)?;
    outln!("data dir  {}", s.data_dir)?;
    outln!(
        "clients   {} connected ({} registered; at most {}){}",
        s.clients,
        s.registered,
        s.max_clients,
        match s.allow {
            Some(n) => format!(", {n} node ids on the allow list"),
            None => String::new(),
        }
    )?;
    outln!(
        "forwarded {} ({} pushed at once, {} queued, {} of them delivered later, {} expired, \
         {} to unknown nodes, {} refused)",
        s.forwarded,
        s.delivered,
        s.queued_total,
        s.delivered_from_queue,
        s.expired,
        s.unknown_destination,
        s.refused
    )?;
    outln!("queued    {} now", s.queued)?;
    outln!(
        "packets   {} relayed ({} bytes of application connections), {} refused, {} dropped",
        s.packets_relayed,
        s.packet_bytes_relayed,
        s.packets_refused,
        s.packets_dropped
    )?;
    if s.conflicts > 0 {
        outln!("conflicts {} identity conflicts reported", s.conflicts)?;
    }
    outln!(
        "keystore  {}",
        if s.keystore_encrypted {
            "encrypted"
        } else {
            "NOT encrypted"
        }
    )?;
    outln!("up since  {}", ago(s.started_at_ms))?;
    outln!("ticket    {}", s.ticket)?;
    Ok(exit::OK)
}
