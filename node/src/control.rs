//! The control socket: how `kith` subcommands talk to a running daemon.
//!
//! A Unix socket in the data dir (mode 0600) carries one JSON request per
//! connection and one JSON response line back (a stream of lines for `events`).
//! Only the daemon's own uid or root may connect; this module checks the peer's
//! credentials before reading a byte and must never act for anyone else.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest request line accepted, so a confused client cannot make the daemon buffer without end.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// What a client asks of the daemon. Peers are named by id, unique id prefix, or name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Ticket,
    Request {
        ticket: String,
        justification: String,
    },
    Pending,
    Peers,
    Approve {
        peer: String,
        name: Option<String>,
        note: Option<String>,
        expires_in_ms: Option<u64>,
    },
    Reject {
        peer: String,
        reason: String,
    },
    Revoke {
        peer: String,
        reason: String,
    },
    Dismiss {
        peer: String,
    },
    Forget {
        peer: String,
    },
    Ignore {
        peer: String,
    },
    Unignore {
        peer: String,
    },
    Ignored,
    Allow {
        peer: String,
        name: Option<String>,
    },
    Disallow {
        peer: String,
    },
    Allowed,
    Rename {
        peer: String,
        name: Option<String>,
        note: Option<String>,
    },
    Ping {
        peer: String,
    },
    /// Recent events; with `follow`, keeps the connection open and streams new ones.
    Events {
        follow: bool,
    },
    /// Expose a TCP target to trusted peers as a named service (replacing one of
    /// that name); `peers` empty: every trusted peer.
    Expose {
        name: String,
        target: String,
        peers: Vec<String>,
    },
    Unexpose {
        name: String,
    },
    Services,
    /// Join this connection to a peer's service: after one `ok` line the socket
    /// carries the service's bytes both ways, until either side ends.
    Connect {
        peer: String,
        service: String,
    },
}

/// The daemon's answer: data, or one human sentence saying why not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok { data: serde_json::Value },
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no kith daemon is running for {data_dir}: start one with `kith run` \
         (or point --data-dir at the node you mean)"
    )]
    NotRunning {
        data_dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lost the connection to the daemon")]
    Io(#[from] io::Error),
    #[error("the daemon sent something this kith does not understand")]
    Protocol(#[source] serde_json::Error),
    #[error("the daemon closed the connection without answering")]
    NoAnswer,
    #[error("another kith daemon is already running for {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot create the control socket {path}: {fix}")]
    Bind {
        path: PathBuf,
        fix: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "refusing a control connection from uid {uid}: only uid {own} or root may control this node"
    )]
    Forbidden { uid: u32, own: u32 },
}

/// Client side: one request, one response.
pub async fn call(
    socket: &Path,
    data_dir: &Path,
    request: &Request,
) -> Result<Response, ControlError> {
    let mut lines = open(socket, data_dir, request).await?;
    let line = lines.next_line().await?.ok_or(ControlError::NoAnswer)?;
    serde_json::from_str(&line).map_err(ControlError::Protocol)
}

/// Client side for [`Request::Connect`]: sends the request and reads the one answer
/// line; on success the returned socket (with anything it already buffered) carries
/// the service's bytes.
pub async fn open_pipe(
    socket: &Path,
    data_dir: &Path,
    request: &Request,
) -> Result<(Response, BufReader<UnixStream>), ControlError> {
    let mut lines = open(socket, data_dir, request).await?;
    let line = lines.next_line().await?.ok_or(ControlError::NoAnswer)?;
    let response = serde_json::from_str(&line).map_err(ControlError::Protocol)?;
    Ok((response, lines.into_inner()))
}

/// Client side for streaming answers: sends the request and returns the response lines.
pub async fn open(
    socket: &Path,
    data_dir: &Path,
    request: &Request,
) -> Result<tokio::io::Lines<BufReader<UnixStream>>, ControlError> {
    let mut stream =
        UnixStream::connect(socket)
            .await
            .map_err(|source| ControlError::NotRunning {
                data_dir: data_dir.to_path_buf(),
                source,
            })?;
    let mut line = serde_json::to_vec(request).map_err(ControlError::Protocol)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(BufReader::new(stream).lines())
}

/// Binds the control socket, refusing if a live daemon already answers on it and
/// removing a stale socket file left by a crash.
pub async fn bind(socket: &Path) -> Result<UnixListener, ControlError> {
    if socket.symlink_metadata().is_ok() {
        if UnixStream::connect(socket).await.is_ok() {
            return Err(ControlError::AlreadyRunning(
                socket.parent().unwrap_or(socket).to_path_buf(),
            ));
        }
        std::fs::remove_file(socket).map_err(|source| ControlError::Bind {
            path: socket.to_path_buf(),
            fix: format!(
                "a stale file is in the way and cannot be removed; if no kith daemon runs \
                 for this data dir, remove it yourself (`rm -r {}`)",
                socket.display()
            ),
            source,
        })?;
    }
    let listener = UnixListener::bind(socket).map_err(|source| bind_error(socket, source))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| bind_error(socket, source))?;
    Ok(listener)
}

