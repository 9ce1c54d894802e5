//! The fuzz harness on a real cluster: Redis, two sio-nodes (JWT auth, the test API key) and
//! sio-proxy in front, all with their default limits, fuzzed by `sio-fuzz` at node-1 directly
//! and through the proxy while well-behaved clients exchange messages in a room.
//!
//! `make test` runs it for `FUZZ_SECONDS` (default 25 s here); `make fuzz` runs it longer
//! (`FUZZ_SECONDS`, default 120). `FUZZ_SEED` replays a run's inputs. It fails when any process
//! panicked (the harness reads every log) or exited, when a process's RSS grew beyond
//! sio-fuzz's bounds, or when a well-behaved client lost a message or its session.

use std::process::{Command, Stdio};
use std::time::Duration;

use sio_tests::{
    API_KEY, JWT_SECRET, Node, Proc, Proxy, Redis, bin, free_port, log_dir, random_prefix,
};

/// Seconds of fuzzing in `make test` when `FUZZ_SECONDS` is not set.
const TEST_SECONDS: &str = "25";

/// A node logging at `info` (the harness's default `debug` would log every refused input).
fn node(test: &str, id: &str, redis: &Redis, prefix: &str) -> Node {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut cmd = Command::new(bin("sio-node"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SIO_LOG", "info")
        .args(["--listen", &addr.to_string(), "--node-id", id])
        .args(["--redis-url", &redis.url(), "--redis-prefix", prefix])
        .args(["--jwt-secret", JWT_SECRET, "--api-key", API_KEY]);
    let proc = Proc::spawn(id, cmd, log_dir(test).join(format!("{id}.log")));
    let node = Node {
        proc,
        addr,
        id: id.to_owned(),
    };
    node.wait_ready(Duration::from_secs(20));
    node
}

#[test]
fn fuzzed_cluster_survives_and_keeps_serving_well_behaved_clients() {
    let test = "fuzz";
    let redis = Redis::start(test);
    let prefix = random_prefix();
    let nodes = [
        node(test, "node-1", &redis, &prefix),
        node(test, "node-2", &redis, &prefix),
    ];
    let mut proxy_args = Vec::new();
    for n in &nodes {
        proxy_args.push("--backend".to_owned());
        proxy_args.push(n.addr.to_string());
    }
    let proxy_args: Vec<&str> = proxy_args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(test, "proxy", &proxy_args);
    proxy.wait_healthy_backends(2, Duration::from_secs(20));

    let seconds = std::env::var("FUZZ_SECONDS").unwrap_or_else(|_| TEST_SECONDS.to_owned());
    let report = log_dir(test).join("report.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sio-fuzz"));
    cmd.args(["--node", &nodes[0].addr.to_string()])
        .args(["--proxy", &proxy.addr.to_string()])
        .args(["--seconds", &seconds])
        .args(["--jwt-secret", JWT_SECRET, "--api-key", API_KEY])
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for n in &nodes {
        cmd.args(["--watch", &format!("{}={}", n.id, n.proc.pid())]);
    }
    cmd.args(["--watch", &format!("proxy={}", proxy.proc.pid())]);
    cmd.args(["--watch", &format!("redis={}", redis.proc.pid())]);
    if let Ok(seed) = std::env::var("FUZZ_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let status = cmd.status().expect("run sio-fuzz");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let failed: Vec<String> = parsed["checks"]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .filter(|c| c["ok"] != true)
                .map(|c| format!("{}: {}", c["name"], c["detail"]))
                .collect()
        })
        .unwrap_or_default();
    let seed = &parsed["seed"];
    assert!(
        status.success(),
        "sio-fuzz failed ({status}) with seed {seed} (FUZZ_SEED={seed} make fuzz replays it):\n{}\n\
         report and the last cases: {}",
        failed.join("\n"),
        report.display()
    );
    assert!(
        parsed["cases_total"].as_u64() > Some(100),
        "too few cases ran (seed {seed}): {}",
        parsed["cases_total"]
    );
    // Nothing exited (a panic is caught by the harness when the processes are dropped).
    let [mut n1, mut n2] = nodes;
    let (mut proxy, mut redis) = (proxy, redis);
    for p in [&mut n1.proc, &mut n2.proc, &mut proxy.proc, &mut redis.proc] {
        assert!(
            p.wait_exit(Duration::ZERO).is_none(),
            "{} exited during the fuzzing (seed {seed}); log: {}",
            p.name,
            p.log.display()
        );
    }
}
