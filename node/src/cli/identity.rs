//! `kith init`, `kith id`, `kith mnemonic`: creating, showing and backing up a node's identity.

use std::io::{self, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use kith_keys::keystore::{self, KdfParams, Protection, Secrets};
use kith_keys::mnemonic::Mnemonic;
use serde::Serialize;
use zeroize::Zeroizing;

use super::output::print_json;
use super::{Context, exit, secret_io};
use crate::harden;
use crate::instance::{Here, InstanceError, InstanceRecord, Parent, random_index};
use crate::instance_secret::{InstanceSecret, SecretStore};
use crate::node::now_ms;
use crate::store::Store;
use crate::unlock::{self, Unlocked};
use kith_protocol::machine::{AuditAction, AuditEntry, StoreWrite};

/// Create this machine's node identity: a new 24-word recovery phrase (or a recovered one),
/// encrypted into the data directory's keystore.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith init                                   new identity; asks for a passphrase twice
  kith init --passphrase-file ~/.kith-pass    passphrase from a file (one line)
  kith init --recover < phrase.txt            restore from a recovery phrase on stdin
  kith init --insecure-no-passphrase          throwaway node for tests (keystore unencrypted)
  kith init --show-phrase-on-stdout > f.txt   a script that keeps the phrase itself

A data dir whose database (kith.redb) belongs to another node is refused: restore
that node's keystore, or move kith.redb aside to start with no peers.

The new recovery phrase is shown once, on the terminal. Write it down: it is the only way
to restore this node if the keystore or its passphrase is lost. When stdout is not a
terminal (a log, a pipe) init refuses unless --show-phrase-on-stdout says to print it there.")]
pub struct InitArgs {
    /// Restore from an existing recovery phrase (asked on the terminal, or read from stdin).
    #[arg(long)]
    recover: bool,

    /// Derivation index: m/7444'/0'/INDEX'. Other indices are other nodes from the same phrase.
    #[arg(long, default_value_t = 0, value_name = "N")]
    index: u32,

    #[command(flatten)]
    passphrase: super::PassphraseArgs,

    /// Write the keystore unencrypted (tests and simulations only; the daemon warns on every start).
    #[arg(long)]
    insecure_no_passphrase: bool,

    /// Optional BIP39 passphrase ("25th word") for the recovery phrase, read from this file.
    #[arg(long, value_name = "FILE")]
    bip39_passphrase_file: Option<PathBuf>,

    /// Print the new recovery phrase on stdout even when it is not a terminal (a file, a
    /// pipe, a provisioning log): without it, init refuses rather than leak it there.
    #[arg(long)]
    show_phrase_on_stdout: bool,
}

/// Print this node's id (unlocks the keystore).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith id                       the id, then its derivation index
  kith id --json                {\"version\":1,\"data\":{\"node_id\":...,\"index\":0}}
  ID=$(kith id | head -1)       in a script

Give the id to the operator of another node, or share `kith ticket` once the daemon runs.")]
pub struct IdArgs {
    #[command(flatten)]
    passphrase: super::PassphraseArgs,
}

/// Show the recovery phrase again, for a backup (unlocks the keystore).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith mnemonic                 shows the numbered words on a terminal
  kith mnemonic > /media/usb/kith-phrase.txt

Anyone who sees the phrase can become this node. Run it where nobody is looking,
and never paste it into chat, tickets or shell history.")]
pub struct MnemonicArgs {
    #[command(flatten)]
    passphrase: super::PassphraseArgs,
}

#[derive(Serialize)]
struct IdJson<'a> {
    node_id: String,
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<Parent>,
    /// Borrowed from the zeroizing phrase: never copied into a plain `String`.
    #[serde(skip_serializing_if = "Option::is_none")]
    mnemonic: Option<&'a str>,
}

/// Commands that handle the recovery phrase or a passphrase run hardened like the
/// daemon: no core dumps, no ptrace by other users, the node key in a locked page.
fn harden_secret_command() {
    kith_keys::memory::protect_secrets();
    for warning in harden::harden_process().warnings() {
        eprintln!("warning: {warning}");
    }
}

pub fn init(ctx: &Context, args: InitArgs) -> anyhow::Result<u8> {
    harden_secret_command();
    let keystore_path = ctx.data_dir.keystore();
    if keystore_path.exists() {
        bail!(
            "a node is already initialised in {}; refusing to overwrite its keystore \
             (use another --data-dir, or move the old one away first)",
            ctx.data_dir.path().display()
        );
    }
    if let (true, Some(file)) = (args.insecure_no_passphrase, args.passphrase.file()) {
        return Err(insecure_with_passphrase_file(file).into());
    }
    let show_phrase = !args.recover;
    let on_terminal = io::stdout().is_terminal();
    if show_phrase && !on_terminal && !args.show_phrase_on_stdout {
        bail!(
            "stdout is not a terminal, so the new recovery phrase would end up in a file, pipe \
             or log; run `kith init` on a terminal, or pass --show-phrase-on-stdout to print it there"
        );
    }
    let mnemonic = if args.recover {
        read_recovery_phrase()?
    } else {
        Mnemonic::generate()
    };
    let bip39_passphrase = match &args.bip39_passphrase_file {
        Some(path) => {
            unlock::read_bip39_passphrase_file(path).context("cannot read the BIP39 passphrase")?
        }
        None => Zeroizing::new(String::new()),
    };
    let passphrase = if args.insecure_no_passphrase {
        None
    } else {
        Some(unlock::new_passphrase(args.passphrase.file())?)
    };
    let secrets = Secrets::new(mnemonic, bip39_passphrase, args.index);
    let key = secrets
        .node_key()
        .context("cannot derive the node key at that index")?;
    ctx.data_dir.create()?;
    // A database left behind by another identity holds peers that approved that
    // identity, not this one: refuse before writing anything.
    let store_path = ctx.data_dir.store();
    if store_path.exists() {
        Store::open(&store_path)
            .and_then(|store| store.check_owner(key.node_id()))
            .context("cannot use this data dir's database for the new node")?;
    }
    let protection = match &passphrase {
        Some(p) => Protection::Passphrase(p, KdfParams::DEFAULT),
        None => Protection::Insecure,
    };
    keystore::create(&keystore_path, &secrets, protection)
        .with_context(|| format!("cannot write the keystore {}", keystore_path.display()))?;
    let here = Here::detect(ctx.data_dir.path())?;
    let instances = SecretStore::resolve(None).map_err(InstanceError::from)?;
    // A new node, so a new secret, whatever an earlier node at this path left.
    let secret = InstanceSecret::random();
    InstanceRecord::new(
        &here,
        key.node_id(),
        args.index,
        now_ms(),
        None,
        &secret,
        &instances,
    )
    .save_with_secret(ctx.data_dir.path(), &instances, &secret, true)?;
    if let Some(warning) = instances.inside_warning(ctx.data_dir.path()) {
        eprintln!("warning: {warning}");
    }
    // The database is created here, owned by this identity, so that no later
    // identity in this data dir can inherit it.
    Store::open(&store_path)
        .and_then(|store| store.bind_owner(key.node_id()))
        .context("cannot create the node's database")?;

    let node_id = key.node_id();
    if ctx.json {
        let phrase = show_phrase.then(|| secrets.mnemonic().phrase());
        secret_io::json(&IdJson {
            node_id: node_id.to_string(),
            index: args.index,
            instance_id: None,
            parent: None,
            mnemonic: phrase.as_ref().map(|p| p.as_str()),
        })?
        .print()?;
    } else if show_phrase && on_terminal {
        secret_io::phrase_for_backup(&secrets.mnemonic().phrase())?
            .print()
            .map_err(phrase_not_shown)?;
        outln!("node id: {node_id}")?;
    } else if show_phrase {
        // Asked for with --show-phrase-on-stdout: once, alone on its line, for a script to keep.
        secret_io::phrase_line(&secrets.mnemonic().phrase())?
            .print()
            .map_err(phrase_not_shown)?;
        eprintln!(
            "initialised node {node_id} in {}",
            ctx.data_dir.path().display()
        );
        eprintln!("the recovery phrase was printed once on stdout: store it offline");
    } else {
        outln!("{node_id}")?;
        eprintln!(
            "recovered node {node_id} in {}",
            ctx.data_dir.path().display()
        );
    }
    if passphrase.is_none() {
        eprintln!("warning: the keystore is NOT encrypted (--insecure-no-passphrase)");
    }
    Ok(exit::OK)
}

/// `--insecure-no-passphrase` with a passphrase file: one of them is a mistake, and
/// the file may come from the environment, where the operator will not see it.
fn insecure_with_passphrase_file(file: &std::path::Path) -> super::UsageError {
    let from_env = std::env::var_os("KITH_PASSPHRASE_FILE").is_some_and(|v| v == file.as_os_str());
    super::UsageError(if from_env {
        format!(
            "KITH_PASSPHRASE_FILE is set ({}) but --insecure-no-passphrase asks for an \
             unencrypted keystore: unset KITH_PASSPHRASE_FILE for a throwaway node, or drop \
             --insecure-no-passphrase to encrypt the keystore with that file's passphrase",
            file.display()
        )
    } else {
        "--passphrase-file and --insecure-no-passphrase contradict each other: pass one".into()
    })
}

/// A recovery phrase that did not reach the operator is a failure, even on a closed
/// pipe (which other output treats as a quiet end): say how to see it again.
fn phrase_not_shown(e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "the recovery phrase could not be printed ({e}); the identity exists: \
         show the phrase with `kith mnemonic`"
    )
}

