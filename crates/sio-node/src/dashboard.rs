//! Namespace `/dashboard`, for operators: sockets whose token has the claim `"admin": true`
//! receive `cluster-stats` (connections per namespace and per node, node addresses, events
//! per second) every `--dashboard-interval`; any other socket is refused with
//! `forbidden: admin only`.

use std::sync::Arc;

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use crate::auth::AuthError;
use crate::connect::{self, ConnectRefused};
use crate::state::NodeState;
use crate::stats;

/// Path of the dashboard namespace.
pub const NAMESPACE: &str = "/dashboard";

/// Connect middleware: authenticates, and admits only tokens with the claim `"admin": true`
/// (the stats name every node's address); others get `forbidden: admin only`.
pub async fn middleware<A: Adapter>(
    socket: SocketRef<A>,
    State(node): State<Arc<NodeState>>,
    TryData(auth): TryData<serde_json::Value>,
) -> Result<(), ConnectRefused> {
    let session = connect::admit(&node, &socket, auth.ok().as_ref())?;
    if !session.identity.admin {
        return Err(connect::refuse(&node, &socket, AuthError::NotAdmin));
    }
    socket.on_disconnect(on_disconnect::<A>);
    socket.extensions.insert(session);
    Ok(())
}

/// Connect handler: sends a first `cluster-stats` right away.
pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<Arc<NodeState>>,
) {
    let (s, n, i) = (socket.clone(), node.clone(), io.clone());
    connect::connected(&node, &i, &socket, move |_| async move {
        let stats = stats::cluster_stats(&n, &io).await;
        let _ = s.emit("cluster-stats", &stats);
    });
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    reason: DisconnectReason,
    State(node): State<Arc<NodeState>>,
) {
    connect::disconnected(&node, &socket, reason);
}

/// Sends `cluster-stats` to this node's dashboard sockets (each node serves its own).
pub async fn publish<A: Adapter>(node: &Arc<NodeState>, io: &SocketIo<A>) {
    let Some(ns) = io.of(NAMESPACE) else {
        return;
    };
    if ns.clone().local().sockets().is_empty() {
        return;
    }
    let stats = stats::cluster_stats(node, io).await;
    let res = ns.local().emit("cluster-stats", &stats).await;
    if let Err(e) = crate::events::delivered(node, NAMESPACE, res) {
        tracing::debug!("cluster-stats not sent: {e}");
    }
}
