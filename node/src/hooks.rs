//! The `--on-request` hook: the operator's command, run for every incoming request
//! with its details in `KITH_*` variables.
//!
//! At most [`MAX_HOOKS`] run at once and at most [`HOOK_QUEUE`] more wait, so a
//! flood of requests from fresh identities cannot fork without end. What this
//! module must never do is drop a run silently: a request that finds the queue
//! full, and events the daemon missed because it fell behind, are counted, and
//! the count is handed to the hook in one summary run (`KITH_EVENT=requests_dropped`,
//! `KITH_DROPPED=N`) at the next free slot, ahead of the queue. So a flood can delay
//! the operator's hook, but never hide from it that requests came.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use kith_protocol::validate::escape_for_display;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::control::EventView;
use crate::node::now_ms;

/// Most hooks running at once.
pub const MAX_HOOKS: usize = 4;
/// Most requests waiting for a free slot; beyond that they are counted for the
/// summary run instead.
pub const HOOK_QUEUE: usize = 64;

/// One run of the hook.
#[derive(Debug, Clone, PartialEq)]
enum Run {
    Request(EventView),
    /// `dropped` requests found the queue full; the daemon missed `missed` events.
    Summary {
        dropped: u64,
        missed: u64,
    },
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<EventView>,
    dropped: u64,
    missed: u64,
}

impl State {
    /// What to run next: the summary first, so a queue kept full never delays it
    /// for long, then the oldest request.
    fn next(&mut self) -> Option<Run> {
        if self.dropped > 0 || self.missed > 0 {
            let run = Run::Summary {
                dropped: self.dropped,
                missed: self.missed,
            };
            (self.dropped, self.missed) = (0, 0);
            return Some(run);
        }
        self.queue.pop_front().map(Run::Request)
    }
}

/// The hook's queue and runner.
#[derive(Debug)]
pub struct Hooks {
    cmd: String,
    state: Mutex<State>,
    wake: Notify,
}

impl Hooks {
    /// Starts the runner for `cmd` (on the current Tokio runtime).
    pub fn start(cmd: String) -> Arc<Self> {
        let hooks = Arc::new(Hooks {
            cmd,
            state: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(hooks.clone().run());
        hooks
    }

    /// An incoming request: queued, or counted for the summary if the queue is full.
    pub fn request(&self, view: &EventView) {
        {
            let mut state = self.state.lock().unwrap();
            if state.queue.len() < HOOK_QUEUE {
                state.queue.push_back(view.clone());
            } else {
                state.dropped += 1;
                if state.dropped == 1 {
                    warn!(
                        "--on-request queue full ({HOOK_QUEUE} waiting): further requests are \
                         counted and the hook is told how many"
                    );
                }
            }
        }
        self.wake.notify_one();
    }

    /// The daemon missed `n` events (it fell behind); any of them may have been a request.
    pub fn missed(&self, n: u64) {
        self.state.lock().unwrap().missed += n;
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(MAX_HOOKS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let run = loop {
                // `notify_one` keeps a wake-up for us if it came before we wait.
                if let Some(run) = self.state.lock().unwrap().next() {
                    break run;
                }
                self.wake.notified().await;
            };
            spawn_hook(&self.cmd, &run, slot);
        }
    }
}

/// Runs the hook without waiting for it; its failure is logged, never fatal.
/// `slot` is held until the hook exits.
fn spawn_hook(cmd: &str, run: &Run, slot: OwnedSemaphorePermit) {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    match run {
        Run::Request(view) => {
            let text = view.detail.as_deref().unwrap_or("");
            command
                .env("KITH_EVENT", &view.kind)
                .env("KITH_PEER_ID", &view.node_id)
                .env("KITH_JUSTIFICATION", text)
                // Safe to print to a terminal or a log: control characters escaped.
                .env("KITH_JUSTIFICATION_ESCAPED", escape_for_display(text))
                .env("KITH_SOURCE_ADDR", view.address.as_deref().unwrap_or(""))
                .env("KITH_RECEIVED_AT_MS", view.at_ms.to_string());
        }
        Run::Summary { dropped, missed } => {
            let mut text = format!(
                "{dropped} requests dropped: more came than --on-request could queue; \
                 see `kith pending`"
            );
            if *missed > 0 {
                text.push_str(&format!(
                    " ({missed} events missed while the daemon was behind; some may be requests)"
                ));
            }
            command
                .env("KITH_EVENT", "requests_dropped")
                .env("KITH_DROPPED", (dropped + missed).to_string())
                .env("KITH_PEER_ID", "")
                .env("KITH_JUSTIFICATION", &text)
                .env("KITH_JUSTIFICATION_ESCAPED", &text)
                .env("KITH_SOURCE_ADDR", "")
                .env("KITH_RECEIVED_AT_MS", now_ms().to_string());
        }
    }
    match command.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                let _slot = slot;
                match child.wait().await {
                    Ok(status) if !status.success() => {
                        warn!(%status, "--on-request command failed")
                    }
                    Err(e) => warn!(error = %e, "--on-request command failed"),
                    Ok(_) => {}
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot run the --on-request command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: u64) -> EventView {
        EventView {
            at_ms: n,
            node_id: format!("peer{n}"),
            short_id: format!("p{n}"),
            kind: "request_received".into(),
            detail: Some("hi".into()),
            address: None,
        }
    }

    #[test]
    fn a_full_queue_counts_and_the_summary_runs_first() {
        let hooks = Hooks {
            cmd: String::new(),
            state: Mutex::default(),
            wake: Notify::new(),
        };
        for n in 0..(HOOK_QUEUE as u64 + 5) {
            hooks.request(&view(n));
        }
        hooks.missed(2);
        let mut state = hooks.state.lock().unwrap();
        assert_eq!(
            state.next(),
            Some(Run::Summary {
                dropped: 5,
                missed: 2
            })
        );
        for n in 0..HOOK_QUEUE as u64 {
            assert_eq!(state.next(), Some(Run::Request(view(n))));
        }
        assert_eq!(state.next(), None);
    }
}
