//! kith-sim: many kith nodes in one process (issue 7). Nothing here yet.
