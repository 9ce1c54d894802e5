//! Prometheus metrics of a node: one registry, names prefixed `sio_`, base units,
//! `_total` on counters and no unbounded labels (never a socket, user or room id).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `limit` label values of `sio_limit_refusals_total`.
pub const LIMITS: [&str; 6] = [
    "rooms_per_socket",
    "rooms_per_user",
    "pending_events",
    "pending_bytes",
    "event_rate",
    "chat_bytes",
];

/// Every metric a node exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Live connections by namespace and transport (refreshed at every scrape).
    pub connections: IntGaugeVec,
    /// Namespace connections accepted.
    pub connects: IntCounterVec,
    /// Namespace disconnections by reason.
    pub disconnects: IntCounterVec,
    /// Events received from clients.
    pub events_received: IntCounterVec,
    /// Events emitted by the node (one per emit, whatever the number of recipients).
    pub events_sent: IntCounterVec,
    /// Packets not queued to a socket because its buffer was full (slow client).
    pub slow_client_drops: IntCounterVec,
    /// Client events refused (validation, membership, store errors) by code.
    pub event_errors: IntCounterVec,
    /// Connects refused by authentication, by reason.
    pub auth_failures: IntCounterVec,
    /// HTTP API requests by route, method and status.
    pub api_requests: IntCounterVec,
    /// HTTP API latency by route.
    pub api_duration: HistogramVec,
    /// Notifications accepted by outcome (`stored`, `failed`).
    pub notifications: IntCounterVec,
    /// Notifications handed to sockets (live or replayed).
    pub notifications_delivered: IntCounter,
    /// Engine.IO sessions closed by the drain.
    pub drained_sessions: IntCounter,
    /// Sockets disconnected because their token expired, by namespace.
    pub token_expiry_disconnects: IntCounterVec,
    /// Join hook requests by outcome (`allowed`, `denied`, `timeout`, `error`).
    pub join_hook_requests: IntCounterVec,
    /// Join hook answers reused from the cache, by outcome (`allowed`, `denied`).
    pub join_hook_cache_hits: IntCounterVec,
    /// Join hook request latency.
    pub join_hook_duration: Histogram,
    /// Rooms of a user's set no longer allowed by the token or the hook at a reconnect,
    /// dropped from the set.
    pub restored_rooms_dropped: IntCounter,
    /// Client requests refused because they would pass a limit, by limit (see [`LIMITS`]).
    pub limit_refusals: IntCounterVec,
    /// Sockets disconnected because they stayed over `--event-rate`.
    pub rate_limit_disconnects: IntCounter,
    /// Heartbeat rounds (registry, leases, presence) that took longer than a third of
    /// `--lease-ttl`.
    pub heartbeat_slow: IntCounter,
    /// Duration of heartbeat rounds.
    pub heartbeat_duration: Histogram,
    /// 1 while the node should get new handshakes.
    pub ready: IntGauge,
    /// 1 once the node is draining.
    pub draining: IntGauge,
    /// Catch-ups started for a live `/notifications` socket, by reason (`buffer_full`, `gap`,
    /// `resync`).
    pub notification_catchups: IntCounterVec,
    /// Notifications read from a user's stream and sent to a socket (connect replays and
    /// catch-ups).
    pub notifications_replayed: IntCounter,
}

