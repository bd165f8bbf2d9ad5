//! `kith expose`, `unexpose`, `connect` and `forward`: services on trusted peers.
//!
//! `connect` and `forward` never reach a peer themselves: the daemon (which holds the
//! node key) dials the peer and joins the control socket to the service's stream.
//! `connect` never copies with `std::io::copy` (see [`pump`]).

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use clap::Args;
use std::io::{Read, Write};

use super::common::{ago, call};
use super::output::print_json;
use super::{Context, exit};
use crate::control::{self, Request, Response, ServiceView};

/// Offer a local TCP service to trusted peers under a name.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith expose ssh --to 127.0.0.1:22
  kith expose db --to 127.0.0.1:5432 --peer laptop --peer build-01

Only trusted peers can reach a service, and with --peer only those listed. Exposing a
name again replaces it. On the other node: `kith connect <THIS-NODE> NAME` or
`kith forward <THIS-NODE> NAME --listen 127.0.0.1:PORT`. Services are kept in the node's
database and listed by `kith status`.")]
pub struct ExposeArgs {
    /// The service's name: lowercase letters, digits, '.', '_' and '-'.
    name: String,
    /// Where its connections go: HOST:PORT, on this machine or one it reaches.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// Limit it to this trusted peer (name, id or id prefix); repeat for more.
    #[arg(long = "peer", value_name = "PEER")]
    peers: Vec<String>,
}

pub fn expose(ctx: &Context, args: ExposeArgs) -> anyhow::Result<u8> {
    let view: ServiceView = call(
        ctx,
        Request::Expose {
            name: args.name,
            target: args.to,
            peers: args.peers,
        },
    )?;
    if ctx.json {
        print_json(&view)?;
    } else {
        outln!(
            "exposed {} -> {} to {}",
            view.name,
            view.target,
            audience(&view)
        )?;
    }
    Ok(exit::OK)
}

/// Stop offering a service. Connections already open run on until they close.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith unexpose ssh")]
pub struct UnexposeArgs {
    name: String,
}

pub fn unexpose(ctx: &Context, args: UnexposeArgs) -> anyhow::Result<u8> {
    let data: serde_json::Value = call(ctx, Request::Unexpose { name: args.name })?;
    if ctx.json {
        print_json(&data)?;
    } else {
        outln!("unexposed {}", data["name"].as_str().unwrap_or_default())?;
    }
    Ok(exit::OK)
}

/// Join standard input and output to a trusted peer's service.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  ssh -o ProxyCommand='kith connect %h ssh' build-01
  echo PING | kith connect db-host redis

PEER is a peer's name, id or id prefix (ssh's %h passes the host name you typed, so
name the peer like the host). The peer must trust this node and this node the peer;
its operator offers the service with `kith expose`. Ends when either side closes.")]
pub struct ConnectArgs {
    /// The peer: name, id or unique id prefix.
    peer: String,
    /// The service's name on that peer.
    service: String,
}

pub fn connect(ctx: &Context, args: ConnectArgs) -> anyhow::Result<u8> {
    let socket = runtime()?.block_on(async {
        let socket = open(ctx, &args.peer, &args.service).await?;
        // What the daemon sent after its answer line is already the service's.
        let early = socket.buffer().to_vec();
        let socket = socket.into_inner().into_std()?;
        Ok::<_, anyhow::Error>((early, socket))
    });
    let (early, socket) = socket?;
    socket.set_nonblocking(false)?;
    let mut to_peer = socket.try_clone()?;
    // Standard input is copied on its own thread, which may block for ever on a
    // terminal: the command ends when the peer's side ends, not when input does.
    std::thread::spawn(move || {
        let _ = pump(&mut std::io::stdin().lock(), &mut to_peer);
        let _ = to_peer.shutdown(std::net::Shutdown::Write);
    });
    let mut stdout = std::io::stdout().lock();
    let mut from_peer = socket;
    stdout
        .write_all(&early)
        .and_then(|()| stdout.flush())
        .and_then(|()| pump(&mut from_peer, &mut stdout))
        .context("the connection to the service broke")?;
    Ok(exit::OK)
}

/// Copies `from` to `to` until `from` ends, each read written and flushed at once
/// (standard output is line-buffered, and a service's bytes have no lines).
///
/// A plain read/write loop, never `std::io::copy`: on Linux that splices between a
/// socket and a pipe, and the kernel can keep bytes it spliced into the output pipe
/// out of the reader's reach until more arrive on the socket, so an answer with
/// nothing after it never came out (an interactive client waited for ever).
fn pump(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// Forward a local TCP port to a trusted peer's service.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  kith forward db-host postgres --listen 127.0.0.1:15432
  psql -h 127.0.0.1 -p 15432

Each connection to the local port becomes one stream to the service. Runs until
interrupted; a connection that cannot be joined is closed and the reason printed.")]
pub struct ForwardArgs {
    /// The peer: name, id or unique id prefix.
    peer: String,
    /// The service's name on that peer.
    service: String,
    /// The local address to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
}

pub fn forward(ctx: &Context, args: ForwardArgs) -> anyhow::Result<u8> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        eprintln!(
            "forwarding {local} to {}'s service {} (Ctrl-C stops)",
            args.peer, args.service
        );
        loop {
            let (mut tcp, from) = tokio::select! {
                accepted = listener.accept() => accepted.context("accepting a local connection")?,
                _ = tokio::signal::ctrl_c() => return Ok::<_, anyhow::Error>(()),
            };
            let data_dir = ctx.data_dir.clone();
            let (peer, service) = (args.peer.clone(), args.service.clone());
            tokio::spawn(async move {
                let ctx = Context {
                    data_dir,
                    json: false,
                };
                match open(&ctx, &peer, &service).await {
                    Ok(mut socket) => {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut socket).await;
                    }
                    Err(e) => eprintln!("connection from {from} closed: {e:#}"),
                }
            });
        }
    })?;
    Ok(exit::OK)
}

/// Asks the daemon to join a control connection to `peer`'s `service`.
async fn open(
    ctx: &Context,
    peer: &str,
    service: &str,
) -> anyhow::Result<tokio::io::BufReader<tokio::net::UnixStream>> {
    let request = Request::Connect {
        peer: peer.to_string(),
        service: service.to_string(),
    };
    let (response, socket) = control::open_pipe(
        &ctx.data_dir.control_socket(),
        ctx.data_dir.path(),
        &request,
    )
    .await?;
    match response {
        Response::Ok { .. } => Ok(socket),
        Response::Error { message } => bail!("{message}"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn audience(view: &ServiceView) -> String {
    if view.peers.is_empty() {
        "every trusted peer".to_string()
    } else {
        let short: Vec<&str> = view.peers.iter().map(|p| &p[..10.min(p.len())]).collect();
        short.join(", ")
    }
}

/// The services lines of `kith status`.
pub(super) fn print_services(services: &[ServiceView]) -> std::io::Result<()> {
    for (i, s) in services.iter().enumerate() {
        outln!(
            "{} {} -> {} ({}, exposed {})",
            if i == 0 { "services " } else { "         " },
            s.name,
            s.target,
            audience(s),
            ago(s.added_ms)
        )?;
    }
    Ok(())
}
