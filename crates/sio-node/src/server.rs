//! Assembles and runs a node: Socket.IO namespaces, HTTP routes, background tasks, and the
//! shutdown that drains it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use socketioxide::adapter::{Adapter, Emitter, LocalAdapter};
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, SocketIoConfig, TransportType};
use socketioxide_core::adapter::{CoreAdapter, DefinedAdapter};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use sio_redis_adapter::{
    ClusterAdapter, NotifyBus, RedisAdapterCtr, RedisCluster, RedisSettings, RoomRouting,
    SioDriver, Store,
};

use crate::api::{self, Api};
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, Transport};
use crate::metrics::Metrics;
use crate::state::{NodeState, Rates, Readiness, RoomChannels};
use crate::{admin, chat, conformance, dashboard, drain, notifications, stats};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The join hook cannot be set up.
    #[error(transparent)]
    JoinHook(#[from] crate::join_hook::HookError),
    /// A namespace could not be registered (the adapter failed to subscribe).
    #[error("namespace {ns} could not start: {reason}")]
    Namespace {
        /// Namespace path.
        ns: &'static str,
        /// What failed.
        reason: String,
    },
    /// The shared state could not be reached at start-up.
    #[error("shared state: {0}")]
    Store(#[from] sio_redis_adapter::StoreError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// The result of registering a namespace: nothing to wait for with the local adapter, a
/// subscription to finish with a remote one.
pub trait NsInit: Send {
    /// Waits for the namespace's adapter to be ready.
    fn finish(self) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

impl NsInit for () {
    async fn finish(self) -> Result<(), String> {
        Ok(())
    }
}

impl NsInit for socketioxide_redis::InitRes<SioDriver> {
    async fn finish(self) -> Result<(), String> {
        self.await.map_err(|e| e.to_string())
    }
}

/// An adapter a node can run on.
pub trait NodeAdapter: Adapter + DefinedAdapter {}
impl<A: Adapter + DefinedAdapter> NodeAdapter for A where
    <A as CoreAdapter<Emitter>>::InitRes: NsInit
{
}

/// Runs a node on `listener` until `shutdown` is cancelled, then drains it and returns
/// within `--shutdown-grace`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    config.validate()?;
    let metrics = Metrics::new();
    let Some(url) = config.redis_url.as_ref().map(|u| u.expose().to_owned()) else {
        let store = Store::memory(config.notification_maxlen);
        let subscribed = Arc::new(AtomicBool::new(true));
        let node = new_state(
            config,
            &listener,
            store,
            RoomChannels::default(),
            subscribed,
            metrics,
        )?;
        return serve::<LocalAdapter>(node, (), listener, shutdown, None).await;
    };
    let settings = RedisSettings {
        url,
        prefix: config.redis_prefix.clone(),
        lease: config.lease_ttl,
        notification_maxlen: config.notification_maxlen,
        request_timeout: REQUEST_TIMEOUT,
        routing: RoomRouting::new(config.adapter_routing.into(), [chat::NAMESPACE]),
    };
    let cluster = RedisCluster::connect(&settings, metrics.registry()).await?;
    tracing::info!(
        redis = %sio_redis_adapter::cluster::redact(&settings.url),
        prefix = %settings.prefix,
        routing = %settings.routing.mode,
        "connected to Redis"
    );
    let node = new_state(
        config,
        &listener,
        cluster.store.clone(),
        RoomChannels::redis(cluster.driver.clone()),
        cluster.driver.subscribed(),
        metrics,
    )?;
    let ctr =
        RedisAdapterCtr::new_with_driver(cluster.driver.clone(), cluster.adapter_config.clone());
    serve::<ClusterAdapter>(node, ctr, listener, shutdown, Some(cluster)).await
}

/// Binary attachments one event may carry.
pub const MAX_ATTACHMENTS: usize = 64;
/// Time the attachments of a binary event have to arrive after it.
pub const ATTACHMENTS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long cross-node requests (rooms, fetch sockets, acks, notification counts) wait for
/// every node to answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

fn new_state(
    config: Config,
    listener: &TcpListener,
    store: Store,
    room_channels: RoomChannels,
    subscribed: Arc<AtomicBool>,
    metrics: Metrics,
) -> Result<Arc<NodeState>, NodeError> {
    let bound = listener.local_addr()?;
    let node_id = config.resolved_node_id();
    let advertise_addr = config.resolved_advertise_addr(bound);
    let auth = Authenticator::from_config(&config)?;
    let rooms = crate::room_auth::RoomAuthorizer::from_config(&config, &metrics)?;
    Ok(Arc::new(NodeState {
        node_id,
        advertise_addr,
        server_uid: socketioxide_core::Uid::new().to_string(),
        auth,
        rooms,
        expiry: crate::expiry::ExpiryTimers::default(),
        metrics,
        store,
        room_channels,
        readiness: Readiness::new(subscribed),
        started: Instant::now(),
        started_at_ms: sio_redis_adapter::types::now_ms(),
        fanout: std::sync::OnceLock::new(),
        rates: std::sync::Mutex::new(Rates::default()),
        drain: crate::drain::DrainState::default(),
        cleanups: tokio_util::task::TaskTracker::new(),
        admin_disconnects: Default::default(),
        notify_bus: std::sync::OnceLock::new(),
        config,
    }))
}

fn socket_io_config(node: &NodeState) -> SocketIoConfig {
    let mut cfg = SocketIoConfig::default();
    if let Ok(uid) = node.server_uid.parse() {
        cfg.server_id = uid;
    }
    cfg
}

/// Runs the node on adapter `A` with the adapter state `adapter_state`.
pub async fn serve<A>(
    node: Arc<NodeState>,
    adapter_state: A::State,
    listener: TcpListener,
    shutdown: CancellationToken,
    cluster: Option<RedisCluster>,
) -> Result<(), NodeError>
where
    A: NodeAdapter,
    <A as CoreAdapter<Emitter>>::InitRes: NsInit,
{
    let c = &node.config;
    let (ping_interval, ping_timeout, max_payload, connect_timeout) = if c.conformance {
        (
            conformance::PING_INTERVAL,
            conformance::PING_TIMEOUT,
            conformance::MAX_PAYLOAD,
            conformance::CONNECT_TIMEOUT,
        )
    } else {
        (
            c.ping_interval,
            c.ping_timeout,
            c.max_payload,
            c.connect_timeout,
        )
    };
    let builder = SocketIo::builder()
        .with_config(socket_io_config(&node))
        .ping_interval(ping_interval)
        .ping_timeout(ping_timeout)
        .max_payload(max_payload)
        .connect_timeout(connect_timeout)
        .max_buffer_size(c.max_buffer_size)
        .ws_read_buffer_size(c.ws_read_buffer)
        .ws_max_message_size(max_payload as usize)
        .ws_max_frame_size(max_payload as usize)
        // A binary event's attachments are buffered until the last one arrives: all of them
        // together within --max-payload, a few of them, and not waited for long.
        .with_parser(
            socketioxide::ParserConfig::common()
                .max_incoming_binary_buf_size(max_payload as usize)
                .max_incoming_binaries(MAX_ATTACHMENTS)
                .packet_completion_timeout(ATTACHMENTS_TIMEOUT),
        )
        .with_state(node.clone());
    // The admin UI (off in conformance mode and without credentials): see `crate::admin`.
    let admin = (!c.conformance && c.admin.enabled()).then(|| admin::Admin::new(&c.admin));
    let builder = match &admin {
        Some(a) => builder.with_state(a.clone()),
        None => builder,
    };
    let tasks = TaskTracker::new();
    let background = CancellationToken::new();
    let polling = c.transports.contains(&Transport::Polling);
    let websocket = c.transports.contains(&Transport::Websocket);
    let builder = match (polling, websocket) {
        (true, false) => builder.transports([TransportType::Polling]),
        (false, true) => builder.transports([TransportType::Websocket]),
        _ => builder.transports([TransportType::Polling, TransportType::Websocket]),
    };
    let (layer, io) = builder.with_adapter::<A>(adapter_state).build_layer();

    let app = if c.conformance {
        tracing::warn!("conformance mode: serving the protocol test server, not the application");
        register(&io, "/", conformance::on_connect::<A>).await?;
        register(&io, "/custom", conformance::on_connect::<A>).await?;
        let engine = engineioxide::config::EngineIoConfig::builder()
            .ping_interval(conformance::PING_INTERVAL)
            .ping_timeout(conformance::PING_TIMEOUT)
            .max_payload(conformance::MAX_PAYLOAD)
            .build();
        probes(node.clone(), io.clone()).layer(layer).layer(
            engineioxide::layer::EngineIoLayer::from_config(
                Arc::new(conformance::EngineEcho),
                engine,
            ),
        )
    } else {
        register(
            &io,
            chat::NAMESPACE,
            chat::on_connect::<A>.with(chat::middleware::<A>),
        )
        .await?;
        register(
            &io,
            notifications::NAMESPACE,
            notifications::on_connect::<A>.with(notifications::middleware::<A>),
        )
        .await?;
        register(
            &io,
            dashboard::NAMESPACE,
            dashboard::on_connect::<A>.with(dashboard::middleware::<A>),
        )
        .await?;
        let fan_io = io.clone();
        let fan_node = node.clone();
        let local: sio_redis_adapter::notify::LocalDelivery =
            Arc::new(move |user, n| notifications::deliver_local(&fan_io, &fan_node, user, n));
        let fanout: crate::state::NotificationFanout = match &cluster {
            None => Arc::new(move |user, n| {
                let delivered = local(&user, &n);
                Box::pin(async move { Ok(delivered) })
            }),
            Some(c) => {
                let (resync_io, resync_node) = (io.clone(), node.clone());
                let bus = NotifyBus::start(
                    c.driver.clone(),
                    c.keys.clone(),
                    node.server_uid.clone(),
                    REQUEST_TIMEOUT,
                    local,
                    Arc::new(move || notifications::resync_local(&resync_io, &resync_node)),
                )
                .await?;
                let _ = node.notify_bus.set(bus.clone());
                Arc::new(move |user, n| {
                    let bus = bus.clone();
                    Box::pin(async move { bus.publish(&user, &n).await })
                })
            }
        };
        let _ = node.fanout.set(fanout);
        let api = Api {
            node: node.clone(),
            io: io.clone(),
        };
        let mut app = probes(node.clone(), io.clone()).merge(api::routes(api));
        if let Some(a) = &admin {
            app =
                app.merge(start_admin(a, &node, &io, cluster.as_ref(), &tasks, &background).await?);
        }
        app.layer(layer)
    };
    let app = match &admin {
        Some(a) => app.layer(axum::middleware::from_fn_with_state(
            a.traffic.clone(),
            admin::traffic::meter_polling,
        )),
        None => app,
    };
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            drain::engine_guard,
        ))
        .layer(axum::middleware::from_fn(crate::conn::detach_request_head))
        .layer(cors(&node.config));

    tasks.spawn(stats_loop(node.clone(), io.clone(), background.clone()));
    tasks.spawn(heartbeat_loop(node.clone(), io.clone(), background.clone()));
    {
        let (node, stop) = (node.clone(), background.clone());
        tasks.spawn(async move { node.expiry.run(stop).await });
    }

    let local = listener.local_addr()?;
    let server_stop = CancellationToken::new();
    let mut server = tokio::spawn(crate::conn::serve(
        crate::conn::Listener(listener, admin.map(|a| a.traffic.clone())),
        app,
        server_stop.clone(),
    ));
    node.readiness.set_serving();
    node.metrics.ready.set(i64::from(node.readiness.is_ready()));
    tracing::info!(
        addr = %local,
        node_id = %node.node_id,
        advertise = %node.advertise_addr,
        "sio-node listening (Socket.IO on /socket.io/, API on /api/*, /healthz, /readyz, /metrics)"
    );

    tokio::select! {
        _ = shutdown.cancelled() => {}
        // The accept loop only ends when `server_stop` fires: anything else is a failure.
        res = &mut server => {
            background.cancel();
            let why = match res {
                Ok(()) => "http server stopped unexpectedly".to_owned(),
                Err(e) => format!("http server task failed: {e}"),
            };
            return Err(NodeError::Io(std::io::Error::other(why)));
        }
    }

    let deadline = Instant::now() + node.config.shutdown_grace;
    tracing::info!(grace = ?node.config.shutdown_grace, "shutting down: draining");
    node.readiness.set_draining();
    node.metrics.draining.set(1);
    node.metrics.ready.set(0);
    let info = stats::local_info(&node, &io);
    if let Err(e) = node.store.heartbeat(&info, node.config.lease_ttl).await {
        tracing::warn!("could not mark this node draining in the registry: {e}");
    }
    let delay = node.config.drain_delay.min(node.config.shutdown_grace / 3);
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = wait_until_empty(&io) => {}
    }
    drain::drain(&node, &io, deadline).await;
    server_stop.cancel();
    background.cancel();
    tasks.close();
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, server).await.is_err() {
        tracing::warn!("grace period over with connections still open; exiting anyway");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
    if let Err(e) = node.store.deregister(&node.node_id).await {
        tracing::warn!("could not remove this node from the registry: {e}");
    }
    tracing::info!("sio-node stopped");
    Ok(())
}

