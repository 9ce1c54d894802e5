//! The lean path of a polling request of a known session: once routing has chosen the node,
//! the proxy forwards the request itself, from `request_filter`, over a pooled HTTP/1.1
//! connection of its own ([`super::pool`]), and writes the node's answer through pingora's
//! downstream session, so the client's keep-alive stays with pingora.
//!
//! The request head is written once (with the first body chunk when it fits), the rest of the
//! body streamed; a long-poll waits for the node's answer on the socket's readiness alone, with
//! no read buffer, and the answer's body is forwarded as it comes. Anything unusual (a chunked
//! or `Expect` request) takes pingora's path instead.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::answers::{BAD_GATEWAY_BODY, SESSION_UNKNOWN_BODY, TIMEOUT_BODY, respond_json};
use super::{RequestCtx, SioProxy, Target, connect_failed};
use crate::backends::Backend;
use crate::metrics::Outcome;

/// Largest answer head accepted from a node.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Headers parsed in an answer head.
const MAX_RESPONSE_HEADERS: usize = 64;
/// Largest answer body read whole (a chunked or close-delimited one; a body with a
/// `Content-Length` is streamed).
const MAX_BUFFERED_BODY: usize = 4 * 1024 * 1024;
/// Read size from the node, allocated only once the node's answer is there.
const READ_SIZE: usize = 8 * 1024;
/// Request headers a proxy does not forward (hop by hop), or sets itself.
const NOT_FORWARDED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "x-forwarded-for",
    "x-real-ip",
];

/// Whether a request can take the lean path: HTTP/1.x, its body length known up front.
pub(super) fn eligible(req: &RequestHeader) -> bool {
    matches!(req.version, http::Version::HTTP_11 | http::Version::HTTP_10)
        && !req.headers.contains_key(http::header::TRANSFER_ENCODING)
        && !req.headers.contains_key(http::header::EXPECT)
        && request_body_len(req).is_some()
}

/// The request body length: its `Content-Length`, or none at all.
fn request_body_len(req: &RequestHeader) -> Option<u64> {
    let mut values = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (None, _) => Some(0),
        (Some(v), None) => v.to_str().ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// The head sent to the node: the client's headers without hop-by-hop ones, the rewritten
/// target, `X-Forwarded-For` and `X-Real-IP` as the proxy resolved them, and the body length.
pub(super) fn request_head(
    req: &RequestHeader,
    target: &str,
    forwarded_for: &str,
    real_ip: &str,
    body_len: u64,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + target.len() + forwarded_for.len());
    crate::tunnel::write_request_head(
        &mut head,
        req,
        target,
        &NOT_FORWARDED,
        forwarded_for,
        real_ip,
    );
    if body_len > 0 || req.method == http::Method::POST {
        head.extend_from_slice(format!("content-length: {body_len}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// How the node delimits its answer's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A node's answer head, parsed.
#[derive(Debug)]
struct AnswerHead {
    header: ResponseHeader,
    framing: Framing,
    /// The node keeps the connection open after this answer.
    keep_alive: bool,
    len: usize,
}

/// Parses an answer head from `buf`: `Ok(None)` while incomplete.
fn parse_answer_head(buf: &[u8], head_request: bool) -> Result<Option<AnswerHead>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(Error::because(
                ErrorType::InvalidHTTPHeader,
                "node answer",
                e,
            ));
        }
    };
    let status = parsed.code.unwrap_or(0);
    let mut header = ResponseHeader::build(status, Some(parsed.headers.len()))?;
    let mut keep_alive = parsed.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for h in parsed.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "connection" => {
                let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if value.contains("close") {
                    keep_alive = false;
                } else if value.contains("keep-alive") {
                    keep_alive = true;
                }
                continue;
            }
            "keep-alive" | "proxy-connection" => continue,
            "transfer-encoding" => {
                chunked = true;
                continue;
            }
            "content-length" => {
                let value = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
                match (length, value) {
                    (None, Some(v)) => length = Some(v),
                    (Some(a), Some(b)) if a == b => continue,
                    _ => {
                        return Error::e_explain(
                            ErrorType::InvalidHTTPHeader,
                            "node answer length",
                        );
                    }
                }
            }
            _ => {}
        }
        header.append_header(name, h.value)?;
    }
    let framing = if head_request || matches!(status, 100..=199 | 204 | 304) {
        Framing::Length(0)
    } else if chunked {
        header.remove_header(&http::header::CONTENT_LENGTH);
        Framing::Chunked
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    Ok(Some(AnswerHead {
        header,
        keep_alive: keep_alive && framing != Framing::UntilClose,
        framing,
        len,
    }))
}

