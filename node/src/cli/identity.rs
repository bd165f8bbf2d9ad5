//! `kith init`, `kith id`, `kith mnemonic`: creating, showing and backing up a node's identity.

use std::io::{self, IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use kith_keys::keystore::{self, KdfParams, Protection, Secrets};
use kith_keys::mnemonic::Mnemonic;
use serde::Serialize;
use zeroize::Zeroizing;

use super::output::print_json;
use super::{Context, exit};
use crate::unlock::{self, Unlocked};

/// Create this machine's node identity: a new 24-word recovery phrase (or a recovered one),
/// encrypted into the data directory's keystore.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith init                                   new identity; asks for a passphrase twice
  kith init --passphrase-file ~/.kith-pass    passphrase from a file (one line)
  kith init --recover < phrase.txt            restore from a recovery phrase on stdin
  kith init --insecure-no-passphrase          throwaway node for tests (keystore unencrypted)

The new recovery phrase is shown once. Write it down: it is the only way to restore
this node if the keystore or its passphrase is lost.")]
pub struct InitArgs {
    /// Restore from an existing recovery phrase (asked on the terminal, or read from stdin).
    #[arg(long)]
    recover: bool,

    /// Derivation index: m/7444'/0'/INDEX'. Other indices are other nodes from the same phrase.
    #[arg(long, default_value_t = 0, value_name = "N")]
    index: u32,

    /// Read the keystore passphrase from this file instead of asking.
    #[arg(long, env = "KITH_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,

    /// Write the keystore unencrypted (tests and simulations only; the daemon warns on every start).
    #[arg(long, conflicts_with = "passphrase_file")]
    insecure_no_passphrase: bool,

    /// Optional BIP39 passphrase ("25th word") for the recovery phrase, read from this file.
    #[arg(long, value_name = "FILE")]
    bip39_passphrase_file: Option<PathBuf>,
}

/// Print this node's id (unlocks the keystore).
#[derive(Debug, Args)]
#[command(after_help = "\
The id is printed on the first line of stdout, so scripts can use $(kith id | head -1).
Give it to the operator of another node, or share `kith ticket` once the daemon runs.")]
pub struct IdArgs {
    /// Read the keystore passphrase from this file instead of asking.
    #[arg(long, env = "KITH_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// Show the recovery phrase again, for a backup (unlocks the keystore).
#[derive(Debug, Args)]
#[command(after_help = "\
Anyone who sees the phrase can become this node. Run it where nobody is looking,
and never paste it into chat, tickets or shell history.")]
pub struct MnemonicArgs {
    /// Read the keystore passphrase from this file instead of asking.
    #[arg(long, env = "KITH_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Serialize)]
struct IdJson {
    node_id: String,
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    mnemonic: Option<String>,
}

pub fn init(ctx: &Context, args: InitArgs) -> anyhow::Result<u8> {
    let keystore_path = ctx.data_dir.keystore();
    if keystore_path.exists() {
        bail!(
            "a node is already initialised in {}; refusing to overwrite its keystore \
             (use another --data-dir, or move the old one away first)",
            ctx.data_dir.path().display()
        );
    }
    let mnemonic = if args.recover {
        read_recovery_phrase()?
    } else {
        Mnemonic::generate()
    };
    let bip39_passphrase = match &args.bip39_passphrase_file {
        Some(path) => Zeroizing::new(
            unlock::read_passphrase_file(path)
                .context("cannot read the BIP39 passphrase")?
                .expose()
                .to_string(),
        ),
        None => Zeroizing::new(String::new()),
    };
    let passphrase = if args.insecure_no_passphrase {
        None
    } else {
        Some(unlock::new_passphrase(args.passphrase_file.as_deref())?)
    };
    let secrets = Secrets::new(mnemonic, bip39_passphrase, args.index);
    let key = secrets
        .node_key()
        .context("cannot derive the node key at that index")?;
    ctx.data_dir.create()?;
    let protection = match &passphrase {
        Some(p) => Protection::Passphrase(p, KdfParams::DEFAULT),
        None => Protection::Insecure,
    };
    keystore::create(&keystore_path, &secrets, protection)
        .with_context(|| format!("cannot write the keystore {}", keystore_path.display()))?;

    let node_id = key.node_id();
    let show_phrase = !args.recover;
    if ctx.json {
        let phrase = show_phrase.then(|| secrets.mnemonic().phrase());
        print_json(&IdJson {
            node_id: node_id.to_string(),
            index: args.index,
            mnemonic: phrase.as_ref().map(|p| p.to_string()),
        })?;
    } else if show_phrase && io::stdout().is_terminal() {
        print_phrase_for_backup(&secrets.mnemonic().phrase());
        println!("node id: {node_id}");
    } else if show_phrase {
        // Not a terminal: the phrase goes to stdout once, alone on its line, for a script to keep.
        println!("{}", &*secrets.mnemonic().phrase());
        eprintln!("initialised node {node_id} in {}", ctx.data_dir.path().display());
        eprintln!("the recovery phrase was printed once on stdout: store it offline");
    } else {
        println!("{node_id}");
        eprintln!("recovered node {node_id} in {}", ctx.data_dir.path().display());
    }
    if passphrase.is_none() {
        eprintln!("warning: the keystore is NOT encrypted (--insecure-no-passphrase)");
    }
    Ok(exit::OK)
}

fn read_recovery_phrase() -> anyhow::Result<Mnemonic> {
    let phrase = if io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password("Recovery phrase (words separated by spaces): ")
                .context("cannot read the recovery phrase from the terminal")?,
        )
    } else {
        let mut text = Zeroizing::new(String::new());
        io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the recovery phrase from stdin")?;
        text
    };
    Mnemonic::parse(&phrase).context("that recovery phrase is not valid")
}

fn print_phrase_for_backup(phrase: &str) {
    let words: Vec<&str> = phrase.split_whitespace().collect();
    println!("Your recovery phrase ({} words). It is shown only this once.", words.len());
    println!("Write it down and keep it offline: anyone with it can become this node,");
    println!("and without it a lost keystore or passphrase cannot be recovered.\n");
    for row in words.chunks(4).enumerate() {
        let (r, chunk) = row;
        let line: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{:>2}. {:<10}", r * 4 + i + 1, w))
            .collect();
        println!("  {}", line.join(" "));
    }
    println!();
}

fn unlock_and_warn(ctx: &Context, passphrase_file: Option<&std::path::Path>) -> anyhow::Result<Unlocked> {
    let unlocked = unlock::unlock(&ctx.data_dir, passphrase_file)?;
    if unlocked.insecure {
        eprintln!(
            "warning: the keystore in {} is not encrypted; anyone who can read it can become this node",
            ctx.data_dir.path().display()
        );
    }
    Ok(unlocked)
}

pub fn id(ctx: &Context, args: IdArgs) -> anyhow::Result<u8> {
    let unlocked = unlock_and_warn(ctx, args.passphrase_file.as_deref())?;
    let node_id = unlocked.key.node_id();
    let index = unlocked.secrets.index();
    if ctx.json {
        print_json(&IdJson { node_id: node_id.to_string(), index, mnemonic: None })?;
    } else {
        println!("{node_id}");
        println!("index: {index} (m/7444'/0'/{index}')");
    }
    Ok(exit::OK)
}

pub fn mnemonic(ctx: &Context, args: MnemonicArgs) -> anyhow::Result<u8> {
    let unlocked = unlock_and_warn(ctx, args.passphrase_file.as_deref())?;
    let phrase = unlocked.secrets.mnemonic().phrase();
    if ctx.json {
        #[derive(Serialize)]
        struct MnemonicJson<'a> {
            mnemonic: &'a str,
        }
        print_json(&MnemonicJson { mnemonic: &phrase })?;
    } else if io::stdout().is_terminal() {
        print_phrase_for_backup(&phrase);
    } else {
        println!("{}", &*phrase);
    }
    Ok(exit::OK)
}
