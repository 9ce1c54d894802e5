//! The pingora hooks, in the order a request meets them: a new context, the head complete,
//! the routing decision (answered here, upgraded to a tunnel, or forwarded), the upstream
//! peer and connection (with a retry elsewhere for a new session), the request and answer
//! heads, the handshake body's sid rewrite, failures, and the request's metrics.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::answers::{
    BAD_GATEWAY_BODY, BAD_REQUEST_BODY, INTERNAL_BODY, NO_BACKEND_BODY, SESSION_UNKNOWN_BODY,
    TIMEOUT_BODY, client_left, respond, respond_json, respond_refused,
};
use super::client::client_identity;
use super::polling;
use super::{
    Failure, HandshakeRewrite, MAX_CONNECT_ATTEMPTS, MAX_HANDSHAKE_BODY, RequestCtx, SioProxy,
    Target, UPSTREAM_POOL_IDLE, connect_failed,
};
use crate::forward;
use crate::gate;
use crate::metrics::{Outcome, Refusal};
use crate::routing::{self, Route, TAG_LEN, Transport};

#[async_trait]
impl ProxyHttp for SioProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            started: Instant::now(),
            transport: Transport::Other,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            forwarded_for: String::new(),
            target: None,
            tried: Vec::new(),
            rewrite: None,
            failure: None,
            tunnel: false,
            slot: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        gate::head_done(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let req = session.req_header();
        if req.uri.path() == "/healthz" && req.uri.query().is_none() {
            respond(session, 200, "text/plain", b"ok").await?;
            return Ok(true);
        }
        if !forward::is_forwarded(req.uri.path(), &self.settings.forward_paths) {
            self.metrics.routed(Outcome::NotForwarded);
            respond_json(session, 404, &self.not_forwarded_body).await?;
            return Ok(true);
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let forwarded: Vec<&[u8]> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let (client_ip, forwarded_for) =
            client_identity(peer, &forwarded, &self.settings.trust_forwarded);
        ctx.client_ip = client_ip;
        ctx.forwarded_for = forwarded_for;
        if peer.is_some_and(|p| self.admission.is_trusted(p)) {
            match self.admission.client_slot(client_ip) {
                Ok(slot) => ctx.slot = Some(slot),
                Err(refusal) => {
                    self.metrics.refused(refusal);
                    respond_refused(session, refusal).await?;
                    return Ok(true);
                }
            }
        }
        let req = session.req_header();

        let route = routing::route(
            req,
            client_ip,
            &self.backends.snapshot(),
            self.settings.balance,
            &[],
        );
        ctx.transport = route.transport();
        let is_get = req.method == http::Method::GET;
        let upgrade = ctx.transport == Transport::WebSocket && session.is_upgrade_req();
        if matches!(
            route,
            Route::Balanced {
                handshake: true,
                ..
            }
        ) && !self.admission.take_handshake(client_ip)
        {
            tracing::debug!(%client_ip, "handshake over the rate; 429");
            self.metrics.refused(Refusal::HandshakeRate);
            respond_refused(session, Refusal::HandshakeRate).await?;
            return Ok(true);
        }
        match route {
            Route::UnknownSession(_) => {
                self.metrics.routed(Outcome::UnknownTag);
                respond_json(session, 400, SESSION_UNKNOWN_BODY).await?;
                Ok(true)
            }
            Route::NoHealthyBackend(_) => {
                self.metrics.routed(Outcome::NoHealthyBackend);
                respond_json(session, 503, NO_BACKEND_BODY).await?;
                Ok(true)
            }
            Route::Session { backend, path, .. } if upgrade => {
                self.open_tunnel(session, ctx, backend, path, true).await
            }
            Route::Balanced { backend, .. } if upgrade => {
                let path = session.req_header().uri.to_string();
                self.open_tunnel(session, ctx, backend, path, false).await
            }
            Route::Session {
                backend,
                transport: Transport::Polling,
                path,
            } if polling::eligible(req) => {
                self.forward_polling(session, ctx, backend, path, is_get)
                    .await
            }
            Route::Session {
                backend,
                transport,
                path,
            } => {
                ctx.target = Some(Target {
                    guard: backend.track(),
                    handshake: false,
                    tagged: true,
                    long_poll: transport == Transport::Polling && is_get,
                    path: Some(path),
                });
                Ok(false)
            }
            Route::Balanced {
                backend, handshake, ..
            } => {
                ctx.target = Some(Target {
                    guard: backend.track(),
                    handshake,
                    tagged: false,
                    long_poll: false,
                    path: None,
                });
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(target) = ctx.target.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "request without a route");
        };
        let mut peer = HttpPeer::new(target.backend().addr, false, String::new());
        peer.options.connection_timeout = Some(self.settings.connect_timeout);
        peer.options.read_timeout = Some(if target.long_poll {
            self.settings.tunnel_idle_timeout
        } else {
            self.settings.response_timeout
        });
        peer.options.write_timeout = Some(self.settings.tunnel_idle_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_POOL_IDLE);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(target) = &ctx.target {
            if target.tagged {
                self.metrics.routed(Outcome::TaggedHit);
            } else if target.handshake {
                self.metrics.routed(Outcome::Handshake);
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(target) = ctx.target.take() else {
            return e;
        };
        let backend = target.backend().clone();
        connect_failed(&backend, e.etype() == &ErrorType::ConnectTimedout, &e);
        if target.tagged {
            self.metrics.routed(Outcome::BackendGone);
            ctx.failure = Some(Failure::BackendGone);
            e.set_retry(false);
            return e;
        }
        ctx.tried.push(backend.addr);
        match self
            .pick(ctx)
            .filter(|_| ctx.tried.len() < MAX_CONNECT_ATTEMPTS)
        {
            Some(next) => {
                ctx.target = Some(Target {
                    guard: next.track(),
                    ..target
                });
                e.set_retry(true);
            }
            None => {
                self.metrics.routed(Outcome::NoHealthyBackend);
                ctx.failure = Some(Failure::NoHealthyBackend);
                e.set_retry(false);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(target) = &ctx.target {
            if let Some(path) = &target.path {
                let uri = path
                    .parse::<http::Uri>()
                    .map_err(|e| Error::because(ErrorType::InternalError, "rewritten target", e))?;
                upstream_request.set_uri(uri);
            }
            if target.handshake {
                // The open packet is rewritten in flight: it must come uncompressed.
                upstream_request.remove_header("accept-encoding");
            }
        }
        upstream_request.insert_header("x-forwarded-for", &ctx.forwarded_for)?;
        // the client as this proxy resolved it (after --trust-forwarded), replacing any the
        // client sent: what a node may count per address
        upstream_request.insert_header("x-real-ip", ctx.client_ip.to_string())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(target) = &ctx.target else {
            return Ok(());
        };
        if !(target.handshake
            && ctx.transport == Transport::Polling
            && upstream_response.status == http::StatusCode::OK)
        {
            return Ok(());
        }
        target.backend().metrics().handshake(Transport::Polling);
        let length = upstream_response
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let exact_length = match length {
            Some(length) => {
                upstream_response
                    .insert_header("content-length", (length + TAG_LEN).to_string())?;
                true
            }
            None => false,
        };
        ctx.rewrite = Some(HandshakeRewrite {
            tag: target.backend().tag,
            body: Vec::with_capacity(length.unwrap_or(256).min(MAX_HANDSHAKE_BODY) + TAG_LEN),
            exact_length,
        });
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        let Some(rewrite) = ctx.rewrite.as_mut() else {
            return Ok(None);
        };
        if let Some(chunk) = body.take() {
            if rewrite.body.len() + chunk.len() > MAX_HANDSHAKE_BODY {
                self.metrics.rewrite_error();
                return Error::e_explain(ErrorType::InternalError, "handshake answer too large");
            }
            rewrite.body.extend_from_slice(&chunk);
        }
        if end_of_stream {
            let Some(rewrite) = ctx.rewrite.take() else {
                return Ok(None);
            };
            match routing::rewrite_handshake(&rewrite.body, &rewrite.tag) {
                Some(tagged) => *body = Some(Bytes::from(tagged)),
                None => {
                    self.metrics.rewrite_error();
                    if rewrite.exact_length {
                        return Error::e_explain(
                            ErrorType::InternalError,
                            "polling handshake answer without a sid",
                        );
                    }
                    *body = Some(Bytes::from(rewrite.body));
                }
            }
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, error: &Error) -> bool {
        // Answered by the proxy itself, or a client that left (closing a tab ends its pending
        // long-poll): neither is an error of the proxy.
        ctx.failure.is_some() || client_left(error)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (status, body): (u16, &[u8]) = match ctx.failure {
            Some(Failure::BackendGone) => (400, SESSION_UNKNOWN_BODY),
            Some(Failure::NoHealthyBackend) => (503, NO_BACKEND_BODY),
            None if client_left(e) => (0, b""),
            None => match (e.esource(), e.etype()) {
                (_, ErrorType::HTTPStatus(code)) => (*code, BAD_REQUEST_BODY),
                (
                    ErrorSource::Upstream,
                    ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                ) => (504, TIMEOUT_BODY),
                (ErrorSource::Upstream, _) => (502, BAD_GATEWAY_BODY),
                (ErrorSource::Downstream, _) => (400, BAD_REQUEST_BODY),
                _ => (500, INTERNAL_BODY),
            },
        };
        let status = if session.response_written().is_some() {
            0
        } else {
            status
        };
        if status > 0
            && let Err(err) = respond_json(session, status, body).await
        {
            tracing::debug!(error = %err, "cannot send the error answer");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        gate::request_done(session);
        if ctx.tunnel {
            return;
        }
        match &ctx.target {
            Some(target) => target.backend().metrics().request(ctx.transport),
            None => self.metrics.request_without_backend(ctx.transport),
        }
        self.metrics
            .observe_duration(ctx.transport, ctx.started.elapsed().as_secs_f64());
    }
}
