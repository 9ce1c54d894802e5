//! The whole cluster: real Redis, several nodes, sio-proxy, official clients.

use std::net::SocketAddr;
use std::time::Duration;

use sio_tests::{
    Cluster, Node, Proxy, bin, free_port, http, http_get, metric, open_packet_sid, run_js,
    wait_until,
};

fn proxy_for(test: &str, name: &str, c: &Cluster, extra: &[&str]) -> Proxy {
    let url = c.redis.url();
    let mut args = vec![
        "--backends-redis",
        url.as_str(),
        "--redis-prefix",
        c.prefix.as_str(),
        "--trust-forwarded",
        "127.0.0.1/32",
    ];
    args.extend_from_slice(extra);
    let p = Proxy::start(test, name, &args);
    p.wait_healthy_backends(c.nodes.len(), Duration::from_secs(20));
    p
}

#[test]
fn three_hundred_clients_of_every_transport_through_one_proxy() {
    let c = Cluster::start("proxy-mixed", 3, &["--lease-ttl", "3s"]);
    let p = proxy_for("proxy-mixed", "proxy", &c, &["--tunnel-io", "uring"]);
    let m = mixed_clients(&p, &c);
    assert_eq!(
        metric(&m, "sio_proxy_routing_total", &[("outcome", "unknown_tag")]),
        0.0,
        "{m}"
    );
    // io_uring is enabled on the machines this runs on.
    assert_eq!(tunnel_path(&p), "io_uring");
}

/// Runs the mix of 300 clients of every transport through `p`; the proxy's metrics after it.
fn mixed_clients(p: &Proxy, c: &Cluster) -> String {
    let out = run_js(
        "proxy.mjs",
        &[
            ("SCENARIO", "mixed_clients".to_owned()),
            ("URL", p.url()),
            ("NODE_URLS", c.urls()),
        ],
    );
    eprintln!("{out}");
    p.metrics()
}

/// The path the proxy logged for its tunnels at start-up.
fn tunnel_path(p: &Proxy) -> String {
    let log = p.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("tunnel i/o"))
        .unwrap_or_else(|| panic!("no `tunnel i/o` line:\n{log}"));
    ["io_uring", "epoll"]
        .into_iter()
        .find(|path| line.contains(&format!("\"{path}\"")))
        .unwrap_or_else(|| panic!("no path in {line}"))
        .to_owned()
}

/// `--tunnel-io epoll` (the default) forces the fallback, which carries the same mix of
/// clients.
#[test]
fn the_epoll_tunnel_path_serves_when_forced() {
    let c = Cluster::start("proxy-epoll", 2, &["--lease-ttl", "3s"]);
    let p = proxy_for("proxy-epoll", "proxy", &c, &["--tunnel-io", "epoll"]);
    assert_eq!(tunnel_path(&p), "epoll");
    let m = mixed_clients(&p, &c);
    assert!(
        metric(&m, "sio_proxy_websocket_tunnels_total", &[]) > 0.0,
        "no tunnel opened:\n{m}"
    );
}

/// Drives raw Engine.IO requests: a session opened through replica A continues through
/// replica B and through A after a restart.
#[test]
fn sessions_continue_through_any_replica_and_after_a_restart() {
    let c = Cluster::start(
        "proxy-replicas",
        2,
        &["--ping-interval", "2s", "--ping-timeout", "5s"],
    );
    let a_port = free_port();
    let url = c.redis.url();
    let args = [
        "--backends-redis",
        url.as_str(),
        "--redis-prefix",
        c.prefix.as_str(),
    ];
    let a = Proxy::start_on("proxy-replicas", "proxy-a", a_port, &args);
    let b = Proxy::start("proxy-replicas", "proxy-b", &args);
    a.wait_healthy_backends(2, Duration::from_secs(20));
    b.wait_healthy_backends(2, Duration::from_secs(20));
    let (status, body) = http_get(a.addr, "/socket.io/?EIO=4&transport=polling").unwrap();
    assert_eq!(status, 200, "{body}");
    let sid = open_packet_sid(&body);
    assert!(sid.len() > 16, "the proxy tags the sid: {sid}");
    let token = jwt("replica-user");
    let connect = format!("40{{\"token\":\"{token}\"}}");
    let post = |addr: SocketAddr, body: &str| {
        http(
            addr,
            "POST",
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            &[("Content-Type", "text/plain;charset=UTF-8")],
            Some(body),
        )
        .unwrap()
    };
    let get = |addr: SocketAddr| {
        http_get(
            addr,
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        )
        .unwrap()
    };
    assert_eq!(post(b.addr, &connect), (200, "ok".to_owned()));
    // the CONNECT answer (and perhaps a ping) comes back through replica B
    let mut seen = String::new();
    for _ in 0..5 {
        let (status, body) = get(b.addr);
        assert_eq!(status, 200, "{body}");
        if body.split('\u{1e}').any(|p| p == "2") {
            assert_eq!(post(b.addr, "3").0, 200);
        }
        seen.push_str(&body);
        if seen.contains("40{\"sid\"") {
            break;
        }
    }
    assert!(
        seen.contains("40{\"sid\""),
        "no CONNECT answer through B: {seen}"
    );
    // replica A restarts on the same address and still routes the session
    drop(a);
    let a = Proxy::start_on("proxy-replicas", "proxy-a2", a_port, &args);
    a.wait_healthy_backends(2, Duration::from_secs(20));
    assert_eq!(
        post(
            a.addr,
            "42[\"chat-message\",\"through a restarted replica\"]"
        )
        .0,
        200
    );
    let mut seen = String::new();
    for _ in 0..5 {
        let (status, body) = get(a.addr);
        assert_eq!(status, 200, "{body}");
        if body.split('\u{1e}').any(|p| p == "2") {
            assert_eq!(post(a.addr, "3").0, 200);
        }
        seen.push_str(&body);
        if seen.contains("through a restarted replica") {
            break;
        }
    }
    // (the nodes only ever saw their own 16-character sids: a tagged one would be unknown)
    assert!(seen.contains("through a restarted replica"), "{seen}");
}

