//! `NotifyBus` across two nodes on a real `redis-server`: a notification published on any
//! node is handed to every node's local delivery once, and `publish` returns the sum of the
//! deliveries every node reported.

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

use common::redis::{RedisNode, RedisServer, connect, random_prefix, settings};

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
async fn publish_sums_the_deliveries_of_every_node() {
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

    let n1 = notification("1-0", "from a");
    let n2 = notification("2-0", "from b");
    let n3 = notification("3-0", "for bob");
    let n4 = notification("4-0", "for nobody");
    assert_eq!(bus_a.publish("alice", &n1).await.unwrap(), 5);
    assert_eq!(bus_b.publish("alice", &n2).await.unwrap(), 5);
    assert_eq!(bus_a.publish("bob", &n3).await.unwrap(), 1);
    assert_eq!(bus_b.publish("nobody", &n4).await.unwrap(), 0);

    // every node was asked once per notification, with the notification as published
    let expected = vec![
        ("alice".to_owned(), n1),
        ("alice".to_owned(), n2),
        ("bob".to_owned(), n3),
        ("nobody".to_owned(), n4),
    ];
    for log in [&log_a, &log_b] {
        assert_eq!(log.calls.load(Ordering::SeqCst), 4);
        assert_eq!(*log.seen.lock().unwrap(), expected);
    }
    // and no reply was missing
    for node in [&node_a, &node_b] {
        assert_eq!(
            common::redis::metric(&node.registry, "sio_adapter_request_timeouts_total"),
            0.0
        );
    }
}
