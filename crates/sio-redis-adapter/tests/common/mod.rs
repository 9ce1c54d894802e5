//! Fixtures shared by the adapter's integration tests.
//!
//! - [`memory`]: an in-process pub/sub bus and a socketioxide-redis `Driver` over it, so several
//!   nodes can run in one process without Redis (the socketioxide-redis test style);
//! - [`redis`]: real `redis-server` processes on free ports, killed on drop, and connections
//!   to them with [`sio_redis_adapter::RedisCluster`];
//! - [`client`]: fake Socket.IO clients (socketioxide's dummy sockets);
//! - [`scenarios`]: the cross-node scenarios, generic over the driver, run by
//!   `memory_nodes.rs` on the in-memory bus and by `redis_nodes.rs` on Redis.
//!
//! Every wait is bounded: conditions are polled with [`eventually`], packets are awaited with
//! a timeout.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod client;
pub mod memory;
pub mod redis;
pub mod scenarios;

use std::time::Duration;

/// How long a condition may take to become true before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// Pause between two polls of a condition.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `condition` every [`POLL`] until it holds; panics naming `what` after [`WAIT`].
pub async fn eventually(what: &str, condition: impl AsyncFnMut() -> bool) {
    eventually_within(WAIT, what, condition).await;
}

/// Polls `condition` every [`POLL`] until it holds; panics naming `what` after `limit`.
pub async fn eventually_within(
    limit: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The cross-node scenarios as `#[tokio::test]`s on the nodes `$nodes(3)` builds.
#[macro_export]
macro_rules! cross_node_tests {
    ($nodes:path) => {
        #[tokio::test]
        async fn broadcast_to_namespace() {
            common::scenarios::broadcast_to_namespace($nodes(3).await).await;
        }
        #[tokio::test]
        async fn broadcast_to_rooms() {
            common::scenarios::broadcast_to_rooms($nodes(3).await).await;
        }
        #[tokio::test]
        async fn broadcast_with_except() {
            common::scenarios::broadcast_with_except($nodes(3).await).await;
        }
        #[tokio::test]
        async fn broadcast_with_acks_from_every_node() {
            common::scenarios::broadcast_with_acks_from_every_node($nodes(3).await).await;
        }
        #[tokio::test]
        async fn broadcast_with_acks_reports_timeouts() {
            common::scenarios::broadcast_with_acks_reports_timeouts($nodes(3).await).await;
        }
        #[tokio::test]
        async fn fetch_sockets_from_every_node() {
            common::scenarios::fetch_sockets_from_every_node($nodes(3).await).await;
        }
        #[tokio::test]
        async fn remote_socket_operations() {
            common::scenarios::remote_socket_operations($nodes(3).await).await;
        }
        #[tokio::test]
        async fn operators_join_leave_disconnect() {
            common::scenarios::operators_join_leave_disconnect($nodes(3).await).await;
        }
        #[tokio::test]
        async fn rooms_of_every_node() {
            common::scenarios::rooms_of_every_node($nodes(3).await).await;
        }
        #[tokio::test]
        async fn server_count_follows_nodes() {
            common::scenarios::server_count_follows_nodes($nodes(3).await).await;
        }
    };
}
