//! `NotifyBus` across two nodes on a real `redis-server`: a notification published on any
//! node is handed once to the local delivery of every node subscribed to its user, and only
//! theirs; `publish` returns the sum of the deliveries those nodes reported; subscriptions
//! follow the users' guards.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure too"
)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sio_redis_adapter::notify::LocalDelivery;
use sio_redis_adapter::{Appended, Notification, NotifyBus};

use common::eventually;
use common::redis::{RedisNode, RedisServer, connect, metric, random_prefix, settings};

/// What one node's local delivery was asked to deliver.
#[derive(Default)]
struct Deliveries {
    calls: AtomicU64,
    seen: Mutex<Vec<(String, Appended)>>,
}

/// A local delivery that records its calls and reports `sockets(user)` sockets reached.
fn counting(log: &Arc<Deliveries>, sockets: fn(&str) -> u64) -> LocalDelivery {
    let log = log.clone();
    Arc::new(move |user, notification| {
        log.calls.fetch_add(1, Ordering::SeqCst);
        log.seen
            .lock()
            .unwrap()
            .push((user.to_owned(), notification.clone()));
        sockets(user)
    })
}

async fn bus(node: &RedisNode, uid: &str, deliver: LocalDelivery) -> Arc<NotifyBus> {
    NotifyBus::start(
        node.cluster.driver.clone(),
        node.cluster.keys.clone(),
        uid.to_owned(),
        Duration::from_secs(5),
        deliver,
        Arc::new(|| {}),
    )
    .await
    .unwrap()
}

fn notification(id: &str, message: &str) -> Appended {
    Appended {
        notification: Notification {
            id: id.to_owned(),
            message: message.to_owned(),
            timestamp: "2026-01-01T00:00:00Z".to_owned(),
        },
        previous: "0-0".to_owned(),
    }
}

#[tokio::test]
async fn publish_reaches_only_nodes_with_the_user_and_sums_their_deliveries() {
    let server = RedisServer::start().await;
    let settings = settings(&server, &random_prefix());
    let (node_a, node_b) = (connect(&settings).await, connect(&settings).await);
    let (log_a, log_b) = (Arc::default(), Arc::default());
    // alice has two sockets on node a and three on node b; bob one, on node b
    let bus_a = bus(
        &node_a,
        "node-a",
        counting(&log_a, |user| if user == "alice" { 2 } else { 0 }),
    )
    .await;
    let bus_b = bus(
        &node_b,
        "node-b",
        counting(&log_b, |user| match user {
            "alice" => 3,
            "bob" => 1,
            _ => 0,
        }),
    )
    .await;
    let alice_a = bus_a.subscribe_user("alice").await.unwrap();
    let alice_b = bus_b.subscribe_user("alice").await.unwrap();
    let bob_b = bus_b.subscribe_user("bob").await.unwrap();
    let bob_b2 = bus_b.subscribe_user("bob").await.unwrap();
    assert_eq!(
        metric(&node_a.registry, "sio_adapter_notify_subscriptions"),
        1.0
    );
    assert_eq!(
        metric(&node_b.registry, "sio_adapter_notify_subscriptions"),
        2.0
    );

    let n1 = notification("1-0", "from a");
    let n2 = notification("2-0", "from b");
    let n3 = notification("3-0", "for bob");
    let n4 = notification("4-0", "for nobody");
    assert_eq!(bus_a.publish("alice", &n1).await.unwrap(), 5);
    assert_eq!(bus_b.publish("alice", &n2).await.unwrap(), 5);
    assert_eq!(bus_a.publish("bob", &n3).await.unwrap(), 1);
    assert_eq!(bus_b.publish("nobody", &n4).await.unwrap(), 0);

    // each node got only its users' notifications, once, as published
    let alice = [("alice".to_owned(), n1.clone()), ("alice".to_owned(), n2)];
    assert_eq!(*log_a.seen.lock().unwrap(), alice.to_vec());
    let mut for_b = alice.to_vec();
    for_b.push(("bob".to_owned(), n3.clone()));
    assert_eq!(*log_b.seen.lock().unwrap(), for_b);
    assert_eq!(notify_messages(&node_a, "useful"), 2.0);
    assert_eq!(notify_messages(&node_a, "wasted"), 0.0);
    assert_eq!(notify_messages(&node_b, "useful"), 3.0);
    for node in [&node_a, &node_b] {
        assert_eq!(
            metric(&node.registry, "sio_adapter_request_timeouts_total"),
            0.0
        );
    }

    // bob's channel stays while one of his guards lives, and is left with the last
    drop(bob_b);
    assert_eq!(bus_a.publish("bob", &n3).await.unwrap(), 1);
    drop(bob_b2);
    eventually("node b to leave bob's channel", async || {
        metric(&node_b.registry, "sio_adapter_notify_subscriptions") == 1.0
    })
    .await;
    assert_eq!(bus_a.publish("bob", &n3).await.unwrap(), 0);
    drop((alice_a, alice_b));
    for (node, bus) in [(&node_a, &bus_a), (&node_b, &bus_b)] {
        eventually("every channel left", async || {
            metric(&node.registry, "sio_adapter_notify_subscriptions") == 0.0
                && bus.subscribed_users() == 0
        })
        .await;
    }
    assert_eq!(bus_b.publish("alice", &n1).await.unwrap(), 0);
}

/// Many sockets of many users come and go at once: every node ends subscribed to nothing,
/// and a user who stays is still reached.
#[tokio::test]
async fn subscriptions_return_to_baseline_after_churn() {
    let server = RedisServer::start().await;
    let settings = settings(&server, &random_prefix());
    let node = connect(&settings).await;
    let log = Arc::default();
    let bus = bus(&node, "node-a", counting(&log, |_| 1)).await;
    let stays = bus.subscribe_user("stays").await.unwrap();
    for round in 0..5 {
        let guards = futures::future::join_all((0..200).map(|i| {
            let bus = bus.clone();
            async move { bus.subscribe_user(&format!("u{}", i % 50)).await.unwrap() }
        }))
        .await;
        assert_eq!(bus.subscribed_users(), 51, "round {round}");
        drop(guards);
    }
    eventually(
        "subscriptions back to the one user who stayed",
        async || {
            metric(&node.registry, "sio_adapter_notify_subscriptions") == 1.0
                && bus.subscribed_users() == 1
        },
    )
    .await;
    assert_eq!(
        bus.publish("u7", &notification("1-0", "gone"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        bus.publish("stays", &notification("2-0", "here"))
            .await
            .unwrap(),
        1
    );
    drop(stays);
}

fn notify_messages(node: &RedisNode, outcome: &str) -> f64 {
    node.registry
        .gather()
        .iter()
        .filter(|f| f.name() == "sio_adapter_notify_messages_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == outcome))
        .map(|m| m.get_counter().value())
        .sum()
}
