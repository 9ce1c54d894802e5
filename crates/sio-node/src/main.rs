//! `sio-node`: parses the configuration, sets up logging, waits for signals.

use anyhow::Context;
use clap::Parser;
use sio_node::config::{AuthMode, Config, LogFormat, RoomAuth};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_env("SIO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    if let Err(e) = config.validate() {
        eprintln!("sio-node: invalid configuration: {e}");
        std::process::exit(2);
    }
    if config.auth == AuthMode::None && !config.conformance {
        tracing::warn!(
            "--auth none: clients are trusted to say who they are and what they may do \
             (auth.userId, auth.rooms, auth.admin); development only"
        );
    }
    if config.room_auth == RoomAuth::Open && !config.conformance {
        tracing::warn!("--room-auth open: every client may join every room; development only");
    }
    if config.auth == AuthMode::Jwt
        && config.jwt_secret.is_some()
        && config.jwt_public_key.is_some()
    {
        tracing::warn!(
            "both --jwt-secret and --jwt-public-key are set: only the key of --jwt-algorithm is used"
        );
    }
    if let Err(e) = sio_node::fdlimit::raise_nofile_limit() {
        tracing::warn!("could not raise the open-files limit: {e}");
    }
    let listener = listen(config.listen).with_context(|| {
        format!(
            "cannot listen on {} (is another process using it? see --listen)",
            config.listen
        )
    })?;

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        signal.cancel();
    });
    sio_node::run(config, listener, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Pending connections the kernel queues for us (capped by `net.core.somaxconn`). tokio's
/// default of 1,024 overflows when thousands of clients reconnect at once after a node is lost,
/// and a dropped SYN costs the client a 1 s retransmission.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
