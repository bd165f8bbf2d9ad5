//! Operator commands beyond the basic handshake: lists, names, events, ping, completions.

use std::io::Write;

use anyhow::{Context as _, bail};
use clap::Args;
use kith_protocol::validate::escape_for_display;

use super::common::{ago, call, table};
use super::output::print_json;
use super::{Context, exit};
use crate::control::{self, EventView, ListedView, PingView, Request, Response};

/// Drop an incoming request without answering it (the peer is not told).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith dismiss 4hrqrear       the request disappears from `kith pending`; the peer may ask again

PEER is a node id, a unique prefix of one (8+ characters), or a peer's name.")]
pub struct DismissArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
}

/// Forget a peer entirely: its record, state and name (nothing is sent to it).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith forget old-laptop      after its machine was reinstalled with a new key

Use it after a peer's key changed for good, before asking the new key again.")]
pub struct ForgetArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
}

/// Silently drop this node's future requests (the deny list). Undo with `kith unignore`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith ignore 4hrqrear5ntvqkjacj6ckxr4sor6umyu2hi47lbh4pb7775kfbia

Unlike `kith reject` (a one-off answer the peer sees), an ignored node is never told:
its requests are acknowledged as pending and dropped. PEER may be a full id of a node
this one has never heard of.")]
pub struct IgnoreArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
}

/// Take a node off the deny list.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  kith unignore 4hrqrear       its next request shows up in `kith pending` again"
)]
pub struct UnignoreArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
}

/// List ignored nodes (the deny list).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  kith ignored\n  kith ignored --json")]
pub struct IgnoredArgs {}

/// Pre-approve a node: its requests are accepted without asking.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith allow 4hrqrear5ntvqkjacj6ckxr4sor6umyu2hi47lbh4pb7775kfbia --name build-01

PEER may be a full id of a node this one has never heard of. As for `approve`, an id
prefix must have 13+ characters: shorter ones can be matched by a key made for the purpose.")]
pub struct AllowArgs {
    /// Node id, unique id prefix (13+ characters), or name.
    peer: String,
    /// Name the peer gets when it is trusted.
    #[arg(long)]
    name: Option<String>,
}

/// Take a node off the allowlist (trust it already has is kept; revoke that separately).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  kith disallow build-01      future requests wait for an operator again"
)]
pub struct DisallowArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
}

/// List pre-approved nodes (the allowlist).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  kith allowed\n  kith allowed --json")]
pub struct AllowedArgs {}

/// Give a peer a name (usable wherever an id is) and a note.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith rename 4hrqrear laptop --note \"alice's, 2026\"
  kith rename laptop old-laptop

PEER is a node id, a unique prefix of one (8+ characters), or a peer's name.")]
pub struct RenameArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
    /// The new name; omit to leave it as it is, "" to remove it.
    name: Option<String>,
    /// A note for your own records.
    #[arg(long)]
    note: Option<String>,
}

/// Measure the round trip to a trusted peer over its connection.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith ping laptop
  kith ping laptop -c 5

Only trusted peers answer. PEER is a node id, a unique prefix of one (8+ characters), or a name.")]
pub struct PingArgs {
    /// Node id, unique id prefix (8+ characters), or name.
    peer: String,
    /// How many pings (1 or more).
    #[arg(long, short = 'c', default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
}

/// Print trust events: requests, approvals, rejections, revocations, expiries.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith events                        recent events since the daemon started
  kith events --follow               keep printing new events as they happen
  kith events --follow --json        one JSON object per line, for scripts