/// Longest path a Unix socket address holds (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A bind failure with the fix for its likely cause.
fn bind_error(socket: &Path, source: io::Error) -> ControlError {
    use std::os::unix::ffi::OsStrExt;
    let dir = socket.parent().unwrap_or(socket).display();
    let fix = if socket.as_os_str().as_bytes().len() > MAX_SOCKET_PATH {
        format!(
            "the path is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have; \
             use a shorter --data-dir"
        )
    } else {
        match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => format!(
                "this user may not create files in {dir}; run kith as the data dir's owner, \
                 or fix its permissions"
            ),
            io::ErrorKind::AddrInUse => format!(
                "something else holds that path; if no kith daemon runs for {dir}, remove it"
            ),
            _ => format!("check the data dir {dir}"),
        }
    };
    ControlError::Bind {
        path: socket.to_path_buf(),
        fix,
        source,
    }
}

/// Checks that the connecting process runs as our uid or as root.
pub fn check_peer(stream: &UnixStream) -> Result<(), ControlError> {
    let cred = stream.peer_cred()?;
    let own = crate::harden::effective_uid();
    if cred.uid() == own || cred.uid() == 0 {
        Ok(())
    } else {
        Err(ControlError::Forbidden {
            uid: cred.uid(),
            own,
        })
    }
}

/// Accepts control clients until the future is dropped: checks each one's
/// credentials, reads its one request (bounded), answers a malformed one, and hands
/// the rest to `handle`, which writes the answer (or a stream of them).
pub async fn serve<H, F>(listener: UnixListener, handle: H)
where
    H: Fn(Request, BufReader<UnixStream>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(e) = check_peer(&stream) {
                tracing::warn!(error = %e, "refused a control connection");
                return;
            }
            let mut stream = BufReader::new(stream);
            match read_request(&mut stream).await {
                Ok(Some(request)) => handle(request, stream).await,
                Ok(None) => {}
                Err(e) => {
                    let message = format!("bad control request: {e}");
                    let _ = write_response(&mut stream, &Response::Error { message }).await;
                }
            }
        });
    }
}

/// Reads one request line from a client, bounded in length.
pub async fn read_request(
    stream: &mut BufReader<UnixStream>,
) -> Result<Option<Request>, ControlError> {
    let mut buf = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(&mut *stream, MAX_REQUEST_LEN as u64 + 1);
    let n = limited.read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_REQUEST_LEN {
        return Err(ControlError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "control request too long",
        )));
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(ControlError::Protocol)
}

/// Writes one response line.
pub async fn write_response(
    stream: &mut BufReader<UnixStream>,
    response: &Response,
) -> Result<(), ControlError> {
    let mut line = serde_json::to_vec(response).map_err(ControlError::Protocol)?;
    line.push(b'\n');
    stream.get_mut().write_all(&line).await?;
    Ok(())
}

