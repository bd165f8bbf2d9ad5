//! The `kith` command line: argument parsing, dispatch, and turning errors into one
//! human sentence plus its causes. It must never print a secret except where the
//! operator asked for it (`init` shows a new recovery phrase once, `mnemonic` on request).

/// `println!` that hands back the write error (see `output::write_line`): use it
/// with `?` so a closed pipe ends the command quietly instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}

mod common;
mod daemon;
mod identity;
mod log;
mod operator;
mod output;
mod relay;
mod secret_io;
mod service;
mod status;
mod ticket;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kith_protocol::validate::escape_for_display;

use crate::datadir::DataDir;

/// Exit codes the CLI promises to scripts.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    /// `kith request --wait`: the other side rejected.
    pub const REJECTED: u8 = 3;
    /// `kith request --wait --timeout`: no answer in time; the request stays pending.
    pub const TIMED_OUT: u8 = 4;
}

const ABOUT: &str = "kith: explicit, signed, revocable trust between machines, over QUIC.";

const AFTER_HELP: &str = "\
Getting started:
  kith init                    create this machine's identity (asks for a passphrase)
  kith run                     run the node (UDP 7444)
  kith ticket                  print the string another operator needs to reach you
  kith request <TICKET> -j WHY ask another node for trust
  kith pending                 requests waiting for your answer
  kith approve <PEER>          trust a peer that asked

Reach a service on a trusted peer:
  kith expose ssh --to 127.0.0.1:22          (on the serving node)
  ssh -o ProxyCommand='kith connect %h ssh' HOST   (HOST: the peer's name or id)

Behind NAT: run a relay somewhere public (`kith relay`), then `kith run --relay <RELAY-TICKET> --private`.

The data directory is --data-dir, else $KITH_DATA_DIR, else $XDG_DATA_HOME/kith, else ~/.local/share/kith.
Unlocking reads --passphrase-file, else $KITH_PASSPHRASE_FILE, else asks on the terminal.";

#[derive(Debug, Parser)]
#[command(name = "kith", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Data directory of this node (keystore, database, control socket).
    #[arg(long, global = true, env = "KITH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Print machine-readable JSON: {"version":1,"data":...}.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Init(identity::InitArgs),
    Id(identity::IdArgs),
    Mnemonic(identity::MnemonicArgs),
    Fork(identity::ForkArgs),
    Adopt(identity::AdoptArgs),
    Run(daemon::RunArgs),
    Relay(relay::RelayArgs),
    Status(status::StatusArgs),
    Ticket(ticket::TicketArgs),
    Request(daemon::RequestArgs),
    Pending(daemon::PendingArgs),
    Approve(daemon::ApproveArgs),
    Reject(daemon::RejectArgs),
    Revoke(daemon::RevokeArgs),
    Peers(daemon::PeersArgs),
    Dismiss(operator::DismissArgs),
    Forget(operator::ForgetArgs),
    Ignore(operator::IgnoreArgs),
    Unignore(operator::UnignoreArgs),
    Ignored(operator::IgnoredArgs),
    Allow(operator::AllowArgs),
    Disallow(operator::DisallowArgs),
    Allowed(operator::AllowedArgs),
    Rename(operator::RenameArgs),
    Ping(operator::PingArgs),
    Events(operator::EventsArgs),
    Expose(service::ExposeArgs),
    Unexpose(service::UnexposeArgs),
    Connect(service::ConnectArgs),
    Forward(service::ForwardArgs),
    Completions(operator::CompletionsArgs),
    Demo(DemoArgs),
}

/// Run a small kith network on loopback and narrate what each node sees.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  kith demo

Nothing is written to disk; every node gets a throwaway identity and an in-memory store.")]
pub struct DemoArgs {}

/// Where the keystore passphrase comes from, for every command that needs it.
#[derive(Debug, clap::Args)]
pub struct PassphraseArgs {
    /// Read the keystore passphrase from this file instead of asking.
    #[arg(long, env = "KITH_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    pub fn file(&self) -> Option<&std::path::Path> {
        self.passphrase_file.as_deref()
    }
}

/// A mistake in how a command was called that parsing alone cannot see: reported
/// like any error, with clap's exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Context every command gets.
pub struct Context {
    pub data_dir: DataDir,
    pub json: bool,
}