fn read_recovery_phrase() -> anyhow::Result<Mnemonic> {
    if io::stdin().is_terminal() {
        let phrase = Zeroizing::new(
            rpassword::prompt_password("Recovery phrase (words separated by spaces): ")
                .context("cannot read the recovery phrase from the terminal")?,
        );
        return Mnemonic::parse(&phrase).context("that recovery phrase is not valid");
    }
    let bytes = secret_io::read_stdin()?;
    let phrase = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("the recovery phrase on stdin is not UTF-8 text"))?;
    Mnemonic::parse(phrase).context("that recovery phrase is not valid")
}

fn unlock_and_warn(
    ctx: &Context,
    passphrase_file: Option<&std::path::Path>,
) -> anyhow::Result<Unlocked> {
    let unlocked = unlock::unlock(&ctx.data_dir, passphrase_file)?;
    unlocked.print_warnings();
    if let Err(e) = &unlocked.custody {
        eprintln!("warning: {e}");
    }
    if unlocked.insecure {
        eprintln!(
            "warning: the keystore in {} is not encrypted; anyone who can read it can become this node",
            ctx.data_dir.path().display()
        );
    }
    Ok(unlocked)
}

pub fn id(ctx: &Context, args: IdArgs) -> anyhow::Result<u8> {
    harden_secret_command();
    let unlocked = unlock_and_warn(ctx, args.passphrase.file())?;
    let node_id = unlocked.key.node_id();
    let index = unlocked.secrets.index();
    let parent = unlocked.record.parent.clone();
    if ctx.json {
        print_json(&IdJson {
            node_id: node_id.to_string(),
            index,
            instance_id: Some(unlocked.record.instance_id.clone()),
            parent,
            mnemonic: None,
        })?;
    } else {
        outln!("{node_id}")?;
        outln!("index: {index} (m/7444'/0'/{index}')")?;
        if let Some(parent) = parent {
            outln!("forked from: {} (index {})", parent.node_id, parent.index)?;
        }
    }
    Ok(exit::OK)
}