/// One peer as `kith peers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub node_id: String,
    pub short_id: String,
    pub name: Option<String>,
    pub note: Option<String>,
    /// none, outgoing_pending, incoming_pending, trusted, rejected, rejected_by_peer, revoked, revoked_by_peer, expired
    pub state: String,
    /// When the peer entered this state (ms since the Unix epoch).
    pub since_ms: u64,
    pub address: Option<String>,
    pub justification: Option<String>,
    pub reason: Option<String>,
    pub expires_at_ms: Option<u64>,
    /// How this node last reached the peer: "direct" or "relayed" (before it sent
    /// anything: how the peer reached it; absent when nothing was exchanged).
    #[serde(default)]
    pub path: Option<String>,
    /// The peer's home relay (its node id), if it told us of one.
    #[serde(default)]
    pub relay: Option<String>,
}

/// One pending request as `kith pending` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingView {
    pub node_id: String,
    pub short_id: String,
    /// "incoming" (waiting for our approval) or "outgoing" (waiting for theirs).
    pub direction: String,
    pub justification: String,
    pub received_at_ms: u64,
    pub address: Option<String>,
}

/// What `kith status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub node_id: String,
    pub version: String,
    pub data_dir: String,
    pub listen: String,
    pub ticket: String,
    pub trusted: usize,
    pub pending_incoming: usize,
    pub pending_outgoing: usize,
    pub keystore_encrypted: bool,
    pub hardened: bool,
    pub auto_approve: bool,
    pub started_at_ms: u64,
    /// "direct" (peers can dial this node; its relay's dial-back succeeded),
    /// "relay only" (private, or the dial-back failed), or "direct (untested)" (no relay).
    #[serde(default)]
    pub reachability: String,
    /// `kith run --private`: inbound connections are refused.
    #[serde(default)]
    pub private: bool,
    /// The home relay connection, with `kith run --relay`.
    #[serde(default)]
    pub relay: Option<RelayLinkView>,
    /// The services this node exposes to trusted peers.
    #[serde(default)]
    pub services: Vec<ServiceView>,
    /// Envelopes refused since the daemon started, per reason (e.g. `stale`,
    /// `bad_signature`); `kith events` shows only the first few of each minute.
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Messages of ours that peers refused for good since the daemon started: they
    /// are not resent (a request is withdrawn).
    #[serde(default)]
    pub refused_by_peers: u64,
    /// The latest of them, as its `request_refused` or `delivery_refused` event.
    #[serde(default)]
    pub last_refused_by_peer: Option<EventView>,
    /// The request waiting longest in each direction (incoming first), if any.
    #[serde(default)]
    pub longest_waiting: Vec<PendingView>,
    /// Authenticated envelopes whose sender's clock was more than a minute from
    /// ours, since the daemon started (applied, or refused outside the window).
    #[serde(default)]
    pub clock_skew_warnings: u64,
    /// The latest of them.
    #[serde(default)]
    pub last_clock_skew: Option<ClockSkewView>,
}

/// A peer whose clock was far from ours, as `kith status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClockSkewView {
    pub node_id: String,
    pub short_id: String,
    /// Its time minus ours (positive: it is ahead).
    pub skew_ms: i64,
    pub at_ms: u64,
    /// Its envelope was refused for it (outside the skew window).
    pub refused: bool,
}

/// One exposed service, as `kith status` and `kith expose` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceView {
    pub name: String,
    /// Where its connections go, `HOST:PORT`.
    pub target: String,
    /// The peers (full ids) it is limited to; empty: every trusted peer.
    pub peers: Vec<String>,
    pub added_ms: u64,
}

/// The home relay connection as `kith status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelayLinkView {
    pub node_id: String,
    pub addrs: Vec<String>,
    /// connecting, connected, registered, refused, disconnected
    pub state: String,
    pub since_ms: u64,
    /// The address the relay sees this node at.
    pub observed: Option<String>,
    /// The relay's dial-back result: true (dialled us directly), false, or absent (not tested).
    pub direct: Option<bool>,
    /// Why the relay refused to register this node.
    pub refusal: Option<String>,
    /// Set when the relay reported this node's id connected from elsewhere too.
    pub conflict: Option<ConflictView>,
    pub last_error: Option<String>,
    pub connects: u64,
    /// The connection's round-trip time (QUIC's estimate), while connected.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// What the link's state means for this node, with the next step (the sentence
    /// `kith run` printed when its first attempt settled); absent while connecting.
    #[serde(default)]
    pub summary: Option<String>,
}