/// Decodes a complete chunked body at the start of `buf`: the body and the bytes it took, or
/// `Ok(None)` while incomplete.
fn decode_chunked(buf: &[u8]) -> std::result::Result<Option<(Vec<u8>, usize)>, &'static str> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + line_end]).map_err(|_| "chunk size")?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| "chunk size")?;
        at += line_end + 2;
        if size == 0 {
            // trailers, then an empty line
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk end");
        }
        at += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// What went wrong on the way to the node.
enum Upstream {
    /// The connection was refused or timed out: the node is gone.
    Connect { timed_out: bool, error: io::Error },
    /// No answer in time.
    Timeout,
    /// The node broke the exchange.
    Broken(String),
    /// The client went away while it waited.
    ClientLeft(Box<Error>),
    /// Writing to the client failed.
    Downstream(Box<Error>),
}

impl From<io::Error> for Upstream {
    fn from(e: io::Error) -> Self {
        Upstream::Broken(e.to_string())
    }
}

impl SioProxy {
    /// Forwards a polling request of a session on `backend` (the tag already stripped from
    /// `path`) and relays the answer; `Ok(true)` as `request_filter` returns it.
    pub(super) async fn forward_polling(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        backend: Arc<Backend>,
        path: String,
        long_poll: bool,
    ) -> Result<bool> {
        ctx.target = Some(Target {
            guard: backend.track(),
            handshake: false,
            tagged: true,
            long_poll,
            path: None,
        });
        match self
            .exchange(session, ctx, &backend, &path, long_poll)
            .await
        {
            Ok(()) => Ok(true),
            Err(Upstream::Connect { timed_out, error }) => {
                connect_failed(&backend, timed_out, &error);
                self.metrics.routed(Outcome::BackendGone);
                ctx.target = None;
                respond_json(session, 400, SESSION_UNKNOWN_BODY).await?;
                Ok(true)
            }
            Err(Upstream::Timeout) => self.upstream_failed(session, 504, TIMEOUT_BODY).await,
            Err(Upstream::Broken(error)) => {
                tracing::debug!(backend = %backend.addr, %error, "polling request failed");
                self.upstream_failed(session, 502, BAD_GATEWAY_BODY).await
            }
            // the client's side: no error of the proxy (see `suppress_error_log`)
            Err(Upstream::ClientLeft(e) | Upstream::Downstream(e)) => Err(e.into_down()),
        }
    }

    /// Answers `status` when no answer has started, or closes the client connection.
    async fn upstream_failed(
        &self,
        session: &mut Session,
        status: u16,
        body: &[u8],
    ) -> Result<bool> {
        if session.response_written().is_some() {
            return Error::e_explain(ErrorType::ConnectionClosed, "node answer cut short");
        }
        session.set_keepalive(None);
        respond_json(session, status, body).await?;
        Ok(true)
    }

