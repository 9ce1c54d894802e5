//! Draining a node on shutdown: make its clients reconnect elsewhere, then stop.

use std::time::Instant;

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;

use crate::state::NodeState;

/// Closes every Engine.IO connection of the node so clients reconnect (to another node,
/// through the proxy), bounded by `deadline`.
pub async fn drain<A: Adapter>(node: &NodeState, io: &SocketIo<A>, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let total: usize = io
        .nsps()
        .into_iter()
        .map(|ns| ns.local().sockets().len())
        .sum();
    tracing::info!(sockets = total, node = %node.node_id, "closing connections");
    if tokio::time::timeout(left, io.close()).await.is_err() {
        tracing::warn!("connections still closing at the end of the grace period");
    }
}