For a command per incoming request, see `kith run --on-request`.")]
pub struct EventsArgs {
    /// Keep running and print new events as they happen.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// Print a shell completion script.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith completions bash > ~/.local/share/bash-completion/completions/kith
  kith completions zsh  > ~/.zfunc/_kith
  kith completions fish > ~/.config/fish/completions/kith.fish")]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}

fn done(ctx: &Context, what: &str, data: &serde_json::Value) -> anyhow::Result<u8> {
    if ctx.json {
        print_json(data)?;
    } else {
        outln!("{what} {}", data["node_id"].as_str().unwrap_or_default())?;
    }
    Ok(exit::OK)
}

pub fn dismiss(ctx: &Context, args: DismissArgs) -> anyhow::Result<u8> {
    let data = call(ctx, Request::Dismiss { peer: args.peer })?;
    done(ctx, "dismissed the request of", &data)
}

pub fn forget(ctx: &Context, args: ForgetArgs) -> anyhow::Result<u8> {
    let data = call(ctx, Request::Forget { peer: args.peer })?;
    done(ctx, "forgot", &data)
}

pub fn ignore(ctx: &Context, args: IgnoreArgs) -> anyhow::Result<u8> {
    let data = call(ctx, Request::Ignore { peer: args.peer })?;
    done(ctx, "ignoring requests from", &data)
}

pub fn unignore(ctx: &Context, args: UnignoreArgs) -> anyhow::Result<u8> {
    let data = call(ctx, Request::Unignore { peer: args.peer })?;
    done(ctx, "no longer ignoring", &data)
}

pub fn allow(ctx: &Context, args: AllowArgs) -> anyhow::Result<u8> {
    let data = call(
        ctx,
        Request::Allow {
            peer: args.peer,
            name: args.name,
        },
    )?;
    done(ctx, "requests will be accepted without asking from", &data)
}

pub fn disallow(ctx: &Context, args: DisallowArgs) -> anyhow::Result<u8> {
    let data = call(ctx, Request::Disallow { peer: args.peer })?;
    done(ctx, "removed from the allowlist:", &data)
}

pub fn rename(ctx: &Context, args: RenameArgs) -> anyhow::Result<u8> {
    let data: serde_json::Value = call(
        ctx,
        Request::Rename {
            peer: args.peer,
            name: args.name,
            note: args.note,
        },
    )?;
    if data["changed"] == false {
        if ctx.json {
            print_json(&data)?;
        } else {
            outln!(
                "nothing changed: {} already has that name and note",
                data["node_id"].as_str().unwrap_or_default()
            )?;
        }
        return Ok(exit::OK);
    }
    done(ctx, "renamed", &data)
}

/// Prints the allow or deny list. The deny list keeps no names or times, so its
/// table has no columns that would only ever show "-".
fn print_listed(
    ctx: &Context,
    list: Vec<ListedView>,
    empty: &str,
    named: bool,
) -> anyhow::Result<u8> {
    if ctx.json {
        print_json(&list)?;
    } else if list.is_empty() {
        outln!("{empty}")?;
    } else if named {
        let mut t = table(&["node", "name", "added", "full id"]);
        for entry in &list {
            t.add_row(vec![
                entry.short_id.clone(),
                entry
                    .name
                    .as_deref()
                    .map(escape_for_display)
                    .unwrap_or_else(|| "-".into()),
                entry.added_ms.map(ago).unwrap_or_else(|| "-".into()),
                entry.node_id.clone(),
            ]);
        }
        outln!("{t}")?;
    } else {
        let mut t = table(&["node", "full id"]);
        for entry in &list {
            t.add_row(vec![entry.short_id.clone(), entry.node_id.clone()]);
        }
        outln!("{t}")?;
    }
    Ok(exit::OK)
}

pub fn ignored(ctx: &Context, _args: IgnoredArgs) -> anyhow::Result<u8> {
    let list: Vec<ListedView> = call(ctx, Request::Ignored)?;
    print_listed(ctx, list, "no ignored nodes", false)
}

pub fn allowed(ctx: &Context, _args: AllowedArgs) -> anyhow::Result<u8> {
    let list: Vec<ListedView> = call(ctx, Request::Allowed)?;
    print_listed(ctx, list, "the allowlist is empty", true)
}

pub fn ping(ctx: &Context, args: PingArgs) -> anyhow::Result<u8> {
    let mut results = Vec::new();
    for i in 0..args.count {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let pong: PingView = call(
            ctx,
            Request::Ping {
                peer: args.peer.clone(),
            },
        )?;
        if !ctx.json {
            let who = match &pong.name {
                Some(name) => format!("{} ({})", escape_for_display(name), &pong.node_id[..10]),
                None => pong.node_id[..10].to_string(),
            };
            let path = match (&pong.path, &pong.relay) {
                (_, Some(relay)) => format!(
                    " (relayed by relay {}, as it says)",
                    relay.chars().take(10).collect::<String>()
                ),
                (Some(path), None) => format!(" ({path})"),
                (None, None) => String::new(),
            };
            outln!("{who}: {:.2} ms{path}", pong.rtt_ms)?;
        }
        results.push(pong);
    }
    if ctx.json {
        print_json(&results)?;
    }
    Ok(exit::OK)
}

fn print_event(ctx: &Context, event: &EventView) -> anyhow::Result<()> {
    if ctx.json {
        // One line per event; each in the versioned envelope, like every other command.
        print_json(event)?;
    } else {
        let detail = event
            .detail
            .as_deref()
            .map(|d| format!(" {}", escape_for_display(d)))
            .unwrap_or_default();
        let address = event
            .address
            .as_deref()
            .map(|a| format!(" from {a}"))
            .unwrap_or_default();
        outln!(
            "{} {:<16} {}{address}{detail}",
            super::common::clock(event.at_ms),
            event.kind,
            event.short_id
        )?;
    }
    Ok(())
}

pub fn events(ctx: &Context, args: EventsArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let request = Request::Events {
        follow: args.follow,
    };
    runtime.block_on(async {
        let opened = control::open(
            &ctx.data_dir.control_socket(),
            ctx.data_dir.path(),
            &request,
        )
        .await;
        let mut lines = match opened {
            Ok(lines) => lines,
            Err(e) => {
                // No daemon: `kith events` (not --follow) shows the store's audit log.
                return match super::common::offline_answer(ctx, &e, &request, true) {
                    Some(Response::Ok { data }) => {
                        let events: Vec<EventView> = serde_json::from_value(data)?;
                        for event in &events {
                            print_event(ctx, event)?;
                        }
                        Ok(())
                    }
                    Some(Response::Error { message }) => bail!("{message}"),
                    None => Err(super::common::unreachable_daemon(ctx, e)),
                };
            }
        };
        while let Some(event) = super::common::next_event(&mut lines).await? {
            print_event(ctx, &event)?;
        }
        if args.follow {
            // A follower is never told "that was all": the end of the stream means the
            // daemon stopped or crashed, and a script watching must hear of it.
            bail!(
                "the daemon went away (it stopped or crashed): no more events will come; \
                 check `kith status`, then start it with `kith run`"
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(exit::OK)
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<u8> {
    use clap::CommandFactory;
    let mut cmd = super::Cli::command();
    // Into a buffer first: clap_complete panics on a write error, and a closed pipe is not one.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "kith", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(exit::OK)
}