/// Registers the admin namespace, starts its tasks, and returns the UI's routes (none
/// without `--admin-ui-dir`).
async fn start_admin<A>(
    admin: &Arc<admin::Admin>,
    node: &Arc<NodeState>,
    io: &SocketIo<A>,
    cluster: Option<&RedisCluster>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Router, NodeError>
where
    A: NodeAdapter,
    <A as CoreAdapter<Emitter>>::InitRes: NsInit,
{
    let failed = |reason| NodeError::Namespace {
        ns: "admin",
        reason,
    };
    let cfg = &node.config.admin;
    io.ns(
        cfg.admin_namespace.clone(),
        admin::namespace::on_connect::<A>.with(admin::namespace::middleware::<A>),
    )
    .finish()
    .await
    .map_err(failed)?;
    let link = cluster.map(|c| admin::ClusterLink {
        driver: c.driver.clone(),
        keys: c.keys.clone(),
    });
    admin::start(
        admin.clone(),
        node.clone(),
        io.clone(),
        link,
        tasks,
        stop.clone(),
    )
    .await
    .map_err(failed)?;
    match &cfg.admin_ui_dir {
        Some(dir) => Ok(admin::ui::routes(dir, &cfg.admin_namespace)?),
        None => Ok(Router::new()),
    }
}

async fn wait_until_empty<A: Adapter>(io: &SocketIo<A>) {
    while io
        .nsps()
        .iter()
        .any(|ns| !ns.clone().local().sockets().is_empty())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn register<A, C, T>(io: &SocketIo<A>, ns: &'static str, handler: C) -> Result<(), NodeError>
where
    A: NodeAdapter,
    <A as CoreAdapter<Emitter>>::InitRes: NsInit,
    C: ConnectHandler<A, T>,
    T: Send + Sync + 'static,
{
    io.ns(ns, handler)
        .finish()
        .await
        .map_err(|reason| NodeError::Namespace { ns, reason })
}

fn cors(config: &Config) -> CorsLayer {
    if config.admin.admin_hosted_ui {
        return admin_cors(config);
    }
    let layer = CorsLayer::new()
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::OPTIONS,
        ])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    if config.cors_origin.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let origins: Vec<HeaderValue> = config
            .cors_origin
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
    }
}

