//! The shared state store: the Redis backend against a real `redis-server` (two or three
//! stores on one Redis stand for as many nodes), and the same semantics on the in-memory
//! backend where they apply (it serves one standalone node and has no leases).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure too"
)]

mod common;

use std::time::{Duration, Instant};

use fred::interfaces::{KeysInterface, SortedSetsInterface};
use sio_redis_adapter::types::{now_ms, parse_stream_id};
use sio_redis_adapter::{LocalLeases, Membership, NodeInfo, SocketEntry, Store};

use common::eventually;
use common::redis::{RedisNode, RedisServer, connect, random_prefix, settings};

/// The lease of a node that dies in a test: short enough to wait past.
const SHORT_LEASE: Duration = Duration::from_secs(1);
/// The lease of a node that lives on while renewing: longer than any stall of a loaded
/// machine between two renewals, yet short enough to wait past when it stops.
const RENEWED_LEASE: Duration = Duration::from_secs(2);
/// The lease of a node whose entries must not expire during a test.
const LONG_LEASE: Duration = Duration::from_secs(60);
/// Notifications kept per user in these tests.
const MAXLEN: usize = 10;
/// Entries per stream node (`stream-node-max-entries`, Redis default): `MAXLEN ~` trims whole
/// nodes only, so a capped stream may hold up to this many entries more than asked.
const STREAM_NODE_ENTRIES: usize = 100;

/// One node's store per lease in `leases`, on a fresh Redis under one random prefix.
async fn redis_stores(leases: &[Duration]) -> (RedisServer, Vec<RedisNode>) {
    let server = RedisServer::start().await;
    let prefix = random_prefix();
    let mut nodes = Vec::new();
    for lease in leases {
        let mut settings = settings(&server, &prefix);
        settings.lease = *lease;
        settings.notification_maxlen = MAXLEN;
        nodes.push(connect(&settings).await);
    }
    (server, nodes)
}

fn entry(sid: &str, node: &str) -> SocketEntry {
    SocketEntry {
        sid: sid.to_owned(),
        node: node.to_owned(),
        ns: "/".to_owned(),
    }
}

fn membership(room: &str, user: &str, sid: &str) -> Membership {
    Membership {
        room: room.to_owned(),
        user: user.to_owned(),
        sid: sid.to_owned(),
    }
}

fn node_info(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        addr: format!("{id}.local:3000"),
        draining: false,
        connections: 3,
        version: "0.1.0".to_owned(),
        server_uid: format!("uid-{id}"),
        started_at_ms: 1_700_000_000_000,
        namespaces: [("/chat".to_owned(), 3)].into(),
        events_received_per_second: 2.5,
        events_sent_per_second: 0.0,
    }
}

async fn sockets(store: &Store, user: &str) -> Vec<SocketEntry> {
    let mut v = store.user_sockets(user).await.unwrap();
    v.sort_by(|a, b| a.sid.cmp(&b.sid));
    v
}

// ---- semantics shared by both backends -------------------------------------------------

async fn user_sockets_add_and_remove(store: &Store) {
    let (s1, s2) = (entry("s1", "node-a"), entry("s2", "node-b"));
    store.add_socket("alice", &s1).await.unwrap();
    store.add_socket("alice", &s2).await.unwrap();
    store.add_socket("alice", &s2).await.unwrap();
    store
        .add_socket("bob", &entry("s3", "node-a"))
        .await
        .unwrap();
    assert_eq!(sockets(store, "alice").await, [s1.clone(), s2.clone()]);

    store.remove_socket("alice", &s2).await.unwrap();
    assert_eq!(sockets(store, "alice").await, std::slice::from_ref(&s1));
    store.remove_socket("alice", &s1).await.unwrap();
    store.remove_socket("alice", &s1).await.unwrap();
    assert!(sockets(store, "alice").await.is_empty());
    assert_eq!(sockets(store, "bob").await, [entry("s3", "node-a")]);
    assert!(sockets(store, "nobody").await.is_empty());
}

