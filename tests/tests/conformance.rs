//! Our own tests of the behaviours in CONFORMANCE.md, against `sio-node --conformance`.

use sio_tests::{Node, run_js};

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
