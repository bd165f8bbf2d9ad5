//! Hostile load against a real node and relay, in three parts, each printing its own
//! table and one PASS/FAIL line per goal:
//!
//! - `flood` ([`flood`]): 100,000 requests from 10,000 fresh identities against
//!   `kith run` with its default bounds, directly and through a relay; peer records,
//!   audit log, store file, RSS growth, control-socket latency. A few minutes on 2
//!   cores; `HOSTILE_IDENTITIES` and `HOSTILE_REQUESTS` scale it.
//! - `conn` ([`conn`]): an honest node's handshakes (success rate, p50/p99) quiet and
//!   while one attacker host holds every connection a node allows it; RSS. Under a
//!   minute.
//! - `relay` ([`relay`]): the same for registrations at a relay while one attacker
//!   host holds every connection the relay allows it; RSS. About ten seconds.
//!
//! `cargo bench -p kith-node --bench hostile` runs all three, in that order, each in a
//! fresh process of this binary (so one part's memory figures do not carry another's
//! allocations), and ends with one line per part. `cargo bench -p kith-node --bench
//! hostile -- conn` (or `flood`, `relay`) runs one part in this process. Nothing here
//! asserts on the figures, and a FAIL does not make the bench exit non-zero; a part
//! that crashes does.

mod common;
mod conn;
mod flood;
mod relay;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};

/// One part: its name, and a function that runs it and returns whether all its goals
/// passed.
type Part = (&'static str, fn() -> bool);

/// The parts, in the order a full run takes them.
const PARTS: [Part; 3] = [
    ("flood", flood::run),
    ("conn", conn::run),
    ("relay", relay::run),
];

fn usage() -> String {
    let names: Vec<&str> = PARTS.iter().map(|(name, _)| *name).collect();
    format!(
        "usage: cargo bench -p kith-node --bench hostile [-- {}]",
        names.join("|")
    )
}

/// Runs `part` in a child process of this binary, echoing its output; whether all its
/// goals passed, or why it did not finish.
fn run_child(part: &str) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let mut child = Command::new(exe)
        .arg(part)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting it: {e}"))?;
    let mut failed = false;
    let stdout = child.stdout.take().expect("a piped stdout");
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading its output: {e}"))?;
        failed |= line.starts_with("FAIL");
        let _ = writeln!(out, "{line}");
    }
    let status = child.wait().map_err(|e| format!("waiting for it: {e}"))?;
    if status.success() {
        Ok(!failed)
    } else {
        Err(format!("it exited with {status}"))
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; the rest names the part to run, if any.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    match named.as_slice() {
        [] => {
            let mut results = Vec::new();
            for (name, _) in PARTS {
                println!("\n=== hostile bench, part `{name}` ===");
                results.push((name, run_child(name)));
            }
            println!();
            let mut crashed = false;
            for (name, result) in results {
                match result {
                    Ok(true) => println!("{name}: ALL PASS"),
                    Ok(false) => println!("{name}: SOME FAILED"),
                    Err(e) => {
                        crashed = true;
                        println!("{name}: did not finish: {e}");
                    }
                }
            }
            if crashed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        [one] => match PARTS.iter().find(|(name, _)| name == one) {
            Some((name, run)) => {
                let pass = run();
                println!(
                    "\n{name}: {}",
                    if pass { "ALL PASS" } else { "SOME FAILED" }
                );
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("no part named {one:?}; {}", usage());
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("one part at most; {}", usage());
            ExitCode::from(2)
        }
    }
}
