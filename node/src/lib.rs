//! kith-node: placeholder until its issue lands.
