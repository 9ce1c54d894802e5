//! Assembles and runs the proxy: discovery, health checks and the shutdown supervisor on a
//! small control runtime; the proxy and metrics listeners on pingora.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::backends::BackendSet;
use crate::config::{Config, MIN_SAFE_IDLE_TIMEOUT};
use crate::discovery::{self, Discovery, RedisRegistry};
use crate::error::ProxyError;
use crate::gate::Gate;
use crate::metrics::{Metrics, MetricsEndpoint};
use crate::proxy::{ProxySettings, SioProxy};
use crate::routing::TagKey;
use crate::{fdlimit, health};

/// Upper bound of one `/readyz` check.
const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the drain watches for the last tunnel to close.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Runs the proxy until SIGINT, or SIGTERM and the drain.
pub fn run(config: Config) -> Result<(), ProxyError> {
    config.validate()?;
    if config.sid_secret.is_none() {
        tracing::warn!(
            "no --sid-secret (SIO_PROXY_SID_SECRET): using the built-in development secret; \
             set a shared secret on every replica in production"
        );
    }
    if config.tunnel_idle_timeout < MIN_SAFE_IDLE_TIMEOUT {
        tracing::warn!(
            idle_timeout = ?config.tunnel_idle_timeout,
            "--tunnel-idle-timeout is below the nodes' default ping interval + timeout (45 s); \
             idle long-polls and tunnels may be cut"
        );
    }
    if let Err(e) = fdlimit::raise() {
        tracing::warn!(error = %e, "cannot raise the open files limit");
    }
    check_bindable(config.listen)?;
    check_bindable(config.metrics_listen)?;
    crate::uring::configure(config.tunnel_io).map_err(ProxyError::TunnelIo)?;

    let metrics = Arc::new(Metrics::new()?);
    let backends = Arc::new(BackendSet::new(
        TagKey::new(config.sid_secret().as_bytes()),
        config.backend_retention,
        metrics.clone(),
    ));
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sio-proxy-control")
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    let cancel = CancellationToken::new();
    let new_backends = Arc::new(Notify::new());
    let health_timeout = config.health_interval.min(MAX_HEALTH_TIMEOUT);

    let redis = {
        let _runtime = control.enter();
        match &config.backends_redis {
            Some(url) => match RedisRegistry::new(url, &config.redis_prefix) {
                Ok(registry) => Some(registry),
                Err(e) => {
                    return Err(ProxyError::Config(crate::error::ConfigError::RedisUrl {
                        url: url.clone(),
                        reason: e.to_string(),
                    }));
                }
            },
            None => None,
        }
    };
    let mut discovery = Discovery::new(
        config.backends.clone(),
        config.backends_dns.clone(),
        redis,
        metrics.clone(),
    );
    control.block_on(async {
        discovery::refresh(&mut discovery, &backends, &new_backends).await;
        health::check_all(&backends, health_timeout).await;
    });
    {
        let snapshot = backends.snapshot();
        let ready = snapshot.members().iter().filter(|b| b.is_ready()).count();
        tracing::info!(
            discovered = snapshot.members().len(),
            ready,
            "initial backends"
        );
    }
    control.spawn(discovery::run(
        discovery,
        backends.clone(),
        config.discovery_interval,
        new_backends.clone(),
        cancel.child_token(),
    ));
    control.spawn(health::run(
        backends.clone(),
        config.health_interval,
        health_timeout,
        new_backends,
        cancel.child_token(),
    ));
    control.spawn(supervise_shutdown(metrics.clone(), config.shutdown_grace));

    /// Idle upstream connections kept for reuse.
    const UPSTREAM_POOL_SIZE: usize = 16_384;
    let conf = ServerConf {
        threads: config.worker_threads(),
        grace_period_seconds: Some(config.shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        // Every long-polling client holds an upstream connection while its GET waits, and
        // frees it when the GET is answered: keep that many idle ones for reuse, or each poll
        // pays a new TCP connection to the node (pingora's default keeps 128).
        upstream_keepalive_pool_size: UPSTREAM_POOL_SIZE,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let settings = ProxySettings {
        balance: config.balance,
        trust_forwarded: config.trust_forwarded.clone(),
        tunnel_idle_timeout: config.tunnel_idle_timeout,
        response_timeout: config.response_timeout,
        connect_timeout: config.connect_timeout,
        forward_paths: config.forward_paths.clone(),
    };
    let admission = Arc::new(Admission::new(
        config.admission_limits(),
        config.trust_forwarded.clone(),
        metrics.clone(),
    ));
    let app = pingora::proxy::http_proxy(
        &server.configuration,
        SioProxy::new(backends, metrics.clone(), admission.clone(), settings),
    );
    let mut proxy = Service::new(
        "sio-proxy".to_owned(),
        Gate::new(app, admission, metrics.clone()),
    );
    // No pingora read buffer (64 KiB by default) per client connection: tunnels copy through
    // a stack buffer, and HTTP parsing has its own.
    proxy.add_listener(
        ListenerConfig::tcp(config.listen.to_string()).l4_buffer(L4BufferSettings::unbuffered()),
    );
    let mut metrics_service = Service::new(
        "sio-proxy metrics".to_owned(),
        MetricsEndpoint::new(metrics),
    );
    metrics_service.add_tcp(&config.metrics_listen.to_string());
    metrics_service.threads = Some(1);
    server.add_service(proxy);
    server.add_service(metrics_service);

    tracing::info!(
        listen = %config.listen,
        metrics = %config.metrics_listen,
        balance = ?config.balance,
        threads = config.worker_threads(),
        "sio-proxy started"
    );
    server.run(RunArgs::default());
    cancel.cancel();
    control.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("sio-proxy stopped");
    Ok(())
}

/// Fails early, with the address in the message, when a listener cannot bind.
fn check_bindable(addr: SocketAddr) -> Result<(), ProxyError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| ProxyError::Bind { addr, source })
}

/// After SIGTERM (pingora then stops accepting), exits as soon as no tunnel or request is
/// open, or lets pingora end the grace period. A second signal exits at once.
async fn supervise_shutdown(metrics: Arc<Metrics>, grace: Duration) {
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot watch signals; SIGTERM waits the whole grace period");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        // pingora stops at once on SIGINT.
        _ = interrupt.recv() => return,
    }
    tracing::info!(
        open = metrics.open_connections(),
        ?grace,
        "SIGTERM: no new connections; waiting for open tunnels and requests"
    );
    let deadline = Instant::now() + grace;
    loop {
        if metrics.open_connections() <= 0 {
            tracing::info!("every tunnel and request finished; exiting");
            std::process::exit(0);
        }
        if Instant::now() >= deadline {
            tracing::info!("grace period over; closing what is left");
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(DRAIN_POLL) => {}
            _ = interrupt.recv() => {
                tracing::info!("second signal during the drain; exiting now");
                std::process::exit(0);
            }
            _ = terminate.recv() => {
                tracing::info!("second signal during the drain; exiting now");
                std::process::exit(0);
            }
        }
    }
}
