//! One fuzz case: a short hostile conversation with a node or the proxy over raw TCP
//! (WebSocket frames written by hand, polling requests, request heads, API calls). A case never
//! fails: whatever the server answers (or not) is recorded as its outcome.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;

use crate::inputs::{self, Keys};
use crate::target::connect_from;

/// Longest answer head read.
const MAX_HEAD: usize = 128 * 1024;
/// Longest wait for an answer head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);

/// What a case talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// A node, directly.
    Node,
    /// The node through sio-proxy.
    Proxy,
}

/// The kind of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A WebSocket session with fuzzed frames.
    WebSocket,
    /// A long-polling session with fuzzed POST bodies and GETs.
    Polling,
    /// A polling session upgraded to WebSocket, then fuzzed.
    Upgrade,
    /// A malformed or odd request head (and body).
    Head,
    /// `POST /api/emit` or `/api/notify` with fuzzed bodies.
    Api,
}

impl Kind {
    /// Every kind, in the order of [`Kind::pick`]'s weights.
    pub const ALL: [Kind; 5] = [
        Kind::WebSocket,
        Kind::Polling,
        Kind::Upgrade,
        Kind::Head,
        Kind::Api,
    ];

    /// A kind chosen with weights (sessions more often than single requests).
    pub fn pick(rng: &mut StdRng) -> Kind {
        match rng.random_range(0..20) {
            0..=5 => Kind::WebSocket,
            6..=10 => Kind::Polling,
            11..=12 => Kind::Upgrade,
            13..=16 => Kind::Head,
            _ => Kind::Api,
        }
    }
}

/// Where and as whom a case runs.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The secrets.
    pub keys: Keys,
    /// The node.
    pub node: SocketAddr,
    /// The proxy, if any.
    pub proxy: Option<SocketAddr>,
}

/// What was sent, in short, for the report of the last cases before a failure.
#[derive(Default)]
pub struct Trace {
    /// One line per message sent.
    pub lines: Vec<String>,
}

impl Trace {
    fn sent(&mut self, what: &str, bytes: &[u8]) {
        if self.lines.len() >= 24 {
            return;
        }
        let shown: String = String::from_utf8_lossy(&bytes[..bytes.len().min(160)])
            .chars()
            .map(|c| if c.is_control() { '.' } else { c })
            .collect();
        self.lines
            .push(format!("{what} ({} bytes) {shown}", bytes.len()));
    }
}

/// Runs one case of `kind` against `via` from `source`; returns its outcome label.
pub async fn run(
    ctx: &Ctx,
    rng: &mut StdRng,
    via: Via,
    kind: Kind,
    source: SocketAddr,
    trace: &mut Trace,
) -> String {
    let addr = match via {
        Via::Node => ctx.node,
        Via::Proxy => ctx.proxy.unwrap_or(ctx.node),
    };
    let case = Case { ctx, addr, source };
    let result = match kind {
        Kind::WebSocket => case.websocket(rng, trace, None).await,
        Kind::Polling => case.polling(rng, trace, false).await,
        Kind::Upgrade => case.polling(rng, trace, true).await,
        Kind::Head => case.head(rng, trace).await,
        Kind::Api => case.api(rng, trace).await,
    };
    result.unwrap_or_else(|e| format!("error: {}", short_error(&e)))
}

fn short_error(e: &anyhow::Error) -> String {
    let text = e.root_cause().to_string();
    // Keep labels few: drop addresses and numbers.
    text.split(" (os error")
        .next()
        .unwrap_or("")
        .chars()
        .take(40)
        .collect()
}

struct Case<'a> {
    ctx: &'a Ctx,
    addr: SocketAddr,
    source: SocketAddr,
}

/// Reads and discards everything the server sends until it closes; the byte count.
fn drain(mut read: tokio::net::tcp::OwnedReadHalf) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0;
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    })
}

/// Reads an answer head: its status and the bytes after it.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let status = std::str::from_utf8(&buf[..i])
                    .ok()
                    .and_then(|h| h.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Ok((status, buf.split_off(i + 4)));
            }
            if buf.len() > MAX_HEAD {
                anyhow::bail!("answer head too long");
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                anyhow::bail!("closed before an answer");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer in time"))?
}

