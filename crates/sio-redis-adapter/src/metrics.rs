//! Metrics of the cross-node driver and shared state, registered in the node's registry.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Adapter metrics (prefix `sio_adapter_`).
#[derive(Debug, Clone)]
pub struct AdapterMetrics {
    /// Messages published, by kind (`request`, `room`, `response`, `notify`, `notify_reply`).
    pub published: IntCounterVec,
    /// Messages received, by kind.
    pub received: IntCounterVec,
    /// Publish failures.
    pub publish_errors: IntCounter,
    /// Messages dropped because a bounded queue was full, by queue.
    pub dropped: IntCounterVec,
    /// 1 while every channel is subscribed.
    pub subscribed: IntGauge,
    /// Reconnections to Redis.
    pub reconnects: IntCounter,
    /// Cross-node request latency, by kind.
    pub request_duration: HistogramVec,
    /// Cross-node requests that timed out waiting for answers.
    pub request_timeouts: IntCounterVec,
    /// Shared state operations that failed.
    pub store_errors: IntCounter,
    /// Adapter messages received, by kind (`broadcast`, `room`, `request`, `other`) and
    /// outcome (`useful`: a local socket was concerned; `wasted`: none was, including the
    /// node's own messages coming back and copies of multi-room messages).
    pub handled: IntCounterVec,
    /// Shard channels subscribed: the adapter's and buses' channels, and one per room with
    /// local members.
    pub subscriptions: IntGauge,
    /// Per-user notification channels this node is subscribed to.
    pub notify_subscriptions: IntGauge,
    /// Notification messages received, by outcome: `useful` (a local socket of the user
    /// got it) or `wasted` (none did).
    pub notify_messages: IntCounterVec,
}

/// Kinds of `sio_adapter_messages_handled_total`.
pub const HANDLED_KINDS: [&str; 4] = ["broadcast", "room", "request", "other"];

impl AdapterMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let m = Self {
            published: IntCounterVec::new(
                Opts::new(
                    "sio_adapter_messages_published_total",
                    "Messages published to Redis, by kind",
                ),
                &["kind"],
            )
            .expect("metric"),
            received: IntCounterVec::new(
                Opts::new(
                    "sio_adapter_messages_received_total",
                    "Messages received from Redis, by kind",
                ),
                &["kind"],
            )
            .expect("metric"),
            publish_errors: IntCounter::new(
                "sio_adapter_publish_errors_total",
                "Publishes to Redis that failed",
            )
            .expect("metric"),
            dropped: IntCounterVec::new(
                Opts::new(
                    "sio_adapter_dropped_messages_total",
                    "Cross-node messages dropped because a bounded queue was full",
                ),
                &["queue"],
            )
            .expect("metric"),
            subscribed: IntGauge::new(
                "sio_adapter_subscribed",
                "1 while every Redis channel is subscribed",
            )
            .expect("metric"),
            reconnects: IntCounter::new("sio_adapter_reconnects_total", "Reconnections to Redis")
                .expect("metric"),
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "sio_adapter_request_duration_seconds",
                    "Cross-node request latency (until every node answered)",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["kind"],
            )
            .expect("metric"),
            request_timeouts: IntCounterVec::new(
                Opts::new(
                    "sio_adapter_request_timeouts_total",
                    "Cross-node requests that timed out waiting for answers",
                ),
                &["kind"],
            )
            .expect("metric"),
            store_errors: IntCounter::new(
                "sio_adapter_store_errors_total",
                "Shared state operations that failed",
            )
            .expect("metric"),
            handled: IntCounterVec::new(
                Opts::new(
                    "sio_adapter_messages_handled_total",
                    "Adapter messages received, by kind and whether a local socket was concerned (useful) or not (wasted)",
                ),
                &["kind", "outcome"],
            )
            .expect("metric"),
            subscriptions: IntGauge::new(
                "sio_adapter_subscriptions",
                "Redis shard channels this node subscribes to (adapter and bus channels, one per room with local members, one per user with local notification sockets)",
            )
            .expect("metric"),
            notify_subscriptions: IntGauge::new(
                "sio_adapter_notify_subscriptions",
                "Per-user notification channels this node is subscribed to",
            )
            .expect("metric"),
            notify_messages: IntCounterVec::new(
                Opts::new(
                    "sio_adapter_notify_messages_total",
                    "Notification messages received, by outcome (useful: a local socket of the user got it; wasted: none did)",
                ),
                &["outcome"],
            )
            .expect("metric"),
        };
        for c in [
            Box::new(m.published.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.received.clone()),
            Box::new(m.publish_errors.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.subscribed.clone()),
            Box::new(m.reconnects.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.request_timeouts.clone()),
            Box::new(m.store_errors.clone()),
            Box::new(m.handled.clone()),
            Box::new(m.subscriptions.clone()),
            Box::new(m.notify_subscriptions.clone()),
            Box::new(m.notify_messages.clone()),
        ] {
            // Registering twice in one registry is a programming error.
            registry.register(c).expect("adapter metric registration");
        }
        // Known label values exist at zero from start-up (alerts see 0, not no data).
        for kind in CHANNEL_KINDS {
            m.published.with_label_values(&[kind]);
            m.received.with_label_values(&[kind]);
            m.dropped.with_label_values(&[kind]);
        }
        m.published.with_label_values(&["room"]);
        m.received.with_label_values(&["room"]);
        m.dropped.with_label_values(&["room"]);
        for kind in HANDLED_KINDS {
            for outcome in ["useful", "wasted"] {
                m.handled.with_label_values(&[kind, outcome]);
            }
        }
        m.dropped.with_label_values(&["subscriber"]);
        m.request_duration.with_label_values(&["notify"]);
        m.request_timeouts.with_label_values(&["notify"]);
        for outcome in ["useful", "wasted"] {
            m.notify_messages.with_label_values(&[outcome]);
        }
        m
    }
}

