//! The `kith` binary: all of it lives in `kith_node::cli`.
fn main() -> std::process::ExitCode {
    kith_node::cli::main()
}
