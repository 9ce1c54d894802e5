//! Cross-node adapter scenarios on three nodes in one process, over an in-memory pub/sub bus
//! (the socketioxide-redis test style): the protocol logic without Redis.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure too"
)]

mod common;

cross_node_tests!(common::memory::memory_nodes);
