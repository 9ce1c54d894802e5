//! A minimal client-side WebSocket (RFC 6455) over a TCP stream: masked text frames out,
//! unmasked frames in, pings answered by the caller. Just enough for Engine.IO, and cheap
//! enough that the generator costs less CPU than the server it measures.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::{Target, connect_from};

/// One frame read from the server.
pub enum Frame {
    /// A text or binary data frame.
    Data(Bytes),
    /// A WebSocket ping with its payload (answer with a pong).
    Ping(Bytes),
    /// The server closed the connection (close frame or end of stream).
    Close,
}

/// An open WebSocket.
pub struct Ws {
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
}

impl Ws {
    /// Opens `target` from `source` and upgrades to WebSocket with `query` appended.
    pub async fn connect(target: &Target, source: SocketAddr, query: &str) -> anyhow::Result<Ws> {
        let mut stream = connect_from(target.addr, source).await?;
        let request = format!(
            "GET {}?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.path, target.addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let head_end = loop {
            if stream.read_buf(&mut buf).await.context("upgrade")? == 0 {
                bail!("closed during the upgrade");
            }
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                bail!("upgrade answer too long");
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            bail!(
                "upgrade refused: {}",
                String::from_utf8_lossy(&buf[..head_end.min(200)])
            );
        }
        buf.advance(head_end);
        Ok(Ws {
            stream,
            buf,
            out: Vec::with_capacity(256),
        })
    }

    /// Sends one text frame (zero masking key: the payload goes out as is).
    pub async fn send_text(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.send_frame(0x81, payload).await
    }

    /// Answers a ping.
    pub async fn send_pong(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.send_frame(0x8a, payload).await
    }

    async fn send_frame(&mut self, head: u8, payload: &[u8]) -> anyhow::Result<()> {
        let frame = &mut self.out;
        frame.clear();
        frame.push(head);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        self.stream.write_all(frame).await?;
        Ok(())
    }

    /// The next complete frame in the buffer, if any: `(opcode, payload)`.
    fn parse(&mut self) -> Option<(u8, Bytes)> {
        let data = &self.buf[..];
        if data.len() < 2 {
            return None;
        }
        let opcode = data[0] & 0x0f;
        let masked = data[1] & 0x80 != 0;
        let (len, mut at) = match data[1] & 0x7f {
            126 if data.len() >= 4 => (usize::from(u16::from_be_bytes([data[2], data[3]])), 4),
            127 if data.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&data[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if masked {
            at += 4;
        }
        if data.len() < at + len {
            return None;
        }
        self.buf.advance(at);
        Some((opcode, self.buf.split_to(len).freeze()))
    }

    /// Reads the next data, ping or close frame. Cancel-safe: bytes read stay buffered.
    pub async fn next(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some((opcode, payload)) = self.parse() {
                match opcode {
                    0x0..=0x2 => return Ok(Frame::Data(payload)),
                    0x9 => return Ok(Frame::Ping(payload)),
                    0x8 => return Ok(Frame::Close),
                    _ => continue,
                }
            }
            self.buf.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(Frame::Close);
            }
        }
    }
}
