//! `SioDriver` against a real `redis-server`: bounded queues whose overflow is counted, and
//! what happens when Redis goes away and comes back (readiness, errors, resubscription).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure too"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::interfaces::ClientLike;
use futures::StreamExt;
use sio_redis_adapter::{Appended, Notification, NotifyBus, SioDriver};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};

use common::client::Client;
use common::redis::{
    RedisKeep, RedisServer, connect, metric, random_prefix, redis_nodes, settings,
};
use common::{WAIT, eventually};

/// The next message of a subscription, within [`WAIT`].
async fn next(stream: &mut MessageStream<ChanItem>) -> Vec<u8> {
    let (_, data) = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no message within the wait")
        .expect("subscription closed");
    data
}

/// A message that overflows a full per-channel queue is dropped and counted in
/// `sio_adapter_dropped_messages_total`; the other channels keep receiving everything.
#[tokio::test]
async fn full_queue_drops_are_counted_and_other_channels_keep_flowing() {
    let server = RedisServer::start().await;
    let prefix = random_prefix();
    let settings = settings(&server, &prefix);
    let receiver = connect(&settings).await;
    let sender = connect(&settings).await;
    let (full_chan, free_chan) = (format!("{prefix}:full"), format!("{prefix}:free"));
    let driver = &receiver.cluster.driver;
    let losses = driver.losses();
    let mut full = driver.subscribe(full_chan.clone(), 2).await.unwrap();
    let mut free = driver.subscribe(free_chan.clone(), 64).await.unwrap();
    let publisher = &sender.cluster.driver;
    assert_eq!(publisher.num_serv(&full_chan).await.unwrap(), 1);

    // nobody reads `full`: two messages fit in its queue, eight are dropped
    for i in 0..10u8 {
        assert_eq!(
            publisher
                .publish_counted(&full_chan, vec![i])
                .await
                .unwrap(),
            1
        );
    }
    for i in 0..5u8 {
        publisher.publish(free_chan.clone(), vec![i]).await.unwrap();
    }
    // one subscriber connection delivers in order: once `free` has its five messages, every
    // message to `full` has been handled
    for i in 0..5u8 {
        assert_eq!(next(&mut free).await, [i]);
    }
    let dropped = metric(&receiver.registry, "sio_adapter_dropped_messages_total");
    assert_eq!(dropped, 8.0);
    assert!(
        *losses.borrow() >= 1,
        "a drop is announced as a possible loss"
    );
    assert!(metric(&receiver.registry, "sio_adapter_messages_received_total") >= 15.0);

    // the queue kept the oldest two, and takes new messages once it has room
    assert_eq!(next(&mut full).await, [0]);
    assert_eq!(next(&mut full).await, [1]);
    publisher
        .publish(full_chan.clone(), vec![42])
        .await
        .unwrap();
    assert_eq!(next(&mut full).await, [42]);
    assert_eq!(
        metric(&receiver.registry, "sio_adapter_dropped_messages_total"),
        8.0
    );
}

/// Waits until every driver's subscriber has resubscribed and its publishing connection is
/// back (it reconnects on its own schedule), so that the next publish is not one queued
/// while reconnecting.
async fn wait_until_back(drivers: &[&SioDriver]) {
    eventually("the drivers to resubscribe and reconnect", async || {
        drivers
            .iter()
            .all(|d| d.subscribed().load(Ordering::SeqCst) && d.client().is_connected())
    })
    .await;
}

