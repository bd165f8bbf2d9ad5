//! The `kith` command line: argument parsing, dispatch, and turning errors into one
//! human sentence plus its causes. It must never print a secret except where the
//! operator asked for it (`init` shows a new recovery phrase once, `mnemonic` on request).

mod identity;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::datadir::DataDir;

/// Exit codes the CLI promises to scripts.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
}

const ABOUT: &str = "kith: explicit, signed, revocable trust between machines, over QUIC.";

const AFTER_HELP: &str = "\
Getting started:
  kith init                    create this machine's identity (asks for a passphrase)
  kith id                      print this node's id

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
}

/// Context every command gets.
pub struct Context {
    pub data_dir: DataDir,
    pub json: bool,
}

/// Runs the CLI with the process's arguments; the `kith` binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let data_dir = match DataDir::resolve(cli.data_dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return report(&anyhow::Error::new(e)),
    };
    let ctx = Context { data_dir, json: cli.json };
    let result = match cli.command {
        Command::Init(args) => identity::init(&ctx, args),
        Command::Id(args) => identity::id(&ctx, args),
        Command::Mnemonic(args) => identity::mnemonic(&ctx, args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => report(&e),
    }
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
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints `error: <sentence>` and each cause on its own line; exit code 1.
fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(exit::FAILURE)
}
