//! Several sio-node processes sharing one real Redis, driven by the official client.

use sio_tests::{
    Cluster, MODES, Node, RedisClusterServers, ShutdownRedisOnDrop, random_prefix, run_js,
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

#[test]
fn room_messages_cross_nodes_exactly_once() {
    let c = Cluster::start("cluster-fanout", 3, &[]);
    for mode in MODES {
        scenario(c.urls(), "room_fanout", mode, &[]);
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
    let c = Cluster::start("cluster-redis-restart", 2, &[]);
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