fn jwt(user: &str) -> String {
    run_js("token.mjs", &[("SUB", user.to_owned())])
        .trim()
        .to_owned()
}

#[test]
fn nodes_join_and_drain_without_disturbing_live_sessions() {
    let c = Cluster::start("proxy-scale", 2, &["--lease-ttl", "3s"]);
    // node-3 drains slowly: SIGTERM marks it draining long before it closes anything
    let url = c.redis.url();
    let draining = Node::start(
        "proxy-scale",
        "node-3",
        &[
            "--redis-url",
            &url,
            "--redis-prefix",
            &c.prefix,
            "--lease-ttl",
            "3s",
            "--drain-delay",
            "60s",
            "--shutdown-grace",
            "90s",
        ],
    );
    let mut nodes = c.nodes.iter().map(Node::url).collect::<Vec<_>>();
    nodes.insert(1, draining.url());
    let p = Proxy::start(
        "proxy-scale",
        "proxy",
        &[
            "--backends-redis",
            &url,
            "--redis-prefix",
            &c.prefix,
            "--trust-forwarded",
            "127.0.0.1/32",
        ],
    );
    p.wait_healthy_backends(3, Duration::from_secs(20));
    let port4 = free_port();
    let node4_args = serde_json::json!([
        "--listen",
        format!("127.0.0.1:{port4}"),
        "--node-id",
        "node-4",
        "--redis-url",
        url,
        "--redis-prefix",
        c.prefix,
        "--lease-ttl",
        "3s",
        "--jwt-secret",
        sio_tests::JWT_SECRET,
        "--api-key",
        sio_tests::API_KEY,
    ]);
    let out = run_js(
        "proxy.mjs",
        &[
            ("SCENARIO", "scale".to_owned()),
            ("URL", p.url()),
            ("NODE_URLS", nodes.join(",")),
            ("NODE_BIN", bin("sio-node").display().to_string()),
            ("NODE4_ARGS", node4_args.to_string()),
            ("NODE4_URL", format!("http://127.0.0.1:{port4}")),
            ("DRAIN_PID", draining.proc.pid().to_string()),
        ],
    );
    eprintln!("{out}");
}

#[test]
fn a_killed_node_s_clients_reconnect_elsewhere_with_their_rooms() {
    let c = Cluster::start("proxy-kill", 3, &["--lease-ttl", "3s"]);
    let p = proxy_for("proxy-kill", "proxy", &c, &[]);
    let out = run_js(
        "proxy.mjs",
        &[
            ("SCENARIO", "kill_node".to_owned()),
            ("URL", p.url()),
            ("NODE_URLS", c.urls()),
            ("VICTIM_PID", c.nodes[0].proc.pid().to_string()),
        ],
    );
    eprintln!("{out}");
}

