//! `server_stats`: every node sends its own figures every [`STATS_INTERVAL`] to every admin
//! socket of the cluster (through the adapter), so the UI lists every node.
//!
//! The aggregated events are differences of counters the node keeps anyway: namespace
//! connects and disconnects (`sio_connects_total`, `sio_disconnects_total{reason}`) and the
//! wire meters' atomics ([`super::traffic`]). The client counts take one pass over the node's
//! sockets per interval.

use std::collections::BTreeMap;

use prometheus::core::Collector;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::socket::DisconnectReason;

use super::protocol::{AggregatedEvent, NamespaceDetails, ServerStats};
use super::traffic::TrafficTotals;
use crate::state::NodeState;

/// Period of `server_stats` (the UI marks a node unhealthy after 10 s without one).
pub const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The reason the UI shows for a disconnect (Socket.IO's wording).
pub fn ui_reason(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport close",
        DisconnectReason::MultipleHttpPollingError => "multiple polling requests",
        DisconnectReason::PacketParsingError => "parse error",
        DisconnectReason::TransportError => "transport error",
        DisconnectReason::HeartbeatTimeout => "ping timeout",
        DisconnectReason::ClientNSDisconnect => "client namespace disconnect",
        DisconnectReason::ServerNSDisconnect => "server namespace disconnect",
        DisconnectReason::ClosingServer => "server shutting down",
    }
}

/// Every disconnect reason, for reading the counters by label.
const REASONS: [DisconnectReason; 8] = [
    DisconnectReason::TransportClose,
    DisconnectReason::MultipleHttpPollingError,
    DisconnectReason::PacketParsingError,
    DisconnectReason::TransportError,
    DisconnectReason::HeartbeatTimeout,
    DisconnectReason::ClientNSDisconnect,
    DisconnectReason::ServerNSDisconnect,
    DisconnectReason::ClosingServer,
];

/// Counter readings at the previous `server_stats`.
#[derive(Debug, Default, Clone)]
pub struct Baseline {
    connects: u64,
    disconnects: BTreeMap<&'static str, u64>,
    traffic: TrafficTotals,
}

fn sum_by_label(c: &prometheus::IntCounterVec, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for family in c.collect() {
        for m in family.get_metric() {
            let key = m
                .get_label()
                .iter()
                .find(|l| l.name() == label)
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            *out.entry(key).or_insert(0) += m.get_counter().value() as u64;
        }
    }
    out
}

fn readings(node: &NodeState, traffic: TrafficTotals) -> Baseline {
    let connects = sum_by_label(&node.metrics.connects, "namespace")
        .values()
        .sum();
    let by_reason = sum_by_label(&node.metrics.disconnects, "reason");
    let disconnects = REASONS
        .iter()
        .map(|r| {
            let label = crate::connect::reason_label(*r);
            (ui_reason(*r), by_reason.get(label).copied().unwrap_or(0))
        })
        .collect();
    Baseline {
        connects,
        disconnects,
        traffic,
    }
}

/// Reads the counters now, as the first baseline.
pub fn baseline(node: &NodeState, traffic: TrafficTotals) -> Baseline {
    readings(node, traffic)
}

/// This node's `server_stats`, with the events since `last` (which becomes now).
pub fn server_stats<A: Adapter>(
    node: &NodeState,
    io: &SocketIo<A>,
    hostname: &str,
    traffic: TrafficTotals,
    last: &mut Baseline,
) -> ServerStats {
    let now = readings(node, traffic);
    let second = sio_redis_adapter::types::now_ms() / 1000 * 1000;
    let mut events = Vec::new();
    let mut push = |kind, sub_type, count| {
        if count > 0 {
            events.push(AggregatedEvent {
                timestamp: second,
                kind,
                sub_type,
                count,
            });
        }
    };
    push(
        "rawConnection",
        None,
        now.connects.saturating_sub(last.connects),
    );
    for (reason, count) in &now.disconnects {
        let before = last.disconnects.get(reason).copied().unwrap_or(0);
        push(
            "rawDisconnection",
            Some(*reason),
            count.saturating_sub(before),
        );
    }
    let t = now.traffic.since(&last.traffic);
    push("packetsIn", None, t.packets_in);
    push("packetsOut", None, t.packets_out);
    push("bytesIn", None, t.bytes_in);
    push("bytesOut", None, t.bytes_out);
    *last = now;
    let (clients, polling, namespaces) = super::local::clients(io);
    let namespaces = namespaces
        .into_iter()
        .map(|(name, sockets_count)| NamespaceDetails {
            name,
            sockets_count,
        })
        .collect();
    ServerStats {
        server_id: node.node_id.clone(),
        hostname: hostname.to_owned(),
        pid: std::process::id(),
        uptime: node.started.elapsed().as_secs_f64(),
        clients_count: clients,
        polling_clients_count: polling,
        aggregated_events: events,
        namespaces,
    }
}
