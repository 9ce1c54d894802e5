//! One sio-node, driven by the official socket.io-client in polling, websocket and upgrade
//! modes.

use std::time::Duration;

use sio_tests::{MODES, Node, http, http_get, metric, open_packet_sid, run_js};

const MAX_PAYLOAD: &str = "65536";

fn node(test: &str) -> Node {
    Node::start(test, "n1", &["--max-payload", MAX_PAYLOAD])
}

fn scenario(node: &Node, name: &str, mode: &str) -> String {
    run_js(
        "node.mjs",
        &[
            ("SCENARIO", name.to_owned()),
            ("MODE", mode.to_owned()),
            ("URL", node.url()),
        ],
    )
}

fn all_modes(test: &str, name: &str) -> Node {
    let n = node(test);
    for mode in MODES {
        scenario(&n, name, mode);
    }
    n
}

#[test]
fn auth_accepts_valid_tokens_and_refuses_others_with_a_reason() {
    let n = all_modes("auth", "auth");
    let m = n.metrics();
    assert!(
        metric(
            &m,
            "sio_auth_failures_total",
            &[("reason", "missing_token")]
        ) >= 6.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "sio_auth_failures_total",
            &[("reason", "invalid_token")]
        ) >= 6.0
    );
    assert!(
        metric(
            &m,
            "sio_auth_failures_total",
            &[("reason", "expired_token")]
        ) >= 3.0
    );
}

#[test]
fn chat_message_reaches_every_socket_sender_included() {
    let n = all_modes("chat", "chat");
    let m = n.metrics();
    assert!(metric(&m, "sio_events_received_total", &[("namespace", "/")]) >= 6.0);
    assert!(metric(&m, "sio_connects_total", &[("namespace", "/")]) >= 9.0);
}

#[test]
fn rooms_deliver_to_members_only() {
    let n = all_modes("rooms", "rooms");
    let m = n.metrics();
    assert!(metric(&m, "sio_event_errors_total", &[("code", "not_in_room")]) >= 9.0);
}

#[test]
fn bad_event_payloads_get_error_acks_and_nothing_breaks() {
    all_modes("validation", "validation");
}

#[test]
fn oversized_messages_close_only_that_client() {
    all_modes("oversized", "oversized");
}

#[test]
fn notify_reaches_every_socket_of_the_user() {
    let n = all_modes("notify", "notify");
    let m = n.metrics();
    assert!(metric(&m, "sio_notifications_total", &[("outcome", "stored")]) >= 6.0);
    assert!(metric(&m, "sio_notifications_delivered_total", &[]) >= 6.0);
}

#[test]
fn missed_notifications_are_replayed_in_order() {
    all_modes("replay", "replay");
}

#[test]
fn http_api_checks_keys_and_bodies() {
    let n = all_modes("api", "api");
    let m = n.metrics();
    assert!(
        metric(
            &m,
            "sio_api_requests_total",
            &[("route", "/api/notify"), ("status", "401")]
        ) >= 6.0
    );
    assert!(
        metric(
            &m,
            "sio_api_requests_total",
            &[("route", "/api/emit"), ("status", "200")]
        ) >= 6.0
    );
    assert!(
        metric(
            &m,
            "sio_api_requests_total",
            &[("route", "/api/notify"), ("status", "413")]
        ) >= 3.0
    );
}

#[test]
fn dashboard_receives_cluster_stats() {
    let n = Node::start("dashboard", "n1", &["--dashboard-interval", "300ms"]);
    for mode in MODES {
        scenario(&n, "dashboard", mode);
    }
}

#[test]
fn events_sent_right_after_connect_are_never_lost() {
    let n = node("burst");
    for mode in MODES {
        run_js(
            "node.mjs",
            &[
                ("SCENARIO", "burst".to_owned()),
                ("MODE", mode.to_owned()),
                ("URL", n.url()),
                ("CLIENTS", "300".to_owned()),
            ],
        );
    }
}

#[test]
fn metrics_track_connections_back_to_zero() {
    // clients that exit without closing are only noticed by the heartbeat: keep it short
    let n = Node::start(
        "gauges",
        "n1",
        &["--ping-interval", "500ms", "--ping-timeout", "500ms"],
    );
    scenario(&n, "chat", "websocket");
    scenario(&n, "chat", "polling");
    let ok = sio_tests::wait_until(Duration::from_secs(30), || {
        let m = n.metrics();
        metric(&m, "sio_connections", &[]) == 0.0
    });
    let m = n.metrics();
    assert!(ok, "connection gauge did not return to 0:\n{m}");
    assert!(metric(&m, "process_open_fds", &[]) > 0.0);
    assert!(metric(&m, "process_max_fds", &[]) > 0.0);
    assert!(m.contains("sio_build_info{version=\"0.1.0\"} 1"));
}

#[test]
fn health_and_readiness_probes() {
    let n = node("probes");
    assert_eq!(http_get(n.addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(n.addr, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(n.addr, "/nope").unwrap().0, 404);
}

#[test]
fn malformed_engine_io_requests_get_400_and_the_node_stays_up() {
    let n = node("malformed");
    let post = |path: &str, body: &str| {
        http(
            n.addr,
            "POST",
            path,
            &[("Content-Type", "text/plain;charset=UTF-8")],
            Some(body),
        )
        .unwrap()
        .0
    };
    assert_eq!(
        http_get(n.addr, "/socket.io/?EIO=9&transport=polling")
            .unwrap()
            .0,
        400
    );
    assert_eq!(
        http_get(n.addr, "/socket.io/?EIO=4&transport=carrier")
            .unwrap()
            .0,
        400
    );
    assert_eq!(
        http_get(
            n.addr,
            "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA"
        )
        .unwrap()
        .0,
        400
    );
    assert_eq!(post("/socket.io/?EIO=4&transport=polling", "40"), 400);
    // a real session, then garbage in it: the session is closed, the node keeps serving
    let (status, body) = http_get(n.addr, "/socket.io/?EIO=4&transport=polling").unwrap();
    assert_eq!(status, 200);
    let sid = open_packet_sid(&body);
    let status = post(
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        "4garbage{{{",
    );
    assert!(status == 200 || status == 400, "{status}");
    assert_eq!(http_get(n.addr, "/readyz").unwrap().0, 200);
    scenario(&n, "chat", "websocket");
}

#[test]
fn sigterm_makes_the_node_unready_closes_sockets_and_exits_in_time() {
    let mut n = Node::start("sigterm", "n1", &["--shutdown-grace", "5s"]);
    scenario(&n, "chat", "websocket");
    n.proc.signal("TERM");
    let status = n.proc.wait_exit(Duration::from_secs(8));
    assert!(
        status.is_some(),
        "node did not exit within the grace period:\n{}",
        n.proc.log_text()
    );
    assert!(status.unwrap().success(), "{}", n.proc.log_text());
}