/// The children of a counter vector for a fixed list of label values, resolved once.
///
/// The receive path counts every Redis message two or three times; `with_label_values`
/// would hash the labels, take the vector's lock and clone the child's `Arc` on each call.
/// A label value outside the list still counts, through the vector.
#[derive(Debug, Clone)]
pub struct LabelCounters {
    vec: IntCounterVec,
    /// Label values after the first, the same for every child.
    rest: Vec<&'static str>,
    children: Vec<(&'static str, IntCounter)>,
}

impl LabelCounters {
    /// The children of `vec` labelled `[value, rest...]` for every `value` of `values`.
    pub fn new(vec: &IntCounterVec, values: &[&'static str], rest: &[&'static str]) -> Self {
        let children = values
            .iter()
            .map(|&v| {
                let labels: Vec<&str> = std::iter::once(v).chain(rest.iter().copied()).collect();
                (v, vec.with_label_values(&labels))
            })
            .collect();
        Self {
            vec: vec.clone(),
            rest: rest.to_vec(),
            children,
        }
    }

    /// Adds one to the child labelled `value`.
    pub fn inc(&self, value: &str) {
        match self.children.iter().find(|(v, _)| *v == value) {
            Some((_, c)) => c.inc(),
            None => {
                let labels: Vec<&str> = std::iter::once(value)
                    .chain(self.rest.iter().copied())
                    .collect();
                self.vec.with_label_values(&labels).inc();
            }
        }
    }
}

/// Every kind the driver gives a message it receives: [`CHANNEL_KINDS`], `room` and `other`.
pub const RECEIVED_KINDS: [&str; 6] = [
    "request",
    "response",
    "notify",
    "notify_reply",
    "room",
    "other",
];

/// Every kind [`channel_kind`] gives a channel of ours, for metrics that exist before the
/// first message.
pub const CHANNEL_KINDS: [&str; 4] = ["request", "response", "notify", "notify_reply"];

/// The kind label of a channel.
pub fn channel_kind(channel: &str) -> &'static str {
    if channel.contains("-request#") {
        "request"
    } else if channel.contains("-response#") {
        "response"
    } else if channel.contains(":notify-reply:") {
        "notify_reply"
    } else if channel.contains(":notify:{") {
        "notify"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;

    #[test]
    fn every_channel_kind_is_listed() {
        let keys = Keys::new("p");
        let prefix = keys.adapter_prefix();
        let channels = [
            format!("{prefix}-request#/#"),
            format!("{prefix}-request#/#uid#"),
            format!("{prefix}-response#/#uid#"),
            keys.notify_channel("alice"),
            keys.notify_reply_channel("uid"),
        ];
        let kinds: Vec<&str> = channels.iter().map(|c| channel_kind(c)).collect();
        assert!(kinds.iter().all(|k| CHANNEL_KINDS.contains(k)), "{kinds:?}");
        for kind in CHANNEL_KINDS {
            assert!(kinds.contains(&kind), "{kind} is listed but never given");
        }
    }

    #[test]
    fn label_counters_count_in_the_vector_listed_or_not() {
        let registry = Registry::new();
        let m = AdapterMetrics::new(&registry);
        let handled = LabelCounters::new(&m.handled, &HANDLED_KINDS, &["wasted"]);
        handled.inc("room");
        handled.inc("room");
        handled.inc("unlisted");
        assert_eq!(m.handled.with_label_values(&["room", "wasted"]).get(), 2);
        assert_eq!(m.handled.with_label_values(&["room", "useful"]).get(), 0);
        assert_eq!(
            m.handled.with_label_values(&["unlisted", "wasted"]).get(),
            1
        );
        let received = LabelCounters::new(&m.received, &RECEIVED_KINDS, &[]);
        received.inc("notify_reply");
        assert_eq!(m.received.with_label_values(&["notify_reply"]).get(), 1);
    }
}
