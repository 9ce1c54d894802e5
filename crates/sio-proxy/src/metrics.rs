//! Prometheus metrics of the proxy (`sio_proxy_*`) and the process collector, in one registry.
//!
//! Labels are bounded: `backend` is a backend address (its series are removed when the backend
//! leaves), `transport` is `polling`/`websocket`/`other`, `outcome` is a routing outcome. No
//! sid, client IP or user ever becomes a label.

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::routing::Transport;

/// Routing outcome of a request, a label of `sio_proxy_routing_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new Engine.IO session was sent to a balanced backend.
    Handshake,
    /// A request of a live session reached the backend its tag names.
    TaggedHit,
    /// The sid's tag is malformed, forged or names no backend known here.
    UnknownTag,
    /// No healthy, non-draining backend for a new session or another route.
    NoHealthyBackend,
    /// The tagged backend refused the connection: its sessions are gone.
    BackendGone,
    /// A path outside `--forward-paths`, answered 404 by the proxy.
    NotForwarded,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Handshake,
        Outcome::TaggedHit,
        Outcome::UnknownTag,
        Outcome::NoHealthyBackend,
        Outcome::BackendGone,
        Outcome::NotForwarded,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Handshake => "handshake",
            Outcome::TaggedHit => "tagged_hit",
            Outcome::UnknownTag => "unknown_tag",
            Outcome::NoHealthyBackend => "no_healthy_backend",
            Outcome::BackendGone => "backend_gone",
            Outcome::NotForwarded => "not_forwarded",
        }
    }
}

/// Why the proxy refused a connection or a handshake, a label of `sio_proxy_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address holds `--max-connections-per-address` connections: closed at once (429
    /// when the client comes from `X-Forwarded-For`).
    ConnectionsPerAddress,
    /// `--max-pending-heads` connections are sending their head: closed at once.
    PendingHeads,
    /// The address has `--max-pending-heads-per-address` connections sending their head:
    /// closed at once.
    PendingHeadsPerAddress,
    /// No complete request head within `--header-timeout`: closed.
    HeaderTimeout,
    /// The address's handshake bucket (`--handshake-rate`, `--handshake-burst`) is empty: 429.
    HandshakeRate,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::ConnectionsPerAddress,
        Refusal::PendingHeads,
        Refusal::PendingHeadsPerAddress,
        Refusal::HeaderTimeout,
        Refusal::HandshakeRate,
    ];

    /// Metric label, also the `limit` field of the 429 body.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ConnectionsPerAddress => "connections_per_address",
            Refusal::PendingHeads => "pending_heads",
            Refusal::PendingHeadsPerAddress => "pending_heads_per_address",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::HandshakeRate => "handshake_rate",
        }
    }
}

const TRANSPORTS: [Transport; 3] = [Transport::Polling, Transport::WebSocket, Transport::Other];

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Polling => 0,
        Transport::WebSocket => 1,
        Transport::Other => 2,
    }
}

/// Label used for requests the proxy answered itself.
pub const NO_BACKEND: &str = "none";

