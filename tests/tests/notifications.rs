//! Notifications reach slow clients losslessly, and only the nodes with the user's sockets
//! (scenarios in `tests/js/notifications-slow.mjs`).

use sio_tests::{Cluster, metric, run_js};

/// Nodes with a small per-socket buffer and a stream long enough for the whole burst.
const SLOW_FLAGS: [&str; 4] = ["--max-buffer-size", "128", "--notification-maxlen", "5000"];

fn slow_poller(c: &Cluster, target: usize) -> String {
    run_js(
        "notifications-slow.mjs",
        &[
            ("SCENARIO", "slow_poller".to_owned()),
            ("URLS", c.urls()),
            ("TARGET", target.to_string()),
            ("COUNT", "1500".to_owned()),
        ],
    )
}

#[test]
fn a_slow_polling_client_gets_every_notification_once_in_order() {
    let c = Cluster::start("notify-slow", 2, &SLOW_FLAGS);
    // posted to the client's own node, then to the other node
    let same = slow_poller(&c, 0);
    let cross = slow_poller(&c, 1);
    eprintln!("same node: {same}cross node: {cross}");
    // the client's node really ran out of buffer (or saw gaps) and read the stream
    let m = c.nodes[0].metrics();
    let catchups = metric(&m, "sio_notification_catchups_total", &[]);
    assert!(catchups >= 2.0, "catch-ups: {catchups}");
    let replayed = metric(&m, "sio_notifications_replayed_total", &[]);
    assert!(
        replayed >= 2.0 * 1000.0,
        "notifications replayed: {replayed}"
    );
}

#[test]
fn notifications_published_while_a_node_is_unsubscribed_are_delivered() {
    let c = Cluster::start("notify-unsubscribed", 2, &[]);
    let out = run_js(
        "notifications-slow.mjs",
        &[
            ("SCENARIO", "subscription_lost".to_owned()),
            ("URLS", c.urls()),
            ("TARGET", "1".to_owned()),
            ("REDIS_PORT", c.redis.port.to_string()),
        ],
    );
    eprintln!("{out}");
    let m = c.nodes[0].metrics();
    let resyncs = metric(
        &m,
        "sio_notification_catchups_total",
        &[("reason", "resync")],
    );
    assert!(
        resyncs >= 1.0,
        "catch-ups after a resubscription: {resyncs}"
    );
}

#[test]
fn notifications_reach_only_nodes_with_the_users_sockets() {
    let c = Cluster::start("notify-routing", 3, &[]);
    let out = run_js(
        "notifications-slow.mjs",
        &[("SCENARIO", "routing".to_owned()), ("URLS", c.urls())],
    );
    eprintln!("{out}");
    for node in &c.nodes {
        let m = node.metrics();
        assert_eq!(metric(&m, "sio_adapter_notify_subscriptions", &[]), 0.0);
        assert_eq!(
            metric(
                &m,
                "sio_adapter_notify_messages_total",
                &[("outcome", "wasted")]
            ),
            0.0,
            "{}",
            node.id
        );
    }
    let useful = |i: usize| {
        metric(
            &c.nodes[i].metrics(),
            "sio_adapter_notify_messages_total",
            &[("outcome", "useful")],
        )
    };
    assert_eq!(useful(0), 10.0);
    assert_eq!(useful(2), 0.0);
}