/// A relay's claim of an identity conflict: the same node id connected to it from
/// other addresses. Unsigned: information from that relay, not a fact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConflictView {
    /// The relay that made the claim.
    pub reported_by: String,
    pub others: Vec<String>,
    pub at_ms: u64,
    /// What the operator should do.
    pub advice: String,
}

/// What `kith status` shows for a relay (`kith relay`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelayServerView {
    /// Always "relay": tells a relay's status from a node's.
    pub role: String,
    pub node_id: String,
    pub version: String,
    pub data_dir: String,
    pub listen: String,
    pub ticket: String,
    /// Connected clients (registered or not).
    pub clients: usize,
    /// Nodes envelopes are routed to.
    pub registered: usize,
    /// Envelopes waiting for an offline destination.
    pub queued: usize,
    pub forwarded: u64,
    pub delivered: u64,
    pub queued_total: u64,
    pub delivered_from_queue: u64,
    pub expired: u64,
    pub unknown_destination: u64,
    pub refused: u64,
    pub conflicts: u64,
    /// Relayed QUIC packets of application connections handed on, and their bytes.
    #[serde(default)]
    pub packets_relayed: u64,
    #[serde(default)]
    pub packet_bytes_relayed: u64,
    /// Relayed packets refused (unknown sender or destination, quota) or dropped
    /// (the destination's queue was full).
    #[serde(default)]
    pub packets_refused: u64,
    #[serde(default)]
    pub packets_dropped: u64,
    pub max_clients: usize,
    /// Size of the `--allow` list, if one is in force.
    pub allow: Option<usize>,
    pub keystore_encrypted: bool,
    pub hardened: bool,
    pub started_at_ms: u64,
}

/// The outcome of a command that sent an envelope to a peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SentView {
    /// This node's id (the one the peer's operator approves).
    pub from: String,
    pub node_id: String,
    /// Our side's state for the peer after the command.
    pub state: String,
    /// True when the peer acknowledged the envelope (directly or through a relay);
    /// false when it is queued at a relay or delivery is being retried.
    pub delivered: bool,
    /// The peer's acknowledgement ("pending", "trusted", ...) or why it could not be reached.
    pub detail: String,
    /// "direct" or "relayed" when it got through; absent otherwise.
    #[serde(default)]
    pub path: Option<String>,
    /// True when the peer's relay holds it until the peer reconnects.
    #[serde(default)]
    pub queued: bool,
    /// The peer refused the envelope (the reason is in `detail`); nothing changed there.
    #[serde(default)]
    pub refused: bool,
}

/// A node on the allow or deny list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListedView {
    pub node_id: String,
    pub short_id: String,
    pub name: Option<String>,
    pub added_ms: Option<u64>,
}

/// One trust event, as `kith events` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventView {
    pub at_ms: u64,
    pub node_id: String,
    pub short_id: String,
    /// request_received, request_sent, auto_approved, approved, rejected, rejected_by_peer,
    /// accepted_by_peer, mutual_trust, revoked, revoked_by_peer, trust_expired, pending_expired,
    /// pending_evicted, ignored, dismissed, cancelled, refused; relay_connected,
    /// relay_registered, relay_refused, relay_disconnected, identity_conflict (node_id is
    /// then the relay's)
    pub kind: String,
    /// Justification, reason or refusal, when the event carries one (not escaped).
    pub detail: Option<String>,
    pub address: Option<String>,
}

/// The round trip of `kith ping`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PingView {
    pub node_id: String,
    /// The name given with `--name`, if any.
    #[serde(default)]
    pub name: Option<String>,
    pub rtt_ms: f64,
    /// Which path answered: `direct` or `relayed`.
    #[serde(default)]
    pub path: Option<String>,
    /// The relay that carried a relayed ping (its unsigned word that the peer answered).
    #[serde(default)]
    pub relay: Option<String>,
}
