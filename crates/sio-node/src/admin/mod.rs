//! The server side of the Socket.IO admin UI (`@socket.io/admin-ui` 0.5), for the whole
//! cluster.
//!
//! Every node serves the admin namespace (`--admin-namespace`, default `/admin`): it logs the
//! UI in ([`auth`]), sends `config`, and every 2 s sends its own `server_stats` to every admin
//! socket of the cluster through the adapter ([`stats`]), so the UI lists every node. The UI's
//! commands (`emit`, `join`, `leave`, `_disconnect`) reach the matching sockets of every node
//! ([`bus`], [`local`]). Production mode sends aggregates only, counted with atomics
//! ([`traffic`]); development mode adds every socket ([`tracker`]) and every event
//! ([`wire`]). The UI's static files are served at `/admin/` ([`ui`]).
//!
//! | event (server to UI) | served |
//! |---|---|
//! | `session` | after a password log-in |
//! | `config` | on connect |
//! | `server_stats` | every 2 s from every node |
//! | `all_sockets` | development mode, on connect (cluster-wide) |
//! | `socket_connected` / `socket_updated` / `socket_disconnected` | development mode |
//! | `room_joined` / `room_left` | development mode |
//! | `event_received` / `event_sent` | development mode |
//!
//! | command (UI to server) | served |
//! |---|---|
//! | `emit(nsp, filter, event, ...args)` | every node |
//! | `join(nsp, room, filter)` / `leave(nsp, room, filter)` | every node |
//! | `_disconnect(nsp, close, filter)` | every node |

pub mod auth;
pub mod bus;
pub mod config;
pub mod disconnects;
pub mod local;
pub mod namespace;
pub mod protocol;
pub mod stats;
pub mod tracker;
pub mod traffic;
pub mod ui;
pub mod wire;

use std::sync::{Arc, OnceLock};

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{AdminAuth, AdminConfig, AdminMode};

use self::bus::{Answer, Bus, LocalHandler, Request};
use self::protocol::{Args, Feature, UiConfig, iso_date};
use crate::state::NodeState;

