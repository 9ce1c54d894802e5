//! Backend discovery from three combinable sources: static addresses (`--backend`), DNS names
//! re-resolved every round (`--backends-dns`, a Kubernetes headless Service), and the nodes'
//! Redis registry (`--backends-redis`).
//!
//! Registry format: `sio_redis_adapter::registry` (sorted set `{prefix}:nodes` of leases,
//! hash `{prefix}:nodes:info` of JSON `NodeInfo`), the one definition the nodes write with;
//! this crate builds it without default features (no socketioxide).
//!
//! A source that fails keeps its last known result, so a Redis or DNS outage changes nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config as RedisConfig, ReconnectPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backends::{BackendSet, Discovered};
use crate::error::DiscoveryError;
use crate::metrics::Metrics;

/// Longest time one source may take in one round.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(3);

/// The node registry in Redis (format and reader: `sio_redis_adapter::registry`, the one
/// definition the nodes write with).
pub struct RedisRegistry {
    client: Client,
    keys: sio_redis_adapter::Keys,
}

impl RedisRegistry {
    /// A registry reader; connects in the background and reconnects forever.
    pub fn new(url: &crate::secret::SecretUrl, prefix: &str) -> Result<Self, DiscoveryError> {
        let config = RedisConfig::from_url(url.expose())?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| c.connection_timeout = SOURCE_TIMEOUT)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 30_000, 2))
            .build()?;
        let _connection_task = client.connect();
        Ok(RedisRegistry {
            client,
            keys: sio_redis_adapter::Keys::new(prefix),
        })
    }

    /// The live nodes (`addr`, `draining`): lease not expired, info present and parseable.
    pub async fn live_nodes(&self) -> Result<Vec<(String, bool)>, DiscoveryError> {
        let nodes = sio_redis_adapter::registry::live_nodes(&self.client, &self.keys).await?;
        Ok(nodes.into_iter().map(|n| (n.addr, n.draining)).collect())
    }
}

/// All configured sources and the last result of each.
pub struct Discovery {
    static_backends: Vec<String>,
    dns_names: Vec<String>,
    redis: Option<RedisRegistry>,
    last_static: Vec<Discovered>,
    last_dns: Vec<Discovered>,
    last_redis: Vec<Discovered>,
    metrics: Arc<Metrics>,
}

impl Discovery {
    /// Sources from the configuration (nothing is contacted yet).
    pub fn new(
        static_backends: Vec<String>,
        dns_names: Vec<String>,
        redis: Option<RedisRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Discovery {
            static_backends,
            dns_names,
            redis,
            last_static: Vec::new(),
            last_dns: Vec::new(),
            last_redis: Vec::new(),
            metrics,
        }
    }

    /// One round over every source; returns the union (failed sources contribute their last
    /// known result).
    pub async fn discover(&mut self) -> Vec<Discovered> {
        if !self.static_backends.is_empty() {
            match resolve_all(&self.static_backends).await {
                Ok(found) => self.last_static = found,
                Err(e) => {
                    self.metrics.discovery_error("static");
                    tracing::warn!(error = %e, "static backend resolution failed; keeping last set");
                }
            }
        }
        if !self.dns_names.is_empty() {
            match resolve_all(&self.dns_names).await {
                Ok(found) => self.last_dns = found,
                Err(e) => {
                    self.metrics.discovery_error("dns");
                    tracing::warn!(error = %e, "DNS discovery failed; keeping last set");
                }
            }
        }
        if let Some(redis) = &self.redis {
            let round = tokio::time::timeout(SOURCE_TIMEOUT, redis.live_nodes()).await;
            match round {
                Ok(Ok(nodes)) => {
                    let mut found = Vec::with_capacity(nodes.len());
                    for (addr, draining) in nodes {
                        match resolve(&addr).await {
                            Ok(addrs) => found.extend(
                                addrs.into_iter().map(|addr| Discovered { addr, draining }),
                            ),
                            Err(e) => tracing::warn!(error = %e, "registry address unresolvable"),
                        }
                    }
                    self.last_redis = found;
                }
                Ok(Err(e)) => {
                    self.metrics.discovery_error("redis");
                    tracing::warn!(error = %e, "registry read failed; keeping last set");
                }
                Err(_) => {
                    self.metrics.discovery_error("redis");
                    tracing::warn!("registry read timed out; keeping last set");
                }
            }
        }
        self.last_static
            .iter()
            .chain(&self.last_dns)
            .chain(&self.last_redis)
            .copied()
            .collect()
    }
}

async fn resolve(host_port: &str) -> Result<Vec<SocketAddr>, DiscoveryError> {
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let lookup = tokio::net::lookup_host(host_port);
    match tokio::time::timeout(SOURCE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(source)) => Err(DiscoveryError::Resolve {
            name: host_port.to_owned(),
            source,
        }),
        Err(_) => Err(DiscoveryError::Timeout("DNS lookup")),
    }
}

