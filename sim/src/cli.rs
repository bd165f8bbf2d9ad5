//! The `kith-sim` command line: `kith-sim run <SCENARIO.toml> [--seed N]
//! [--out DIR] [--real]` and `kith-sim check <SCENARIO.toml>`.
//!
//! It prints the seed before anything else (so any run can be replayed with
//! `--seed`), runs the scenario, writes `report.json` and the plots into the
//! output directory, and prints a summary with the wall-clock figures (which
//! stay out of the report so that reports are byte-identical per seed).
//!
//! This module only parses arguments, prints and writes files: it must never
//! contain simulation logic. Exit codes: 0 clean, 1 invariant violated,
//! 2 usage or input error.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// `println!` that survives a reader going away (`kith-sim run … | head`): the run
/// goes on and its report is still written; only the lines nobody reads are lost.
macro_rules! say {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))
    };
}

fn print_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => eprintln!("kith-sim: cannot write to stdout: {e}"),
    }
}

use clap::{Parser, Subcommand};

use crate::dist::{Millis, parse_millis};
use crate::engine::{self, RunOptions};
use crate::report::Report;
use crate::scenario::Scenario;

#[derive(Parser, Debug)]
#[command(
    name = "kith-sim",
    version,
    about = "Run a fleet of kith nodes: deterministic simulation, or real nodes over QUIC on loopback."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a scenario and write report.json and plots.
    Run(RunArgs),
    /// Parse and validate a scenario without running it.
    Check { scenario: PathBuf },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// Seed of the run; printed at start when not given, so it can be passed back.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to write report.json and the plots (default: sim-out/SCENARIO-SEED).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run the scenario with real nodes over QUIC on loopback, on the wall clock.
    #[arg(long)]
    pub real: bool,
    /// Override the node count (the workload scales with it); in real mode, this
    /// many real nodes run, above the default cap of 200.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Override the workload duration, with a unit ("90s", "10m", "500ms").
    #[arg(long, value_parser = parse_duration_with_unit)]
    pub duration: Option<Millis>,
    /// Real mode: play the workload this many times faster (simulated mode runs on a
    /// virtual clock, as fast as it can).
    #[arg(long, requires = "real")]
    pub speed: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `--duration`: a bare number is refused, since "5" reads as seconds to most
/// people and as milliseconds to the scenario files.
fn parse_duration_with_unit(text: &str) -> Result<Millis, String> {
    if text.trim().parse::<u64>().is_ok() {
        return Err(format!(
            "{text:?} has no unit: write e.g. {0}s, {0}m or {0}ms",
            text.trim()
        ));
    }
    parse_millis(text)
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match cli.command {
        Cmd::Check { scenario } => match Scenario::load(&scenario) {
            Ok(s) => {
                say!(
                    "{}: ok ({} nodes, {} relays, {} workload + {} drain)",
                    s.name,
                    s.nodes.count,
                    s.nodes.relays,
                    s.duration,
                    s.drain
                );
                0
            }
            Err(e) => {
                eprintln!("kith-sim: {e}");
                2
            }
        },
        Cmd::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> i32 {
    let mut scenario = match Scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kith-sim: {e}");
            return 2;
        }
    };
    if let Some(n) = args.nodes {
        scenario = scenario.with_nodes(n);
        // An explicit count is what runs, in real mode too (no cap of its own).
        scenario.real.nodes = Some(n);
    }
    if let Some(d) = args.duration {
        scenario = scenario.with_duration(d);
    }
    if let Some(s) = args.speed {
        scenario.real.speed = s;
    }
    if let Err(e) = scenario.validate() {
        eprintln!("kith-sim: {e}");
        return 2;
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    say!("seed: {seed}");
    // Real mode runs fewer nodes than a big scenario names: show what really runs.
    let runs = if args.real {
        crate::real::real_scenario(&scenario)
    } else {
        scenario.clone()
    };
    let capped = if runs.nodes.count != scenario.nodes.count {
        format!(
            " (of the scenario's {}: real mode runs at most {} unless [real] nodes or --nodes asks for more)",
            scenario.nodes.count,
            crate::real::DEFAULT_REAL_NODES
        )
    } else {
        String::new()
    };
    say!(
        "scenario: {} ({} nodes{capped}, {} relays, mode {})",
        runs.name,
        runs.nodes.count,
        runs.nodes.relays,
        if args.real { "real" } else { "sim" }
    );
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("sim-out").join(format!(
            "{}-{seed}{}",
            scenario.name,
            if args.real { "-real" } else { "" }
        ))
    });
    let started = Instant::now();
    let progress = !args.no_progress;
    let (report, latencies, violation) = if args.real {
        match crate::real::run(&scenario, seed, progress) {
            Ok(o) => (o.report, o.latencies, o.violation),
            Err(e) => {
                eprintln!("kith-sim: real mode failed: {e:#}");
                return 2;
            }
        }
    } else {
        let o = engine::run(&scenario, &RunOptions { seed, progress });
        (o.report, o.latencies, o.violation.map(|v| v.to_string()))
    };
    let wall = started.elapsed();
    summary(&report, wall.as_secs_f64());
    match report.write(&out) {
        Ok(path) => say!("report: {}", path.display()),
        Err(e) => {
            eprintln!(
                "kith-sim: cannot write the report into {}: {e}",
                out.display()
            );
            return 2;
        }
    }
    match crate::plot::write_all(&out, &report, &latencies) {
        Ok(files) => {
            for f in files {
                say!("plot: {}", f.display());
            }
        }
        Err(e) => eprintln!("kith-sim: warning: plots not written: {e}"),
    }
    if let Some(v) = violation {
        eprintln!("{v}");
        return 1;
    }
    0
}

fn summary(r: &Report, wall_s: f64) {
    let l = &r.latency_ms.handshake;
    say!(
        "outcome: {} in {:.2} s wall clock ({} ms {} time, {} events)",
        r.outcome,
        wall_s,
        r.time.run_ms,
        if r.mode == "sim" { "simulated" } else { "wall" },
        r.events_processed
    );
    say!(
        "handshakes: {} requested, {} completed, {} rejected, {} open; latency p50 {} ms, p99 {} ms, max {} ms",
        r.handshakes.requested,
        r.handshakes.completed,
        r.handshakes.rejected,
        r.handshakes.open_at_end,
        l.p50,
        l.p99,
        l.max
    );
    say!(
        "messages: {} envelopes, {} attempts, {} retries, {} lost, {} gave up; trusted pairs at end {}",
        r.messages.envelopes_total,
        r.messages.attempts,
        r.messages.retries,
        r.messages.lost,
        r.messages.gave_up,
        r.trust.trusted_pairs
    );
    let checks: Vec<String> = r
        .invariants
        .iter()
        .map(|(k, v)| format!("{k} {}", v.checks))
        .collect();
    say!("invariant checks: {}", checks.join(", "));
}

fn random_seed() -> u64 {
    use rand_core::{OsRng, RngCore};
    OsRng.next_u64()
}