/// Reads a whole `Connection: close` answer (bounded).
async fn read_answer(stream: &mut TcpStream, wait: Duration) -> anyhow::Result<(u16, Vec<u8>)> {
    let (status, mut body) = read_head(stream).await?;
    let _ = tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 8192];
        while body.len() < 2 << 20 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    Ok((status, body))
}

/// A WebSocket frame from the client: masked unless `unmasked`, with the length encoded as
/// asked (`declared` overrides the length field to lie about the payload).
fn frame(
    rng: &mut StdRng,
    first: u8,
    payload: &[u8],
    unmasked: bool,
    declared: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    let mask_bit = if unmasked { 0 } else { 0x80 };
    let len = declared.unwrap_or(payload.len() as u64);
    if len < 126 && declared.is_none() {
        out.push(mask_bit | len as u8);
    } else if len < 65536 && declared.is_none() {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        let key: [u8; 4] = rng.random();
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    }
    out
}

/// Writes one Engine.IO packet as a WebSocket message, usually well framed, sometimes not.
/// Returns false when the frame ended the conversation (a lie about its length).
async fn send_ws_packet(
    rng: &mut StdRng,
    write: &mut OwnedWriteHalf,
    payload: &[u8],
    binary: bool,
    trace: &mut Trace,
) -> anyhow::Result<bool> {
    let opcode = if binary { 0x2 } else { 0x1 };
    let bytes = match rng.random_range(0..40) {
        // fragmented into two frames
        0 | 1 => {
            let cut = rng.random_range(0..=payload.len());
            let mut b = frame(rng, opcode, &payload[..cut], false, None);
            b.extend(frame(rng, 0x80, &payload[cut..], false, None));
            b
        }
        // reserved opcode, RSV bits, no FIN and never continued
        2 => {
            let reserved = rng.random_range(3u8..8);
            frame(rng, 0x80 | reserved, payload, false, None)
        }
        3 => frame(rng, 0xf0 | opcode, payload, false, None),
        4 => frame(rng, opcode, payload, false, None),
        // unmasked client frame
        5 => frame(rng, 0x80 | opcode, payload, true, None),
        // a huge declared length, then a little data and silence
        6 => {
            let declared = [u64::MAX, 1 << 62, 1 << 40, 100_000_000][rng.random_range(0..4)];
            let mut b = frame(rng, 0x80 | opcode, payload, false, Some(declared));
            b.truncate(b.len().min(4096));
            trace.sent("ws frame with declared length", &declared.to_be_bytes());
            write.write_all(&b).await?;
            return Ok(false);
        }
        // control frames: oversized ping, close with odd codes
        7 => frame(rng, 0x89, &[7u8; 200], false, None),
        8 => {
            let code: u16 = [0, 999, 1005, 1006, 4999, 65535][rng.random_range(0..6)];
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(b"\xff\xfe bye");
            frame(rng, 0x88, &p, false, None)
        }
        9 => frame(rng, 0x8a, b"unsolicited pong", false, None),
        // non-minimal length encoding
        10 => frame(
            rng,
            0x80 | opcode,
            payload,
            false,
            Some(payload.len() as u64),
        ),
        _ => frame(rng, 0x80 | opcode, payload, false, None),
    };
    trace.sent(if binary { "ws binary" } else { "ws text" }, payload);
    write.write_all(&bytes).await?;
    Ok(true)
}

