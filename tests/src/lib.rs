//! Harness for whole-process tests: real `redis-server`, `sio-node` and `sio-proxy`
//! processes on free loopback ports, and scenarios run by Node.js with the official
//! `socket.io-client`. Every process is killed when its handle is dropped; nothing sleeps
//! and hopes: starts wait on readiness probes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a workspace binary: `$SIO_BIN_DIR/<name>` or `target/debug/<name>`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SIO_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace().join("target"))
                .join("debug")
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (or `make test`) first",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A random key prefix so tests sharing a Redis never see each other's keys.
pub fn random_prefix() -> String {
    format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// A directory for a test's logs, kept under `target/test-logs/`.
pub fn log_dir(test: &str) -> PathBuf {
    let dir = workspace().join("target").join("test-logs").join(test);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A child process killed on drop, with its output in a log file.
#[derive(Debug)]
pub struct Proc {
    /// Name used in messages.
    pub name: String,
    child: Option<Child>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with output to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        cmd.stdout(file).stderr(err).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, `"STOP"`, `"CONT"`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process now and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    /// Kills the process, then fails the test if it panicked anywhere (a panic in a spawned
    /// task does not stop a server, so it would otherwise pass unseen).
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            return;
        }
        let log = self.log_text();
        if let Some(at) = log.find("panicked at") {
            let start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let excerpt: String = log[start..].lines().take(6).collect::<Vec<_>>().join("\n");
            panic!(
                "{} panicked (log: {}):\n{excerpt}",
                self.name,
                self.log.display()
            );
        }
    }
}

/// Polls `f` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A minimal HTTP/1.1 GET returning `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http(addr, "GET", path, &[], None)
}

/// A minimal HTTP/1.1 request returning `(status, body)` (no chunked bodies).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let mut body = String::new();
    let _ = reader.read_to_string(&mut body);
    Ok((status, body))
}

/// A `redis-server` on a free port, without persistence.
#[derive(Debug)]
pub struct Redis {
    /// The process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Starts a standalone Redis on a free port and waits until it answers.
    pub fn start(test: &str) -> Self {
        Self::start_on(test, free_port())
    }

    /// Starts a standalone Redis on `port` (to restart one on the same port).
    pub fn start_on(test: &str, port: u16) -> Self {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]);
        let proc = Proc::spawn(
            "redis",
            cmd,
            log_dir(test).join(format!("redis-{port}.log")),
        );
        let r = Self { proc, port };
        assert!(
            wait_until(Duration::from_secs(10), || r.ping()),
            "redis-server did not start on {port} (is it installed? `apt-get install redis-server`): {}",
            r.proc.log_text()
        );
        r
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

/// Development secrets used by the tests.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";
/// API key used by the tests.
pub const API_KEY: &str = "test-api-key";

/// A running `sio-node`.
#[derive(Debug)]
pub struct Node {
    /// The process.
    pub proc: Proc,
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Its node id.
    pub id: String,
}

impl Node {
    /// Starts a node with JWT auth, the test API key and `extra` flags, and waits for
    /// `/readyz`.
    pub fn start(test: &str, id: &str, extra: &[&str]) -> Self {
        let node = Self::spawn(test, id, extra);
        node.wait_ready(Duration::from_secs(20));
        node
    }

    /// Starts a node with only `extra` flags (see [`Node::spawn_bare`]) and waits for
    /// `/readyz`.
    pub fn start_bare(test: &str, id: &str, extra: &[&str]) -> Self {
        let node = Self::spawn_bare(test, id, extra);
        node.wait_ready(Duration::from_secs(20));
        node
    }

    /// Starts a node without waiting for it.
    pub fn spawn(test: &str, id: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--jwt-secret", JWT_SECRET, "--api-key", API_KEY];
        args.extend_from_slice(extra);
        Self::spawn_bare(test, id, &args)
    }

