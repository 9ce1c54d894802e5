//! The pingora [`ProxyHttp`] service: routes every request (see [`crate::routing`]), tags the
//! sid of polling handshakes, strips it on the way in, answers Engine.IO errors itself, and
//! turns WebSocket upgrades into raw tunnels (see [`crate::tunnel`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use tokio::io::AsyncWriteExt;

use crate::backends::{ActiveGuard, Backend, BackendSet};
use crate::config::{Balance, IpNet};
use crate::metrics::{Metrics, Outcome};
use crate::routing::{self, Route, TAG_LEN, Tag, Transport};
use crate::tunnel::{self, Pipe, TunnelError};

/// Engine.IO's answer for a sid the server does not know: the client reconnects at once.
pub const SESSION_UNKNOWN_BODY: &[u8] = br#"{"code":1,"message":"Session ID unknown"}"#;
const NO_BACKEND_BODY: &[u8] = br#"{"code":503,"message":"No healthy backend available"}"#;
const BAD_GATEWAY_BODY: &[u8] = br#"{"code":502,"message":"Backend unavailable"}"#;
const TIMEOUT_BODY: &[u8] = br#"{"code":504,"message":"Backend did not answer in time"}"#;
const BAD_REQUEST_BODY: &[u8] = br#"{"code":400,"message":"Bad request"}"#;
const INTERNAL_BODY: &[u8] = br#"{"code":500,"message":"Proxy error"}"#;
/// Largest polling handshake answer buffered for the sid rewrite.
const MAX_HANDSHAKE_BODY: usize = 64 * 1024;
/// Backends tried for one new session before giving up.
const MAX_CONNECT_ATTEMPTS: usize = 4;
/// Idle time of pooled upstream connections. Kept below sio-node's 10 s header read timeout,
/// after which a node closes an idle keep-alive connection: a pooled connection reused just
/// as the node closes it fails the request on it, and a polling POST is not retried.
const UPSTREAM_POOL_IDLE: Duration = Duration::from_secs(5);

/// Per-request behaviour of the proxy, from the configuration.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// How new sessions are balanced.
    pub balance: Balance,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trust_forwarded: Vec<IpNet>,
    /// Idle timeout of tunnels and long-polls.
    pub tunnel_idle_timeout: Duration,
    /// Wait for answers that come at once.
    pub response_timeout: Duration,
    /// TCP connect timeout towards backends.
    pub connect_timeout: Duration,
}

/// The proxy service.
pub struct SioProxy {
    backends: Arc<BackendSet>,
    metrics: Arc<Metrics>,
    settings: ProxySettings,
}

impl SioProxy {
    /// A proxy over `backends`.
    pub fn new(backends: Arc<BackendSet>, metrics: Arc<Metrics>, settings: ProxySettings) -> Self {
        SioProxy {
            backends,
            metrics,
            settings,
        }
    }
}

/// Why the proxy answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    BackendGone,
    NoHealthyBackend,
}

/// The backend chosen for a request.
#[derive(Debug)]
struct Target {
    guard: ActiveGuard,
    handshake: bool,
    tagged: bool,
    long_poll: bool,
    path: Option<String>,
}

impl Target {
    fn backend(&self) -> &Arc<Backend> {
        self.guard.backend()
    }
}

/// The sid rewrite of a polling handshake answer in progress.
#[derive(Debug)]
struct HandshakeRewrite {
    tag: Tag,
    body: Vec<u8>,
    exact_length: bool,
}

/// State of one request across pingora's hooks.
#[derive(Debug)]
pub struct RequestCtx {
    started: Instant,
    transport: Transport,
    client_ip: IpAddr,
    forwarded_for: String,
    target: Option<Target>,
    tried: Vec<SocketAddr>,
    rewrite: Option<HandshakeRewrite>,
    failure: Option<Failure>,
    tunnel: bool,
}

/// The client address and the `X-Forwarded-For` to send upstream.
fn client_identity(
    peer: Option<IpAddr>,
    forwarded: &[&[u8]],
    trusted: &[IpNet],
) -> (IpAddr, String) {
    let Some(peer) = peer else {
        return (IpAddr::V4(Ipv4Addr::UNSPECIFIED), String::new());
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) || forwarded.is_empty() {
        return (peer, peer.to_string());
    }
    let chain: Vec<&str> = forwarded
        .iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    // The client is the rightmost address that is not one of our trusted hops.
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let mut header = chain.join(", ");
    if !header.is_empty() {
        header.push_str(", ");
    }
    header.push_str(&peer.to_string());
    (client, header)
}

async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::copy_from_slice(body)), true)
        .await
}

