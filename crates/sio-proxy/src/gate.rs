//! The door of the client-facing listener: every accepted connection passes
//! [`Admission::accept`] before pingora sees it, and is closed when its request head is late.
//!
//! pingora reads a request head with a 60 s timeout per read (a byte every 59 s keeps a
//! connection forever) and offers no hook before the head is complete, so the proxy wraps
//! pingora's HTTP application in [`Gate`], a [`ServerApp`] of its own: it admits the connection,
//! wraps its stream in an [`AdmittedStream`] (which notices the first byte of each later head on
//! a keep-alive connection), and races pingora's processing against the head deadline. A late
//! head drops pingora's future, which closes the connection without an error log. The hooks
//! mark each head complete ([`head_done`]) and each request answered ([`request_done`]); a
//! WebSocket upgrade takes the raw stream back out ([`into_parts`]) so tunnels copy bytes with
//! no wrapper in the way.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, IO, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admission::{Admission, Ticket};
use crate::metrics::{Metrics, Refusal};

/// A [`ServerApp`] that admits connections before handing them to `app`.
pub struct Gate<A> {
    app: Arc<A>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
}

impl<A> Gate<A> {
    /// Puts `app` behind `admission`.
    pub fn new(app: A, admission: Arc<Admission>, metrics: Arc<Metrics>) -> Self {
        Gate {
            app: Arc::new(app),
            admission,
            metrics,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Gate<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let ticket = match self.admission.accept(peer) {
            Ok(ticket) => Arc::new(ticket),
            Err(refusal) => {
                // Dropping the stream closes the connection at once.
                tracing::debug!(?peer, reason = refusal.as_str(), "connection refused");
                self.metrics.refused(refusal);
                return None;
            }
        };
        let stream: Stream = Box::new(AdmittedStream {
            inner: stream,
            ticket: ticket.clone(),
        });
        tokio::select! {
            biased;
            reused = self.app.process_new(stream, shutdown) => reused,
            () = ticket.head_late() => {
                tracing::debug!(?peer, "request head late; connection closed");
                self.metrics.refused(Refusal::HeaderTimeout);
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// A client connection admitted by the [`Gate`]; its [`Ticket`] is released when the
/// connection closes.
#[derive(Debug)]
pub struct AdmittedStream {
    inner: Stream,
    ticket: Arc<Ticket>,
}

fn admitted(session: &Session) -> Option<&AdmittedStream> {
    let stream: &dyn IO = &**session.as_downstream().stream()?;
    stream.as_any().downcast_ref::<AdmittedStream>()
}

/// The request head of `session` is complete: its deadline no longer runs.
pub fn head_done(session: &Session) {
    if let Some(stream) = admitted(session) {
        stream.ticket.head_done();
    }
}

/// The request of `session` is answered; the next head's deadline starts with its first byte.
pub fn request_done(session: &Session) {
    if let Some(stream) = admitted(session) {
        stream.ticket.request_done();
    }
}

/// The raw connection and the ticket that keeps it counted (for a tunnel, which outlives
/// pingora's session). A stream that did not pass a gate comes back as is.
pub fn into_parts(stream: Stream) -> (Stream, Option<Arc<Ticket>>) {
    let io: &dyn IO = &*stream;
    if !io.as_any().is::<AdmittedStream>() {
        return (stream, None);
    }
    let any: Box<dyn std::any::Any> = IO::into_any(stream);
    match any.downcast::<AdmittedStream>() {
        Ok(admitted) => (admitted.inner, Some(admitted.ticket)),
        // Checked above: cannot happen. The connection is gone with the box.
        Err(_) => (Box::new(tokio::io::duplex(1).0), None),
    }
}

impl AdmittedStream {
    /// The peer's IP, when it is a TCP peer.
    pub fn peer_ip(&self) -> Option<IpAddr> {
        self.inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
    }
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.ticket.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for AdmittedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for AdmittedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for AdmittedStream {}

impl GetTimingDigest for AdmittedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for AdmittedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for AdmittedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for AdmittedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
