//! WebSocket tunnels without per-frame work.
//!
//! pingora's own upgrade path moves every read through its HTTP task pipeline (a 64 KiB body
//! buffer per direction, a channel hop and the body filters per chunk). A Socket.IO broadcast
//! is many tiny frames, so the proxy instead does the upgrade handshake itself on a plain
//! upstream `TcpStream`, hands the 101 to the client, and then copies raw bytes both ways with
//! [`Pipe`]: one read and one write per burst, into a stack buffer, so an idle tunnel owns no
//! buffer at all (one is allocated only while a peer is slower than the other).
//!
//! [`Pipe`] is the epoll path (`--tunnel-io epoll`, the default, and `auto` where io_uring is
//! refused): a tokio task per tunnel. With `--tunnel-io uring` the proxy hands both sockets to
//! [`crate::uring`] instead, which copies every tunnel's bytes from one thread with batched
//! io_uring submissions.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use pingora::http::RequestHeader;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Stack buffer of one copy step; a burst larger than this takes several reads.
const COPY_BUFFER: usize = 32 * 1024;
/// Longest upstream answer head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest non-101 answer body relayed to the client.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most headers accepted in an upstream answer.
const MAX_RESPONSE_HEADERS: usize = 64;

/// Why an upstream upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The TCP connection failed (refused, unreachable).
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The TCP connection took too long.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The backend sent no complete answer head in time.
    #[error("no answer in time")]
    ResponseTimeout,
    /// The backend answered something that is not HTTP/1.1.
    #[error("malformed answer: {0}")]
    BadResponse(String),
    /// I/O after connecting.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// The backend's answer to an upgrade request.
#[derive(Debug)]
pub struct UpstreamAnswer {
    /// The connection, positioned after everything in `buffered`.
    pub stream: TcpStream,
    /// HTTP status.
    pub status: u16,
    /// Answer headers (lower-case names).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Every byte read so far: the head, then possibly the first frames or body bytes.
    pub buffered: BytesMut,
    /// Length of the head within `buffered`.
    pub head_len: usize,
}

