//! kith: a peer-to-peer trust node. This crate re-exports the workspace crates.
pub use kith_keys as keys;
pub use kith_node as node;
pub use kith_protocol as protocol;
