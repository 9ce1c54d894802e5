//! Several sio-node processes sharing one real Redis, driven by the official client.

use std::time::Duration;

use sio_tests::{
    Cluster, MODES, Node, RedisClusterServers, ShutdownRedisOnDrop, metric, random_prefix, run_js,
    wait_until,
};

fn scenario(cluster_urls: String, name: &str, mode: &str, extra: &[(&str, String)]) {
    let mut env = vec![
        ("SCENARIO", name.to_owned()),
        ("MODE", mode.to_owned()),
        ("URLS", cluster_urls),
    ];
    env.extend(extra.iter().cloned());
    run_js("cluster.mjs", &env);
}

/// Both values of `--adapter-routing`.
const ROUTINGS: [&str; 2] = ["rooms", "broadcast"];

#[test]
fn room_messages_cross_nodes_exactly_once() {
    for routing in ROUTINGS {
        let c = Cluster::start(
            &format!("cluster-fanout-{routing}"),
            3,
            &["--adapter-routing", routing],
        );
        for mode in MODES {
            scenario(c.urls(), "room_fanout", mode, &[]);
        }
    }
}

/// Room messages on 4 nodes, members on the first two: with `rooms` routing the third node
/// (a socket in no room) and the fourth (none until its late join) receive no room message
/// from Redis; with `broadcast` routing the third decodes every one of them and wastes it.
/// Every member gets each message once, the late joiner the one sent right after its join,
/// and after the clients leave each node holds the subscriptions it started with.
#[test]
fn room_messages_reach_only_nodes_with_members() {
    const ROOM: [(&str, &str); 1] = [("kind", "room")];
    for routing in ROUTINGS {
        let c = Cluster::start(
            &format!("cluster-interest-{routing}"),
            4,
            &["--adapter-routing", routing],
        );
        let metrics = |i: usize| c.nodes[i].metrics();
        let baseline: Vec<f64> = (0..4)
            .map(|i| metric(&metrics(i), "sio_adapter_subscriptions", &[]))
            .collect();
        assert!(baseline.iter().all(|&b| b > 0.0), "{baseline:?}");
        scenario(c.urls(), "room_interest", "websocket", &[]);
        let received = |i: usize| metric(&metrics(i), "sio_adapter_messages_received_total", &ROOM);
        let handled = |i: usize, outcome: &str| {
            metric(
                &metrics(i),
                "sio_adapter_messages_handled_total",
                &[("kind", "room"), ("outcome", outcome)],
            )
        };
        assert!(handled(0, "useful") > 0.0 && handled(1, "useful") > 0.0);
        assert!(handled(3, "useful") > 0.0, "the late member's node");
        match routing {
            "rooms" => {
                assert_eq!(received(2), 0.0, "node 3 has no member: no room message");
                assert_eq!(handled(2, "useful") + handled(2, "wasted"), 0.0);
            }
            _ => assert!(
                handled(2, "wasted") >= 6.0,
                "broadcast routing: node 3 decodes them all"
            ),
        }
        for (i, b) in baseline.iter().enumerate() {
            assert!(
                wait_until(Duration::from_secs(10), || {
                    metric(&metrics(i), "sio_adapter_subscriptions", &[]) == *b
                }),
                "node {} holds {} subscriptions, {b} before the clients came",
                i + 1,
                metric(&metrics(i), "sio_adapter_subscriptions", &[])
            );
        }
    }
}

#[test]
fn emit_with_acks_counts_acks_from_every_node() {
    let c = Cluster::start("cluster-acks", 3, &[]);
    for mode in MODES {
        scenario(c.urls(), "acks", mode, &[]);
    }
}

#[test]
fn notify_reaches_a_user_on_two_nodes() {
    let c = Cluster::start("cluster-notify", 3, &[]);
    for mode in MODES {
        scenario(c.urls(), "notify_two_nodes", mode, &[]);
    }
}

#[test]
fn offline_notifications_are_replayed_once_and_in_order() {
    let c = Cluster::start("cluster-replay", 3, &[]);
    for mode in MODES {
        scenario(c.urls(), "replay", mode, &[]);
    }
}

#[test]
fn rooms_are_restored_on_another_node() {
    let c = Cluster::start("cluster-rooms", 3, &[]);
    for mode in MODES {
        scenario(c.urls(), "rooms_restored", mode, &[]);
    }
}

#[test]
fn presence_expires_with_a_killed_node() {
    let mut c = Cluster::start("cluster-presence", 2, &["--lease-ttl", "3s"]);
    let victim = c.nodes.remove(1);
    let urls = format!("{},{}", c.nodes[0].url(), victim.url());
    scenario(
        urls,
        "presence_kill",
        "websocket",
        &[("VICTIM_PID", victim.proc.pid().to_string())],
    );
    drop(victim);
}

#[test]
fn nodes_survive_a_redis_restart() {
    for routing in ROUTINGS {
        let c = Cluster::start(
            &format!("cluster-redis-restart-{routing}"),
            2,
            &["--adapter-routing", routing],
        );
        let _cleanup = ShutdownRedisOnDrop(c.redis.port);
        scenario(
            c.urls(),
            "redis_restart",
            "websocket",
            &[
                ("REDIS_PORT", c.redis.port.to_string()),
                ("REDIS_PID", c.redis.proc.pid().to_string()),
            ],
        );
    }
}

/// Three masters: the request, response and room channels (`--adapter-routing rooms`, the
/// default) spread over the shards by slot; SSUBSCRIBE and SPUBLISH follow them.
#[test]
fn rooms_cross_nodes_on_redis_cluster_with_sharded_pubsub() {
    let servers = RedisClusterServers::start("redis-cluster");
    let url = servers.url();
    let prefix = random_prefix();
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            Node::start(
                "redis-cluster",
                &format!("node-{i}"),
                &["--redis-url", &url, "--redis-prefix", &prefix],
            )
        })
        .collect();
    let urls = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    for mode in MODES {
        scenario(urls.clone(), "room_fanout", mode, &[]);
    }
    scenario(urls.clone(), "acks", "websocket", &[]);
    scenario(urls, "notify_two_nodes", "websocket", &[]);
}
