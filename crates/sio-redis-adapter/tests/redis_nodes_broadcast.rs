//! The cross-node scenarios of `redis_nodes.rs` with `--adapter-routing broadcast`: room
//! broadcasts on the namespace's request channel, as the first release published them.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure too"
)]

mod common;

cross_node_tests!(common::redis::redis_nodes_broadcast);