/// Runs the CLI with the process's arguments; the `kith` binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    init_logging(cli.verbose);
    let json = cli.json;
    let data_dir = match DataDir::resolve(cli.data_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return report(&anyhow::Error::new(e), json),
    };
    let ctx = Context {
        data_dir,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Init(args) => identity::init(&ctx, args),
        Command::Id(args) => identity::id(&ctx, args),
        Command::Mnemonic(args) => identity::mnemonic(&ctx, args),
        Command::Fork(args) => identity::fork(&ctx, args),
        Command::Adopt(args) => identity::adopt(&ctx, args),
        Command::Run(args) => daemon::run(&ctx, args),
        Command::Relay(args) => relay::run(&ctx, args),
        Command::Status(args) => status::status(&ctx, args),
        Command::Ticket(args) => ticket::ticket(&ctx, args),
        Command::Request(args) => daemon::request(&ctx, args),
        Command::Pending(args) => daemon::pending(&ctx, args),
        Command::Approve(args) => daemon::approve(&ctx, args),
        Command::Reject(args) => daemon::reject(&ctx, args),
        Command::Revoke(args) => daemon::revoke(&ctx, args),
        Command::Peers(args) => daemon::peers(&ctx, args),
        Command::Dismiss(args) => operator::dismiss(&ctx, args),
        Command::Forget(args) => operator::forget(&ctx, args),
        Command::Ignore(args) => operator::ignore(&ctx, args),
        Command::Unignore(args) => operator::unignore(&ctx, args),
        Command::Ignored(args) => operator::ignored(&ctx, args),
        Command::Allow(args) => operator::allow(&ctx, args),
        Command::Disallow(args) => operator::disallow(&ctx, args),
        Command::Allowed(args) => operator::allowed(&ctx, args),
        Command::Rename(args) => operator::rename(&ctx, args),
        Command::Ping(args) => operator::ping(&ctx, args),
        Command::Events(args) => operator::events(&ctx, args),
        Command::Expose(args) => service::expose(&ctx, args),
        Command::Unexpose(args) => service::unexpose(&ctx, args),
        Command::Connect(args) => service::connect(&ctx, args),
        Command::Forward(args) => service::forward(&ctx, args),
        Command::Completions(args) => operator::completions(args),
        Command::Demo(_) => demo(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // Whoever read our output went away (`kith peers | head -1`): nothing is
        // wrong, and there is nobody to tell. End quietly, as `head`'s writer should.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => report(&e, json),
    }
}

fn demo() -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::demo::run())?;
    Ok(exit::OK)
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info,kith_node=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log::OneLinePerEvent(std::io::stderr))
        .with_ansi(colour_on_stderr())
        .try_init();
}

/// Colour only for a person at a terminal: never into a file or the journal, and
/// not when `NO_COLOR` is set to anything (https://no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether `--json` is among the arguments, for errors found before they parse.
fn json_requested() -> bool {
    std::env::args_os().any(|a| a == "--json")
}

/// A command line clap refused (or `--help`/`--version`, which clap prints).
fn usage(e: clap::Error) -> ExitCode {
    if !e.use_stderr() || !json_requested() {
        e.exit();
    }
    let text = e.to_string();
    let message = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    print_json_error(&message, &[], exit::USAGE);
    ExitCode::from(exit::USAGE)
}

/// `{"version":1,"error":{"message":...,"causes":[...],"exit_code":N}}` on stderr
/// (JSON escapes control characters, so network text cannot reach a terminal raw).
fn print_json_error(message: &str, causes: &[String], exit_code: u8) {
    let value = serde_json::json!({
        "version": output::JSON_VERSION,
        "error": { "message": message, "causes": causes, "exit_code": exit_code },
    });
    eprintln!("{value}");
}

/// Prints `error: <sentence>` and each cause on its own line (with `--json`, the
/// same as one JSON object); exit code 1, or 2 for a usage error.
fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let code = if err.downcast_ref::<UsageError>().is_some() {
        exit::USAGE
    } else {
        exit::FAILURE
    };
    if json {
        let mut chain = err.chain().map(|cause| cause.to_string());
        let first = chain.next().unwrap_or_default();
        print_json_error(&first, &new_causes(&first, chain), code);
    } else {
        for line in report_lines(err) {
            eprintln!("{line}");
        }
    }
    ExitCode::from(code)
}

/// The lines [`report`] prints: each cause once. Every message is escaped: errors
/// carry text from the network (a peer's or a relay's close reason, a daemon's error
/// message) and must never move the cursor, recolour or retitle the operator's terminal.
fn report_lines(err: &anyhow::Error) -> Vec<String> {
    let mut chain = err.chain().map(|cause| cause.to_string());
    let first = chain.next().unwrap_or_default();
    let mut lines = vec![format!("error: {}", escape_for_display(&first))];
    for cause in new_causes(&first, chain) {
        lines.push(format!("  caused by: {}", escape_for_display(&cause)));
    }
    lines
}

/// The causes not already said: many error types end their message with their
/// source's (`could not bind X: address in use`), which the chain then repeats.
fn new_causes(first: &str, causes: impl Iterator<Item = String>) -> Vec<String> {
    let mut said = first.to_string();
    let mut out = Vec::new();
    for cause in causes {
        if cause.is_empty() || said.contains(&cause) {
            continue;
        }
        said.push('\n');
        said.push_str(&cause);
        out.push(cause);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_errors_and_causes_carry_no_control_characters() {
        let err = anyhow::anyhow!("closed by peer: \x1b]52;c;ZXZpbA==\x07 \u{9b}31m")
            .context("cannot reach 4hrq: \x1b[32mrequest accepted\x1b[0m\r\n");
        let lines = report_lines(&err);
        assert_eq!(lines.len(), 2);
        for line in &lines {
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        assert!(
            lines[0].contains("\\u{1b}[32mrequest accepted"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("\\u{1b}]52;c;ZXZpbA==\\u{7}"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let causes = ["address in use".to_string(), "a new cause".to_string()];
        assert_eq!(
            new_causes("cannot bind 1.2.3.4: address in use", causes.into_iter()),
            vec!["a new cause".to_string()]
        );
    }
}
