//! sio-node: a stateless Socket.IO node of sio-cluster.
//!
//! One port serves Socket.IO (`/socket.io/`, namespaces `/`, `/notifications`,
//! `/dashboard`) and HTTP (`/api/*`, `/healthz`, `/readyz`, `/metrics`). Users are
//! identified by their authenticated id, never by a socket id; everything that must outlive a
//! socket or a node lives in the shared [`sio_redis_adapter::Store`].

pub mod admin;
pub mod api;
pub mod args;
pub mod auth;
pub mod chat;
pub mod config;
pub mod conformance;
pub mod conn;
pub mod connect;
pub mod dashboard;
pub mod drain;
pub mod events;
pub mod expiry;
pub mod fdlimit;
pub mod grants;
pub mod join_hook;
pub mod jwt_key;
pub mod metrics;
pub mod notification_cursor;
pub mod notifications;
pub mod room_auth;
pub mod secret;
pub mod server;
pub mod session;
pub mod state;
pub mod stats;
pub mod validate;

pub use config::Config;

/// The namespaces sio-node serves outside conformance mode.
pub const NAMESPACES: [&str; 3] = [
    chat::NAMESPACE,
    notifications::NAMESPACE,
    dashboard::NAMESPACE,
];
pub use server::{NodeError, run};