impl UpstreamAnswer {
    /// The value of a header.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Reads the body of a non-101 answer (`Content-Length` framed, bounded); an answer without
    /// `Content-Length` yields what was already read.
    pub async fn read_body(&mut self, timeout: Duration) -> Result<Vec<u8>, TunnelError> {
        let mut body = self.buffered.split_off(self.head_len).to_vec();
        let Some(length) = self
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
        else {
            return Ok(body);
        };
        let length = length.min(MAX_ERROR_BODY);
        let read = async {
            while body.len() < length {
                let mut chunk = vec![0; length - body.len()];
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            Ok::<_, io::Error>(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| TunnelError::ResponseTimeout)??;
        body.truncate(length);
        Ok(body)
    }
}

/// The upgrade request as sent to the backend: the client's method and headers, `path` as
/// the target (the sid tag already stripped), `X-Forwarded-For` replaced by
/// `forwarded_for` and `X-Real-IP` by `client` (the address this proxy resolved).
pub fn request_head(
    req: &RequestHeader,
    path: &str,
    forwarded_for: &str,
    client: std::net::IpAddr,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    write_request_head(
        &mut head,
        req,
        path,
        &["x-forwarded-for", "x-real-ip"],
        forwarded_for,
        &client.to_string(),
    );
    head.extend_from_slice(b"\r\n");
    head
}

/// Writes the request line and headers of a request forwarded to a node, without the blank
/// line that ends the head: the client's method, `target`, its headers except those named in
/// `skip` (lower case; `x-forwarded-for` and `x-real-ip` belong there), then `X-Forwarded-For:
/// forwarded_for` and `X-Real-IP: real_ip`. The upgrade and the polling path both send it.
pub fn write_request_head(
    head: &mut Vec<u8>,
    req: &RequestHeader,
    target: &str,
    skip: &[&str],
    forwarded_for: &str,
    real_ip: &str,
) {
    head.extend_from_slice(req.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let headers = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    let own = [
        ("x-forwarded-for", forwarded_for.as_bytes()),
        ("x-real-ip", real_ip.as_bytes()),
    ];
    for (name, value) in headers.filter(|(n, _)| !skip.contains(n)).chain(own) {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
}

/// Connects to `addr`, sends `head`, and reads the answer head.
pub async fn open(
    addr: SocketAddr,
    head: &[u8],
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<UpstreamAnswer, TunnelError> {
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(TunnelError::Connect(e)),
        Err(_) => return Err(TunnelError::ConnectTimeout),
    };
    stream.set_nodelay(true)?;
    let exchange = async {
        stream.write_all(head).await?;
        let mut buffered = BytesMut::with_capacity(1024);
        loop {
            if stream.read_buf(&mut buffered).await? == 0 {
                return Err(TunnelError::BadResponse(
                    "connection closed before the answer head".into(),
                ));
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buffered) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = response.code.unwrap_or(0);
                    let headers = response
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                        .collect();
                    return Ok((status, headers, head_len, buffered));
                }
                Ok(httparse::Status::Partial) if buffered.len() < MAX_RESPONSE_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(TunnelError::BadResponse("answer head too large".into()));
                }
                Err(e) => return Err(TunnelError::BadResponse(e.to_string())),
            }
        }
    };
    let (status, headers, head_len, buffered) = tokio::time::timeout(response_timeout, exchange)
        .await
        .map_err(|_| TunnelError::ResponseTimeout)??;
    Ok(UpstreamAnswer {
        stream,
        status,
        headers,
        buffered,
        head_len,
    })
}

/// One direction of a [`Pipe`].
#[derive(Debug, Default)]
struct Direction {
    /// Bytes read but not yet accepted by the writer; empty (unallocated) when idle.
    pending: Vec<u8>,
    written: usize,
    needs_flush: bool,
    eof: bool,
    done: bool,
}

impl Direction {
    /// Copies from `reader` to `writer` until the reader would block (`Pending`), the reader
    /// ends (`Ready(Ok)`, after shutting the writer down) or an error.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            while self.written < self.pending.len() {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
            if !self.pending.is_empty() {
                // Give the memory back: an idle tunnel holds no buffer.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [MaybeUninit::<u8>::uninit(); COPY_BUFFER];
            let mut buf = ReadBuf::uninit(&mut scratch);
            match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                Poll::Pending => {
                    if self.needs_flush
                        && let Poll::Ready(result) = Pin::new(&mut *writer).poll_flush(cx)
                    {
                        result?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(result) => result?,
            }
            let data = buf.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            *active = true;
            let mut offset = 0;
            while offset < data.len() {
                match Pin::new(&mut *writer).poll_write(cx, &data[offset..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => offset += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = data[offset..].to_vec();
                        self.written = 0;
                        self.needs_flush = true;
                        return Poll::Pending;
                    }
                }
            }
            self.needs_flush = true;
        }
    }
}

/// Copies bytes both ways between a client and a backend until both directions end, either
/// fails, or no byte moved for an idle period.
pub struct Pipe<D, U> {
    to_upstream: Direction,
    to_downstream: Direction,
    idle_period: Duration,
    idle: Pin<Box<Sleep>>,
    active: bool,
    downstream: D,
    upstream: U,
}

impl<D, U> Pipe<D, U>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// A pipe between `downstream` (the client) and `upstream` (the backend).
    pub fn new(downstream: D, upstream: U, idle_period: Duration) -> Self {
        Pipe {
            to_upstream: Direction::default(),
            to_downstream: Direction::default(),
            idle_period,
            idle: Box::pin(tokio::time::sleep(idle_period)),
            active: false,
            downstream,
            upstream,
        }
    }
}