async fn user_rooms_add_and_remove(store: &Store) {
    store.add_user_room("alice", "b").await.unwrap();
    store.add_user_room("alice", "a").await.unwrap();
    store.add_user_room("alice", "a").await.unwrap();
    store.add_user_room("bob", "c").await.unwrap();
    assert_eq!(store.user_rooms("alice").await.unwrap(), ["a", "b"]);

    store.remove_user_room("alice", "a").await.unwrap();
    store
        .remove_user_room("alice", "never-joined")
        .await
        .unwrap();
    assert_eq!(store.user_rooms("alice").await.unwrap(), ["b"]);
    assert_eq!(store.user_rooms("bob").await.unwrap(), ["c"]);
    assert!(store.user_rooms("nobody").await.unwrap().is_empty());
}

/// `a` and `b` are two nodes' stores (the same store for a standalone node).
async fn presence_first_and_last(a: &Store, b: &Store) {
    // alice: first socket on node a, second on node b
    assert!(
        a.presence_join(&membership("r", "alice", "s1"))
            .await
            .unwrap()
    );
    assert!(
        !b.presence_join(&membership("r", "alice", "s2"))
            .await
            .unwrap()
    );
    // joining again with the same socket is not a new arrival
    assert!(
        !a.presence_join(&membership("r", "alice", "s1"))
            .await
            .unwrap()
    );
    assert!(
        b.presence_join(&membership("r", "bob", "s3"))
            .await
            .unwrap()
    );
    assert!(
        b.presence_join(&membership("other", "bob", "s3"))
            .await
            .unwrap()
    );
    assert_eq!(a.presence("r").await.unwrap(), ["alice", "bob"]);
    assert_eq!(b.presence("r").await.unwrap(), ["alice", "bob"]);

    // alice leaves when her last socket, on whichever node, leaves
    assert!(
        !a.presence_leave(&membership("r", "alice", "s1"))
            .await
            .unwrap()
    );
    assert_eq!(b.presence("r").await.unwrap(), ["alice", "bob"]);
    assert!(
        b.presence_leave(&membership("r", "alice", "s2"))
            .await
            .unwrap()
    );
    assert_eq!(a.presence("r").await.unwrap(), ["bob"]);
    // leaving twice, or a room never joined, is not a departure
    assert!(
        !b.presence_leave(&membership("r", "alice", "s2"))
            .await
            .unwrap()
    );
    assert!(
        !a.presence_leave(&membership("nowhere", "bob", "s3"))
            .await
            .unwrap()
    );

    assert!(
        b.presence_leave(&membership("r", "bob", "s3"))
            .await
            .unwrap()
    );
    assert!(a.presence("r").await.unwrap().is_empty());
    assert_eq!(a.presence("other").await.unwrap(), ["bob"]);
    // and the next socket is a new arrival
    assert!(
        a.presence_join(&membership("r", "alice", "s4"))
            .await
            .unwrap()
    );
}

/// `slack`: how many entries more than [`MAXLEN`] the backend may keep.
async fn notifications_in_order_and_capped(store: &Store, slack: usize) {
    let mut ids: Vec<String> = Vec::new();
    for i in 0..5 {
        let appended = store
            .append_notification("alice", &format!("m{i}"), &format!("t{i}"))
            .await
            .unwrap();
        let previous = ids.last().map_or("0-0", String::as_str);
        assert_eq!(appended.previous, previous, "previous id of m{i}");
        let n = appended.notification;
        assert_eq!(
            (n.message.as_str(), n.timestamp.as_str()),
            (&*format!("m{i}"), &*format!("t{i}"))
        );
        ids.push(n.id);
    }
    store
        .append_notification("bob", "for bob", "t")
        .await
        .unwrap();
    let parsed: Vec<_> = ids.iter().map(|id| parse_stream_id(id).unwrap()).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );

    let all = store.notifications_after("alice", "0-0").await.unwrap();
    assert_eq!(
        all.iter().map(|n| &n.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        all.iter().map(|n| n.message.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3", "m4"]
    );
    assert_eq!(all[3].timestamp, "t3");
    let later = store.notifications_after("alice", &ids[1]).await.unwrap();
    assert_eq!(later, all[2..]);
    let page = store.notifications_page("alice", &ids[1], 2).await.unwrap();
    assert_eq!(page, all[2..4]);
    assert!(
        store
            .notifications_after("alice", &ids[4])
            .await
            .unwrap()
            .is_empty()
    );
    let bob = store.notifications_after("bob", "0-0").await.unwrap();
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0].message, "for bob");
    assert!(
        store
            .notifications_after("nobody", "0-0")
            .await
            .unwrap()
            .is_empty()
    );

    // the log is capped, keeping the newest, in order
    let total = 300;
    for i in 0..total {
        store
            .append_notification("carol", &format!("c{i}"), "t")
            .await
            .unwrap();
    }
    let kept = store.notifications_after("carol", "0-0").await.unwrap();
    assert!(
        (MAXLEN..=MAXLEN + slack).contains(&kept.len()),
        "kept {} of {total} with a cap of {MAXLEN} (slack {slack})",
        kept.len()
    );
    let expected: Vec<String> = (total - kept.len()..total)
        .map(|i| format!("c{i}"))
        .collect();
    assert_eq!(
        kept.iter().map(|n| n.message.clone()).collect::<Vec<_>>(),
        expected
    );
}