/// All metrics of one proxy process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    handshakes: IntCounterVec,
    routing: [IntCounter; 6],
    tunnels_open: IntGaugeVec,
    tunnels_total: IntCounterVec,
    connect_errors: IntCounterVec,
    request_duration: HistogramVec,
    backend_healthy: IntGaugeVec,
    backend_draining: IntGaugeVec,
    backends: IntGaugeVec,
    rewrite_errors: IntCounter,
    discovery_errors: IntCounterVec,
    open_sessions: IntGauge,
    refused: [IntCounter; 5],
    pending_heads: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric, including the process collector.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sio_proxy_requests_total",
                "HTTP requests and WebSocket upgrades proxied, by backend and transport",
            ),
            &["backend", "transport"],
        )?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "sio_proxy_handshakes_total",
                "Engine.IO sessions opened through the proxy, by backend and transport",
            ),
            &["backend", "transport"],
        )?;
        let routing_vec = IntCounterVec::new(
            Opts::new("sio_proxy_routing_total", "Routing decisions, by outcome"),
            &["outcome"],
        )?;
        let routing = Outcome::ALL.map(|o| routing_vec.with_label_values(&[o.as_str()]));
        let tunnels_open = IntGaugeVec::new(
            Opts::new(
                "sio_proxy_websocket_tunnels",
                "Open WebSocket tunnels, by backend",
            ),
            &["backend"],
        )?;
        let tunnels_total = IntCounterVec::new(
            Opts::new(
                "sio_proxy_websocket_tunnels_total",
                "WebSocket tunnels opened, by backend",
            ),
            &["backend"],
        )?;
        let connect_errors = IntCounterVec::new(
            Opts::new(
                "sio_proxy_upstream_connect_errors_total",
                "Failed TCP connections to a backend",
            ),
            &["backend"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "sio_proxy_request_duration_seconds",
                "Time from request to the end of the response (to the 101 for WebSocket upgrades)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["transport"],
        )?;
        let backend_healthy = IntGaugeVec::new(
            Opts::new(
                "sio_proxy_backend_healthy",
                "1 when the backend's /readyz answered 200 at the last check",
            ),
            &["backend"],
        )?;
        let backend_draining = IntGaugeVec::new(
            Opts::new(
                "sio_proxy_backend_draining",
                "1 when the registry marks the backend draining",
            ),
            &["backend"],
        )?;
        let backends = IntGaugeVec::new(
            Opts::new(
                "sio_proxy_backends",
                "Known backends: discovered, or retained after leaving discovery",
            ),
            &["state"],
        )?;
        let rewrite_errors = IntCounter::new(
            "sio_proxy_handshake_rewrite_errors_total",
            "Polling handshake answers whose sid could not be tagged",
        )?;
        let discovery_errors = IntCounterVec::new(
            Opts::new(
                "sio_proxy_discovery_errors_total",
                "Failed discovery rounds, by source (the last known set is kept)",
            ),
            &["source"],
        )?;
        let open_sessions = IntGauge::new(
            "sio_proxy_open_connections",
            "Open tunnels and in-flight proxied requests",
        )?;
        let refused_vec = IntCounterVec::new(
            Opts::new(
                "sio_proxy_refused_total",
                "Connections and handshakes refused by the admission limits, by reason",
            ),
            &["reason"],
        )?;
        let refused = Refusal::ALL.map(|r| refused_vec.with_label_values(&[r.as_str()]));
        let pending_heads = IntGauge::new(
            "sio_proxy_pending_heads",
            "Client connections still sending a request head",
        )?;
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(refused_vec),
            Box::new(pending_heads.clone()),
            Box::new(requests.clone()),
            Box::new(handshakes.clone()),
            Box::new(routing_vec),
            Box::new(tunnels_open.clone()),
            Box::new(tunnels_total.clone()),
            Box::new(connect_errors.clone()),
            Box::new(request_duration.clone()),
            Box::new(backend_healthy.clone()),
            Box::new(backend_draining.clone()),
            Box::new(backends.clone()),
            Box::new(rewrite_errors.clone()),
            Box::new(discovery_errors.clone()),
            Box::new(open_sessions.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        // Every transport's histogram exists from start-up (empty), not after its first request.
        for t in TRANSPORTS {
            request_duration.with_label_values(&[t.as_str()]);
        }
        Ok(Metrics {
            registry,
            requests,
            handshakes,
            routing,
            tunnels_open,
            tunnels_total,
            connect_errors,
            request_duration,
            backend_healthy,
            backend_draining,
            backends,
            rewrite_errors,
            discovery_errors,
            open_sessions,
            refused,
            pending_heads,
        })
    }

    /// Counts a refusal of the admission limits.
    pub fn refused(&self, refusal: Refusal) {
        let index = Refusal::ALL.iter().position(|r| *r == refusal).unwrap_or(0);
        self.refused[index].inc();
    }

    /// Moves the gauge of connections still sending their head.
    pub fn pending_heads_changed(&self, delta: i64) {
        self.pending_heads.add(delta);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Counts a routing decision.
    pub fn routed(&self, outcome: Outcome) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.routing[index].inc();
    }

    /// Records the duration of a finished request.
    pub fn observe_duration(&self, transport: Transport, seconds: f64) {
        self.request_duration
            .with_label_values(&[transport.as_str()])
            .observe(seconds);
    }

    /// Counts a request the proxy answered without a backend.
    pub fn request_without_backend(&self, transport: Transport) {
        self.requests
            .with_label_values(&[NO_BACKEND, transport.as_str()])
            .inc();
    }

    /// Counts a handshake answer whose sid could not be tagged.
    pub fn rewrite_error(&self) {
        self.rewrite_errors.inc();
    }

    /// Counts a failed discovery round of `source` (`dns`, `redis`, `static`).
    pub fn discovery_error(&self, source: &str) {
        self.discovery_errors.with_label_values(&[source]).inc();
    }

    /// Sets the number of discovered and retained backends.
    pub fn set_backend_counts(&self, discovered: usize, retained: usize) {
        self.backends
            .with_label_values(&["discovered"])
            .set(i64::try_from(discovered).unwrap_or(i64::MAX));
        self.backends
            .with_label_values(&["retained"])
            .set(i64::try_from(retained).unwrap_or(i64::MAX));
    }

    /// Open tunnels and in-flight requests, all backends together.
    pub fn open_connections(&self) -> i64 {
        self.open_sessions.get()
    }

    /// Metric handles of one backend, bound once so the request path does no label lookup.
    pub fn for_backend(&self, label: &str) -> BackendMetrics {
        BackendMetrics {
            requests: TRANSPORTS.map(|t| self.requests.with_label_values(&[label, t.as_str()])),
            handshakes: TRANSPORTS.map(|t| self.handshakes.with_label_values(&[label, t.as_str()])),
            tunnels_open: self.tunnels_open.with_label_values(&[label]),
            tunnels_total: self.tunnels_total.with_label_values(&[label]),
            connect_errors: self.connect_errors.with_label_values(&[label]),
            healthy: self.backend_healthy.with_label_values(&[label]),
            draining: self.backend_draining.with_label_values(&[label]),
            open_sessions: self.open_sessions.clone(),
        }
    }

    /// Removes every series of a backend that is gone for good.
    pub fn remove_backend(&self, label: &str) {
        for t in TRANSPORTS {
            let _ = self.requests.remove_label_values(&[label, t.as_str()]);
            let _ = self.handshakes.remove_label_values(&[label, t.as_str()]);
        }
        let _ = self.tunnels_open.remove_label_values(&[label]);
        let _ = self.tunnels_total.remove_label_values(&[label]);
        let _ = self.connect_errors.remove_label_values(&[label]);
        let _ = self.backend_healthy.remove_label_values(&[label]);
        let _ = self.backend_draining.remove_label_values(&[label]);
    }
}