/// CORS with `--admin-hosted-ui`: the hosted admin UI connects with credentials, next to the
/// `--cors-origin` list (credentials for the listed origins, and for `*` none but the UI).
fn admin_cors(config: &Config) -> CorsLayer {
    use tower_http::cors::AllowCredentials;
    let any = config.cors_origin.iter().any(|o| o == "*");
    let listed: Vec<String> = config.cors_origin.clone();
    let allowed = move |origin: &HeaderValue| {
        origin == admin::config::HOSTED_UI_ORIGIN
            || any
            || listed.iter().any(|o| origin.as_bytes() == o.as_bytes())
    };
    let allowed2 = allowed.clone();
    CorsLayer::new()
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::OPTIONS,
        ])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .allow_origin(AllowOrigin::predicate(move |o, _| allowed(o)))
        .allow_credentials(AllowCredentials::predicate(move |o, _| {
            allowed2(o) && (!any || o == admin::config::HOSTED_UI_ORIGIN)
        }))
}

fn probes<A: Adapter>(node: Arc<NodeState>, io: SocketIo<A>) -> Router {
    struct Probe<A: Adapter> {
        node: Arc<NodeState>,
        io: SocketIo<A>,
    }
    impl<A: Adapter> Clone for Probe<A> {
        fn clone(&self) -> Self {
            Self {
                node: self.node.clone(),
                io: self.io.clone(),
            }
        }
    }
    async fn healthz() -> &'static str {
        "ok"
    }
    async fn readyz<A: Adapter>(State(p): State<Probe<A>>) -> Response {
        let r = &p.node.readiness;
        if r.is_ready() {
            (StatusCode::OK, "ready").into_response()
        } else {
            let body = serde_json::json!({
                "ready": false,
                "draining": r.is_draining(),
                "subscribed": r.is_subscribed(),
            });
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
    async fn metrics<A: Adapter>(State(p): State<Probe<A>>) -> Response {
        stats::refresh_connection_gauge(&p.node, &p.io);
        p.node
            .metrics
            .ready
            .set(i64::from(p.node.readiness.is_ready()));
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            p.node.metrics.encode(),
        )
            .into_response()
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<A>))
        .route("/metrics", get(metrics::<A>))
        .with_state(Probe { node, io })
}

