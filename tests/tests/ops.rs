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

/// Runs `argv` in a pseudo-terminal; once it prints "sio-cluster is running", runs the
/// official client with the printed token ($CHECK, in tests/js), then types Ctrl-C and waits
/// for the exit. Prints what the terminal showed and `EXIT <code>`.
const PTY_CTRL_C: &str = r#"
import os, pty, re, select, subprocess, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
out, sent, check = b"", False, "not run"
deadline = time.time() + 240
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.1)
    if r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    if not sent and b"Push a notification" in out:
        text = out.decode(errors="replace")
        token = re.search(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", text).group(0)
        url = re.search(r"running: (http://\S+)", text).group(1)
        env = dict(os.environ, TOKEN=token, URL=url, SCENARIO="devToken", MODE="websocket")
        c = subprocess.run(["node", "authz.mjs"], cwd=os.environ["JS_DIR"], env=env, capture_output=True, text=True)
        check = "ok" if c.returncode == 0 else "failed: " + c.stdout + c.stderr
        os.write(fd, b"\x03")
        sent = True
else:
    os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
print("\nCHECK " + check)
print("EXIT %d" % os.waitstatus_to_exitcode(status))
"#;

#[test]
fn make_run_prints_a_working_dev_token_and_ctrl_c_stops_everything_with_exit_0() {
    let root = workspace();
    let proxy_port = free_port();
    // `-o release` skips the release build: run.sh uses the debug binaries the tests built.
    let out = Command::new("python3")
        .args([
            "-c",
            PTY_CTRL_C,
            "make",
            "--no-print-directory",
            "-o",
            "release",
            "run",
        ])
        .current_dir(&root)
        .env(
            "SIO_BIN_DIR",
            sio_tests::bin("sio-node").parent().expect("bin dir"),
        )
        .env("PROXY_PORT", proxy_port.to_string())
        .env("NODES", "2")
        .env("JS_DIR", root.join("tests").join("js"))
        .env_remove("REDIS_URL")
        .env_remove("MAKEFLAGS")
        .output()
        .expect("python3 runs make run in a pty");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("CHECK ok"),
        "the printed token did not work:\n{text}"
    );
    assert!(
        text.contains("EXIT 0"),
        "make run did not exit 0 on Ctrl-C:\n{text}"
    );
    assert!(
        text.contains("run: stopping sio-proxy, 2 × sio-node, redis-server"),
        "{text}"
    );
    assert!(
        text.contains("run: stopped everything it started"),
        "{text}"
    );
    assert!(
        !text.contains("unexpectedly") && !text.contains("make: ***"),
        "{text}"
    );
    // nothing it started still listens
    let mut ports = vec![proxy_port];
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("nodes") || line.starts_with("redis") {
            for word in line.split(|c: char| c.is_whitespace() || c == '/') {
                if let Some(port) = word.strip_prefix("127.0.0.1:") {
                    ports.push(port.parse().expect("port"));
                }
            }
        }
    }
    assert_eq!(
        ports.len(),
        4,
        "proxy, 2 nodes and redis: {ports:?}\n{text}"
    );
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still listens after Ctrl-C:\n{text}"
        );
    }
}

#[test]
fn deps_script_never_stops_or_kills_what_it_did_not_start() {
    let script =
        std::fs::read_to_string(workspace().join("deploy/local/deps.sh")).expect("deps.sh");
    for forbidden in [
        "pkill",
        "killall",
        "kill ",
        "systemctl stop",
        "service ",
        "systemctl disable",
    ] {
        let hits: Vec<&str> = script
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains(forbidden))
            .collect();
        assert!(hits.is_empty(), "deps.sh runs `{forbidden}`: {hits:?}");
    }
}
