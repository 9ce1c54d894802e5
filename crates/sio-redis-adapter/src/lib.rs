//! Cross-node adapter and shared state of sio-cluster.
//!
//! A sio-node uses this crate for everything that must outlive one socket or one node:
//! users' sockets and rooms, presence, notification logs and the node registry
//! ([`Store`]), and (with Redis) the socketioxide remote adapter that lets any node reach
//! any room, user or socket.

pub mod error;
pub mod memory;
pub mod store;
pub mod types;

pub use error::{StoreError, StoreResult};
pub use store::{LocalLeases, Membership, Store};
pub use types::{NodeInfo, Notification, SocketEntry};
