//! kith-protocol: the wire format, framing, validation and trust state machine
//! of kith, with no I/O.
//!
//! Like quinn-proto, this crate is sans-IO: it opens no sockets, runs no async
//! runtime, reads no clock and touches no file. Every function that needs the
//! time takes `now_ms` (milliseconds since the Unix epoch) as an argument,
//! randomness comes in as an RNG argument, and every decision comes back as
//! data — envelopes to send, events, store writes — for the caller to carry
//! out. The daemon (`kith-node`) and the simulator (`kith-sim`) drive the same
//! code, so what the simulator proves is what the daemon does.
//!
//! # Layout
//!
//! - [`wire`]: [`Envelope`], [`Body`], [`Kind`], [`Ack`], [`AckStatus`],
//!   [`Refusal`] and [`Message`] — what travels on a stream, relay messages and
//!   answers and the [`Reach`] reply hint included — plus signing and
//!   verification. It imports nothing else of this crate.
//! - [`frame`]: `u32` LE length + postcard framing; [`FrameDecoder`] takes
//!   bytes in any chunks and refuses oversized frames from their prefix.
//! - [`validate`]: the stateless envelope rules ([`check_envelope`]), the text
//!   rules ([`check_text`]), the skew window, and [`escape_for_display`] for
//!   showing peer text to operators.
//! - [`replay`]: the bounded, time-limited (sender, nonce) cache.
//! - [`machine`]: [`TrustMachine`], the per-node trust state machine:
//!   [`Input`] in, [`Output`] out (its struct, constructors, accessors, `handle`
//!   and output helpers). In `machine/`:
//!   - `types`: the public data types ([`Config`], [`PeerRecord`], [`Command`], ...).
//!   - `envelopes`: validating an envelope and the transitions a peer's word makes.
//!   - `commands`: operator commands and the checks of their text.
//!   - `tick`: time passing: pending and trust expiry, reaping declined records.
//!   - `consent`: where our consent comes from.
//!   - `index`: the indexes that bound its work (pending, declined).
//! - [`relay`]: [`Relay`], the relay state machine (routing, queueing,
//!   expiry, limits, identity conflicts): [`RelayInput`] in, [`RelayOutput`]s out.

pub mod frame;
pub mod machine;
pub mod relay;
pub mod replay;
pub mod validate;
pub mod wire;

pub use frame::{
    FrameDecoder, FrameError, MAX_BUFFERED, MAX_FRAME_LEN, decode_frame, encode_frame,
};
pub use machine::{
    AllowEntry, AuditAction, AuditEntry, Command, CommandError, Config, Consent,
    DEFAULT_PENDING_TTL_MS, DEFAULT_SKEW_MS, Decider, Event, EventKind, Input, MAX_NAME_CHARS,
    Output, PeerRecord, Reply, StoreWrite, TextField, TrustMachine, TrustState,
};
pub use relay::{
    ClientInfo, ConnId, DEFAULT_QUEUE_TTL_MS, ForwardResult, Relay, RelayConfig, RelayInput,
    RelayOutput, RelayRefusal, RelayStats,
};
pub use replay::NonceCache;
pub use validate::{
    Refusal, TextError, check_envelope, check_text, escape_for_display, is_unsafe_for_display,
};
pub use wire::{
    Ack, AckStatus, Body, Envelope, Kind, MAX_REACH_ADDRS, MAX_TEXT_CHARS, Message,
    PROTOCOL_VERSION, Reach, RelayNotice, RelayRef, SIGNING_DOMAIN,
};