    async fn connect(&self, addr: SocketAddr) -> std::result::Result<TcpStream, Upstream> {
        match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                Ok(stream)
            }
            Ok(Err(error)) => Err(Upstream::Connect {
                timed_out: false,
                error,
            }),
            Err(_) => Err(Upstream::Connect {
                timed_out: true,
                error: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            }),
        }
    }

    async fn exchange(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        backend: &Backend,
        path: &str,
        long_poll: bool,
    ) -> std::result::Result<(), Upstream> {
        let addr = backend.addr;
        let req = session.req_header();
        let body_len = request_body_len(req).unwrap_or(0);
        let head_request = req.method == http::Method::HEAD;
        let real_ip = ctx.client_ip.to_string();
        let head = request_head(req, path, &ctx.forwarded_for, &real_ip, body_len);
        let first_chunk = if body_len > 0 {
            session
                .read_request_body()
                .await
                .map_err(Upstream::ClientLeft)?
        } else {
            None
        };
        let whole_body = first_chunk.as_ref().map_or(0, |c| c.len() as u64) == body_len;
        let mut out = head;
        if let Some(chunk) = &first_chunk {
            out.extend_from_slice(chunk);
        }
        drop(first_chunk);

        // A pooled connection the node closed just now fails before any answer byte: the node
        // never read the request, so it goes again on a new connection (once, and only when
        // the whole request is still at hand).
        let (mut upstream, mut reused) = match self.pool.take(addr) {
            Some(stream) => (stream, true),
            None => (self.connect(addr).await?, false),
        };
        self.metrics.routed(Outcome::TaggedHit);
        let mut buf = loop {
            let sent = upstream.write_all(&out).await;
            if !reused {
                // no retry on a new connection: the long-poll waits without the head
                out = Vec::new();
            }
            let sent = match sent {
                Ok(()) if !whole_body => self.stream_body(session, &mut upstream).await,
                other => other.map_err(Upstream::from),
            };
            let answer = match sent {
                Ok(()) => {
                    self.first_answer_bytes(session, &mut upstream, long_poll)
                        .await
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(buf) if !buf.is_empty() => break buf,
                Ok(_) | Err(Upstream::Broken(_)) if reused && whole_body => {
                    reused = false;
                    upstream = self.connect(addr).await?;
                }
                Ok(_) => return Err(Upstream::Broken("node closed the connection".into())),
                Err(e) => return Err(e),
            }
        };
        drop(out);
        let response_timeout = self.settings.response_timeout;
        let answer = loop {
            if let Some(answer) = parse_answer_head(&buf, head_request)
                .map_err(|e| Upstream::Broken(e.to_string()))?
            {
                break answer;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(Upstream::Broken("answer head too large".into()));
            }
            if read_more(&mut upstream, &mut buf, response_timeout).await? == 0 {
                return Err(Upstream::Broken(
                    "node closed inside the answer head".into(),
                ));
            }
        };
        let _ = buf.split_to(answer.len);
        match answer.framing {
            Framing::Length(len) => {
                self.relay_length(session, upstream, buf, answer, len, addr)
                    .await
            }
            Framing::Chunked => {
                let (body, used) = loop {
                    match decode_chunked(&buf).map_err(|e| Upstream::Broken(e.into()))? {
                        Some(done) => break done,
                        None if buf.len() > MAX_BUFFERED_BODY => {
                            return Err(Upstream::Broken("chunked answer too large".into()));
                        }
                        None => {
                            if read_more(&mut upstream, &mut buf, response_timeout).await? == 0 {
                                return Err(Upstream::Broken("node closed inside the body".into()));
                            }
                        }
                    }
                };
                if answer.keep_alive && used == buf.len() {
                    self.pool.put(addr, upstream);
                }
                let mut header = answer.header;
                header
                    .insert_header("content-length", body.len().to_string())
                    .map_err(Upstream::Downstream)?;
                self.write_answer(session, header, Bytes::from(body)).await
            }
            Framing::UntilClose => {
                while read_more(&mut upstream, &mut buf, response_timeout).await? > 0 {
                    if buf.len() > MAX_BUFFERED_BODY {
                        return Err(Upstream::Broken("answer too large".into()));
                    }
                }
                let mut header = answer.header;
                header
                    .insert_header("content-length", buf.len().to_string())
                    .map_err(Upstream::Downstream)?;
                self.write_answer(session, header, buf.freeze()).await
            }
        }
    }

    /// Streams the request body after its first chunk.
    async fn stream_body(
        &self,
        session: &mut Session,
        upstream: &mut TcpStream,
    ) -> std::result::Result<(), Upstream> {
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(Upstream::ClientLeft)?
        {
            upstream.write_all(&chunk).await?;
        }
        Ok(())
    }

    /// Waits for the node's answer with no buffer held (a long-poll for as long as the idle
    /// timeout, watching for the client leaving), then reads what is there; empty when the
    /// node closed the connection.
    async fn first_answer_bytes(
        &self,
        session: &mut Session,
        upstream: &mut TcpStream,
        long_poll: bool,
    ) -> std::result::Result<BytesMut, Upstream> {
        let wait = if long_poll {
            self.settings.tunnel_idle_timeout
        } else {
            self.settings.response_timeout
        };
        let ready = async {
            tokio::time::timeout(wait, upstream.readable())
                .await
                .map_err(|_| Upstream::Timeout)?
                .map_err(Upstream::from)
        };
        if long_poll {
            tokio::select! {
                ready = ready => ready?,
                left = session.downstream_session.read_body_or_idle(true) => {
                    return Err(Upstream::ClientLeft(match left {
                        Err(e) => e,
                        Ok(_) => Error::explain(ErrorType::ReadError, "client sent during a long-poll"),
                    }));
                }
            }
        } else {
            ready.await?;
        }
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        read_more(upstream, &mut buf, self.settings.response_timeout).await?;
        Ok(buf)
    }

    /// Relays a body of `len` bytes, `buf` holding its start; the connection goes back to the
    /// pool once the whole body is read, before the client's write.
    async fn relay_length(
        &self,
        session: &mut Session,
        mut upstream: TcpStream,
        mut buf: BytesMut,
        answer: AnswerHead,
        len: u64,
        addr: SocketAddr,
    ) -> std::result::Result<(), Upstream> {
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if buf.len() >= len_usize {
            if answer.keep_alive && buf.len() == len_usize {
                self.pool.put(addr, upstream);
            }
            buf.truncate(len_usize);
            return self
                .write_answer(session, answer.header, buf.freeze())
                .await;
        }
        // A larger body: forward it as it comes.
        session
            .write_response_header(Box::new(answer.header), false)
            .await
            .map_err(Upstream::Downstream)?;
        let mut left = len - buf.len() as u64;
        session
            .write_response_body(Some(buf.split().freeze()), false)
            .await
            .map_err(Upstream::Downstream)?;
        while left > 0 {
            if buf.capacity() < READ_SIZE {
                buf.reserve(READ_SIZE);
            }
            let n = read_more(&mut upstream, &mut buf, self.settings.response_timeout).await?;
            if n == 0 {
                return Err(Upstream::Broken("node closed inside the body".into()));
            }
            let mut chunk = buf.split();
            if chunk.len() as u64 > left {
                chunk.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                left = 0;
            } else {
                left -= chunk.len() as u64;
            }
            if left == 0 && answer.keep_alive && buf.is_empty() {
                self.pool.put(addr, upstream);
                return session
                    .write_response_body(Some(chunk.freeze()), true)
                    .await
                    .map_err(Upstream::Downstream);
            }
            session
                .write_response_body(Some(chunk.freeze()), left == 0)
                .await
                .map_err(Upstream::Downstream)?;
        }
        Ok(())
    }

    /// Writes a whole answer to the client.
    async fn write_answer(
        &self,
        session: &mut Session,
        header: ResponseHeader,
        body: Bytes,
    ) -> std::result::Result<(), Upstream> {
        let empty = body.is_empty();
        session
            .write_response_header(Box::new(header), empty)
            .await
            .map_err(Upstream::Downstream)?;
        session
            .write_response_body((!empty).then_some(body), true)
            .await
            .map_err(Upstream::Downstream)
    }
}

