//! What the `kith` subcommands share: asking the daemon (or, while it is stopped, the
//! store) over the control socket, waiting for a shutdown signal, and the human forms of
//! times, durations and tables. It imports no subcommand module, so every one of them
//! can import it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::de::DeserializeOwned;

use super::Context;
use crate::control::{self, Request, Response};

pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Sends one request to the daemon and returns its data, or its error as ours. With
/// no daemon running, a read-only request is answered from the store instead.
pub(super) fn call<T: DeserializeOwned>(ctx: &Context, request: Request) -> anyhow::Result<T> {
    call_with(ctx, request, true)
}

/// The running daemon's recent events (what `kith events` shows), oldest first.
pub(super) fn recent_events(ctx: &Context) -> anyhow::Result<Vec<control::EventView>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let request = Request::Events { follow: false };
        let mut lines = control::open(
            &ctx.data_dir.control_socket(),
            ctx.data_dir.path(),
            &request,
        )
        .await?;
        let mut events = Vec::new();
        while let Some(event) = next_event(&mut lines).await? {
            events.push(event);
        }
        Ok(events)
    })
}

/// The next event of an `events` answer; `None` when the daemon ends the stream.
pub(super) async fn next_event(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::UnixStream>>,
) -> anyhow::Result<Option<control::EventView>> {
    let Some(line) = lines
        .next_line()
        .await
        .context("lost the connection to the daemon")?
    else {
        return Ok(None);
    };
    match serde_json::from_str::<Response>(&line).context("unexpected answer from the daemon")? {
        Response::Ok { data } => Ok(Some(serde_json::from_value(data)?)),
        Response::Error { message } => bail!("{message}"),
    }
}

/// Like [`call`], but only the daemon may answer: for polling what it does next.
pub(super) fn call_live<T: DeserializeOwned>(ctx: &Context, request: Request) -> anyhow::Result<T> {
    call_with(ctx, request, false)
}

fn call_with<T: DeserializeOwned>(
    ctx: &Context,
    request: Request,
    offline: bool,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let response = match runtime.block_on(control::call(
        &ctx.data_dir.control_socket(),
        ctx.data_dir.path(),
        &request,
    )) {
        Ok(response) => response,
        Err(e) => match offline_answer(ctx, &e, &request, offline) {
            Some(response) => response,
            None => return Err(unreachable_daemon(ctx, e)),
        },
    };
    match response {
        Response::Ok { data } => {
            serde_json::from_value(data).context("the daemon's answer has an unexpected shape")
        }
        Response::Error { message } => bail!("{message}"),
    }
}

/// The store's answer when no daemon runs for an initialised data dir and the
/// request only reads; says so on stderr (not with `--json`, whose shape is kept).
pub(super) fn offline_answer(
    ctx: &Context,
    e: &control::ControlError,
    request: &Request,
    allowed: bool,
) -> Option<Response> {
    if !allowed
        || !matches!(e, control::ControlError::NotRunning { .. })
        || ctx.data_dir.require_initialised().is_err()
    {
        return None;
    }
    let response = crate::daemon::answer_offline(&ctx.data_dir, request)?;
    if !ctx.json && matches!(response, Response::Ok { .. }) {
        eprintln!(
            "(no kith daemon is running for {}: read from its store)",
            ctx.data_dir.path().display()
        );
    }
    Some(response)
}

/// Why the daemon could not be asked: with no node in the data dir yet, `kith run`
/// cannot help, so the advice is `kith init`.
pub(super) fn unreachable_daemon(ctx: &Context, e: control::ControlError) -> anyhow::Error {
    if matches!(e, control::ControlError::NotRunning { .. }) {
        if let Err(uninitialised) = ctx.data_dir.require_initialised() {
            return uninitialised.into();
        }
    }
    e.into()
}

/// Human "how long ago" for a millisecond timestamp.
pub(super) fn ago(at_ms: u64) -> String {
    let now = crate::node::now_ms();
    let secs = now.saturating_sub(at_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Human "in how long" for a future millisecond timestamp ("ended" once past).
pub(super) fn until(at_ms: u64) -> String {
    let now = crate::node::now_ms();
    if at_ms <= now {
        return "ended".into();
    }
    let secs = (at_ms - now) / 1000;
    match secs {
        0..=59 => format!("in {secs}s"),
        60..=3599 => format!("in {}m", secs / 60),
        3600..=86_399 => format!("in {}h", secs / 3600),
        _ => format!("in {}d", secs / 86_400),
    }
}

pub(super) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(header.to_vec());
    table
}

/// UTC wall-clock time of a millisecond timestamp (RFC 3339, seconds).
pub(super) fn clock(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(at_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Parses a duration such as `30d`, `12h`, `90m` or `1w 2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 30d, 12h or 90m ({e})"))?;
    if duration.is_zero() {
        return Err("a duration must be longer than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_utc() {
        assert_eq!(clock(0), "1970-01-01T00:00:00Z");
        assert_eq!(clock(951_782_400_000 + 3_723_000), "2000-02-29T01:02:03Z");
    }

    #[test]
    fn durations_parse_and_refuse_nonsense() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("1w 2d"), Ok(Duration::from_secs(9 * 86_400)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
