//! The pingora [`ProxyHttp`](pingora::proxy::ProxyHttp) service: routes every request (see
//! [`crate::routing`]), tags the sid of polling handshakes, strips it on the way in, answers
//! Engine.IO errors itself, forwards polling requests of known sessions on a lean path of its
//! own, and turns WebSocket upgrades into raw tunnels.
//!
//! A request reads top to bottom through: `client` (who the client is), `hooks` (pingora's
//! hooks in the order a request meets them), `answers` (what the proxy answers itself),
//! `polling` (a polling request of a known session forwarded from `request_filter` over a
//! connection of `pool`, pingora's proxy path skipped) and `upgrade` (a WebSocket handshake
//! with the node, then the splice into [`crate::tunnel`]).
//! This file holds the service and the state a request carries across the hooks.

mod answers;
mod client;
mod hooks;
mod polling;
mod pool;
mod upgrade;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use answers::SESSION_UNKNOWN_BODY;

use crate::admission::{Admission, ClientSlot};
use crate::backends::{ActiveGuard, Backend, BackendSet};
use crate::config::{Balance, IpNet};
use crate::forward::{self, PathPrefix};
use crate::metrics::Metrics;
use crate::routing::{self, Tag, Transport};

/// Largest polling handshake answer buffered for the sid rewrite.
const MAX_HANDSHAKE_BODY: usize = 64 * 1024;
/// Backends tried for one new session before giving up.
const MAX_CONNECT_ATTEMPTS: usize = 4;
/// Idle time of pooled upstream connections. Kept below sio-node's 10 s header read timeout,
/// after which a node closes an idle keep-alive connection: a pooled connection reused just
/// as the node closes it fails the request on it, and a polling POST is not retried.
const UPSTREAM_POOL_IDLE: Duration = Duration::from_secs(5);
/// Idle upstream connections of the polling path kept per backend: one per long-polling
/// client that a burst of answers frees at once.
const UPSTREAM_POOL_PER_BACKEND: usize = 16_384;

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
    /// Path prefixes forwarded to the nodes; the proxy answers 404 to any other path.
    pub forward_paths: Vec<PathPrefix>,
}

/// The proxy service.
pub struct SioProxy {
    backends: Arc<BackendSet>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    settings: ProxySettings,
    not_forwarded_body: Vec<u8>,
    /// Idle connections to the nodes for the polling path.
    pool: pool::UpstreamPool,
}

impl SioProxy {
    /// A proxy over `backends`, admitting clients with `admission`.
    pub fn new(
        backends: Arc<BackendSet>,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
        settings: ProxySettings,
    ) -> Self {
        SioProxy {
            backends,
            metrics,
            admission,
            not_forwarded_body: forward::not_forwarded_body(&settings.forward_paths),
            pool: pool::UpstreamPool::new(UPSTREAM_POOL_IDLE, UPSTREAM_POOL_PER_BACKEND),
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
    /// This request counted as a connection of a client behind a trusted peer.
    slot: Option<ClientSlot>,
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

impl SioProxy {
    /// A backend for a new session that has not failed this request yet.
    fn pick(&self, ctx: &RequestCtx) -> Option<Arc<Backend>> {
        self.backends.snapshot().pick(
            self.settings.balance,
            &routing::client_key(ctx.client_ip),
            &ctx.tried,
        )
    }
}
