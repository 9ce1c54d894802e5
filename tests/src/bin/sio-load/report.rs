//! The JSON report of a run: what `sio-load run` prints and `make bench` reads.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Deliveries recorded.
    pub count: u64,
    /// Mean latency.
    pub mean_ms: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest delivery.
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One rate of the fan-out ladder.
#[derive(Debug, Serialize)]
pub struct Step {
    /// Rate asked for (deliveries per second).
    pub target_deliveries_per_sec: f64,
    /// Messages sent per second to reach that rate.
    pub broadcasts_per_sec: f64,
    /// Length of the send window.
    pub send_window_secs: f64,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries expected: sent x room size.
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// Deliveries expected but not received.
    pub lost: u64,
    /// Late deliveries of an earlier step (not counted).
    pub stale: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Clients connected at the end of the step.
    pub connected: i64,
    /// Received deliveries per second of send window.
    pub deliveries_per_sec: f64,
    /// Latency of every delivery.
    pub latency: Percentiles,
    /// Receivers on the sender's node (several targets only).
    pub same_node: Option<Percentiles>,
    /// Receivers on another node than the sender (several targets only).
    pub other_node: Option<Percentiles>,
    /// CPU seconds of the measured system's processes during the step.
    pub system_cpu_secs: f64,
    /// CPU seconds of each `--cpu-pids` process (with its children) during the step.
    pub cpu_secs_by_pid: BTreeMap<u32, f64>,
    /// Differences of the `--stats-url` samples over the step, by URL then `name{labels}`.
    pub stats: BTreeMap<String, BTreeMap<String, f64>>,
    /// The `--stats-url` samples at the end of the step (gauges: connections, subscriptions).
    pub stats_after: BTreeMap<String, BTreeMap<String, f64>>,
    /// CPU seconds of the worker processes during the step.
    pub generator_cpu_secs: f64,
    /// System CPU seconds per 1,000 deliveries.
    pub cpu_secs_per_1000_deliveries: f64,
    /// No loss, no disconnect, on schedule and p99 within budget.
    pub pass: bool,
    /// Why the step failed.
    pub fail_reason: Option<String>,
}

/// Memory at one idle connection count.
#[derive(Debug, Serialize)]
pub struct IdlePoint {
    /// Connections asked for.
    pub connections: usize,
    /// Clients connected when the RSS was read.
    pub connected: i64,
    /// RSS of the measured processes.
    pub rss_bytes: u64,
    /// Their RSS before the first client.
    pub base_rss_bytes: u64,
    /// RSS of the system divided by the connections.
    pub rss_per_connection_bytes: f64,
    /// RSS gained since no client was connected, divided by the connections.
    pub delta_rss_per_connection_bytes: f64,
    /// RSS of each `--rss-pids` process (with its children) now.
    pub rss_by_pid: BTreeMap<u32, u64>,
    /// RSS of each `--rss-pids` process before the first client connected.
    pub base_rss_by_pid: BTreeMap<u32, u64>,
}

/// A reconnect storm.
#[derive(Debug, Serialize)]
pub struct Storm {
    /// Clients of the run.
    pub clients: usize,
    /// Process killed.
    pub victim_pid: u32,
    /// Its open descriptors when killed.
    pub victim_fds: usize,
    /// Sessions lost.
    pub disconnected: u64,
    /// Fewest clients connected at once.
    pub min_connected: i64,
    /// Seconds from the kill until 99 % were connected again.
    pub secs_to_99_percent: Option<f64>,
    /// Seconds from the kill until all were connected again.
    pub secs_to_100_percent: Option<f64>,
}

/// The JSON report of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Free text from `--label`.
    pub label: String,
    /// Transport of every client.
    pub transport: &'static str,
    /// URLs the clients connected to.
    pub targets: Vec<String>,
    /// Clients of the run.
    pub clients: usize,
    /// Members per room (0: none).
    pub room_size: usize,
    /// Worker processes.
    pub workers: usize,
    /// Clients connected after the connect phase.
    pub connected: i64,
    /// Clients whose first connection failed.
    pub connect_failed: u64,
    /// Time to connect (and join) every client.
    pub connect_secs: f64,
    /// First connection error, if any.
    pub first_error: Option<String>,
    /// Idle-capacity points.
    pub idle: Vec<IdlePoint>,
    /// Reconnect storm, if run.
    pub storm: Option<Storm>,
    /// Fan-out ladder steps, in order.
    pub steps: Vec<Step>,
    /// Highest delivered rate of a passing step (0 when none passed).
    pub max_passing_deliveries_per_sec: f64,
}
