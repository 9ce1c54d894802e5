//! Cross-node adapter scenarios on three nodes in one process, over an in-memory pub/sub bus
//! (the socketioxide-redis test style): the protocol logic without Redis.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure too"
)]

mod common;

use common::memory::memory_nodes as nodes;
use common::scenarios;

#[tokio::test]
async fn broadcast_to_namespace() {
    scenarios::broadcast_to_namespace(nodes(3).await).await;
}

#[tokio::test]
async fn broadcast_to_rooms() {
    scenarios::broadcast_to_rooms(nodes(3).await).await;
}

#[tokio::test]
async fn broadcast_with_except() {
    scenarios::broadcast_with_except(nodes(3).await).await;
}

#[tokio::test]
async fn broadcast_with_acks_from_every_node() {
    scenarios::broadcast_with_acks_from_every_node(nodes(3).await).await;
}

#[tokio::test]
async fn broadcast_with_acks_reports_timeouts() {
    scenarios::broadcast_with_acks_reports_timeouts(nodes(3).await).await;
}

#[tokio::test]
async fn fetch_sockets_from_every_node() {
    scenarios::fetch_sockets_from_every_node(nodes(3).await).await;
}

#[tokio::test]
async fn remote_socket_operations() {
    scenarios::remote_socket_operations(nodes(3).await).await;
}

#[tokio::test]
async fn operators_join_leave_disconnect() {
    scenarios::operators_join_leave_disconnect(nodes(3).await).await;
}

#[tokio::test]
async fn rooms_of_every_node() {
    scenarios::rooms_of_every_node(nodes(3).await).await;
}

#[tokio::test]
async fn server_count_follows_nodes() {
    scenarios::server_count_follows_nodes(nodes(3).await).await;
}