/// `a` and `b` are two nodes' stores (the same store for a standalone node).
async fn registry_heartbeat_and_expiry(a: &Store, b: &Store) {
    let n1 = node_info("node-1");
    let mut n2 = node_info("node-2");
    a.heartbeat(&n1, RENEWED_LEASE).await.unwrap();
    b.heartbeat(&n2, LONG_LEASE).await.unwrap();
    assert_eq!(a.nodes().await.unwrap(), [n1.clone(), n2.clone()]);
    assert_eq!(b.nodes().await.unwrap(), [n1.clone(), n2.clone()]);

    // a heartbeat replaces the entry (draining, figures)
    n2.draining = true;
    n2.connections = 0;
    b.heartbeat(&n2, LONG_LEASE).await.unwrap();
    assert_eq!(a.nodes().await.unwrap(), [n1.clone(), n2.clone()]);

    b.deregister("node-2").await.unwrap();
    b.deregister("never-registered").await.unwrap();
    assert_eq!(a.nodes().await.unwrap(), std::slice::from_ref(&n1));

    // node-1 stops its heartbeat: it leaves the registry when its lease expires
    eventually("node-1's registry lease to expire", async || {
        b.nodes().await.unwrap().is_empty()
    })
    .await;
    a.heartbeat(&n1, LONG_LEASE).await.unwrap();
    assert_eq!(b.nodes().await.unwrap(), [n1]);
}

// ---- in-memory backend -----------------------------------------------------------------

#[tokio::test]
async fn memory_user_sockets() {
    user_sockets_add_and_remove(&Store::memory(MAXLEN)).await;
}

#[tokio::test]
async fn memory_user_rooms() {
    user_rooms_add_and_remove(&Store::memory(MAXLEN)).await;
}

