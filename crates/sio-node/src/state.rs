//! What every handler of a node shares: configuration, identity, metrics, readiness and the
//! shared state store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sio_redis_adapter::{Appended, SioDriver, Store};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;

/// Whether the node should receive new handshakes: explicit state, not a guess.
#[derive(Debug)]
pub struct Readiness {
    serving: AtomicBool,
    subscribed: Arc<AtomicBool>,
    draining: AtomicBool,
}

impl Readiness {
    /// Not serving yet; `subscribed` is shared with the cross-node driver (always true
    /// without Redis).
    pub fn new(subscribed: Arc<AtomicBool>) -> Self {
        Self {
            serving: AtomicBool::new(false),
            subscribed,
            draining: AtomicBool::new(false),
        }
    }

    /// The listener is up and every namespace is registered.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// The node started to drain; it stays unready until it exits.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// True while the cross-node subscriptions are live.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// Ready for new handshakes: serving, subscribed and not draining.
    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::SeqCst) && self.is_subscribed() && !self.is_draining()
    }
}

/// The node's subscriptions to room channels (see `sio_redis_adapter::routing`): a socket
/// joins a room only after [`RoomChannels::join`] returned, and every successful join is
/// paired with one [`RoomChannels::leave`]. A standalone node has no channels.
#[derive(Debug, Clone, Default)]
pub struct RoomChannels(Option<SioDriver>);

impl RoomChannels {
    /// Channels of the cross-node driver.
    pub fn redis(driver: SioDriver) -> Self {
        Self(Some(driver))
    }

    /// Subscribes to `room`'s channel if it is the room's first local member; returns once
    /// Redis confirmed, or why it could not.
    pub async fn join(&self, ns: &str, room: &str) -> Result<(), String> {
        match &self.0 {
            Some(d) => d.join_room(ns, room).await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// One local member of `room` fewer; the last one out unsubscribes.
    pub async fn leave(&self, ns: &str, room: &str) {
        if let Some(d) = &self.0 {
            d.leave_room(ns, room).await;
        }
    }
}

/// Delivers a stored notification to the user's sockets on every node and returns how many
/// sockets got it; set by the server once the Socket.IO instance exists.
pub type NotificationFanout = Arc<
    dyn Fn(
            String,
            Appended,
        )
            -> futures::future::BoxFuture<'static, Result<u64, sio_redis_adapter::StoreError>>
        + Send
        + Sync,
>;

/// State shared by the socket handlers, the HTTP API and the background tasks of a node.
pub struct NodeState {
    /// The validated configuration.
    pub config: Config,
    /// This node's id.
    pub node_id: String,
    /// Address proxies use to reach the node.
    pub advertise_addr: String,
    /// Socket.IO server uid (the adapter's node id).
    pub server_uid: String,
    /// Handshake authentication.
    pub auth: Authenticator,
    /// Who may join which room.
    pub rooms: crate::room_auth::RoomAuthorizer,
    /// The timers that disconnect sockets whose token expires.
    pub expiry: crate::expiry::ExpiryTimers,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Shared state (memory or Redis).
    pub store: Store,
    /// Room channels subscribed for local members.
    pub room_channels: RoomChannels,
    /// Readiness flags.
    pub readiness: Readiness,
    /// Start time, for uptime.
    pub started: Instant,
    /// Start time, unix milliseconds.
    pub started_at_ms: u64,
    /// Cluster-wide notification delivery.
    pub fanout: std::sync::OnceLock<NotificationFanout>,
    /// Events per second, refreshed by the stats task.
    pub rates: std::sync::Mutex<Rates>,
    /// Sessions being closed by the drain.
    pub drain: crate::drain::DrainState,
    /// Disconnect clean-ups in flight (presence, socket leases): the shutdown waits for them
    /// before it closes the namespaces they broadcast on.
    pub cleanups: tokio_util::task::TaskTracker,
    /// Why sockets disconnected, for the admin UI's development mode.
    pub admin_disconnects: crate::admin::disconnects::DisconnectLog,
    /// The cross-node notification bus (with Redis): where `/notifications` sockets subscribe
    /// to their user's channel.
    pub notify_bus: std::sync::OnceLock<Arc<sio_redis_adapter::NotifyBus>>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("node_id", &self.node_id)
            .field("advertise_addr", &self.advertise_addr)
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// Recent event rates of this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Rates {
    /// Events received from clients per second.
    pub received: f64,
    /// Events emitted per second.
    pub sent: f64,
}
