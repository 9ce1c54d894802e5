//! One Socket.IO v5 client over Engine.IO v4, on either transport: open, CONNECT with
//! `auth.userId`, optionally join a room; then packets in and out.

use std::net::SocketAddr;

use anyhow::bail;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::polling::Polling;
use crate::target::Target;
use crate::ws::{Frame, Ws};

/// The transport a client uses for its whole life (no upgrade).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket only (`transport=websocket` from the start).
    Websocket,
    /// HTTP long-polling only.
    Polling,
}

impl Transport {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Polling => "polling",
        }
    }
}

/// An Engine.IO session.
pub enum Conn {
    /// Over WebSocket.
    Ws(Ws),
    /// Over long-polling.
    Polling(Polling),
}

impl Conn {
    /// Opens an Engine.IO session (the open packet is the first `recv`).
    pub async fn open(
        transport: Transport,
        target: &Target,
        source: SocketAddr,
    ) -> anyhow::Result<Conn> {
        Ok(match transport {
            Transport::Websocket => {
                Conn::Ws(Ws::connect(target, source, "EIO=4&transport=websocket").await?)
            }
            Transport::Polling => Conn::Polling(Polling::connect(target, source).await?),
        })
    }

    /// The next Engine.IO packet; `None` when the session is over. Cancel-safe except while
    /// answering a WebSocket-level ping (servers here never send one).
    pub async fn recv(&mut self) -> anyhow::Result<Option<Bytes>> {
        match self {
            Conn::Ws(ws) => loop {
                match ws.next().await? {
                    Frame::Data(p) => return Ok(Some(p)),
                    Frame::Ping(p) => ws.send_pong(&p).await?,
                    Frame::Close => return Ok(None),
                }
            },
            Conn::Polling(p) => Ok(p.recv().await),
        }
    }

    /// Sends packets (one frame each on WebSocket, one POST on polling).
    pub async fn send(&mut self, packets: &[&[u8]]) -> anyhow::Result<()> {
        match self {
            Conn::Ws(ws) => {
                for p in packets {
                    ws.send_text(p).await?;
                }
                Ok(())
            }
            Conn::Polling(p) => p.send(packets).await,
        }
    }

    /// Keeps the connection that carries this client's sends open (polling; WebSocket has one).
    pub fn keep_send_connection(&mut self) {
        if let Conn::Polling(p) = self {
            p.keep_post_connection();
        }
    }

    /// Waits for a packet starting with `prefix`, answering pings meanwhile.
    async fn expect(&mut self, prefix: &[u8]) -> anyhow::Result<Bytes> {
        loop {
            let Some(p) = self.recv().await? else {
                bail!(
                    "closed while waiting for {}",
                    String::from_utf8_lossy(prefix)
                );
            };
            if p.starts_with(prefix) {
                return Ok(p);
            }
            if p.as_ref() == b"2" {
                self.send(&[b"3"]).await?;
            } else if p.starts_with(b"44") {
                bail!("connect refused: {}", String::from_utf8_lossy(&p));
            } else if p.as_ref() == b"1" {
                bail!("closed by the server");
            }
        }
    }

    /// Completes the Socket.IO connection as `user` and joins `room` if given.
    pub async fn establish(&mut self, user: &str, room: Option<&str>) -> anyhow::Result<()> {
        self.expect(b"0{").await?;
        self.send(&[format!("40{{\"userId\":\"{user}\"}}").as_bytes()])
            .await?;
        self.expect(b"40").await?;
        if let Some(room) = room {
            self.send(&[format!("421[\"join-room\",\"{room}\"]").as_bytes()])
                .await?;
            self.expect(b"431[").await?;
        }
        Ok(())
    }
}
