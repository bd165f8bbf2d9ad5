//! What to do next when a command is refused: the machine's refusal says what is
//! wrong; this adds, from the peer's current state, the command that does what the
//! operator most likely meant. It only builds text and must never change state.

use kith_keys::NodeId;
use kith_protocol::machine::{CommandError, TrustState};

use crate::node::NodeError;

/// The refusal as one sentence, with the next command when there is an obvious one.
pub fn explain(error: &NodeError, state: Option<TrustState>) -> String {
    let NodeError::Command(refusal) = error else {
        return crate::node::error_chain(error);
    };
    let hint = match (refusal, state) {
        (CommandError::NotPending(id), Some(TrustState::Trusted)) => {
            return format!("{id} is already trusted: nothing to approve (see `kith peers`)");
        }
        (CommandError::NotPending(id), Some(TrustState::OutgoingPending)) => format!(
            "it has not asked this node; this node asked it, and its operator approves \
             (`kith approve {id}` there)"
        ),
        (CommandError::NotTrusted(id), Some(TrustState::IncomingPending)) => format!(
            "it has only asked: refuse it with `kith reject {}` (it is told) or drop the \
             request with `kith dismiss {}` (it is not)",
            short(id),
            short(id)
        ),
        (CommandError::NotTrusted(id), Some(TrustState::OutgoingPending)) => format!(
            "this node's request to it is still waiting; `kith forget {}` drops it",
            short(id)
        ),
        (CommandError::UnknownPeer(_), None) => "see `kith peers`".to_string(),
        _ => return refusal.to_string(),
    };
    format!("{refusal}: {hint}")
}

fn short(id: &NodeId) -> String {
    id.short()
}
