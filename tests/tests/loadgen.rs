//! A seconds-long smoke test of the `sio-load` generator (the one `make bench` uses): against
//! one sio-node, at tiny scale, over WebSocket and long-polling, it connects every client from
//! several worker processes, delivers every message and measures latency, CPU (per process too),
//! memory and the node's own counters around each step; a room's members can share an address.
//! The benchmark itself runs with `make bench`, never here.

use std::process::{Command, Stdio};

use serde_json::Value;
use sio_tests::{Node, log_dir};

const CLIENTS: u64 = 20;
const ROOM_SIZE: u64 = 10;

fn sio_load(test: &str, name: &str, args: &[&str]) -> Value {
    let out = log_dir(test).join(format!("{name}.json"));
    let log = std::fs::File::create(log_dir(test).join(format!("{name}.log"))).expect("log");
    let status = Command::new(env!("CARGO_BIN_EXE_sio-load"))
        .arg("run")
        .args(args)
        .arg("--json")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .expect("run sio-load");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        status.success(),
        "sio-load {name} failed ({status}); see {}",
        log_dir(test).display()
    );
    serde_json::from_str(&text).expect("sio-load JSON report")
}

#[test]
fn generator_delivers_and_measures_over_websocket_and_polling() {
    let test = "loadgen";
    let node = Node::start(
        test,
        "load-node",
        &[
            "--auth",
            "none",
            "--room-auth",
            "open",
            // one sender per room, far above a chat user's --event-rate
            "--event-rate",
            "1000000",
            "--event-burst",
            "1000000",
        ],
    );
    let url = format!("{}/socket.io/", node.url());
    let pid = node.proc.pid().to_string();
    let metrics = format!("{}/metrics", node.url());
    for transport in ["websocket", "polling"] {
        let report = sio_load(
            test,
            transport,
            &[
                "--stats-url",
                &metrics,
                "--stats-prefix",
                "sio_events_received_total,sio_connections",
                "--room-sources",
                "127.1.0.1,127.1.0.2",
                "--url",
                &url,
                "--transport",
                transport,
                "--clients",
                &CLIENTS.to_string(),
                "--room-size",
                &ROOM_SIZE.to_string(),
                "--rates",
                "200,400",
                "--keep-going",
                "--step-duration",
                "1s",
                "--settle",
                "200ms",
                "--workers",
                "2",
                "--sources",
                "4",
                "--cpu-pids",
                &pid,
            ],
        );
        assert_eq!(report["connected"], CLIENTS, "{transport}: {report}");
        assert_eq!(report["workers"], 2);
        let steps = report["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 2, "{transport}: {report}");
        for step in steps {
            let sent = step["sent"].as_u64().unwrap_or(0);
            let received = step["received"].as_u64().unwrap_or(0);
            assert!(sent > 0, "{transport}: nothing sent: {step}");
            assert_eq!(received, sent * ROOM_SIZE, "{transport}: {step}");
            assert_eq!(step["lost"], 0, "{transport}: {step}");
            assert_eq!(step["latency"]["count"], received, "{transport}: {step}");
            let p50 = step["latency"]["p50_ms"].as_f64().unwrap_or(0.0);
            let p99 = step["latency"]["p99_ms"].as_f64().unwrap_or(0.0);
            assert!(p50 > 0.0 && p99 >= p50, "{transport}: {step}");
            assert!(
                step["system_cpu_secs"].as_f64().unwrap_or(0.0) > 0.0,
                "{transport}: no CPU measured: {step}"
            );
            let by_pid = step["cpu_secs_by_pid"][&pid].as_f64().unwrap_or(-1.0);
            let total = step["system_cpu_secs"].as_f64().unwrap_or(0.0);
            assert!((by_pid - total).abs() < 1e-6, "{transport}: {step}");
            // The node's counters over the step: every room-message it received, and, at the
            // end, every client connected.
            let events: f64 = step["stats"][&metrics]
                .as_object()
                .expect("stats of the node")
                .iter()
                .filter(|(k, _)| k.starts_with("sio_events_received_total"))
                .filter_map(|(_, v)| v.as_f64())
                .sum();
            assert!(events >= sent as f64, "{transport}: {step}");
            let connections: f64 = step["stats_after"][&metrics]
                .as_object()
                .expect("stats of the node")
                .iter()
                .filter(|(k, _)| k.starts_with("sio_connections"))
                .filter_map(|(_, v)| v.as_f64())
                .sum();
            assert_eq!(connections, CLIENTS as f64, "{transport}: {step}");
        }
    }

    let idle = sio_load(
        test,
        "idle",
        &[
            "--url",
            &url,
            "--idle-steps",
            "10,30",
            "--rss-pids",
            &pid,
            "--settle",
            "200ms",
        ],
    );
    let points = idle["idle"].as_array().expect("idle points");
    assert_eq!(points.len(), 2, "{idle}");
    assert_eq!(points[1]["connected"], 30, "{idle}");
    assert!(points[1]["rss_bytes"].as_u64().unwrap_or(0) > 0, "{idle}");
}
