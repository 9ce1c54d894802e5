//! Cross-node adapter scenarios on three nodes (room broadcasts routed by room, the default),
//! each with its own connection to a real
//! `redis-server` (started by the test), with `SioDriver` as sio-node uses it.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions panic on failure too"
)]

mod common;

cross_node_tests!(common::redis::redis_nodes);
