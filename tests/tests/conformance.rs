//! Our own tests of the behaviours in CONFORMANCE.md, against `sio-node --conformance`.

use sio_tests::{Node, Proxy, run_js};

fn conformance(scenario: &str) {
    let n = Node::start(
        &format!("conformance-{scenario}"),
        "conf",
        &["--conformance", "--auth", "none"],
    );
    run_js(
        "conformance.mjs",
        &[("SCENARIO", scenario.to_owned()), ("URL", n.url())],
    );
}

#[test]
fn handshake_carries_exactly_the_expected_fields() {
    conformance("handshake");
}

#[test]
fn bad_requests_get_400() {
    conformance("bad_requests");
}

#[test]
fn namespaces_echo_auth_and_unknown_ones_are_refused() {
    conformance("namespaces");
}

#[test]
fn messages_and_acks_are_echoed_with_every_argument_binary_included() {
    conformance("echo");
}

#[test]
fn invalid_packets_and_missing_connects_close_the_session() {
    conformance("closes_sessions");
}

#[test]
fn engine_io_echo_server_behaves() {
    conformance("engine_io");
}

#[test]
fn polling_requests_of_an_upgraded_session_get_400() {
    conformance("upgraded_sid_polling");
}

/// The same behaviours through sio-proxy in front of three conformance nodes: the cluster
/// must be no worse than one node served directly.
#[test]
fn every_behaviour_holds_through_the_proxy_with_three_nodes() {
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            Node::start(
                "conformance-proxy",
                &format!("conf-{i}"),
                &["--conformance", "--auth", "none"],
            )
        })
        .collect();
    // The conformance nodes' Engine.IO echo server lives at /engine.io/.
    let mut args = vec![
        "--balance",
        "least-conn",
        "--forward-paths",
        "/socket.io/,/engine.io/",
    ];
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    for a in &addrs {
        args.push("--backend");
        args.push(a);
    }
    let proxy = Proxy::start("conformance-proxy", "proxy", &args);
    proxy.wait_healthy_backends(3, std::time::Duration::from_secs(20));
    for scenario in [
        "handshake",
        "bad_requests",
        "namespaces",
        "echo",
        "closes_sessions",
        "engine_io",
        "upgraded_sid_polling",
    ] {
        run_js(
            "conformance.mjs",
            &[("SCENARIO", scenario.to_owned()), ("URL", proxy.url())],
        );
    }
}
