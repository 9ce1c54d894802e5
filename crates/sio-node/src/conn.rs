//! Accepted connections that the node can close on its own terms.
//!
//! Draining must make every client reconnect elsewhere. An Engine.IO `close` or a Socket.IO
//! server-side disconnect would tell the official client not to reconnect, so WebSocket
//! connections are instead closed at the transport (the client sees `transport close` and
//! reconnects at once). [`Listener`] hands out [`Conn`]s whose [`ConnHandle`] can cut
//! them; every request carries the handle of its connection in [`ConnInfo`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::admin::traffic::{Traffic, WireMeter};

#[derive(Debug, Default)]
struct ConnState {
    killed: AtomicBool,
    /// Set when the connection is gone (its [`Conn`] dropped).
    closed: AtomicBool,
    reader: AtomicWaker,
    /// Set once the connection carries a WebSocket (its traffic is then metered).
    websocket: AtomicBool,
    /// The Engine.IO session of that WebSocket, when the upgrade named it.
    sid: std::sync::OnceLock<Arc<str>>,
}

/// Closes one accepted connection.
#[derive(Debug, Clone, Default)]
pub struct ConnHandle(Arc<ConnState>);

impl ConnHandle {
    /// Makes every further read and write of the connection fail, waking a pending read,
    /// so whoever drives it (hyper, the WebSocket) drops it and the socket closes.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        self.0.reader.wake();
    }

    /// True once killed.
    pub fn is_killed(&self) -> bool {
        self.0.killed.load(Ordering::SeqCst)
    }

    /// True once the connection is gone (closed by either side).
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// Records that the connection is gone.
    pub(crate) fn mark_closed(&self) {
        self.0.closed.store(true, Ordering::Release);
    }

    /// The connection now carries the WebSocket of session `sid`: meter its frames (see
    /// [`crate::admin::traffic`]).
    pub fn meter_websocket(&self, sid: Option<Arc<str>>) {
        if let Some(sid) = sid {
            let _ = self.0.sid.set(sid);
        }
        self.0.websocket.store(true, Ordering::Release);
    }

    fn metered(&self) -> bool {
        self.0.websocket.load(Ordering::Acquire)
    }
}

/// A TCP connection that a [`ConnHandle`] can cut.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    handle: ConnHandle,
    meter: Option<WireMeter>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.handle.mark_closed();
    }
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the node (draining)",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.handle.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        self.handle.0.reader.register(cx.waker());
        if self.handle.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && self.handle.metered()
        {
            let this = &mut *self;
            if let Some(meter) = &mut this.meter {
                meter.on_read(&buf.filled()[before..], this.handle.0.sid.get());
            }
        }
        polled
    }
}

impl Conn {
    fn metered_write<'a>(&mut self, written: impl Iterator<Item = &'a [u8]>) {
        if !self.handle.metered() {
            return;
        }
        if let Some(meter) = &mut self.meter {
            let sid = self.handle.0.sid.get();
            for part in written {
                meter.on_write(part, sid);
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.handle.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.metered_write(std::iter::once(&buf[..n]));
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.handle.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            self.metered_write(bufs.iter().map_while(|b| {
                let take = n.min(b.len());
                n -= take;
                (take > 0).then(|| &b[..take])
            }));
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The node's listener: TCP with `TCP_NODELAY` (small Socket.IO frames must not wait for
/// Nagle), handing out killable connections, metered when [`Listener::metered`] is set.
#[derive(Debug)]
pub struct Listener(pub TcpListener, pub Option<Arc<Traffic>>);

impl Listener {
    /// Connections whose WebSocket traffic adds to `traffic`.
    pub fn metered(listener: TcpListener, traffic: Arc<Traffic>) -> Self {
        Self(listener, Some(traffic))
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = Conn {
                        stream,
                        handle: ConnHandle::default(),
                        meter: self.1.clone().map(WireMeter::new),
                    };
                    return (conn, addr);
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::error!("accept failed: {e} (open-files limit reached?)");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Peer address and kill switch of the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Closes the connection.
    pub handle: ConnHandle,
}

impl Connected<IncomingStream<'_, Listener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        ConnInfo {
            peer: *stream.remote_addr(),
            handle: stream.io().handle.clone(),
        }
    }
}

/// Longest a client may take to send a request's headers; hyper also counts the idle time of
/// a keep-alive connection before its next request (sio-proxy pools for less than this).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (and read buffer) accepted, bytes; a larger one gets `431`.
pub const MAX_HEAD_SIZE: usize = 64 * 1024;

/// Serves `app` over HTTP/1.1 (with upgrades) on `listener` until `stop` is cancelled, then
/// lets every open connection finish its current request.
///
/// Why not `axum::serve`: HTTP/1.1 only (Socket.IO clients never speak HTTP/2 to a node, and
/// the auto-detecting server keeps more per connection), a header read timeout, a bound on
/// the request head, and the [`ConnInfo`] of each connection in every request.
pub async fn serve(
    mut listener: Listener,
    app: axum::Router,
    stop: tokio_util::sync::CancellationToken,
) {
    use axum::serve::Listener as _;
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let info = ConnInfo {
            peer,
            handle: io.handle.clone(),
        };
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(info.clone()));
                    tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_SIZE)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::trace!(%peer, "connection ended: {e}");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Copies a request's URI and header values out of the connection's read buffer.
///
/// hyper parses without copying: the URI and header values of a request point into the
/// connection's 8 KiB read buffer. socketioxide keeps every socket's handshake request, so
/// that whole buffer would stay allocated for as long as the socket lives; with copies, it is
/// freed once the request is parsed (a few hundred bytes kept instead of 8 KiB).
pub async fn detach_request_head(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (mut parts, body) = req.into_parts();
    let mut headers = axum::http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let mut copy = match axum::http::HeaderValue::from_bytes(value.as_bytes()) {
            Ok(v) => v,
            Err(_) => value.clone(),
        };
        copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), copy);
    }
    parts.headers = headers;
    if let Ok(uri) = axum::http::Uri::try_from(parts.uri.to_string()) {
        // axum keeps a clone of the original URI in the extensions: copy it too.
        if let Some(original) = parts.extensions.get_mut::<axum::extract::OriginalUri>() {
            original.0 = uri.clone();
        }
        parts.uri = uri;
    }
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn killing_wakes_a_pending_read_and_fails_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = Listener(listener, None);
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (mut conn, _) = axum::serve::Listener::accept(&mut listener).await;
        let _client = client.await.unwrap();
        let handle = conn.handle.clone();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let r = conn.read(&mut buf).await;
            (r, conn)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.kill();
        let (r, mut conn) = tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        assert!(conn.write_all(b"x").await.is_err());
    }
}