/// Make this data dir a new node: the next identity from the same recovery phrase.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith fork                         on a copied data dir (VM snapshot, image, restored backup)

The new node derives its key at a random hardened index (so two copies forked
independently never collide), keeps this node's allow and deny lists, and starts
with no peers (they approved the old identity, not the new one): ask them again
with `kith request`. The database then belongs to the new node. `kith id` then
shows the parent.
Stop the daemon first.")]
pub struct ForkArgs {
    #[command(flatten)]
    passphrase: super::PassphraseArgs,
}

/// Confirm that this data dir is the same node, moved to this machine or path.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith adopt                        after moving the data dir here (the old copy is gone)

Only adopt when no other copy of this data dir will ever run again; otherwise use
`kith fork`. Stop the daemon first.")]
pub struct AdoptArgs {
    #[command(flatten)]
    passphrase: super::PassphraseArgs,
}

/// Refuses when a daemon answers on the data dir's control socket.
fn require_no_daemon(ctx: &Context) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(ctx.data_dir.control_socket()).is_ok() {
        bail!(
            "a kith daemon is running for {}; stop it first",
            ctx.data_dir.path().display()
        );
    }
    Ok(())
}

fn audit(action: AuditAction, detail: String) -> StoreWrite {
    StoreWrite::Audit(AuditEntry {
        at_ms: now_ms(),
        peer: None,
        action,
        detail: Some(detail),
    })
}

