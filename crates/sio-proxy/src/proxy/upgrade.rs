//! A WebSocket upgrade: the proxy does the handshake with the node itself, relays a refusal,
//! or takes the client connection from pingora and splices it to the node (see
//! [`crate::tunnel`]): on the io_uring ring ([`crate::uring`]) when it runs, else with a
//! tokio task per tunnel ([`Pipe`]).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpClientStream;
use pingora::protocols::{IO, Stream};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use tokio::io::AsyncWriteExt;

use super::answers::{
    BAD_GATEWAY_BODY, NO_BACKEND_BODY, SESSION_UNKNOWN_BODY, TIMEOUT_BODY, respond, respond_json,
};
use super::{MAX_CONNECT_ATTEMPTS, RequestCtx, SioProxy, Target, connect_failed};
use crate::backends::{ActiveGuard, Backend};
use crate::gate;
use crate::metrics::Outcome;
use crate::routing::Transport;
use crate::tunnel::{self, Pipe, TunnelError};
use crate::uring;

impl SioProxy {
    /// A WebSocket upgrade: handshake with the backend ourselves, then a raw tunnel.
    pub(super) async fn open_tunnel(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut backend: Arc<Backend>,
        path: String,
        tagged: bool,
    ) -> Result<bool> {
        let head = tunnel::request_head(
            session.req_header(),
            &path,
            &ctx.forwarded_for,
            ctx.client_ip,
        );
        loop {
            let guard = backend.track();
            let opened = tunnel::open(
                backend.addr,
                &head,
                self.settings.connect_timeout,
                self.settings.response_timeout,
            )
            .await;
            match opened {
                Ok(answer) if answer.status == 101 => {
                    self.metrics.routed(if tagged {
                        Outcome::TaggedHit
                    } else {
                        Outcome::Handshake
                    });
                    return self.splice(session, ctx, guard, answer, !tagged).await;
                }
                Ok(mut answer) => {
                    // The node refused the upgrade (e.g. its own 400): relay its answer.
                    self.metrics.routed(if tagged {
                        Outcome::TaggedHit
                    } else {
                        Outcome::Handshake
                    });
                    ctx.target = Some(Target {
                        guard,
                        handshake: !tagged,
                        tagged,
                        long_poll: false,
                        path: None,
                    });
                    let body: Vec<u8> = answer
                        .read_body(self.settings.response_timeout)
                        .await
                        .unwrap_or_default();
                    let content_type = answer
                        .header("content-type")
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .unwrap_or("text/plain")
                        .to_owned();
                    respond(session, answer.status, &content_type, &body).await?;
                    return Ok(true);
                }
                Err(e @ (TunnelError::Connect(_) | TunnelError::ConnectTimeout)) => {
                    let timed_out = matches!(e, TunnelError::ConnectTimeout);
                    connect_failed(&backend, timed_out, &e);
                    drop(guard);
                    if tagged {
                        self.metrics.routed(Outcome::BackendGone);
                        respond_json(session, 400, SESSION_UNKNOWN_BODY).await?;
                        return Ok(true);
                    }
                    ctx.tried.push(backend.addr);
                    match self
                        .pick(ctx)
                        .filter(|_| ctx.tried.len() < MAX_CONNECT_ATTEMPTS)
                    {
                        Some(next) => backend = next,
                        None => {
                            self.metrics.routed(Outcome::NoHealthyBackend);
                            respond_json(session, 503, NO_BACKEND_BODY).await?;
                            return Ok(true);
                        }
                    }
                }
                Err(TunnelError::ResponseTimeout) => {
                    tracing::warn!(backend = %backend.addr, "backend did not answer a WebSocket upgrade in time");
                    respond_json(session, 504, TIMEOUT_BODY).await?;
                    return Ok(true);
                }
                Err(e) => {
                    tracing::warn!(backend = %backend.addr, error = %e, "WebSocket upgrade failed");
                    respond_json(session, 502, BAD_GATEWAY_BODY).await?;
                    return Ok(true);
                }
            }
        }
    }

