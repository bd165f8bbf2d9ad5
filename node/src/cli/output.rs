//! How commands print: human text by default, `{"version":1,"data":...}` with `--json`.

use serde::Serialize;

/// Version of the JSON envelope; bumped when a field changes meaning or disappears.
pub const JSON_VERSION: u32 = 1;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    version: u32,
    data: &'a T,
}

/// Prints `data` inside the versioned JSON envelope on one line.
pub fn print_json<T: Serialize>(data: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string(&Envelope {
        version: JSON_VERSION,
        data,
    })?;
    println!("{text}");
    Ok(())
}