async fn stats_loop<A: Adapter>(node: Arc<NodeState>, io: SocketIo<A>, stop: CancellationToken) {
    let every = node.config.dashboard_interval;
    let mut last = (stats::event_totals(&node), Instant::now());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = (stats::event_totals(&node), Instant::now());
        let secs = now.1.duration_since(last.1).as_secs_f64().max(0.001);
        let rates = Rates {
            received: (now.0.0.saturating_sub(last.0.0)) as f64 / secs,
            sent: (now.0.1.saturating_sub(last.0.1)) as f64 / secs,
        };
        *node.rates.lock().unwrap_or_else(|e| e.into_inner()) = rates;
        last = now;
        dashboard::publish(&node, &io).await;
    }
}

async fn heartbeat_loop<A: Adapter>(
    node: Arc<NodeState>,
    io: SocketIo<A>,
    stop: CancellationToken,
) {
    let every = node.config.lease_ttl / 3;
    loop {
        let started = Instant::now();
        let info = stats::local_info(&node, &io);
        if let Err(e) = node.store.heartbeat(&info, node.config.lease_ttl).await {
            tracing::warn!("registry heartbeat failed: {e}");
        }
        let leases = stats::local_leases(&node, &io);
        if let Err(e) = node.store.refresh_leases(&leases).await {
            tracing::warn!("lease renewal failed: {e}");
        }
        // Only this node's rooms: its heartbeat never grows with the cluster's rooms.
        let rooms: Vec<String> = leases
            .memberships
            .iter()
            .map(|m| m.room.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        match node.store.expire_presence(&rooms).await {
            Ok(gone) => {
                for (room, user) in gone {
                    tracing::info!(
                        room,
                        user,
                        "presence expired (its node stopped renewing it)"
                    );
                    chat::emit_presence(&io, &node, &user, &room, false).await;
                }
            }
            Err(e) => tracing::warn!("presence sweep failed: {e}"),
        }
        let took = started.elapsed();
        node.metrics.heartbeat_duration.observe(took.as_secs_f64());
        if took > every {
            node.metrics.heartbeat_slow.inc();
            tracing::warn!(
                took = ?took,
                limit = ?every,
                rooms = rooms.len(),
                sockets = leases.sockets.len(),
                "heartbeat round took longer than a third of --lease-ttl; leases are at risk"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
