//! Figures about this node and the cluster: connections, event rates and the node registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use socketioxide::SocketIo;
use socketioxide::TransportType;
use socketioxide::adapter::Adapter;

use sio_redis_adapter::{LocalLeases, Membership, NodeInfo, SocketEntry};

use crate::state::{NodeState, Rates};

/// Live connections of this node per namespace.
pub fn local_connections<A: Adapter>(io: &SocketIo<A>) -> BTreeMap<String, u64> {
    io.nsps()
        .into_iter()
        .map(|ns| {
            let path = ns.ns_path().to_owned();
            (path, ns.local().sockets().len() as u64)
        })
        .collect()
}

/// Refreshes `sio_connections{namespace,transport}` from the live sockets.
pub fn refresh_connection_gauge<A: Adapter>(node: &NodeState, io: &SocketIo<A>) {
    for ns in io.nsps() {
        let path = ns.ns_path().to_owned();
        let (mut polling, mut websocket) = (0i64, 0i64);
        for s in ns.local().sockets() {
            match s.transport_type() {
                TransportType::Polling => polling += 1,
                TransportType::Websocket => websocket += 1,
            }
        }
        let g = &node.metrics.connections;
        g.with_label_values(&[path.as_str(), "polling"])
            .set(polling);
        g.with_label_values(&[path.as_str(), "websocket"])
            .set(websocket);
    }
}

/// What this node writes in the registry.
pub fn local_info<A: Adapter>(node: &NodeState, io: &SocketIo<A>) -> NodeInfo {
    let namespaces = local_connections(io);
    let rates = current_rates(node);
    NodeInfo {
        id: node.node_id.clone(),
        addr: node.advertise_addr.clone(),
        draining: node.readiness.is_draining(),
        connections: namespaces.values().sum(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        server_uid: node.server_uid.clone(),
        started_at_ms: node.started_at_ms,
        namespaces,
        events_received_per_second: rates.received,
        events_sent_per_second: rates.sent,
    }
}

/// The latest measured event rates.
pub fn current_rates(node: &NodeState) -> Rates {
    *node.rates.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cluster-wide figures, as `/api/stats` and the `cluster-stats` event show them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    /// Node that answered.
    pub node_id: String,
    /// When the figures were taken.
    pub timestamp: String,
    /// Every live node (from the registry), this one's figures fresh.
    pub nodes: Vec<NodeInfo>,
    /// Connections summed over the nodes.
    pub total_connections: u64,
    /// Connections per namespace summed over the nodes.
    pub connections: BTreeMap<String, u64>,
    /// Events per second summed over the nodes.
    pub events_per_second: Rates,
    /// True when the registry could not be read and only this node is shown.
    pub partial: bool,
}

/// Reads the registry and sums the figures of every live node.
pub async fn cluster_stats<A: Adapter>(node: &Arc<NodeState>, io: &SocketIo<A>) -> ClusterStats {
    let me = local_info(node, io);
    let (mut nodes, partial) = match node.store.nodes().await {
        Ok(nodes) => (nodes, false),
        Err(e) => {
            tracing::debug!("registry unavailable for stats: {e}");
            (Vec::new(), true)
        }
    };
    nodes.retain(|n| n.id != me.id);
    nodes.push(me);
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut connections = BTreeMap::new();
    let mut rates = Rates::default();
    for n in &nodes {
        for (ns, c) in &n.namespaces {
            *connections.entry(ns.clone()).or_insert(0) += c;
        }
        rates.received += n.events_received_per_second;
        rates.sent += n.events_sent_per_second;
    }
    ClusterStats {
        node_id: node.node_id.clone(),
        timestamp: crate::chat::timestamp(),
        total_connections: nodes.iter().map(|n| n.connections).sum(),
        nodes,
        connections,
        events_per_second: rates,
        partial,
    }
}

/// Sums a counter vector over its label values.
fn counter_sum(c: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    c.collect()
        .iter()
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| m.get_counter().value() as u64)
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Event totals, for computing rates.
pub fn event_totals(node: &NodeState) -> (u64, u64) {
    (
        counter_sum(&node.metrics.events_received),
        counter_sum(&node.metrics.events_sent),
    )
}

/// Everything this node holds whose lease it must renew: sockets of `/` and
/// `/notifications`, and the chat room memberships.
pub fn local_leases<A: Adapter>(node: &NodeState, io: &SocketIo<A>) -> LocalLeases {
    let mut leases = LocalLeases::default();
    for ns in [crate::chat::NAMESPACE, crate::notifications::NAMESPACE] {
        let Some(op) = io.of(ns) else { continue };
        for socket in op.local().sockets() {
            let Some(session) = crate::connect::session(&socket) else {
                continue;
            };
            let user = session.user.as_str().to_owned();
            let sid = socket.id.to_string();
            if ns == crate::chat::NAMESPACE {
                for room in session.rooms() {
                    leases.memberships.push(Membership {
                        room,
                        user: user.clone(),
                        sid: sid.clone(),
                    });
                }
            }
            leases.sockets.push((
                user,
                SocketEntry {
                    sid,
                    node: node.node_id.clone(),
                    ns: ns.to_owned(),
                },
            ));
        }
    }
    leases
}