#[test]
fn bad_input_gets_clear_errors_and_the_proxy_stays_up() {
    let c = Cluster::start(
        "proxy-bad",
        2,
        &["--ping-interval", "2s", "--ping-timeout", "5s"],
    );
    let p = proxy_for("proxy-bad", "proxy", &c, &["--response-timeout", "2s"]);
    let unknown = r#"{"code":1,"message":"Session ID unknown"}"#;
    for sid in [
        "!!!!",
        "short",
        "AAAAAAAAAAAAAAAAAAAAAAAA",
        "%00%00",
        &"x".repeat(300),
    ] {
        let (status, body) = http_get(
            p.addr,
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        )
        .unwrap();
        assert_eq!((status, body.as_str()), (400, unknown), "sid {sid}");
    }
    // huge headers: refused (or the connection closed), and the proxy stays up
    let huge = "a".repeat(2 * 1024 * 1024);
    let res = http(
        p.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[("X-Huge", &huge)],
        None,
    );
    if let Ok((status, _)) = res {
        assert!(
            (400..500).contains(&status),
            "huge headers answered {status}"
        );
    }
    assert_eq!(http_get(p.addr, "/healthz").unwrap().0, 200);
    // a backend that hangs: open a session on each node, then freeze one node
    let mut sids = Vec::new();
    for i in 0..40 {
        let ip = format!("10.9.0.{i}");
        let (status, body) = http(
            p.addr,
            "GET",
            "/socket.io/?EIO=4&transport=polling",
            &[("X-Forwarded-For", &ip)],
            None,
        )
        .unwrap();
        assert_eq!(status, 200);
        let sid = open_packet_sid(&body);
        sids.push(sid);
    }
    let frozen = &c.nodes[0];
    frozen.proc.signal("STOP");
    let started = std::time::Instant::now();
    let mut saw_timeout = false;
    for sid in &sids {
        let (status, _) = http(
            p.addr,
            "POST",
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            &[("Content-Type", "text/plain;charset=UTF-8")],
            Some("3"),
        )
        .unwrap();
        if status == 504 || status == 502 {
            saw_timeout = true;
            break;
        }
    }
    assert!(
        saw_timeout,
        "no session routed to the frozen node answered 502/504"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // the proxy still serves the healthy node and its own health
    assert_eq!(http_get(p.addr, "/healthz").unwrap().0, 200);
    assert!(wait_until(Duration::from_secs(10), || {
        let ip = format!("10.8.{}.1", rand_byte());
        matches!(
            http(
                p.addr,
                "GET",
                "/socket.io/?EIO=4&transport=polling",
                &[("X-Forwarded-For", &ip)],
                None
            ),
            Ok((200, _))
        )
    }));
    frozen.proc.signal("CONT");
}

fn rand_byte() -> u8 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        % 250) as u8
}

#[test]
fn a_draining_node_loses_no_client_room_or_notification() {
    let c = Cluster::start(
        "proxy-drain",
        3,
        &[
            "--lease-ttl",
            "3s",
            "--shutdown-grace",
            "20s",
            "--drain-delay",
            "1s",
        ],
    );
    let p = proxy_for("proxy-drain", "proxy", &c, &[]);
    let victim_pid = c.nodes[1].proc.pid();
    let api_urls = format!("{},{}", c.nodes[0].url(), c.nodes[2].url());
    let out = run_js(
        "proxy.mjs",
        &[
            ("SCENARIO", "drain".to_owned()),
            ("URL", p.url()),
            ("NODE_URLS", c.urls()),
            ("VICTIM_PID", victim_pid.to_string()),
            ("API_URLS", api_urls),
            ("GRACE_MS", "20000".to_owned()),
        ],
    );
    eprintln!("drain figures: {out}");
    let mut c = c;
    let status = c.nodes[1].proc.wait_exit(Duration::from_secs(25));
    assert!(
        status.is_some_and(|s| s.success()),
        "the drained node did not exit cleanly in its grace period"
    );
}

/// The client port forwards only what clients need: Engine.IO, the HTTP API and the admin UI;
/// a node's probes and metrics get the proxy's own 404, and `--forward-paths` widens the list.
#[test]
fn only_client_routes_reach_the_nodes() {
    let c = Cluster::start("proxy-paths", 1, &[]);
    let p = proxy_for("proxy-paths", "proxy", &c, &[]);
    let refused = |status: u16, body: &str| {
        status == 404 && body.contains("this address serves only /socket.io/, /api/, /admin/")
    };
    for path in [
        "/metrics",
        "/readyz",
        "/healthz?x=1",
        "/",
        "/favicon.ico",
        "/api/../metrics",
        "/socket.io/%2e%2e/readyz",
    ] {
        let (status, body) = http_get(p.addr, path).unwrap();
        assert!(refused(status, &body), "{path}: {status} {body}");
        assert!(!body.contains("sio_"), "{path} leaked node metrics: {body}");
    }
    // the proxy's own probe stays
    assert_eq!(
        http_get(p.addr, "/healthz").unwrap(),
        (200, "ok".to_owned())
    );
    // Engine.IO, the API and the admin routes reach the node
    let (status, body) = http_get(p.addr, "/socket.io/?EIO=4&transport=polling").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{"), "{body}");
    let auth = format!("Bearer {}", sio_tests::API_KEY);
    let (status, body) = http(
        p.addr,
        "GET",
        "/api/stats",
        &[("Authorization", &auth)],
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\""), "{body}");
    for path in ["/admin/", "/admin"] {
        let (status, body) = http_get(p.addr, path).unwrap();
        assert!(!refused(status, &body), "{path} did not reach the node");
    }
    let m = p.metrics();
    assert_eq!(
        metric(
            &m,
            "sio_proxy_routing_total",
            &[("outcome", "not_forwarded")]
        ),
        7.0,
        "{m}"
    );
    // an operator who wants more widens the list; the default paths are then only those given
    let wide = proxy_for(
        "proxy-paths",
        "proxy-wide",
        &c,
        &["--forward-paths", "/socket.io/,/metrics"],
    );
    let (status, body) = http_get(wide.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("sio_"), "{body}");
    let (status, body) = http(
        wide.addr,
        "GET",
        "/api/stats",
        &[("Authorization", &auth)],
        None,
    )
    .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("serves only /socket.io/, /metrics"), "{body}");
}