/// Reads once more into `buf` within `timeout`; the bytes read (0 when the node closed).
async fn read_more(
    upstream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> std::result::Result<usize, Upstream> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    match tokio::time::timeout(timeout, upstream.read_buf(buf)).await {
        Ok(read) => Ok(read?),
        Err(_) => Err(Upstream::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, target.as_bytes(), None).expect("request");
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).expect("header");
        }
        req
    }

    #[test]
    fn the_head_drops_hop_by_hop_headers_and_sets_the_client() {
        let req = request(
            "POST",
            "/socket.io/?EIO=4&transport=polling&sid=TAGGED",
            &[
                ("Host", "example.org"),
                ("Connection", "keep-alive"),
                ("Content-Length", "3"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("Cookie", "a=b"),
            ],
        );
        assert!(eligible(&req));
        let head = request_head(&req, "/socket.io/?sid=X", "1.2.3.4, 10.0.0.1", "1.2.3.4", 3);
        let head = String::from_utf8(head).expect("utf-8");
        assert!(
            head.starts_with("POST /socket.io/?sid=X HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"));
        let lines: Vec<&str> = head.lines().collect();
        assert!(lines.contains(&"host: example.org"));
        assert!(lines.contains(&"cookie: a=b"));
        assert!(lines.contains(&"x-forwarded-for: 1.2.3.4, 10.0.0.1"));
        assert!(lines.contains(&"x-real-ip: 1.2.3.4"));
        assert!(lines.contains(&"content-length: 3"));
        assert!(!head.to_ascii_lowercase().contains("connection"));
        assert!(!head.contains("6.6.6.6"));
    }

    #[test]
    fn chunked_and_expect_requests_take_pingora_s_path() {
        assert!(!eligible(&request(
            "POST",
            "/",
            &[("Transfer-Encoding", "chunked")]
        )));
        assert!(!eligible(&request(
            "POST",
            "/",
            &[("Expect", "100-continue"), ("Content-Length", "3")]
        )));
        assert!(!eligible(&request("POST", "/", &[("Content-Length", "x")])));
        assert!(eligible(&request("GET", "/", &[])));
    }

    #[test]
    fn answer_heads_give_their_framing() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello";
        let head = parse_answer_head(wire, false)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&wire[head.len..], b"hello");
        assert_eq!(
            head.header
                .headers
                .get("content-type")
                .map(|v| v.as_bytes()),
            Some(&b"text/plain"[..])
        );

        let head = parse_answer_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!head.keep_alive);
        assert!(head.header.headers.get("transfer-encoding").is_none());

        let head = parse_answer_head(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(!head.keep_alive);

        assert!(
            parse_answer_head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
                .expect("valid")
                .is_none()
        );
        assert!(
            parse_answer_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn chunked_bodies_decode_whole_or_not_at_all() {
        let wire = b"4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\nNEXT";
        let (body, used) = decode_chunked(wire).expect("valid").expect("complete");
        assert_eq!(body, b"abcdefg");
        assert_eq!(&wire[used..], b"NEXT");
        for cut in 0..wire.len() - 4 {
            assert!(
                decode_chunked(&wire[..cut]).expect("valid").is_none(),
                "cut {cut}"
            );
        }
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"2\r\nabcd\r\n").is_err());
    }
}
