//! Where clients connect (`http://127.0.0.1:3000/socket.io/`) and from which loopback
//! source address.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};

/// A Socket.IO endpoint: the server's address and the Engine.IO path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    /// Server address (loopback only).
    pub addr: SocketAddr,
    /// Engine.IO path, `/socket.io/` by default.
    pub path: String,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .context("a URL starts with http:// or ws://")?;
        let (host, path) = match rest.split_once('/') {
            Some((h, "")) => (h, "/socket.io/".to_owned()),
            Some((h, p)) => (h, format!("/{p}")),
            None => (rest, "/socket.io/".to_owned()),
        };
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{host}: give an IP address and a port"))?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "{addr}: the load generator only targets loopback addresses"
        );
        Ok(Target { addr, path })
    }
}

/// The source address of client `index` when spreading over `sources` addresses:
/// 127.0.0.2, 127.0.0.3, … (a proxy hashing the client IP then sees distinct clients).
pub fn source_addr(index: usize, sources: u8) -> SocketAddr {
    let host = 2 + (index % usize::from(sources.max(1))) as u8;
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0))
}

/// Opens a TCP connection to `addr` from `source` (port chosen by the kernel), no Nagle.
pub async fn connect_from(addr: SocketAddr, source: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source).context("bind source address")?;
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
