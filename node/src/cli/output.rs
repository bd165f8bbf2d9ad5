//! How commands print: human text by default, `{"version":1,"data":...}` with `--json`.
//!
//! Every line goes through [`write_line`] (the `outln!` macro), which returns the
//! write error instead of panicking as `println!` does: a reader that went away
//! (`kith peers | head -1`) then ends the command quietly with exit 0, as
//! [`is_broken_pipe`] lets `main` recognise.

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;

/// Version of the JSON envelope; bumped when a field changes meaning or disappears.
pub const JSON_VERSION: u32 = 1;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    version: u32,
    data: &'a T,
}

/// Writes one line to stdout and flushes it (stdout may be a pipe someone follows).
pub fn write_line(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Prints `data` inside the versioned JSON envelope on one line.
pub fn print_json<T: Serialize>(data: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string(&Envelope {
        version: JSON_VERSION,
        data,
    })?;
    outln!("{text}")?;
    Ok(())
}

/// True when the error, or any of its causes, is a write to a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