/// Everything the admin namespace of a node shares.
#[derive(Debug)]
pub struct Admin {
    /// The flags.
    pub config: AdminConfig,
    /// Log-in rules.
    pub login: auth::Login,
    /// Packet and byte counters (fed by the connections and the polling middleware).
    pub traffic: Arc<traffic::Traffic>,
    /// Development mode: this node's sockets as last seen.
    pub tracker: tracker::Tracker,
    /// Cluster-wide requests (set once the namespace is registered).
    pub bus: OnceLock<Arc<Bus>>,
    /// Host name shown in `server_stats`.
    pub hostname: String,
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Admin {
    /// The admin state of a validated configuration.
    pub fn new(config: &AdminConfig) -> Arc<Self> {
        Arc::new(Self {
            login: auth::Login::new(config),
            config: config.clone(),
            traffic: Arc::new(traffic::Traffic::default()),
            tracker: tracker::Tracker::default(),
            bus: OnceLock::new(),
            hostname: hostname(),
        })
    }

    /// True in development mode.
    pub fn development(&self) -> bool {
        self.config.admin_mode == AdminMode::Development
    }

    /// The `config` event.
    pub fn ui_config(&self) -> UiConfig {
        let mut features = vec![
            Feature::Emit,
            Feature::Join,
            Feature::Leave,
            Feature::Disconnect,
            Feature::Mjoin,
            Feature::Mleave,
            Feature::Mdisconnect,
            Feature::AggregatedEvents,
        ];
        if self.development() {
            features.push(Feature::AllEvents);
        }
        UiConfig {
            supported_features: features,
        }
    }
}

/// How this node reaches the others (none without Redis).
pub struct ClusterLink {
    /// The Redis driver.
    pub driver: sio_redis_adapter::SioDriver,
    /// Key and channel names.
    pub keys: sio_redis_adapter::Keys,
}

/// Starts the admin tasks (the namespace is registered) on `tasks` until `stop`.
pub async fn start<A: Adapter>(
    admin: Arc<Admin>,
    node: Arc<NodeState>,
    io: SocketIo<A>,
    cluster: Option<ClusterLink>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), String> {
    let ns = admin.config.admin_namespace.clone();
    let local = local_handler(admin.clone(), node.clone(), io.clone());
    let bus = match cluster {
        None => Bus::standalone(node.server_uid.clone(), local),
        Some(link) => {
            Bus::clustered(link.driver, link.keys, node.server_uid.clone(), local).await?
        }
    };
    let _ = admin.bus.set(bus);
    match admin.config.admin_auth {
        AdminAuth::None => tracing::warn!(
            namespace = %ns,
            "--admin-auth none: anyone who reaches this node can watch and steer every socket of the cluster; development only"
        ),
        AdminAuth::Basic => {
            tracing::info!(namespace = %ns, mode = ?admin.config.admin_mode, "admin UI namespace on")
        }
    }
    tasks.spawn(stats_loop(
        admin.clone(),
        node.clone(),
        io.clone(),
        stop.clone(),
    ));
    if admin.development() {
        node.admin_disconnects.enable();
        tasks.spawn(tracker_loop(
            admin.clone(),
            node.clone(),
            io.clone(),
            stop.clone(),
        ));
        if let Some(rx) = admin.traffic.start_capture() {
            tasks.spawn(event_loop(admin.clone(), io.clone(), rx, stop.clone()));
        }
    }
    Ok(())
}

fn local_handler<A: Adapter>(
    admin: Arc<Admin>,
    node: Arc<NodeState>,
    io: SocketIo<A>,
) -> LocalHandler {
    Arc::new(move |request: Request| {
        let (admin, node, io) = (admin.clone(), node.clone(), io.clone());
        Box::pin(async move {
            match request {
                Request::Sockets { limit } => Answer {
                    node: node.node_id.clone(),
                    affected: 0,
                    sockets: local::describe_all(&io, &node.node_id, limit, |ns, sid| {
                        admin.tracker.first_seen(ns, sid)
                    }),
                },
                Request::Command { command } => Answer {
                    node: node.node_id.clone(),
                    affected: local::apply(&io, &node, &command).await,
                    sockets: Vec::new(),
                },
            }
        })
    })
}

async fn stats_loop<A: Adapter>(
    admin: Arc<Admin>,
    node: Arc<NodeState>,
    io: SocketIo<A>,
    stop: CancellationToken,
) {
    let mut last = stats::baseline(&node, admin.traffic.totals());
    let mut tick = tokio::time::interval(stats::STATS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(op) = io.of(&admin.config.admin_namespace) else {
            continue;
        };
        let started = std::time::Instant::now();
        let stats = stats::server_stats(
            &node,
            &io,
            &admin.hostname,
            admin.traffic.totals(),
            &mut last,
        );
        if tracing::enabled!(tracing::Level::DEBUG) {
            // what the figures cost (README, Admin UI: measured at 10,000 sockets)
            let micros = started.elapsed().as_micros() as u64;
            let bytes = serde_json::to_vec(&stats).map_or(0, |v| v.len());
            tracing::debug!(
                micros,
                bytes,
                clients = stats.clients_count,
                "server_stats computed"
            );
        }
        if let Err(e) = op.emit("server_stats", &stats).await {
            tracing::debug!("server_stats not sent: {e}");
        }
    }
}

async fn tracker_loop<A: Adapter>(
    admin: Arc<Admin>,
    node: Arc<NodeState>,
    io: SocketIo<A>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tracker::TICK) => {}
        }
        let reasons = node.admin_disconnects.take();
        admin
            .tracker
            .tick(&io, &admin.config.admin_namespace, &node.node_id, reasons)
            .await;
    }
}

async fn event_loop<A: Adapter>(
    admin: Arc<Admin>,
    io: SocketIo<A>,
    mut rx: tokio::sync::mpsc::Receiver<traffic::Captured>,
    stop: CancellationToken,
) {
    let admin_ns = admin.config.admin_namespace.as_str();
    loop {
        let captured = tokio::select! {
            _ = stop.cancelled() => return,
            c = rx.recv() => match c { Some(c) => c, None => return },
        };
        let truncated = captured.packet.len() >= traffic::CAPTURE_LIMIT;
        let Some(ev) = wire::event(&captured.packet, truncated) else {
            continue;
        };
        if ev.nsp == admin_ns {
            continue;
        }
        let Some(op) = io.of(admin_ns) else { continue };
        let name = match captured.direction {
            traffic::Direction::In => "event_received",
            traffic::Direction::Out => "event_sent",
        };
        let args = Args(vec![
            serde_json::Value::String(ev.nsp),
            serde_json::Value::String(captured.sid.to_string()),
            serde_json::Value::Array(ev.args),
            serde_json::Value::String(iso_date(sio_redis_adapter::types::now_ms())),
        ]);
        if let Err(e) = op.emit(name, &args).await {
            tracing::debug!("{name} not sent: {e}");
        }
    }
}
