//! Interest routing of room broadcasts on a real `redis-server`: a room message reaches only
//! the nodes with members, exactly once, right after a join and across a Redis restart, and
//! room subscriptions come back to their baseline after churn.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure too"
)]

mod common;

use std::sync::atomic::Ordering;

use fred::interfaces::{ClientLike, PubsubInterface};
use sio_redis_adapter::{Routing, SioDriver};

use common::client::Client;
use common::eventually;
use common::redis::{RedisKeep, metric, metric_with, redis_nodes_routed};
use common::scenarios::Nodes;

const RECEIVED: &str = "sio_adapter_messages_received_total";
const HANDLED: &str = "sio_adapter_messages_handled_total";
const PUBLISHED: &str = "sio_adapter_messages_published_total";
const SUBSCRIPTIONS: &str = "sio_adapter_subscriptions";

fn registry(nodes: &mut Nodes<SioDriver>, i: usize) -> prometheus::Registry {
    nodes.keep_mut::<RedisKeep>().connections[i]
        .registry
        .clone()
}

/// Joins `client` (on node `i`) to `rooms` as sio-node does: the room's channel first.
async fn join(nodes: &Nodes<SioDriver>, i: usize, client: &Client, rooms: &[&'static str]) {
    for room in rooms {
        nodes.drivers[i].join_room("/", room).await.unwrap();
    }
    nodes.ios[i]
        .get_socket(client.sid)
        .unwrap()
        .join(rooms.to_vec());
}

/// Every node emits a marker to the whole namespace; each client's next packets must be
/// these markers (a duplicate or stray room message published before them would come first:
/// one Redis delivers one publisher's messages in order).
async fn markers(nodes: &Nodes<SioDriver>, clients: &mut [&mut Client]) {
    for io in &nodes.ios {
        io.emit("marker", "end").await.unwrap();
    }
    for c in clients.iter_mut() {
        for _ in &nodes.ios {
            c.expect(r#"42["marker","end"]"#).await;
        }
    }
}

/// Room shard channels Redis has subscribers for, under the nodes' prefix.
async fn room_channels_in_redis(driver: &SioDriver, prefix: &str) -> Vec<String> {
    driver
        .client()
        .pubsub_shardchannels(format!("{prefix}-room#*"))
        .await
        .unwrap()
}

/// Four nodes: members of room `r` on nodes 0 and 1 (node 1's also in `s`), a socket in
/// another room on node 2, nobody on node 3. Messages to `r`, and to `r` + `s` from the
/// memberless node 3, reach exactly the members, once each; nodes 2 and 3 receive no room
/// message at all (their metrics say so), node 1 receives the two-room message twice and
/// delivers it once. A socket that joins on node 3 gets the next message at once.
#[tokio::test]
async fn room_messages_reach_only_nodes_with_members_exactly_once() {
    let mut nodes = redis_nodes_routed(4, Routing::Rooms).await;
    let mut c0 = Client::connect(&nodes.ios[0], "c0").await;
    let mut c1 = Client::connect(&nodes.ios[1], "c1").await;
    let mut c2 = Client::connect(&nodes.ios[2], "c2").await;
    join(&nodes, 0, &c0, &["r"]).await;
    join(&nodes, 1, &c1, &["r", "s"]).await;
    join(&nodes, 2, &c2, &["elsewhere"]).await;

    nodes.ios[0].to("r").emit("m", "1").await.unwrap();
    nodes.ios[3].to(["r", "s"]).emit("m", "2").await.unwrap();
    for c in [&mut c0, &mut c1] {
        c.expect(r#"42["m","1"]"#).await;
        c.expect(r#"42["m","2"]"#).await;
    }
    markers(&nodes, &mut [&mut c0, &mut c1, &mut c2]).await;

    let regs: Vec<_> = (0..4).map(|i| registry(&mut nodes, i)).collect();
    let room = |i: usize, name: &str, labels: &[(&str, &str)]| {
        let mut l = vec![("kind", "room")];
        l.extend_from_slice(labels);
        metric_with(&regs[i], name, &l)
    };
    for i in [2, 3] {
        assert_eq!(
            room(i, RECEIVED, &[]),
            0.0,
            "node {i} has no member of r or s"
        );
        assert_eq!(room(i, HANDLED, &[]), 0.0, "node {i}");
    }
    // node 0: its own message back (wasted) and the two-room message on r's channel
    assert_eq!(room(0, RECEIVED, &[]), 2.0);
    assert_eq!(room(0, HANDLED, &[("outcome", "useful")]), 1.0);
    assert_eq!(room(0, HANDLED, &[("outcome", "wasted")]), 1.0);
    // node 1: message 1 on r, message 2 on r and s: delivered once, the copy dropped
    assert_eq!(room(1, RECEIVED, &[]), 3.0);
    assert_eq!(room(1, HANDLED, &[("outcome", "useful")]), 2.0);
    assert_eq!(room(1, HANDLED, &[("outcome", "wasted")]), 1.0);
    // one publish per target room
    assert_eq!(room(0, PUBLISHED, &[]), 1.0);
    assert_eq!(room(3, PUBLISHED, &[]), 2.0);

    // right after a join on the memberless node, the next message reaches the new member
    let mut c3 = Client::connect(&nodes.ios[3], "c3").await;
    join(&nodes, 3, &c3, &["r"]).await;
    nodes.ios[2].to("r").emit("m", "3").await.unwrap();
    for c in [&mut c0, &mut c1, &mut c3] {
        c.expect(r#"42["m","3"]"#).await;
    }
    markers(&nodes, &mut [&mut c0, &mut c1, &mut c2, &mut c3]).await;
    assert_eq!(room(2, RECEIVED, &[]), 0.0, "node 2 still has no member");
}

/// Joins and leaves of many sockets and rooms, interleaved and concurrent, leave the node
/// with the subscriptions it started with, in its gauge and in Redis.
#[tokio::test]
async fn subscriptions_return_to_baseline_after_churn() {
    let mut nodes = redis_nodes_routed(1, Routing::Rooms).await;
    let reg = registry(&mut nodes, 0);
    let driver = nodes.drivers[0].clone();
    let prefix = driver_prefix(&mut nodes);
    let baseline = metric(&reg, SUBSCRIPTIONS);
    assert!(baseline >= 3.0, "the adapter's own channels: {baseline}");

    let rooms: Vec<String> = (0..20).map(|i| format!("churn-{i}")).collect();
    // 8 "sockets", each joins every room then leaves them, all at once
    let tasks: Vec<_> = (0..8)
        .map(|s| {
            let (driver, rooms) = (driver.clone(), rooms.clone());
            tokio::spawn(async move {
                for round in 0..3 {
                    for room in rooms.iter().skip((s + round) % 5) {
                        driver.join_room("/", room).await.unwrap();
                    }
                    tokio::task::yield_now().await;
                    for room in rooms.iter().skip((s + round) % 5) {
                        driver.leave_room("/", room).await;
                    }
                }
            })
        })
        .collect();
    // while they churn, one member holds churn-19 throughout
    driver.join_room("/", "churn-19").await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(metric(&reg, SUBSCRIPTIONS), baseline + 1.0);
    assert_eq!(driver.room_subscriptions(), 1);
    // fred sends SUNSUBSCRIBE without waiting for Redis's answer: Redis gets there soon after
    let held = [format!("{prefix}-room#/#churn-19")];
    eventually("Redis to hold churn-19's channel only", async || {
        room_channels_in_redis(&driver, &prefix).await == held
    })
    .await;
    driver.leave_room("/", "churn-19").await;
    assert_eq!(metric(&reg, SUBSCRIPTIONS), baseline);
    assert_eq!(driver.room_subscriptions(), 0);
    eventually("Redis to hold no room channel", async || {
        room_channels_in_redis(&driver, &prefix).await.is_empty()
    })
    .await;
    // a leave without a join changes nothing
    driver.leave_room("/", "never-joined").await;
    assert_eq!(metric(&reg, SUBSCRIPTIONS), baseline);
}

fn driver_prefix(nodes: &mut Nodes<SioDriver>) -> String {
    nodes.keep_mut::<RedisKeep>().connections[0]
        .cluster
        .keys
        .prefix()
        .to_owned()
}

/// Redis is killed and restarted empty on the same port: the nodes subscribe again to the
/// rooms they have members of (and to nothing else), and room messages flow again.
#[tokio::test]
async fn room_subscriptions_are_restored_after_a_redis_restart() {
    let mut nodes = redis_nodes_routed(2, Routing::Rooms).await;
    let prefix = driver_prefix(&mut nodes);
    let mut member = Client::connect(&nodes.ios[1], "member").await;
    join(&nodes, 1, &member, &["r"]).await;
    // a room joined and left: it must not come back
    nodes.drivers[1].join_room("/", "gone").await.unwrap();
    nodes.drivers[1].leave_room("/", "gone").await;
    let reg = registry(&mut nodes, 1);
    let before = metric(&reg, SUBSCRIPTIONS);

    nodes.keep_mut::<RedisKeep>().server.restart().await;
    eventually("both nodes to resubscribe and reconnect", async || {
        nodes
            .drivers
            .iter()
            .all(|d| d.subscribed().load(Ordering::SeqCst) && d.client().is_connected())
    })
    .await;
    let held = [format!("{prefix}-room#/#r")];
    eventually("Redis to hold r's channel only", async || {
        room_channels_in_redis(&nodes.drivers[0], &prefix).await == held
    })
    .await;
    assert_eq!(metric(&reg, SUBSCRIPTIONS), before);

    nodes.ios[0].to("r").emit("m", "after").await.unwrap();
    member.expect(r#"42["m","after"]"#).await;
    markers(&nodes, &mut [&mut member]).await;
}
