//! Engine.IO HTTP long-polling over raw HTTP/1.1: one kept-alive connection carries the
//! long-poll GETs (a background task feeds their packets to a channel); POSTs go over a
//! second connection, kept alive only for clients that send often (a sender), otherwise
//! closed after each POST, as servers' keep-alive timeouts (Node: 5 s) do to an idle
//! browser's second connection. Both come from the client's source address, so
//! `hash $remote_addr` keeps them together.

use std::collections::VecDeque;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::target::{Target, connect_from};

/// Engine.IO's packet separator in a polling payload.
const SEPARATOR: u8 = 0x1e;
/// Largest response accepted (the servers' max payload is 1 MB).
const MAX_BODY: usize = 8 << 20;

/// One HTTP/1.1 keep-alive connection.
struct Http {
    target: Target,
    source: SocketAddr,
    stream: Option<TcpStream>,
    buf: BytesMut,
    keep_alive: bool,
}

impl Http {
    fn new(target: &Target, source: SocketAddr, keep_alive: bool) -> Self {
        Http {
            target: target.clone(),
            source,
            stream: None,
            buf: BytesMut::new(),
            keep_alive,
        }
    }

    /// Sends a request and reads the whole answer: `(status, body)`. Reconnects once if the
    /// kept-alive connection was closed by the other side.
    async fn request(
        &mut self,
        method: &str,
        query: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Bytes)> {
        let mut head = format!(
            "{method} {}?{query} HTTP/1.1\r\nHost: {}\r\n",
            self.target.path, self.target.addr
        );
        if method == "POST" {
            head.push_str(&format!(
                "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        for attempt in 0..2 {
            if self.stream.is_none() {
                self.stream = Some(connect_from(self.target.addr, self.source).await?);
                self.buf.clear();
            }
            match self.exchange(&message).await {
                Ok(answer) => return Ok(answer),
                // A kept-alive connection the server closed between two requests: retry once.
                Err(_) if attempt == 0 && self.buf.is_empty() => self.stream = None,
                Err(e) => {
                    self.stream = None;
                    return Err(e);
                }
            }
        }
        bail!("unreachable")
    }

    async fn exchange(&mut self, message: &[u8]) -> anyhow::Result<(u16, Bytes)> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("not connected");
        };
        stream.write_all(message).await?;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                bail!("response head too long");
            }
            self.buf.reserve(8192);
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        for line in head.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().context("content-length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        self.buf.advance(head_end);
        let body = if chunked {
            let mut body = BytesMut::new();
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    self.buf.reserve(8192);
                    if stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("closed inside a chunked body");
                    }
                };
                let size_text = std::str::from_utf8(&self.buf[..line_end])?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .context("chunk size")?;
                self.buf.advance(line_end + 2);
                while self.buf.len() < size + 2 {
                    self.buf.reserve(size + 2 - self.buf.len());
                    if stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("closed inside a chunk");
                    }
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.advance(size + 2);
                if size == 0 {
                    break body.freeze();
                }
                if body.len() > MAX_BODY {
                    bail!("body too long");
                }
            }
        } else {
            let length = length.unwrap_or(0);
            if length > MAX_BODY {
                bail!("body too long");
            }
            while self.buf.len() < length {
                self.buf.reserve(length - self.buf.len());
                if stream.read_buf(&mut self.buf).await? == 0 {
                    bail!("closed inside a body");
                }
            }
            self.buf.split_to(length).freeze()
        };
        if close || !self.keep_alive {
            self.stream = None;
        }
        Ok((status, body))
    }
}

/// Splits a polling payload into its Engine.IO packets.
pub fn split_payload(body: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    let mut done = body.is_empty();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let end = body[start..]
            .iter()
            .position(|b| *b == SEPARATOR)
            .map_or(body.len(), |i| start + i);
        let packet = body.slice(start..end);
        if end == body.len() {
            done = true;
        } else {
            start = end + 1;
        }
        Some(packet)
    })
}

/// An Engine.IO session over long-polling.
pub struct Polling {
    sid: String,
    post: Http,
    packets: mpsc::Receiver<Bytes>,
    pending: VecDeque<Bytes>,
    poller: tokio::task::JoinHandle<()>,
    body: Vec<u8>,
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Polling {
    /// Handshakes (`GET ?EIO=4&transport=polling`) and starts the long-poll loop. The open
    /// packet is the first packet `recv` returns.
    pub async fn connect(target: &Target, source: SocketAddr) -> anyhow::Result<Polling> {
        let mut get = Http::new(target, source, true);
        let (status, body) = get
            .request("GET", "EIO=4&transport=polling", b"")
            .await
            .context("polling handshake")?;
        if status != 200 || !body.starts_with(b"0{") {
            bail!(
                "handshake answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
        let sid = json_string_field(&body, "sid").context("no sid in the open packet")?;
        let (tx, rx) = mpsc::channel(256);
        let query = format!("EIO=4&transport=polling&sid={sid}");
        let poller = tokio::spawn(async move {
            loop {
                let Ok((200, body)) = get.request("GET", &query, b"").await else {
                    return;
                };
                for packet in split_payload(&body) {
                    let close = packet.as_ref() == b"1";
                    if tx.send(packet).await.is_err() || close {
                        return;
                    }
                }
            }
        });
        let mut pending = VecDeque::new();
        pending.push_back(body);
        Ok(Polling {
            sid,
            post: Http::new(target, source, false),
            packets: rx,
            pending,
            poller,
            body: Vec::with_capacity(256),
        })
    }

    /// Keeps the POST connection open between POSTs (for clients that send often).
    pub fn keep_post_connection(&mut self) {
        self.post.keep_alive = true;
    }

    /// Sends packets in one POST.
    pub async fn send(&mut self, packets: &[&[u8]]) -> anyhow::Result<()> {
        self.body.clear();
        for (i, p) in packets.iter().enumerate() {
            if i > 0 {
                self.body.push(SEPARATOR);
            }
            self.body.extend_from_slice(p);
        }
        let query = format!("EIO=4&transport=polling&sid={}", self.sid);
        let (status, answer) = self.post.request("POST", &query, &self.body).await?;
        if status != 200 {
            bail!(
                "POST answered {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            );
        }
        Ok(())
    }

    /// The next packet, `None` once the session ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Bytes> {
        if let Some(p) = self.pending.pop_front() {
            return Some(p);
        }
        self.packets.recv().await
    }
}

/// The string value of `"field":"…"` in a JSON text (no escapes expected).
pub fn json_string_field(text: &[u8], field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let at = text.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let end = text[at..].iter().position(|b| *b == b'"')?;
    String::from_utf8(text[at..at + end].to_vec()).ok()
}