/// Redis is killed and restarted on the same port: the subscriber reports not subscribed,
/// publishes fail (never reported as sent), and once Redis is back every channel is
/// subscribed again and messages flow, without recreating the driver.
#[tokio::test]
async fn resubscribes_after_redis_restarts() {
    let mut server = RedisServer::start().await;
    let prefix = random_prefix();
    let settings = settings(&server, &prefix);
    let receiver = connect(&settings).await;
    let sender = connect(&settings).await;
    let chan = format!("{prefix}:restart");
    let driver = &receiver.cluster.driver;
    let mut stream = driver.subscribe(chan.clone(), 64).await.unwrap();
    let subscribed = driver.subscribed();
    let publisher = &sender.cluster.driver;
    let losses = driver.losses();
    let losses_before = *losses.borrow();

    assert!(subscribed.load(Ordering::SeqCst));
    assert_eq!(metric(&receiver.registry, "sio_adapter_subscribed"), 1.0);
    publisher
        .publish(chan.clone(), b"before".to_vec())
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await, b"before");

    server.kill();
    eventually("the driver to report not subscribed", async || {
        !subscribed.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(metric(&receiver.registry, "sio_adapter_subscribed"), 0.0);
    let (publish, counted) = tokio::join!(
        publisher.publish(chan.clone(), b"lost".to_vec()),
        publisher.publish_counted(&chan, b"lost".to_vec()),
    );
    assert!(publish.is_err(), "publish while Redis is down: {publish:?}");
    assert!(counted.is_err(), "publish while Redis is down: {counted:?}");
    assert!(metric(&sender.registry, "sio_adapter_publish_errors_total") >= 2.0);

    server.restart().await;
    wait_until_back(&[driver, publisher]).await;
    assert_eq!(metric(&receiver.registry, "sio_adapter_subscribed"), 1.0);
    assert!(metric(&receiver.registry, "sio_adapter_reconnects_total") >= 1.0);
    assert!(
        *losses.borrow() > losses_before,
        "the resubscription is announced as a possible loss"
    );
    assert_eq!(publisher.num_serv(&chan).await.unwrap(), 1);
    let sent = publisher.publish_counted(&chan, b"after".to_vec()).await;
    assert_eq!(sent.unwrap(), 1);
    // nothing published while Redis was down arrives; the next message is the new one
    assert_eq!(next(&mut stream).await, b"after");
}

/// The adapter across two nodes while Redis restarts: broadcasts and cross-node requests
/// fail while it is down, and cross-node delivery works again once it is back, on the same
/// nodes.
#[tokio::test]
async fn cross_node_messaging_fails_while_redis_is_down_and_recovers() {
    let mut nodes = redis_nodes(2).await;
    let (n1, n2) = (&nodes.ios[0], &nodes.ios[1]);
    let mut c2 = Client::connect(n2, "c2").await;
    n1.emit("hello", "before").await.unwrap();
    c2.expect(r#"42["hello","before"]"#).await;

    nodes.keep_mut::<RedisKeep>().server.kill();
    let flags: Vec<_> = nodes.drivers.iter().map(SioDriver::subscribed).collect();
    eventually("both nodes to report not subscribed", async || {
        flags.iter().all(|f| !f.load(Ordering::SeqCst))
    })
    .await;
    let (n1, n2) = (&nodes.ios[0], &nodes.ios[1]);
    let (emit, fetch, rooms) =
        tokio::join!(n1.emit("hello", "lost"), n1.fetch_sockets(), n2.rooms());
    assert!(emit.is_err(), "broadcast while Redis is down: {emit:?}");
    assert!(
        fetch.is_err(),
        "fetch_sockets while Redis is down succeeded"
    );
    assert!(rooms.is_err(), "rooms while Redis is down: {rooms:?}");

    nodes.keep_mut::<RedisKeep>().server.restart().await;
    wait_until_back(&nodes.drivers.iter().collect::<Vec<_>>()).await;
    let n1 = &nodes.ios[0];
    n1.emit("hello", "after").await.unwrap();
    c2.expect(r#"42["hello","after"]"#).await;
    let sockets = n1.fetch_sockets().await.unwrap();
    assert_eq!(
        sockets.iter().map(|s| s.data().id).collect::<Vec<_>>(),
        [c2.sid]
    );
    let stream = n1
        .timeout(WAIT)
        .emit_with_ack::<_, String>("ask", "q")
        .await
        .unwrap();
    c2.answer(r#"["ask","q"]"#, r#""c2""#).await;
    let acks: Vec<_> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].0, c2.sid);
    assert_eq!(acks[0].1.as_ref().unwrap(), "c2");
}

/// A notification published while Redis is down is reported as failed, never as delivered.
#[tokio::test]
async fn notification_fails_while_redis_is_down() {
    let mut server = RedisServer::start().await;
    let settings = settings(&server, &random_prefix());
    let node = connect(&settings).await;
    let deliver: sio_redis_adapter::notify::LocalDelivery = Arc::new(|_, _| 1);
    let resyncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = resyncs.clone();
    let bus = NotifyBus::start(
        node.cluster.driver.clone(),
        node.cluster.keys.clone(),
        "node-a".to_owned(),
        Duration::from_secs(2),
        deliver,
        Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .await
    .unwrap();
    let notification = Appended {
        notification: Notification {
            id: "1-0".to_owned(),
            message: "hi".to_owned(),
            timestamp: "t".to_owned(),
        },
        previous: "0-0".to_owned(),
    };
    let _alice = bus.subscribe_user("alice").await.unwrap();
    assert_eq!(bus.publish("alice", &notification).await.unwrap(), 1);

    server.kill();
    let subscribed = node.cluster.driver.subscribed();
    eventually("the driver to report not subscribed", async || {
        !subscribed.load(Ordering::SeqCst)
    })
    .await;
    let (published, stored) = tokio::join!(
        bus.publish("alice", &notification),
        node.cluster.store.append_notification("alice", "hi", "t"),
    );
    assert!(
        published.is_err(),
        "notify while Redis is down: {published:?}"
    );
    assert!(stored.is_err(), "store while Redis is down: {stored:?}");

    // once Redis is back, the bus asks the node to check its sockets' streams: whatever was
    // published meanwhile never reached this node
    let before = resyncs.load(Ordering::SeqCst);
    server.restart().await;
    wait_until_back(&[&node.cluster.driver]).await;
    eventually("the bus to ask for a resync", async || {
        resyncs.load(Ordering::SeqCst) > before
    })
    .await;
}