/// Counts a failed connection to `backend`; a refused one takes it out of rotation at once,
/// a timed-out one after [`crate::backends::MISSES_BEFORE_UNREADY`] in a row, until a health
/// check passes.
fn connect_failed(backend: &Backend, timed_out: bool, error: &dyn std::fmt::Display) {
    backend.metrics().connect_error();
    let was_ready = if timed_out {
        backend.missed()
    } else {
        backend.set_ready(false)
    };
    if was_ready && !backend.is_ready() {
        tracing::warn!(backend = %backend.addr, %error, "backend unreachable; no new sessions until it passes a health check");
    }
}

/// Whether `e` only says that the client went away.
fn client_left(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

async fn respond_json(session: &mut Session, status: u16, body: &[u8]) -> Result<()> {
    respond(session, status, "application/json", body).await
}

impl SioProxy {
    fn pick(&self, ctx: &RequestCtx) -> Option<Arc<Backend>> {
        self.backends.snapshot().pick(
            self.settings.balance,
            &routing::client_key(ctx.client_ip),
            &ctx.tried,
        )
    }

    /// A WebSocket upgrade: handshake with the backend ourselves, then a raw tunnel.
    async fn open_tunnel(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut backend: Arc<Backend>,
        path: String,
        tagged: bool,
    ) -> Result<bool> {
        let head = tunnel::request_head(session.req_header(), &path, &ctx.forwarded_for);
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
        let mut downstream = match taken {
            ServerSession::H1(h1) => h1.into_inner(),
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
        metrics.tunnel_opened();
        tokio::spawn(async move {
            let result = Pipe::new(downstream, upstream, idle).await;
            metrics.tunnel_closed();
            drop(guard);
            if let Err(e) = result {
                tracing::debug!(backend = %backend.addr, error = %e, "tunnel closed");
            }
        });
        Ok(true)
    }
}

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
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let req = session.req_header();
        if req.uri.path() == "/healthz" && req.uri.query().is_none() {
            respond(session, 200, "text/plain", b"ok").await?;
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

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    #[test]
    fn only_a_client_going_away_counts_as_one() {
        assert!(client_left(&Error::new_down(ErrorType::ConnectionClosed)));
        assert!(client_left(&Error::new_down(ErrorType::WriteError)));
        assert!(!client_left(&Error::new_up(ErrorType::ConnectionClosed)));
        assert!(!client_left(&Error::new_down(ErrorType::InvalidHTTPHeader)));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let peer: IpAddr = "10.0.0.2".parse().expect("ip");
        let header: &[&[u8]] = &[b"203.0.113.9, 10.0.0.7"];
        let (client, xff) = client_identity(Some(peer), header, &[]);
        assert_eq!(client, peer);
        assert_eq!(xff, "10.0.0.2");

        let (client, xff) = client_identity(Some(peer), header, &nets(&["10.0.0.0/8"]));
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().expect("ip"));
        assert_eq!(xff, "203.0.113.9, 10.0.0.7, 10.0.0.2");

        let (client, _) = client_identity(Some(peer), &[b"garbage"], &nets(&["10.0.0.0/8"]));
        assert_eq!(client, peer);
        let (client, xff) = client_identity(Some(peer), &[], &nets(&["10.0.0.0/8"]));
        assert_eq!((client, xff.as_str()), (peer, "10.0.0.2"));
    }
}

/// Property tests of `X-Forwarded-For` handling: any header gets an answer, an untrusted peer
/// is never overruled, and the header sent upstream always ends with the real peer.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    proptest! {
        #[test]
        fn any_header_gets_an_answer(
            peer in ip(),
            headers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
            trust_all in any::<bool>(),
        ) {
            let trusted: Vec<IpNet> = if trust_all {
                vec!["0.0.0.0/0".parse().expect("net"), "::/0".parse().expect("net")]
            } else {
                Vec::new()
            };
            let refs: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
            let (client, header) = client_identity(Some(peer), &refs, &trusted);
            prop_assert!(header.ends_with(&peer.to_string()));
            if !trust_all {
                prop_assert_eq!(client, peer);
                prop_assert_eq!(header, peer.to_string());
            }
        }

        #[test]
        fn the_client_is_the_rightmost_untrusted_hop(
            mut chain in prop::collection::vec(ip(), 1..6),
            peer in any::<[u8; 4]>(),
            hops in 0usize..3,
        ) {
            // Trust only the peer's address, which may also appear as the last hops of the chain:
            // those are skipped, the next address is the client.
            let peer = IpAddr::from(peer);
            chain.extend(std::iter::repeat_n(peer, hops));
            let trusted: Vec<IpNet> = vec![peer.to_string().parse().expect("net")];
            let header = chain.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let (client, sent) = client_identity(Some(peer), &[header.as_bytes()], &trusted);
            let trusted_hop = |ip: &IpAddr| trusted.iter().any(|net| net.contains(*ip));
            let expected = chain
                .iter()
                .rev()
                .find(|ip| !trusted_hop(ip))
                .or(chain.first())
                .copied();
            prop_assert_eq!(Some(client), expected);
            prop_assert_eq!(sent, format!("{header}, {peer}"));
        }
    }
}
