//! `sio-proxy`: a stateless, sticky load balancer for a Socket.IO cluster, on pingora.
//!
//! Every Engine.IO session is pinned to the node that created it by a keyed tag inside the
//! session id itself, so any number of proxy replicas, restarted or not, route a session's
//! requests to the same node without sharing a table. WebSocket upgrades become raw tunnels
//! with no per-frame work. Backends come from static addresses, DNS and the nodes' Redis
//! registry, and are health-checked on `/readyz`.

pub mod admission;
pub mod backends;
pub mod config;
pub mod discovery;
pub mod error;
pub mod fdlimit;
pub mod forward;
pub mod gate;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod secret;
pub mod server;
pub mod tunnel;
pub mod uring;

pub use config::Config;
pub use error::ProxyError;
pub use server::run;
