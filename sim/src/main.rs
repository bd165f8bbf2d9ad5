//! `kith-sim`: see `kith_sim::cli`.

fn main() {
    std::process::exit(kith_sim::cli::main());
}
