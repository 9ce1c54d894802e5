//! What operators rely on: metrics that pass `promtool`, and a real Prometheus scraping a
//! local cluster with the configuration in `deploy/prometheus/`.

use std::process::{Command, Stdio};
use std::time::Duration;

use sio_tests::{Cluster, Proc, free_port, http_get, log_dir, run_js, wait_until, workspace};

fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: apt-get install prometheus (make deps installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && report.trim().is_empty(), report)
}

#[test]
fn node_metrics_pass_promtool_after_traffic() {
    let c = Cluster::start(
        "promtool",
        2,
        &["--ping-interval", "1s", "--ping-timeout", "1s"],
    );
    for name in ["room_fanout", "notify_two_nodes", "acks"] {
        run_js(
            "cluster.mjs",
            &[
                ("SCENARIO", name.to_owned()),
                ("MODE", "websocket".to_owned()),
                ("URLS", c.urls()),
            ],
        );
    }
    for node in &c.nodes {
        let text = node.metrics();
        for family in [
            "sio_connections",
            "sio_events_received_total",
            "sio_adapter_subscribed",
            "sio_adapter_messages_published_total",
            "sio_api_requests_total",
            "process_open_fds",
        ] {
            assert!(text.contains(family), "{} lacks {family}", node.id);
        }
        let (ok, report) = promtool_check(&text);
        assert!(ok, "promtool check metrics on {}:\n{report}", node.id);
    }
}

#[test]
fn prometheus_sees_every_connected_client() {
    let c = Cluster::start(
        "prometheus",
        3,
        &["--ping-interval", "1s", "--ping-timeout", "1s"],
    );
    let dir = log_dir("prometheus").join("prom");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("targets")).expect("prometheus dir");
    let config = workspace().join("deploy").join("prometheus");
    std::fs::copy(config.join("local.yml"), dir.join("local.yml")).expect("local.yml");
    std::fs::copy(config.join("alerts.yml"), dir.join("alerts.yml")).expect("alerts.yml");
    let targets: Vec<String> = c.nodes.iter().map(|n| n.addr.to_string()).collect();
    std::fs::write(
        dir.join("targets").join("sio-node.json"),
        serde_json::json!([{ "targets": targets }]).to_string(),
    )
    .expect("targets");
    let port = free_port();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", dir.join("local.yml").display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let prom = Proc::spawn("prometheus", cmd, dir.join("prometheus.log"));
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert!(
        wait_until(Duration::from_secs(30), || matches!(
            http_get(addr, "/-/ready"),
            Ok((200, _))
        )),
        "prometheus did not start:\n{}",
        prom.log_text()
    );
    run_js(
        "cluster.mjs",
        &[
            ("SCENARIO", "prometheus".to_owned()),
            ("URLS", c.urls()),
            ("PROM_URL", format!("http://127.0.0.1:{port}")),
            ("CLIENTS", "30".to_owned()),
        ],
    );
}