impl Case<'_> {
    async fn connect(&self) -> anyhow::Result<TcpStream> {
        tokio::time::timeout(Duration::from_secs(3), connect_from(self.addr, self.source))
            .await
            .map_err(|_| anyhow::anyhow!("connect timed out"))?
    }

    /// A WebSocket session; `sid` continues a polling session (an upgrade).
    async fn websocket(
        &self,
        rng: &mut StdRng,
        trace: &mut Trace,
        sid: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut stream = self.connect().await?;
        let query = inputs::engine_query(rng, "websocket", sid);
        let key = if rng.random_bool(0.95) {
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        let version = if rng.random_bool(0.95) { "13" } else { "8" };
        let head = format!(
            "GET /socket.io/?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\n{key}Sec-WebSocket-Version: {version}\r\n\r\n",
            self.addr
        );
        trace.sent("ws upgrade", head.as_bytes());
        stream.write_all(head.as_bytes()).await?;
        let (status, _) = read_head(&mut stream).await?;
        if status != 101 {
            return Ok(format!("ws upgrade {status}"));
        }
        let (read, mut write) = stream.into_split();
        let reader = drain(read);
        let keys = &self.ctx.keys;
        if sid.is_some() {
            for p in [&b"2probe"[..], b"5"] {
                send_ws_packet(rng, &mut write, p, false, trace).await?;
            }
        }
        if rng.random_bool(0.6) {
            let token = inputs::good_token(keys, "fuzz-user-ok", &["fuzz-*", "general"]);
            let ns = if rng.random_bool(0.2) {
                "/notifications,"
            } else {
                ""
            };
            let connect = format!("40{ns}{{\"token\":\"{token}\"}}");
            send_ws_packet(rng, &mut write, connect.as_bytes(), false, trace).await?;
        }
        let frames = rng.random_range(1..=12);
        for _ in 0..frames {
            let (packet, attachments) = inputs::packet(rng, keys);
            let binary = rng.random_bool(0.05);
            if !send_ws_packet(rng, &mut write, &packet, binary, trace).await? {
                break;
            }
            for _ in 0..attachments {
                let data = inputs::attachment(rng);
                if !send_ws_packet(rng, &mut write, &data, true, trace).await? {
                    break;
                }
            }
            if rng.random_bool(0.3) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
            }
        }
        if rng.random_bool(0.5) {
            let close = frame(rng, 0x88, &1000u16.to_be_bytes(), false, None);
            let _ = write.write_all(&close).await;
        }
        // Give the server a moment to answer, then go away.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        drop(write);
        reader.abort();
        Ok("ws 101".to_owned())
    }

    /// A one-shot HTTP request on a fresh connection; the answer's status.
    async fn request(
        &self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
        trace: &mut Trace,
        wait: Duration,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut stream = self.connect().await?;
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}",
            self.addr
        )
        .into_bytes();
        if method == "POST" {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        trace.sent(method, &req);
        stream.write_all(&req).await?;
        read_answer(&mut stream, wait).await
    }

    /// A polling session: handshake, then POSTs and GETs with fuzzed packets; with `upgrade`,
    /// a WebSocket upgrade of the session after that.
    async fn polling(
        &self,
        rng: &mut StdRng,
        trace: &mut Trace,
        upgrade: bool,
    ) -> anyhow::Result<String> {
        let query = inputs::engine_query(rng, "polling", None);
        let (status, body) = self
            .request(
                "GET",
                &format!("/socket.io/?{query}"),
                "",
                b"",
                trace,
                Duration::from_millis(500),
            )
            .await?;
        let Some(sid) = sid_of(&body) else {
            return Ok(format!("polling handshake {status}"));
        };
        let keys = &self.ctx.keys;
        let target = |rng: &mut StdRng| {
            format!(
                "/socket.io/?{}",
                inputs::engine_query(rng, "polling", Some(&sid))
            )
        };
        if rng.random_bool(0.6) {
            let token = inputs::good_token(keys, "fuzz-user-ok", &["fuzz-*", "general"]);
            let body = format!("40{{\"token\":\"{token}\"}}");
            let t = target(rng);
            self.request(
                "POST",
                &t,
                "Content-Type: text/plain;charset=UTF-8\r\n",
                body.as_bytes(),
                trace,
                Duration::from_millis(300),
            )
            .await?;
        }
        let mut last = format!("polling {status}");
        for _ in 0..rng.random_range(1..=6) {
            let t = target(rng);
            match rng.random_range(0..10) {
                0 => {
                    // a long-poll dropped after a moment, sometimes two at once
                    let wait = Duration::from_millis(rng.random_range(10..400));
                    let twice = rng.random_bool(0.3);
                    let first = self.request("GET", &t, "", b"", trace, wait);
                    if twice {
                        let mut other = Trace::default();
                        let second = self.request("GET", &t, "", b"", &mut other, wait);
                        let (a, b) = tokio::join!(
                            tokio::time::timeout(wait, first),
                            tokio::time::timeout(wait, second)
                        );
                        last = format!("polling 2 GETs {}/{}", a.is_ok(), b.is_ok());
                    } else if let Ok(Ok((s, _))) = tokio::time::timeout(wait, first).await {
                        last = format!("polling GET {s}");
                    }
                }
                1 => {
                    let body = vec![b'4'; rng.random_range(900_000..inputs::HUGE)];
                    let (s, _) = self
                        .request("POST", &t, "", &body, trace, Duration::from_millis(100))
                        .await?;
                    last = format!("polling huge POST {s}");
                }
                _ => {
                    let mut body = Vec::new();
                    for i in 0..rng.random_range(1..=5) {
                        if i > 0 {
                            body.push(0x1e);
                        }
                        let (packet, attachments) = inputs::packet(rng, keys);
                        body.extend_from_slice(&packet);
                        for _ in 0..attachments {
                            body.push(0x1e);
                            body.push(b'b');
                            body.extend_from_slice(base64(&inputs::attachment(rng)).as_bytes());
                        }
                    }
                    let content_type = match rng.random_range(0..6) {
                        0 => "Content-Type: application/octet-stream\r\n",
                        1 => "",
                        _ => "Content-Type: text/plain;charset=UTF-8\r\n",
                    };
                    let (s, _) = self
                        .request(
                            "POST",
                            &t,
                            content_type,
                            &body,
                            trace,
                            Duration::from_millis(100),
                        )
                        .await?;
                    last = format!("polling POST {s}");
                }
            }
        }
        if upgrade {
            return self.websocket(rng, trace, Some(&sid)).await;
        }
        Ok(last)
    }

    /// A request head (and body) from [`inputs::request`], sometimes sent slowly or left
    /// half-sent for a while.
    async fn head(&self, rng: &mut StdRng, trace: &mut Trace) -> anyhow::Result<String> {
        let request = inputs::request(rng, &self.ctx.keys, &self.addr.to_string());
        let mut stream = self.connect().await?;
        trace.sent("raw request", &request);
        match rng.random_range(0..20) {
            0 => {
                // half a head, then silence for a while
                let cut = rng.random_range(0..request.len().max(1));
                stream.write_all(&request[..cut]).await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_500))).await;
                return Ok("half head".to_owned());
            }
            1 => {
                // byte-sized pieces
                for piece in request.chunks(rng.random_range(1..64)).take(200) {
                    stream.write_all(piece).await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            _ => stream.write_all(&request).await?,
        }
        let (status, _) = read_head(&mut stream).await?;
        Ok(format!("head {status}"))
    }

    /// An API call with a fuzzed body, key and content type.
    async fn api(&self, rng: &mut StdRng, trace: &mut Trace) -> anyhow::Result<String> {
        let route = if rng.random_bool(0.5) {
            "/api/emit"
        } else {
            "/api/notify"
        };
        let mut headers = String::new();
        match rng.random_range(0..10) {
            0 => {}
            1 => headers.push_str("Authorization: Bearer wrong\r\n"),
            2 => headers.push_str("Authorization: Basic Zm9vOmJhcg==\r\n"),
            _ => headers.push_str(&format!(
                "Authorization: Bearer {}\r\n",
                self.ctx.keys.api_key
            )),
        }
        match rng.random_range(0..10) {
            0 => headers.push_str("Content-Type: text/plain\r\n"),
            1 => {}
            _ => headers.push_str("Content-Type: application/json\r\n"),
        }
        let body = inputs::api_body(rng);
        let (status, _) = self
            .request(
                "POST",
                route,
                &headers,
                &body,
                trace,
                Duration::from_millis(200),
            )
            .await?;
        Ok(format!("api {status}"))
    }
}

/// The sid of an open packet in a polling answer body.
fn sid_of(body: &[u8]) -> Option<String> {
    let key = b"\"sid\":\"";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let len = body[at..].iter().position(|b| *b == b'"')?;
    String::from_utf8(body[at..at + len].to_vec()).ok()
}

/// Standard base64 with padding (Engine.IO's encoding of binary packets over polling).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn sid_is_read_from_an_open_packet() {
        assert_eq!(
            sid_of(br#"0{"sid":"abc","upgrades":[]}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(sid_of(b"garbage"), None);
    }
}