impl Metrics {
    /// Registers every node metric, the process collector and `sio_build_info`.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            // Names are fixed at compile time; a clash is a programming error caught by tests.
            registry.register(c).expect("metric registration");
        };
        let connections = IntGaugeVec::new(
            Opts::new(
                "sio_connections",
                "Live Socket.IO connections by namespace and transport",
            ),
            &["namespace", "transport"],
        )
        .expect("metric");
        let connects = IntCounterVec::new(
            Opts::new("sio_connects_total", "Namespace connections accepted"),
            &["namespace"],
        )
        .expect("metric");
        let disconnects = IntCounterVec::new(
            Opts::new(
                "sio_disconnects_total",
                "Namespace disconnections by reason",
            ),
            &["namespace", "reason"],
        )
        .expect("metric");
        let events_received = IntCounterVec::new(
            Opts::new("sio_events_received_total", "Events received from clients"),
            &["namespace"],
        )
        .expect("metric");
        let events_sent = IntCounterVec::new(
            Opts::new(
                "sio_events_sent_total",
                "Events emitted by the node (one per emit)",
            ),
            &["namespace"],
        )
        .expect("metric");
        let slow_client_drops = IntCounterVec::new(
            Opts::new(
                "sio_slow_client_drops_total",
                "Packets not queued to a socket whose send buffer was full",
            ),
            &["namespace"],
        )
        .expect("metric");
        let event_errors = IntCounterVec::new(
            Opts::new(
                "sio_event_errors_total",
                "Client events refused, by error code",
            ),
            &["namespace", "code"],
        )
        .expect("metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "sio_auth_failures_total",
                "Connects refused by authentication",
            ),
            &["namespace", "reason"],
        )
        .expect("metric");
        let api_requests = IntCounterVec::new(
            Opts::new(
                "sio_api_requests_total",
                "HTTP API requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("metric");
        let api_duration = HistogramVec::new(
            HistogramOpts::new(
                "sio_api_request_duration_seconds",
                "HTTP API request latency",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route"],
        )
        .expect("metric");
        let notifications = IntCounterVec::new(
            Opts::new(
                "sio_notifications_total",
                "Notifications accepted by the API, by outcome",
            ),
            &["outcome"],
        )
        .expect("metric");
        let notifications_delivered = IntCounter::new(
            "sio_notifications_delivered_total",
            "Notifications handed to sockets, live or replayed",
        )
        .expect("metric");
        let drained_sessions = IntCounter::new(
            "sio_drained_sessions_total",
            "Engine.IO sessions closed by the drain so their clients reconnect elsewhere",
        )
        .expect("metric");
        let token_expiry_disconnects = IntCounterVec::new(
            Opts::new(
                "sio_token_expiry_disconnects_total",
                "Sockets whose token expired, disconnected so the client reconnects with a fresh one",
            ),
            &["namespace"],
        )
        .expect("metric");
        let join_hook_requests = IntCounterVec::new(
            Opts::new(
                "sio_join_hook_requests_total",
                "Join hook requests by outcome (allowed, denied, timeout, error)",
            ),
            &["outcome"],
        )
        .expect("metric");
        let join_hook_cache_hits = IntCounterVec::new(
            Opts::new(
                "sio_join_hook_cache_hits_total",
                "Join hook answers reused from the cache, by outcome (allowed, denied)",
            ),
            &["outcome"],
        )
        .expect("metric");
        let join_hook_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sio_join_hook_duration_seconds",
                "Join hook request latency (timeouts included)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("metric");
        let restored_rooms_dropped = IntCounter::new(
            "sio_restored_rooms_dropped_total",
            "Rooms dropped from a user's set at reconnect because the new token (or the join hook) no longer allows them",
        )
        .expect("metric");
        let ready = IntGauge::new("sio_node_ready", "1 while the node accepts new handshakes")
            .expect("metric");
        let draining =
            IntGauge::new("sio_node_draining", "1 once the node is draining").expect("metric");
        let build_info = IntGaugeVec::new(
            Opts::new("sio_build_info", "Build of this node, always 1"),
            &["version"],
        )
        .expect("metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let notification_catchups = IntCounterVec::new(
            Opts::new(
                "sio_notification_catchups_total",
                "Catch-ups from the stream started for a live notifications socket, by reason",
            ),
            &["reason"],
        )
        .expect("metric");
        let notifications_replayed = IntCounter::new(
            "sio_notifications_replayed_total",
            "Notifications read from a user's stream and sent to a socket (connect replays and catch-ups)",
        )
        .expect("metric");

        for c in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connects.clone()),
            Box::new(disconnects.clone()),
            Box::new(events_received.clone()),
            Box::new(events_sent.clone()),
            Box::new(event_errors.clone()),
            Box::new(slow_client_drops.clone()),
            Box::new(auth_failures.clone()),
            Box::new(api_requests.clone()),
            Box::new(api_duration.clone()),
            Box::new(notifications.clone()),
            Box::new(notifications_delivered.clone()),
            Box::new(drained_sessions.clone()),
            Box::new(token_expiry_disconnects.clone()),
            Box::new(join_hook_requests.clone()),
            Box::new(join_hook_cache_hits.clone()),
            Box::new(join_hook_duration.clone()),
            Box::new(restored_rooms_dropped.clone()),
            Box::new(ready.clone()),
            Box::new(draining.clone()),
            Box::new(build_info),
            Box::new(notification_catchups.clone()),
            Box::new(notifications_replayed.clone()),
        ] {
            reg(c);
        }
        let limit_refusals = IntCounterVec::new(
            Opts::new(
                "sio_limit_refusals_total",
                "Client requests refused because they would pass a limit, by limit",
            ),
            &["limit"],
        )
        .expect("metric");
        let rate_limit_disconnects = IntCounter::new(
            "sio_rate_limit_disconnects_total",
            "Sockets disconnected because they stayed over --event-rate",
        )
        .expect("metric");
        let heartbeat_slow = IntCounter::new(
            "sio_heartbeat_slow_total",
            "Heartbeat rounds (registry, leases, presence) longer than a third of --lease-ttl",
        )
        .expect("metric");
        let heartbeat_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sio_heartbeat_duration_seconds",
                "Duration of heartbeat rounds (registry, leases, presence)",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("metric");
        for c in [
            Box::new(limit_refusals.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rate_limit_disconnects.clone()),
            Box::new(heartbeat_slow.clone()),
            Box::new(heartbeat_duration.clone()),
        ] {
            reg(c);
        }
        for limit in LIMITS {
            limit_refusals.with_label_values(&[limit]);
        }
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));

        // Series of the product's known label values exist from start-up at zero, so a
        // `rate()` or an alert sees 0 rather than no data before the first event.
        for ns in crate::NAMESPACES {
            connects.with_label_values(&[ns]);
            events_received.with_label_values(&[ns]);
            events_sent.with_label_values(&[ns]);
            slow_client_drops.with_label_values(&[ns]);
            token_expiry_disconnects.with_label_values(&[ns]);
            for reason in crate::auth::AuthError::REASONS {
                auth_failures.with_label_values(&[ns, reason]);
            }
        }
        for outcome in crate::join_hook::OUTCOMES {
            join_hook_requests.with_label_values(&[outcome]);
        }
        for outcome in ["allowed", "denied"] {
            join_hook_cache_hits.with_label_values(&[outcome]);
        }
        for outcome in ["stored", "failed"] {
            notifications.with_label_values(&[outcome]);
        }
        for route in crate::api::ROUTES {
            api_duration.with_label_values(&[route]);
        }
        for reason in crate::notification_cursor::CatchUpReason::ALL {
            notification_catchups.with_label_values(&[reason.label()]);
        }

        Self {
            registry,
            connections,
            connects,
            disconnects,
            events_received,
            events_sent,
            slow_client_drops,
            event_errors,
            auth_failures,
            api_requests,
            api_duration,
            notifications,
            notifications_delivered,
            drained_sessions,
            token_expiry_disconnects,
            join_hook_requests,
            join_hook_cache_hits,
            join_hook_duration,
            restored_rooms_dropped,
            limit_refusals,
            rate_limit_disconnects,
            heartbeat_slow,
            heartbeat_duration,
            ready,
            draining,
            notification_catchups,
            notifications_replayed,
        }
    }

    /// The registry, for other crates (the adapter) to add their collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.connects.with_label_values(&["/"]).inc();
        m.api_duration
            .with_label_values(&["/api/notify"])
            .observe(0.01);
        m.notifications.with_label_values(&["stored"]).inc();
        let text = m.encode();
        assert!(text.contains("sio_connects_total{namespace=\"/\"} 1"));
        assert!(text.contains("sio_connects_total{namespace=\"/dashboard\"} 0"));
        assert!(text.contains(
            "sio_auth_failures_total{namespace=\"/notifications\",reason=\"expired_token\"} 0"
        ));
        assert!(text.contains("sio_build_info{version="));
        for family in m.registry().gather() {
            let name = family.name();
            assert!(
                name.starts_with("sio_") || name.starts_with("process_"),
                "{name}"
            );
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }
}
