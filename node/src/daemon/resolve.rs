//! Which node an operator means: a full id, a name given with `--name`, or a unique
//! id prefix, among peers and allow and deny list entries; and whether a new name
//! is free. It reads the trust machine and must never change it.
//!
//! Commands that grant trust (`approve`, `allow`) need a longer prefix than the
//! others: an 8-character prefix is 40 bits, which whoever wants to be approved can
//! match by generating keys until one fits the prefix the operator was told.

use std::collections::BTreeSet;

use kith_keys::NodeId;
use kith_keys::id::{MIN_PREFIX_LEN, PrefixError};
use kith_protocol::machine::TrustMachine;
use kith_protocol::validate::escape_for_display;

/// Shortest id prefix that may grant trust: 13 base32 characters are 65 bits, beyond
/// what anyone can grind to match a prefix an operator was shown.
pub const MIN_TRUST_PREFIX_LEN: usize = 13;

/// Finds the node an operator means: a full id (or a ticket, which names one) first,
/// so no name can stand for another node's id; then a name given with `--name`, then
/// a unique id prefix.
pub fn resolve_peer(machine: &TrustMachine, text: &str) -> Result<NodeId, String> {
    resolve(machine, text, MIN_PREFIX_LEN)
}

/// Like [`resolve_peer`], for commands that grant trust: a prefix needs at least
/// [`MIN_TRUST_PREFIX_LEN`] characters.
pub fn resolve_peer_to_trust(machine: &TrustMachine, text: &str) -> Result<NodeId, String> {
    resolve(machine, text, MIN_TRUST_PREFIX_LEN)
}

fn resolve(machine: &TrustMachine, text: &str, min_prefix: usize) -> Result<NodeId, String> {
    let text = text.trim();
    if let Ok(id) = text.parse::<NodeId>() {
        return Ok(id);
    }
    // A ticket names a full id too (`kith ignore <the ticket I was sent>`).
    if let Ok(ticket) = text.parse::<crate::ticket::Ticket>() {
        return Ok(ticket.node_id);
    }
    let named = named(machine, text);
    match named.len() {
        1 => return Ok(*named.first().expect("one name")),
        n if n > 1 => {
            return Err(format!(
                "{n} nodes are named {}; use the id instead",
                quoted(text)
            ));
        }
        _ => {}
    }
    let known: BTreeSet<NodeId> = machine
        .peers()
        .map(|p| p.id)
        .chain(machine.allowlist().map(|(id, _)| *id))
        .chain(machine.denylist().copied())
        .collect();
    match NodeId::resolve_prefix(text, &known) {
        Ok(id) if text.len() < min_prefix => Err(format!(
            "to grant trust, name the node by its full id, its name, or at least \
             {min_prefix} characters of its id: a shorter prefix can be matched by a key made \
             for the purpose. {} matches {id}; if that is the node you mean, use that id",
            quoted(text)
        )),
        Ok(id) => Ok(id),
        Err(PrefixError::TooShort(_) | PrefixError::NotBase32(_)) => Err(format!(
            "no peer is named {} (and it is not an id prefix, which needs at least \
             {MIN_PREFIX_LEN} characters of a-z and 2-7); see `kith peers`",
            quoted(text)
        )),
        Err(PrefixError::NotFound(_)) => Err(format!(
            "no peer is named {}, and no known node id starts with it; see `kith peers`",
            quoted(text)
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The nodes (peers and allowlist entries) named `text`.
fn named(machine: &TrustMachine, text: &str) -> BTreeSet<NodeId> {
    let is_named = |name: &Option<String>| name.as_deref().map(str::trim) == Some(text);
    machine
        .peers()
        .filter(|p| is_named(&p.name))
        .map(|p| p.id)
        .chain(
            machine
                .allowlist()
                .filter(|(_, entry)| is_named(&entry.name))
                .map(|(id, _)| *id),
        )
        .collect()
}

/// Refuses a name another node already has: two nodes under one name would make
/// every command that names it ambiguous later.
pub fn check_name_free(machine: &TrustMachine, name: &str, for_peer: NodeId) -> Result<(), String> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(());
    }
    match named(machine, name).into_iter().find(|id| *id != for_peer) {
        Some(other) => Err(format!(
            "the name {} is already {other}'s; pick another, or rename that node first",
            quoted(name)
        )),
        None => Ok(()),
    }
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", escape_for_display(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_keys::NodeKey;
    use kith_protocol::machine::{AllowEntry, Config, PeerRecord, TrustState};

    fn named(id: NodeId, name: &str) -> PeerRecord {
        let mut record = PeerRecord::new(id, TrustState::Trusted, 1);
        record.name = Some(name.into());
        record
    }

    #[test]
    fn a_full_id_means_that_node_even_when_a_peer_is_named_like_it() {
        let (a, b) = (NodeKey::generate().node_id(), NodeKey::generate().node_id());
        // A slip of the operator: peer `a` renamed to `b`'s id.
        let machine = TrustMachine::restore(
            NodeKey::generate().node_id(),
            Config::default(),
            [named(a, &b.to_string()), named(b, "laptop")],
            [],
            [],
        );
        assert_eq!(resolve_peer(&machine, &b.to_string()), Ok(b));
        assert_eq!(resolve_peer(&machine, " laptop "), Ok(b));
    }

    #[test]
    fn allow_and_deny_list_entries_are_found_by_name_and_prefix() {
        let (allowed, denied) = (NodeKey::generate().node_id(), NodeKey::generate().node_id());
        let machine = TrustMachine::restore(
            NodeKey::generate().node_id(),
            Config::default(),
            [],
            [(
                allowed,
                AllowEntry {
                    name: Some("build-01".into()),
                    added_ms: 1,
                },
            )],
            [denied],
        );
        assert_eq!(resolve_peer(&machine, "build-01"), Ok(allowed));
        assert_eq!(
            resolve_peer(&machine, &allowed.to_string()[..8]),
            Ok(allowed)
        );
        assert_eq!(resolve_peer(&machine, &denied.to_string()[..8]), Ok(denied));
        assert!(resolve_peer(&machine, "nobody00").is_err());
    }

    #[test]
    fn granting_trust_needs_a_long_prefix_a_name_or_the_full_id() {
        let a = NodeKey::generate().node_id();
        let machine = TrustMachine::restore(
            NodeKey::generate().node_id(),
            Config::default(),
            [named(a, "laptop")],
            [],
            [],
        );
        let id = a.to_string();
        assert!(resolve_peer_to_trust(&machine, &id[..8]).is_err());
        assert!(resolve_peer_to_trust(&machine, &id[..12]).is_err());
        assert_eq!(resolve_peer_to_trust(&machine, &id[..13]), Ok(a));
        assert_eq!(resolve_peer_to_trust(&machine, "laptop"), Ok(a));
        assert_eq!(resolve_peer_to_trust(&machine, &id), Ok(a));
    }

    #[test]
    fn a_name_held_by_another_node_is_not_free() {
        let (a, b) = (NodeKey::generate().node_id(), NodeKey::generate().node_id());
        let machine = TrustMachine::restore(
            NodeKey::generate().node_id(),
            Config::default(),
            [named(a, "laptop"), named(b, "desktop")],
            [],
            [],
        );
        assert!(check_name_free(&machine, "laptop", b).is_err());
        assert!(check_name_free(&machine, "laptop", a).is_ok());
        assert!(check_name_free(&machine, "phone", b).is_ok());
    }
}