impl<D, U> Future for Pipe<D, U>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.to_downstream.done
            && let Poll::Ready(result) = this.to_downstream.poll_copy(
                cx,
                &mut this.upstream,
                &mut this.downstream,
                &mut this.active,
            )
        {
            result?;
            this.to_downstream.done = true;
        }
        if !this.to_upstream.done
            && let Poll::Ready(result) = this.to_upstream.poll_copy(
                cx,
                &mut this.downstream,
                &mut this.upstream,
                &mut this.active,
            )
        {
            result?;
            this.to_upstream.done = true;
        }
        if this.to_upstream.done && this.to_downstream.done {
            return Poll::Ready(Ok(()));
        }
        // Checked once per idle period rather than re-armed per frame: frames only set a flag.
        while this.idle.as_mut().poll(cx).is_ready() {
            if !std::mem::take(&mut this.active) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tunnel idle timeout",
                )));
            }
            let next = Instant::now() + this.idle_period;
            this.idle.as_mut().reset(next);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_and_ends_on_close() {
        let (client, proxy_down) = duplex(64);
        let (proxy_up, server) = duplex(64);
        let pipe = tokio::spawn(Pipe::new(proxy_down, proxy_up, Duration::from_secs(10)));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut server_read, mut server_write) = tokio::io::split(server);
        // More than the duplex capacity, so the pending path is exercised.
        let big = vec![7u8; 100_000];
        let sender = {
            let big = big.clone();
            tokio::spawn(async move {
                server_write.write_all(&big).await.expect("write");
                server_write.shutdown().await.expect("shutdown");
            })
        };
        let mut got = Vec::new();
        client_read.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, big);
        sender.await.expect("sender");
        client_write.write_all(b"pong").await.expect("write");
        client_write.shutdown().await.expect("shutdown");
        let mut echoed = Vec::new();
        server_read.read_to_end(&mut echoed).await.expect("read");
        assert_eq!(echoed, b"pong");
        pipe.await.expect("join").expect("pipe");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_time_out_but_busy_ones_do_not() {
        let (mut client, proxy_down) = duplex(64);
        let (proxy_up, mut server) = duplex(64);
        let mut pipe = Box::pin(Pipe::new(proxy_down, proxy_up, Duration::from_secs(10)));
        // Traffic every 6 s keeps it open past several periods.
        for _ in 0..5 {
            tokio::select! {
                _ = &mut pipe => panic!("closed while busy"),
                () = tokio::time::sleep(Duration::from_secs(6)) => {}
            }
            client.write_all(b"2").await.expect("write");
            let mut b = [0u8; 1];
            tokio::select! {
                _ = &mut pipe => panic!("closed while busy"),
                r = server.read_exact(&mut b) => { r.expect("read"); }
            }
        }
        let err = pipe.await.expect_err("idle timeout");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn upgrade_answer_is_parsed_with_early_frames() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x020x")
                .await
                .expect("write");
        });
        let mut req = RequestHeader::build("GET", b"/socket.io/?EIO=4", None).expect("req");
        req.insert_header("x-real-ip", "6.6.6.6").expect("header");
        let client = "10.0.0.1".parse().expect("ip");
        let head = request_head(
            &req,
            "/socket.io/?EIO=4&transport=websocket",
            "10.0.0.1",
            client,
        );
        assert!(head.ends_with(b"x-forwarded-for: 10.0.0.1\r\nx-real-ip: 10.0.0.1\r\n\r\n"));
        assert!(
            !head.windows(7).any(|w| w == b"6.6.6.6"),
            "the client's own x-real-ip is dropped"
        );
        let answer = open(addr, &head, Duration::from_secs(1), Duration::from_secs(1))
            .await
            .expect("answer");
        assert_eq!(answer.status, 101);
        assert_eq!(answer.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(&answer.buffered[answer.head_len..], b"\x81\x020x");
    }

    #[tokio::test]
    async fn refused_and_hanging_backends_are_told_apart() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let err = open(
            addr,
            b"GET / HTTP/1.1\r\n\r\n",
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, TunnelError::Connect(_)));

        let hanging = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = hanging.local_addr().expect("addr");
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hanging.accept().await {
                held.push(s);
            }
        });
        let err = open(
            addr,
            b"GET / HTTP/1.1\r\n\r\n",
            Duration::from_secs(1),
            Duration::from_millis(100),
        )
        .await
        .expect_err("timeout");
        assert!(matches!(err, TunnelError::ResponseTimeout));
    }
}