async fn resolve_all(names: &[String]) -> Result<Vec<Discovered>, DiscoveryError> {
    let mut found = Vec::new();
    for name in names {
        found.extend(resolve(name).await?.into_iter().map(|addr| Discovered {
            addr,
            draining: false,
        }));
    }
    Ok(found)
}

/// One discovery round applied to the backend set; wakes the health checker when backends
/// appeared (they get no sessions before their first check).
pub async fn refresh(discovery: &mut Discovery, backends: &BackendSet, new_backends: &Notify) {
    let found = discovery.discover().await;
    let added = backends.apply_discovery(&found);
    if !added.is_empty() {
        new_backends.notify_one();
    }
}

/// Runs discovery every `interval` until cancelled.
pub async fn run(
    mut discovery: Discovery,
    backends: Arc<BackendSet>,
    interval: Duration,
    new_backends: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = refresh(&mut discovery, &backends, &new_backends) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use fred::prelude::{KeysInterface, SortedSetsInterface};

    use super::*;

    #[tokio::test]
    async fn static_sources_resolve_names_and_addresses() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let mut discovery = Discovery::new(
            vec!["127.0.0.1:3001".into(), "localhost:3002".into()],
            vec![],
            None,
            metrics,
        );
        let found = discovery.discover().await;
        assert!(
            found
                .iter()
                .any(|d| d.addr == SocketAddr::from(([127, 0, 0, 1], 3001)))
        );
        assert!(found.iter().any(|d| d.addr.port() == 3002));
    }

    #[tokio::test]
    async fn a_failing_source_keeps_its_last_result() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let mut discovery = Discovery::new(vec![], vec!["localhost:3005".into()], None, metrics);
        let first = discovery.discover().await;
        assert!(!first.is_empty());
        discovery.dns_names = vec!["no-such-host.invalid:3005".into()];
        assert_eq!(discovery.discover().await, first);
    }

    /// A `redis-server` of the test's own on a free port, killed on drop.
    struct TestRedis(std::process::Child);

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Reads a real Redis registry written the way the nodes write it.
    #[tokio::test]
    async fn reads_live_nodes_from_the_registry() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let _redis = TestRedis(
            std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is missing: apt-get install redis-server (make deps)"),
        );
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the test's redis-server did not start on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let url = format!("redis://127.0.0.1:{port}");
        let writer = Builder::from_config(RedisConfig::from_url(&url).expect("url"))
            .build()
            .expect("client");
        let _task = writer.connect();
        writer
            .wait_for_connect()
            .await
            .expect("connect to the test's redis-server");
        let prefix = format!(
            "sio-proxy-test-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("time")
                .as_nanos()
        );
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("time")
            .as_millis() as f64;
        // written by a node's own registration, plus an expired lease and a lease without info
        let node = sio_redis_adapter::RedisCluster::connect(
            &sio_redis_adapter::RedisSettings {
                url: url.clone(),
                prefix: prefix.clone(),
                lease: Duration::from_secs(60),
                notification_maxlen: 10,
                request_timeout: Duration::from_secs(2),
                routing: sio_redis_adapter::RoomRouting::default(),
            },
            &prometheus::Registry::new(),
        )
        .await
        .expect("node connection");
        let info = |id: &str, addr: &str, draining: bool| sio_redis_adapter::NodeInfo {
            id: id.to_owned(),
            addr: addr.to_owned(),
            draining,
            connections: 3,
            version: "0.1.0".to_owned(),
            server_uid: String::new(),
            started_at_ms: 0,
            namespaces: Default::default(),
            events_received_per_second: 0.0,
            events_sent_per_second: 0.0,
        };
        let store = &node.store;
        store
            .heartbeat(
                &info("live", "127.0.0.1:3001", true),
                Duration::from_secs(60),
            )
            .await
            .expect("register");
        store
            .heartbeat(&info("expired", "127.0.0.1:3002", false), Duration::ZERO)
            .await
            .expect("register");
        let nodes = format!("{prefix}:nodes");
        let info = format!("{prefix}:nodes:info");
        let _: () = writer
            .zadd(
                &nodes,
                None,
                None,
                false,
                false,
                (now_ms + 60_000.0, "no-info"),
            )
            .await
            .expect("zadd");
        tokio::time::sleep(Duration::from_millis(5)).await; // the zero lease is in the past
        let registry =
            RedisRegistry::new(&url.parse().expect("infallible"), &prefix).expect("registry");
        let found = registry.live_nodes().await.expect("live nodes");
        let _: () = writer.del(vec![nodes, info]).await.expect("cleanup");
        assert_eq!(found, vec![("127.0.0.1:3001".to_owned(), true)]);
    }

    #[test]
    fn reads_the_registry_json() {
        let info: sio_redis_adapter::NodeInfo = serde_json::from_str(
            r#"{"id":"node-1","addr":"127.0.0.1:3001","draining":true,"connections":12,"version":"0.1.0"}"#,
        )
        .expect("json");
        assert_eq!(info.addr, "127.0.0.1:3001");
        assert!(info.draining);
    }
}
