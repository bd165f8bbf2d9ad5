//! Command handling that speaks to the operator beyond the plain dispatch: names
//! checked before they are given, refusals with the next command, a request the peer
//! refused for good withdrawn, and identity-conflict advice. It changes state only
//! through the node's commands, like the rest of the daemon.

use kith_keys::NodeId;
use kith_protocol::machine::{Command, TrustMachine, TrustState};
use kith_protocol::validate::Refusal;
use tracing::warn;

use super::{Daemon, advice, err, ok, record_event, resolve};
use crate::control::{EventView, Response, SentView};
use crate::datadir::DataDir;
use crate::node::{FinalRefusal, NodeError, now_ms};
use crate::ticket::Ticket;

impl Daemon {
    /// Resolves the node a trust-granting command means (a long prefix at least) and
    /// checks that the name it is to get, if any, is not another node's.
    pub(super) async fn resolve_to_trust(
        &self,
        text: &str,
        name: Option<&str>,
    ) -> Result<NodeId, Response> {
        let text = text.to_string();
        let name = name.map(str::to_string);
        self.answer(move |m| {
            let id = resolve::resolve_peer_to_trust(m, &text)?;
            if let Some(name) = &name {
                resolve::check_name_free(m, name, id)?;
            }
            Ok(id)
        })
        .await
    }

    /// Runs a read of the machine whose error is a sentence for the operator.
    pub(super) async fn answer<T: Send + 'static>(
        &self,
        read: impl FnOnce(&TrustMachine) -> Result<T, String> + Send + 'static,
    ) -> Result<T, Response> {
        match self.node.read(move |m, _| read(m)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(err(message)),
            Err(e) => Err(err(e)),
        }
    }

    /// A refused command, with the command the operator probably meant.
    pub(super) async fn refused(&self, peer: NodeId, e: &NodeError) -> Response {
        let state = self
            .node
            .read(move |m, _| m.peer(&peer).map(|p| p.state))
            .await
            .ok()
            .flatten();
        err(advice::explain(e, state))
    }

    /// `kith rename`: refuses a name another node has, and says when nothing changes.
    pub(super) async fn rename(
        &self,
        text: String,
        name: Option<String>,
        note: Option<String>,
    ) -> Response {
        let (wanted_name, wanted_note) = (name.clone(), note.clone());
        let unchanged = self
            .answer(move |m| {
                let id = resolve::resolve_peer(m, &text)?;
                if let Some(name) = &wanted_name {
                    resolve::check_name_free(m, name, id)?;
                }
                // The machine stores "" as no name or note.
                let same = |new: &Option<String>, old: &Option<String>| {
                    new.as_ref().is_none_or(|n| {
                        Some(n.as_str()).filter(|n| !n.is_empty()) == old.as_deref()
                    })
                };
                let unchanged = m
                    .peer(&id)
                    .is_some_and(|p| same(&wanted_name, &p.name) && same(&wanted_note, &p.note));
                Ok((id, unchanged))
            })
            .await;
        match unchanged {
            Err(r) => r,
            Ok((peer, true)) => {
                ok(serde_json::json!({ "node_id": peer.to_string(), "changed": false }))
            }
            Ok((peer, false)) => {
                self.command_for(peer, Command::Rename { peer, name, note })
                    .await
            }
        }
    }

    /// The request can never succeed: the peer itself (over a connection TLS bound to
    /// its id) refused it in a way no resend can change, or (`None`) the ticket is a
    /// relay's, which speaks only the relay protocol. Either way it is withdrawn, so
    /// it neither stays pending nor is re-sent for days, and the answer and an event
    /// say why. (A peer's final refusal is withdrawn and recorded by the node itself,
    /// on every path a request takes: see `crate::node::FinalRefusal`.)
    pub(super) async fn end_refused_request(
        &self,
        ticket: &Ticket,
        refusal: Option<Refusal>,
    ) -> Response {
        let peer = ticket.node_id;
        let Some(refusal) = refusal else {
            let pending = self
                .node
                .read(move |m, _| {
                    m.peer(&peer).map(|p| p.state) == Some(TrustState::OutgoingPending)
                })
                .await
                .unwrap_or(false);
            if pending {
                if let Err(e) = self.node.command(Command::Cancel { peer }).await {
                    warn!(%peer, error = %e, "could not withdraw a refused request");
                }
            }
            let message = format!(
                "that ticket is a relay's ({peer}), not a node's: a relay only carries messages \
                 for nodes that cannot be dialled directly (`kith run --relay <RELAY-TICKET>`) \
                 and grants no trust. Ask for the ticket of the node itself (`kith ticket` on it)"
            );
            self.note_event(peer, "request_refused", Some(message.clone()));
            return err(message);
        };
        let detail = FinalRefusal {
            peer,
            kind: "request",
            refusal,
            at_ms: now_ms(),
            withdrawn: true,
        }
        .detail();
        ok(SentView {
            from: self.node.node_id().to_string(),
            node_id: peer.to_string(),
            state: "none".into(),
            delivered: false,
            detail,
            path: Some("direct".into()),
            queued: false,
            refused: true,
        })
    }

    /// An event the daemon itself observed, for `kith events` beside the machine's.
    fn note_event(&self, peer: NodeId, kind: &str, detail: Option<String>) {
        let view = EventView {
            at_ms: now_ms(),
            node_id: peer.to_string(),
            short_id: peer.short(),
            kind: kind.to_string(),
            detail,
            address: None,
        };
        record_event(self, view);
    }
}

/// What an operator should do about a relay's report of an identity conflict, with
/// `--data-dir` in the commands when this node's data dir is not the one `kith` finds
/// by default. The report is the relay's unsigned claim, so the advice is conditional.
pub fn conflict_advice(data_dir: &DataDir) -> String {
    let kith = match DataDir::resolve(None) {
        Ok(default) if default.path() == data_dir.path() => "kith".to_string(),
        _ => format!("kith --data-dir {}", data_dir.path().display()),
    };
    let elsewhere = if kith == "kith" {
        ""
    } else {
        " (with the copy's own --data-dir if it lives elsewhere)"
    };
    format!(
        "this node has not verified it. If it is true, two copies of one identity are running: \
         if this data dir was copied (a cloned VM, a restored backup), run `{kith} fork` on the \
         copy{elsewhere} to make it a new node; if the node moved here, stop the old copy (and \
         run `{kith} adopt` here if asked to)"
    )
}
