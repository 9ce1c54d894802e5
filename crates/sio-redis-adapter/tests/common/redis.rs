//! Real `redis-server` processes for the tests, and node connections to them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sio_redis_adapter::{RedisCluster, RedisSettings, RoomRouting, Routing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a starting `redis-server` may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A standalone `redis-server` on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub async fn start() -> Self {
        let mut failures = Vec::new();
        // A port found free can be taken by another test before the server binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                port,
                child: None,
                log: std::env::temp_dir().join(format!("sio-adapter-test-redis-{port}.log")),
            };
            match server.spawn().await {
                Ok(()) => return server,
                Err(e) => failures.push(e),
            }
        }
        panic!("redis-server did not start: {failures:#?}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no clean shutdown, as when its machine dies) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]); it comes back
    /// empty, as a Redis without persistence does.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn().await {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--loglevel", "warning", "--logfile"])
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: run `apt-get install redis-server` \
                 (CI installs it); these tests start their own servers"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if ping(self.port).await {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited ({status}): {}",
                    self.port,
                    self.log_text()
                ));
            }
            if tokio::time::Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}: {}",
                    self.port,
                    self.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// True when a Redis answers `PING` on `port` within a second.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// A key prefix no other test uses.
pub fn random_prefix() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

/// Settings of a node on `server` under `prefix`: 10 s leases, 100 notifications per user,
/// 2 s cross-node requests.
pub fn settings(server: &RedisServer, prefix: &str) -> RedisSettings {
    RedisSettings {
        url: server.url(),
        prefix: prefix.to_owned(),
        lease: Duration::from_secs(10),
        notification_maxlen: 100,
        request_timeout: Duration::from_secs(2),
        routing: RoomRouting::default(),
    }
}

/// One node's connection to Redis, with the registry its metrics are in.
pub struct RedisNode {
    /// The driver, store and key names.
    pub cluster: RedisCluster,
    /// Where the node's `sio_adapter_*` metrics are registered.
    pub registry: prometheus::Registry,
}

/// Connects a node as `sio-node` does (its own clients, its own metrics).
pub async fn connect(settings: &RedisSettings) -> RedisNode {
    let registry = prometheus::Registry::new();
    let cluster = RedisCluster::connect(settings, &registry).await.unwrap();
    RedisNode { cluster, registry }
}

/// Sum of the samples of the metric family `name` in `registry` whose labels include
/// `labels` (0 when absent).
pub fn metric_with(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().value() + m.get_gauge().value())
        .sum()
}

/// Sum of every sample of the metric family `name` in `registry` (0 when absent).
pub fn metric(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        // absent fields read as 0, so one of the two terms is always 0
        .map(|m| m.get_counter().value() + m.get_gauge().value())
        .sum()
}

/// `n` nodes on a fresh `redis-server`, under a random prefix, each with its own connection
/// (as separate processes would have), configured as sio-node configures them.
pub async fn redis_nodes(n: usize) -> super::scenarios::Nodes<sio_redis_adapter::SioDriver> {
    redis_nodes_routed(n, Routing::Rooms).await
}

/// [`redis_nodes`] publishing room broadcasts on the request channel (`--adapter-routing
/// broadcast`).
pub async fn redis_nodes_broadcast(
    n: usize,
) -> super::scenarios::Nodes<sio_redis_adapter::SioDriver> {
    redis_nodes_routed(n, Routing::Broadcast).await
}

/// [`redis_nodes`] with room broadcasts of namespace `/` routed as `mode` says.
pub async fn redis_nodes_routed(
    n: usize,
    mode: Routing,
) -> super::scenarios::Nodes<sio_redis_adapter::SioDriver> {
    let server = RedisServer::start().await;
    let mut settings = settings(&server, &random_prefix());
    settings.routing = RoomRouting::new(mode, ["/"]);
    let mut connections = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let node = connect(&settings).await;
        nodes.push((
            node.cluster.driver.clone(),
            node.cluster.adapter_config.clone(),
        ));
        connections.push(node);
    }
    let keep = RedisKeep {
        connections,
        server,
    };
    super::scenarios::Nodes::start(nodes, Box::new(keep)).await
}

/// What [`redis_nodes`] keeps alive with the nodes (reach it with `Nodes::keep_mut`).
pub struct RedisKeep {
    /// Each node's connection.
    pub connections: Vec<RedisNode>,
    /// The server.
    pub server: RedisServer,
}