pub fn fork(ctx: &Context, args: ForkArgs) -> anyhow::Result<u8> {
    harden_secret_command();
    require_no_daemon(ctx)?;
    let unlocked = unlock::unlock(&ctx.data_dir, args.passphrase.file())?;
    unlocked.print_warnings();
    let old_id = unlocked.key.node_id();
    let old_index = unlocked.secrets.index();
    let new_index = random_index(old_index);
    let secrets = unlocked.secrets.clone().with_index(new_index);
    let new_id = secrets
        .node_key()
        .context("cannot derive the forked key")?
        .node_id();

    // Peers, pending requests and high-water marks belong to the old identity; the
    // operator's policy (allow and deny lists) carries over. The store goes first: if
    // anything after it fails, running `kith fork` again finishes the job.
    let store = Store::open(&ctx.data_dir.store()).context("cannot open the node's database")?;
    // The new identity gets this database only once nothing of the old one's trust is
    // left in it: peers approved the old id, never the new one. Until the keystore is
    // rewritten it belongs to nobody (an interrupted fork leaves no peers to inherit).
    store.check_owner(old_id)?;
    let mut writes: Vec<StoreWrite> = store
        .load()?
        .peers
        .into_iter()
        .map(|p| StoreWrite::RemovePeer(p.id))
        .collect();
    let dropped = writes.len();
    writes.push(audit(
        AuditAction::Forked,
        format!("from {old_id} (index {old_index}) to {new_id} (index {new_index})"),
    ));
    store.apply(&writes)?;
    store.set_owner(None)?;

    let protection = match &unlocked.passphrase {
        Some(p) => Protection::Passphrase(p, KdfParams::DEFAULT),
        None => Protection::Insecure,
    };
    keystore::replace(&ctx.data_dir.keystore(), &secrets, protection)
        .context("cannot rewrite the keystore")?;
    let parent = Parent {
        node_id: old_id.to_string(),
        index: old_index,
        instance_id: unlocked.record.instance_id.clone(),
    };
    let secret = InstanceSecret::random();
    let instances = &unlocked.instances;
    InstanceRecord::new(
        &unlocked.here,
        new_id,
        new_index,
        now_ms(),
        Some(parent),
        &secret,
        instances,
    )
    .save_with_secret(ctx.data_dir.path(), instances, &secret, true)?;
    store.set_owner(Some(new_id))?;
    drop(store);

    if ctx.json {
        print_json(&serde_json::json!({
            "node_id": new_id.to_string(), "index": new_index,
            "parent": old_id.to_string(), "dropped_peers": dropped,
            "store_owner": new_id.to_string(),
        }))?;
    } else {
        outln!("{new_id}")?;
        eprintln!(
            "this data dir is now node {new_id} (index {new_index}), forked from {old_id}; \
             its database now belongs to {new_id} and keeps the allow and deny lists and the \
             audit log, but {dropped} peer record(s) were dropped (they approved {old_id}, \
             not this node): ask them again with `kith request`"
        );
    }
    Ok(exit::OK)
}

pub fn adopt(ctx: &Context, args: AdoptArgs) -> anyhow::Result<u8> {
    harden_secret_command();
    require_no_daemon(ctx)?;
    let unlocked = unlock::unlock(&ctx.data_dir, args.passphrase.file())?;
    unlocked.print_warnings();
    if let Err(e @ InstanceError::IdentityMismatch { .. }) = &unlocked.custody {
        bail!("cannot adopt: {e}");
    }
    let (secret, new_secret) = unlocked
        .instances
        .load_or_new(&unlocked.here.data_dir)
        .map_err(InstanceError::from)?;
    let record = unlocked
        .record
        .adopted(&unlocked.here, now_ms(), &secret, &unlocked.instances);
    let store = Store::open(&ctx.data_dir.store()).context("cannot open the node's database")?;
    store.apply(&[audit(
        AuditAction::Adopted,
        format!(
            "moved from {} at {} to {} at {}",
            unlocked.record.hostname,
            unlocked.record.data_dir.display(),
            record.hostname,
            record.data_dir.display()
        ),
    )])?;
    drop(store);
    record.save_with_secret(
        ctx.data_dir.path(),
        &unlocked.instances,
        &secret,
        new_secret,
    )?;
    let node_id = unlocked.key.node_id();
    if ctx.json {
        print_json(&serde_json::json!({ "node_id": node_id.to_string(), "index": record.index }))?;
    } else {
        outln!("{node_id}")?;
        eprintln!(
            "node {node_id} adopted at {} on {}",
            record.data_dir.display(),
            record.hostname
        );
    }
    Ok(exit::OK)
}

pub fn mnemonic(ctx: &Context, args: MnemonicArgs) -> anyhow::Result<u8> {
    harden_secret_command();
    let unlocked = unlock_and_warn(ctx, args.passphrase.file())?;
    let phrase = unlocked.secrets.mnemonic().phrase();
    // Showing the phrase is this command's whole purpose, so stdout is where it goes,
    // whatever stdout is.
    let out = if ctx.json {
        #[derive(Serialize)]
        struct MnemonicJson<'a> {
            mnemonic: &'a str,
        }
        secret_io::json(&MnemonicJson { mnemonic: &phrase })?
    } else if io::stdout().is_terminal() {
        secret_io::phrase_for_backup(&phrase)?
    } else {
        secret_io::phrase_line(&phrase)?
    };
    out.print()?;
    Ok(exit::OK)
}