    /// Starts a node with nothing but its address, its id and `extra` (no JWT secret, no API
    /// key), without waiting for it.
    pub fn spawn_bare(test: &str, id: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut cmd = Command::new(bin("sio-node"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SIO_LOG", "info,sio_node=debug")
            .args(["--listen", &addr.to_string(), "--node-id", id])
            .args(extra);
        let proc = Proc::spawn(id, cmd, log_dir(test).join(format!("{id}.log")));
        Self {
            proc,
            addr,
            id: id.to_owned(),
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            matches!(http_get(self.addr, "/readyz"), Ok((200, _)))
        });
        assert!(
            ok,
            "{} not ready in {timeout:?}:\n{}",
            self.id,
            self.proc.log_text()
        );
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The node's `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

/// The `sid` of an Engine.IO open packet (`0{"sid":"…",…}`, the handshake answer body).
///
/// # Panics
/// When the body carries no `sid`: the handshake failed.
pub fn open_packet_sid(body: &str) -> String {
    body.split("\"sid\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no sid in the handshake answer: {body}"))
        .to_owned()
}

/// Sum of the samples of `name` whose labels contain every `labels` pair, in Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A Node.js HTTP server answering the join hook (tests/js/hook-server.mjs; rooms named
/// `slow-*` are allowed after 2 s), and its base URL (the hook is at `/join`, the requests it
/// saw at `/requests`).
pub fn hook_server(test: &str) -> (Proc, String) {
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.current_dir(workspace().join("tests").join("js"))
        .arg("hook-server.mjs")
        .env("PORT", port.to_string());
    let proc = Proc::spawn("hook", cmd, log_dir(test).join("hook.log"));
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let ok = wait_until(Duration::from_secs(10), || {
        matches!(http_get(addr, "/requests"), Ok((200, _)))
    });
    assert!(ok, "hook server did not start: {}", proc.log_text());
    (proc, format!("http://127.0.0.1:{port}"))
}

/// Runs `tests/js/<script>` with Node.js and `env`, and panics with its output unless it
/// exits 0. Returns its stdout.
pub fn run_js(script: &str, env: &[(&str, String)]) -> String {
    let js = workspace().join("tests").join("js");
    assert!(
        js.join("node_modules").join("socket.io-client").exists(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (or `make test`)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&js).arg(script);
    cmd.env("JWT_SECRET", JWT_SECRET).env("API_KEY", API_KEY);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (is Node.js 20 installed?): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "scenario {script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// The three ways the official client can connect.
pub const MODES: [&str; 3] = ["polling", "websocket", "upgrade"];

/// A Redis and `n` sio-nodes sharing it under a random key prefix.
#[derive(Debug)]
pub struct Cluster {
    /// The Redis server.
    pub redis: Redis,
    /// The nodes, `node-1`…
    pub nodes: Vec<Node>,
    /// Key prefix shared by the nodes.
    pub prefix: String,
}

impl Cluster {
    /// Starts Redis and `n` nodes with `extra` flags, and waits until every node is ready.
    pub fn start(test: &str, n: usize, extra: &[&str]) -> Self {
        let redis = Redis::start(test);
        let prefix = random_prefix();
        let url = redis.url();
        let nodes: Vec<Node> = (1..=n)
            .map(|i| {
                let mut args = vec![
                    "--redis-url",
                    url.as_str(),
                    "--redis-prefix",
                    prefix.as_str(),
                ];
                args.extend_from_slice(extra);
                Node::spawn(test, &format!("node-{i}"), &args)
            })
            .collect();
        for node in &nodes {
            node.wait_ready(Duration::from_secs(20));
        }
        Self {
            redis,
            nodes,
            prefix,
        }
    }

    /// Comma-separated URLs of the nodes, for the scenarios.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Stops whatever listens on a Redis port when dropped (for servers a scenario restarted).
#[derive(Debug)]
pub struct ShutdownRedisOnDrop(pub u16);

impl Drop for ShutdownRedisOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.0.to_string(), "shutdown", "nosave"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Six `redis-server`s in cluster mode (3 primaries, 3 replicas) on free ports.
#[derive(Debug)]
pub struct RedisClusterServers {
    /// The processes.
    pub procs: Vec<Proc>,
    /// Their ports.
    pub ports: Vec<u16>,
}

impl RedisClusterServers {
    /// Starts the servers, creates the cluster with `redis-cli --cluster create` and waits
    /// until it reports `cluster_state:ok`.
    pub fn start(test: &str) -> Self {
        let dir = log_dir(test).join("redis-cluster");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let procs: Vec<Proc> = ports
            .iter()
            .map(|port| {
                let mut cmd = Command::new("redis-server");
                cmd.current_dir(&dir).args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                Proc::spawn("redis-cluster", cmd, dir.join(format!("redis-{port}.log")))
            })
            .collect();
        for port in &ports {
            let ok = wait_until(Duration::from_secs(10), || {
                redis_cli(*port, &["ping"]).is_some_and(|o| o.contains("PONG"))
            });
            assert!(ok, "cluster redis-server on {port} did not start");
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.output().expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ok = wait_until(Duration::from_secs(20), || {
            ports.iter().all(|p| {
                redis_cli(*p, &["cluster", "info"]).is_some_and(|o| o.contains("cluster_state:ok"))
            })
        });
        assert!(ok, "redis cluster did not reach cluster_state:ok");
        Self { procs, ports }
    }

    /// A `redis-cluster://` URL naming every primary and replica.
    pub fn url(&self) -> String {
        let first = self.ports[0];
        let rest: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its output, if it ran.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running `sio-proxy`.
#[derive(Debug)]
pub struct Proxy {
    /// The process.
    pub proc: Proc,
    /// Client-facing address.
    pub addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
}

/// The sid secret the tests' proxies share.
pub const SID_SECRET: &str = "test-sid-secret-shared-by-every-replica";

impl Proxy {
    /// Starts a proxy on a free port with `extra` flags and waits for its `/healthz`.
    pub fn start(test: &str, name: &str, extra: &[&str]) -> Self {
        Self::start_on(test, name, free_port(), extra)
    }

    /// Starts a proxy on `port` (to restart a replica on the same address).
    pub fn start_on(test: &str, name: &str, port: u16, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new(bin("sio-proxy"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SIO_LOG", "info")
            .args(["--listen", &addr.to_string()])
            .args(["--metrics-listen", &metrics_addr.to_string()])
            .args(["--sid-secret", SID_SECRET])
            .args(["--health-interval", "500ms", "--discovery-interval", "1s"])
            .args(extra);
        let proc = Proc::spawn(name, cmd, log_dir(test).join(format!("{name}.log")));
        let p = Self {
            proc,
            addr,
            metrics_addr,
        };
        let ok = wait_until(Duration::from_secs(20), || {
            matches!(http_get(p.addr, "/healthz"), Ok((200, _)))
        });
        assert!(ok, "{name} did not start:\n{}", p.proc.log_text());
        p
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Waits until the proxy reports `n` healthy backends.
    pub fn wait_healthy_backends(&self, n: usize, timeout: Duration) {
        let ok = wait_until(timeout, || {
            metric(&self.metrics(), "sio_proxy_backend_healthy", &[]) as usize == n
        });
        assert!(
            ok,
            "proxy never saw {n} healthy backends:\n{}",
            self.metrics()
                .lines()
                .filter(|l| l.starts_with("sio_proxy_backend"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
