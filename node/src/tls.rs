//! QUIC/TLS identity binding (in progress).