#[tokio::test]
async fn memory_presence_first_and_last() {
    let store = Store::memory(MAXLEN);
    presence_first_and_last(&store, &store).await;
    assert!(
        store
            .expire_presence(&["r".to_owned()])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn memory_notifications() {
    notifications_in_order_and_capped(&Store::memory(MAXLEN), 0).await;
}

#[tokio::test]
async fn memory_registry() {
    let store = Store::memory(MAXLEN);
    registry_heartbeat_and_expiry(&store, &store).await;
}

// ---- Redis backend ---------------------------------------------------------------------

#[tokio::test]
async fn redis_user_sockets() {
    let (_server, nodes) = redis_stores(&[LONG_LEASE]).await;
    user_sockets_add_and_remove(&nodes[0].cluster.store).await;
}

/// Each socket lives for its own node's lease: the socket of a node that stops renewing
/// disappears, even when another node keeps the user's key alive, and a node with a shorter
/// lease writing the key last does not cut the others' leases short. Renewals keep a socket
/// past its first lease, and do not bring back a socket removed meanwhile.
#[tokio::test]
async fn redis_user_sockets_expire_with_their_lease() {
    let (_server, nodes) = redis_stores(&[RENEWED_LEASE, SHORT_LEASE]).await;
    let (alive, dead) = (&nodes[0].cluster.store, &nodes[1].cluster.store);
    let (s1, s2, gone) = (
        entry("s1", "node-a"),
        entry("s2", "node-b"),
        entry("s0", "node-a"),
    );
    let added = Instant::now();
    alive.add_socket("alice", &s1).await.unwrap();
    alive.add_socket("alice", &gone).await.unwrap();
    alive.remove_socket("alice", &gone).await.unwrap();
    dead.add_socket("alice", &s2).await.unwrap();
    assert_eq!(sockets(alive, "alice").await, [s1.clone(), s2.clone()]);

    eventually("the short-lived socket to expire", async || {
        sockets(dead, "alice").await == [s1.clone()]
    })
    .await;

    let leases = LocalLeases {
        sockets: vec![
            ("alice".to_owned(), s1.clone()),
            ("alice".to_owned(), gone.clone()),
        ],
        memberships: Vec::new(),
    };
    let past_first_lease = added + RENEWED_LEASE + Duration::from_millis(500);
    while Instant::now() < past_first_lease {
        alive.refresh_leases(&leases).await.unwrap();
        assert_eq!(sockets(dead, "alice").await, std::slice::from_ref(&s1));
        tokio::time::sleep(common::POLL).await;
    }

    // alive stops renewing too: the user has no socket left, and the key goes away
    eventually("the last socket to expire", async || {
        sockets(alive, "alice").await.is_empty()
    })
    .await;
    let key = nodes[0].cluster.keys.user_sockets("alice");
    let client = nodes[0].cluster.driver.client();
    eventually("the user's socket key to expire", async || {
        client.exists::<u64, _>(&key).await.unwrap() == 0
    })
    .await;
}

#[tokio::test]
async fn redis_user_rooms() {
    let (_server, nodes) = redis_stores(&[LONG_LEASE, LONG_LEASE]).await;
    user_rooms_add_and_remove(&nodes[0].cluster.store).await;
    // another node sees them (rooms are restored on whichever node the user reconnects to)
    assert_eq!(
        nodes[1].cluster.store.user_rooms("alice").await.unwrap(),
        ["b"]
    );
    // kept for a long time, not forever
    let key = nodes[0].cluster.keys.user_rooms("alice");
    let ttl: i64 = nodes[0].cluster.driver.client().ttl(&key).await.unwrap();
    assert!(ttl > 24 * 3600, "ttl of {key}: {ttl}");
}

#[tokio::test]
async fn redis_presence_first_and_last_across_nodes() {
    let (_server, nodes) = redis_stores(&[LONG_LEASE, LONG_LEASE]).await;
    presence_first_and_last(&nodes[0].cluster.store, &nodes[1].cluster.store).await;
}

/// A node with a shorter lease renewing its membership does not cut short the memberships
/// other nodes hold for the same user in the same room.
#[tokio::test]
async fn redis_presence_lease_is_not_cut_short_by_a_shorter_one() {
    let (_server, nodes) = redis_stores(&[LONG_LEASE, SHORT_LEASE]).await;
    let (long, short) = (&nodes[0].cluster.store, &nodes[1].cluster.store);
    assert!(
        long.presence_join(&membership("r", "carol", "s1"))
            .await
            .unwrap()
    );
    assert!(
        !long
            .presence_join(&membership("r", "carol", "s1b"))
            .await
            .unwrap()
    );
    let m2 = membership("r", "carol", "s2");
    assert!(!short.presence_join(&m2).await.unwrap());
    let leases = LocalLeases {
        sockets: Vec::new(),
        memberships: vec![m2],
    };
    short.refresh_leases(&leases).await.unwrap();

    // the short node dies: wait until its membership's lease has passed
    let key = nodes[0].cluster.keys.presence_sockets("r", "carol");
    let client = nodes[0].cluster.driver.client();
    eventually("the short lease to pass", async || {
        let expiry: Option<f64> = client.zscore(&key, "s2").await.unwrap();
        expiry.is_none_or(|ms| ms < now_ms() as f64)
    })
    .await;
    assert!(
        long.expire_presence(&["r".to_owned()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(long.presence("r").await.unwrap(), ["carol"]);
    // carol still has s1b on the long node: s1 leaving is not her departure
    assert!(
        !long
            .presence_leave(&membership("r", "carol", "s1"))
            .await
            .unwrap()
    );
    assert!(
        long.presence_leave(&membership("r", "carol", "s1b"))
            .await
            .unwrap()
    );
}

/// A node dies with users present: once their leases expire, the sweep of a node with
/// members in their rooms reports each (room, user) that went offline exactly once, even with
/// two nodes sweeping the same rooms at the same time, and not users that still have a socket
/// on a live node. A node sweeps only the rooms it is given (its own): one without members
/// there reports nothing.
#[tokio::test]
async fn redis_expire_presence_reports_a_dead_nodes_users_once() {
    let (_server, nodes) = redis_stores(&[SHORT_LEASE, RENEWED_LEASE, LONG_LEASE]).await;
    let (dead, alive, other) = (
        &nodes[0].cluster.store,
        &nodes[1].cluster.store,
        &nodes[2].cluster.store,
    );
    assert!(
        dead.presence_join(&membership("r", "alice", "sa"))
            .await
            .unwrap()
    );
    assert!(
        dead.presence_join(&membership("r", "carol", "sc1"))
            .await
            .unwrap()
    );
    assert!(
        dead.presence_join(&membership("r2", "dave", "sd"))
            .await
            .unwrap()
    );
    assert!(
        !alive
            .presence_join(&membership("r", "carol", "sc2"))
            .await
            .unwrap()
    );
    let live = [
        membership("r", "carol", "sc2"),
        membership("r", "bob", "sb"),
        membership("r2", "bob", "sb"),
    ];
    for m in &live {
        alive.presence_join(m).await.unwrap();
    }
    let leases = LocalLeases {
        sockets: Vec::new(),
        memberships: live.to_vec(),
    };

    let expected = vec![
        ("r".to_owned(), "alice".to_owned()),
        ("r2".to_owned(), "dave".to_owned()),
    ];
    let mut reported = Vec::new();
    let mut rounds_after = 0;
    eventually("the dead node's users to be reported", async || {
        alive.refresh_leases(&leases).await.unwrap();
        let own = ["r".to_owned(), "r2".to_owned()];
        let elsewhere = ["elsewhere".to_owned()];
        let (a, b, c) = tokio::join!(
            alive.expire_presence(&own),
            other.expire_presence(&own),
            other.expire_presence(&elsewhere)
        );
        reported.extend(a.unwrap());
        reported.extend(b.unwrap());
        assert!(c.unwrap().is_empty());
        reported.sort();
        // keep sweeping a few rounds after both were reported: no one is reported again
        if reported.len() >= expected.len() {
            rounds_after += 1;
        }
        rounds_after > 5
    })
    .await;
    assert_eq!(reported, expected);
    assert_eq!(other.presence("r").await.unwrap(), ["bob", "carol"]);
    assert_eq!(other.presence("r2").await.unwrap(), ["bob"]);
    // when alice comes back (on any node) she is a new arrival
    assert!(
        other
            .presence_join(&membership("r", "alice", "sa2"))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn redis_notifications() {
    let (_server, nodes) = redis_stores(&[LONG_LEASE, LONG_LEASE]).await;
    notifications_in_order_and_capped(&nodes[0].cluster.store, STREAM_NODE_ENTRIES).await;
    // another node reads the same log
    let a = nodes[0]
        .cluster
        .store
        .notifications_after("alice", "0-0")
        .await;
    let b = nodes[1]
        .cluster
        .store
        .notifications_after("alice", "0-0")
        .await;
    assert_eq!(a.unwrap(), b.unwrap());
}

#[tokio::test]
async fn redis_registry() {
    let (_server, nodes) = redis_stores(&[LONG_LEASE, LONG_LEASE]).await;
    registry_heartbeat_and_expiry(&nodes[0].cluster.store, &nodes[1].cluster.store).await;
}