/// Pre-bound metric handles of one backend.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    requests: [IntCounter; 3],
    handshakes: [IntCounter; 3],
    tunnels_open: IntGauge,
    tunnels_total: IntCounter,
    connect_errors: IntCounter,
    healthy: IntGauge,
    draining: IntGauge,
    open_sessions: IntGauge,
}

impl BackendMetrics {
    /// Counts a request sent to this backend.
    pub fn request(&self, transport: Transport) {
        self.requests[transport_index(transport)].inc();
    }

    /// Counts a session opened on this backend.
    pub fn handshake(&self, transport: Transport) {
        self.handshakes[transport_index(transport)].inc();
    }

    /// Counts a failed connection to this backend.
    pub fn connect_error(&self) {
        self.connect_errors.inc();
    }

    /// Marks a tunnel opened (and returns when it closes through [`Self::tunnel_closed`]).
    pub fn tunnel_opened(&self) {
        self.tunnels_open.inc();
        self.tunnels_total.inc();
    }

    /// Marks a tunnel closed.
    pub fn tunnel_closed(&self) {
        self.tunnels_open.dec();
    }

    /// Sets the health gauge.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }

    /// Sets the draining gauge.
    pub fn set_draining(&self, draining: bool) {
        self.draining.set(i64::from(draining));
    }

    pub(crate) fn connection_opened(&self) {
        self.open_sessions.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.open_sessions.dec();
    }
}

/// The HTTP endpoint of the metrics listener: `/metrics` (Prometheus text) and `/healthz`.
pub struct MetricsEndpoint(std::sync::Arc<Metrics>);

impl MetricsEndpoint {
    /// An endpoint serving `metrics`.
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        MetricsEndpoint(metrics)
    }
}

#[async_trait::async_trait]
impl pingora::apps::http_app::ServeHttp for MetricsEndpoint {
    async fn response(
        &self,
        session: &mut pingora::protocols::http::ServerSession,
    ) -> http::Response<Vec<u8>> {
        let (status, content_type, body) = match session.req_header().uri.path() {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.0.render(),
            ),
            "/healthz" => (200, "text/plain", b"ok".to_vec()),
            _ => (404, "text/plain", b"not found; try /metrics".to_vec()),
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics_and_process_metrics() {
        let metrics = Metrics::new().expect("metrics");
        let backend = metrics.for_backend("127.0.0.1:3001");
        backend.request(Transport::Polling);
        backend.tunnel_opened();
        backend.tunnel_closed();
        metrics.routed(Outcome::TaggedHit);
        metrics.observe_duration(Transport::Polling, 0.01);
        let text = String::from_utf8(metrics.render()).expect("utf8");
        assert!(text.contains(
            "sio_proxy_requests_total{backend=\"127.0.0.1:3001\",transport=\"polling\"} 1"
        ));
        assert!(text.contains("sio_proxy_websocket_tunnels{backend=\"127.0.0.1:3001\"} 0"));
        assert!(text.contains("sio_proxy_routing_total{outcome=\"tagged_hit\"} 1"));
        assert!(text.contains("process_open_fds"));
        metrics.remove_backend("127.0.0.1:3001");
        let text = String::from_utf8(metrics.render()).expect("utf8");
        assert!(!text.contains("127.0.0.1:3001"));
    }
}