    /// Takes the client connection from pingora and copies raw bytes until the tunnel ends.
    async fn splice(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        guard: ActiveGuard,
        answer: tunnel::UpstreamAnswer,
        handshake: bool,
    ) -> Result<bool> {
        // pingora keeps running its request hooks on what we leave behind: an empty session
        // that it finishes and drops without keep-alive.
        let placeholder =
            ServerSession::new_http1(Box::new(std::io::Cursor::new(Vec::<u8>::new())));
        let taken = std::mem::replace(&mut *session.downstream_session, placeholder);
        let (mut downstream, ticket) = match taken {
            ServerSession::H1(h1) => gate::into_parts(h1.into_inner()),
            other => {
                *session.downstream_session = other;
                return Error::e_explain(
                    ErrorType::InternalError,
                    "upgrade on a non-HTTP/1 session",
                );
            }
        };
        ctx.tunnel = true;
        let backend = guard.backend().clone();
        let metrics = backend.metrics().clone();
        metrics.request(Transport::WebSocket);
        if handshake {
            metrics.handshake(Transport::WebSocket);
        }
        self.metrics
            .observe_duration(Transport::WebSocket, ctx.started.elapsed().as_secs_f64());
        // The answer head first, on its own: the frames the node sent right after it follow in
        // their own segment, as they would reach a client connected to the node directly
        // (clients that only listen for messages once the socket is open rely on it).
        let head_len = answer.head_len.min(answer.buffered.len());
        let written = async {
            downstream.write_all(&answer.buffered[..head_len]).await?;
            downstream.flush().await?;
            if head_len < answer.buffered.len() {
                downstream.write_all(&answer.buffered[head_len..]).await?;
                downstream.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        if let Err(e) = written {
            tracing::debug!(error = %e, "client left during the upgrade");
            return Ok(true);
        }
        let idle = self.settings.tunnel_idle_timeout;
        let upstream = answer.stream;
        // The client's admission counts live as long as its tunnel.
        let slot = ctx.slot.take();
        metrics.tunnel_opened();
        let (downstream, upstream) = match uring::engine() {
            Some(engine) => match detach(downstream, upstream) {
                Ok((client, node)) => {
                    let ended = engine.splice(client, node, idle);
                    tokio::spawn(async move {
                        let result = match ended {
                            Ok(ended) => ended.await.unwrap_or_else(|_| {
                                Err(std::io::Error::other("the tunnel ring stopped"))
                            }),
                            Err(e) => Err(e),
                        };
                        metrics.tunnel_closed();
                        drop((guard, ticket, slot));
                        if let Err(e) = result {
                            tracing::debug!(backend = %backend.addr, error = %e, "tunnel closed");
                        }
                    });
                    return Ok(true);
                }
                Err(streams) => streams,
            },
            None => (downstream, upstream),
        };
        tokio::spawn(async move {
            let result = Pipe::new(downstream, upstream, idle).await;
            metrics.tunnel_closed();
            drop((guard, ticket, slot));
            if let Err(e) = result {
                tracing::debug!(backend = %backend.addr, error = %e, "tunnel closed");
            }
        });
        Ok(true)
    }
}

/// The two sockets of a tunnel, out of tokio's reactor, for the ring: duplicates of their
/// descriptors (the originals close with their tokio owners, which deregister them first).
/// A client connection that is not a plain TCP stream, or a failed `dup` (out of
/// descriptors), leaves both where they were.
fn detach(
    downstream: Stream,
    upstream: tokio::net::TcpStream,
) -> Result<(OwnedFd, OwnedFd), (Stream, tokio::net::TcpStream)> {
    let io: &dyn IO = &*downstream;
    let Some(tcp) = io.as_any().downcast_ref::<TcpClientStream>() else {
        return Err((downstream, upstream));
    };
    let (Ok(client), Ok(node)) = (
        uring::dup_client(tcp),
        upstream.as_fd().try_clone_to_owned(),
    ) else {
        return Err((downstream, upstream));
    };
    drop(downstream);
    drop(upstream);
    Ok((client, node))
}
