//! Cross-node adapter and shared state of sio-cluster, on Redis (fred).
//!
//! A sio-node uses this crate for everything that must outlive one socket or one node:
//! users' sockets and rooms, presence, notification logs and the node registry
//! ([`Store`]), and the socketioxide remote adapter ([`ClusterAdapter`]) that lets any node
//! reach any room, user or socket. Without Redis, [`Store::memory`] serves a standalone node.
//!
//! # Cross-node messaging
//!
//! The remote-adapter protocol is socketioxide-redis's (`CustomRedisAdapter` over the
//! [`Driver`](socketioxide_redis::drivers::Driver) trait): broadcasts (to the namespace, to
//! rooms, with `except`), broadcasts with acks, `fetch_sockets`, remote join/leave/disconnect,
//! room listing and server count. This crate supplies the driver, [`SioDriver`], which
//! resubscribes after reconnects, reports readiness, bounds and counts its queues, and exports
//! metrics. All channels are Redis 7 *sharded* channels (`SSUBSCRIBE`/`SPUBLISH`), so they
//! spread over the shards of a Redis Cluster.
//!
//! ```text
//!  node A: io.to("r").emit(..)                Redis                      node B
//!  ─────────────────────────────              ─────                      ──────
//!  SPUBLISH {p}-request#/# msgpack(req)  ──▶  shard of the channel  ──▶  local broadcast to "r"
//!  local broadcast to "r"
//!
//!  node A: fetch_sockets / rooms / emit_with_ack
//!  PUBSUB SHARDNUMSUB {p}-request#/#  -> n servers
//!  SPUBLISH {p}-request#/# req(id)     ──▶                           ──▶  answers on
//!  wait for n-1 answers  ◀──────────────  {p}-response#/#{A}#  ◀──────  SPUBLISH [id, data]
//! ```
//!
//! With `--adapter-routing rooms` (the default) a broadcast to rooms of namespace `/` skips
//! the request channel: it is published on each target room's channel, which only nodes with
//! local members subscribe to ([`routing`] describes the channels, the subscription life
//! cycle, the race handling and why per-room channels rather than hashed partitions):
//!
//! ```text
//!  node A: io.to("r").emit(..)                 Redis                   node B (member of r)
//!  SPUBLISH {p}-room#/#r msgpack(req)  ──▶  shard of the channel  ──▶  local broadcast to "r"
//!                                                                     (node C, no member: nothing)
//!  node B: join-room "r" (first local member)
//!  SSUBSCRIBE {p}-room#/#r, wait for Redis's answer, then join and acknowledge
//! ```
//!
//! # Keys and channels (prefix `{p}`, `--redis-prefix`, default `sio`)
//!
//! | name | type | content |
//! |---|---|---|
//! | `{p}-request#{ns}#` | shard channel | adapter requests to every node (socketioxide-redis, msgpack) |
//! | `{p}-request#{ns}#{uid}#` | shard channel | adapter requests to node `uid` |
//! | `{p}-response#{ns}#{uid}#` | shard channel | answers to node `uid`'s requests |
//! | `{p}-room#{ns}#{room}` | shard channel | broadcasts to `room` (same msgpack request), subscribed while the node has local members of the room ([`routing`]) |
//! | `{p}:notify:{<user>}` | shard channel | the user's notifications, to the nodes with a socket of the user (JSON `{user, notification: {notification, previous}, origin, req}`) |
//! | `{p}:notify-reply:{uid}` | shard channel | delivery counts for node `uid` (JSON `{req, delivered}`) |
//! | `{p}:admin` | shard channel | admin UI requests to every node: list sockets, apply a command (JSON, sio-node `admin::bus`) |
//! | `{p}:admin-reply:{uid}` | shard channel | answers to node `uid`'s admin requests (JSON `{req, node, affected, sockets}`) |
//! | `{p}:user:{<user>}:sockets` | sorted set | live sockets of the user, member `sid\|node\|ns`, score lease expiry (ms) |
//! | `{p}:user:{<user>}:rooms` | set | rooms the user joined and did not leave (restored on reconnect); 30 days TTL |
//! | `{p}:user:{<user>}:notifications` | stream | the user's notifications (`message`, `timestamp`), `MAXLEN ~ --notification-maxlen`; 30 days TTL |
//! | `{p}:presence:{<room>}:users` | sorted set | users present in the room, score latest lease expiry |
//! | `{p}:presence:{<room>}:sockets:<user>` | sorted set | the user's sockets in the room, score lease expiry |
//! | `{p}:nodes` | sorted set | node ids, score registry lease expiry (ms) |
//! | `{p}:nodes:info` | hash | node id -> JSON [`NodeInfo`] (`id`, `addr`, `draining`, `connections`, …) |
//!
//! `<user>` and `<room>` sit inside `{…}` hash tags (with `{`, `}` and `%` escaped) so the keys
//! of one room, or of one user, share a Redis Cluster slot and scripts can update them
//! atomically. Leases are renewed every third of `--lease-ttl`; when a node dies its entries
//! expire, and the presence sweep removes them and emits `presence {online: false}` once per
//! user and room: every node sweeps, every heartbeat, the rooms of its own sockets only (so
//! its work follows its own rooms, never the cluster's); a room without a live member has
//! nobody to tell, and its keys expire with their last lease.
//!
//! # Notifications
//!
//! See [`notify`]: stored by a script (`XADD … MAXLEN ~`, answering the new id and the one
//! before it), delivered live through the user's channel `{p}:notify:{<user>}` to the nodes
//! that subscribed to it (those holding a socket of the user), the delivery count summed from
//! their answers, replayed and gaps filled with `XRANGE (<last id> + COUNT n`.

//!
//! # Features
//!
//! `adapter` (default): everything above. Without it the crate builds only the key names,
//! the plain types and the node registry reader ([`registry`]), without socketioxide: what
//! sio-proxy needs to find the nodes, from the one definition of the registry.

#[cfg(feature = "adapter")]
pub mod cluster;
#[cfg(feature = "adapter")]
pub mod driver;
pub mod error;
pub mod keys;
pub mod log_throttle;
#[cfg(feature = "adapter")]
pub mod memory;
#[cfg(feature = "adapter")]
pub mod metrics;
#[cfg(feature = "adapter")]
pub mod notify;
#[cfg(feature = "adapter")]
pub mod redis_store;
pub mod registry;
#[cfg(feature = "adapter")]
pub mod routing;
#[cfg(feature = "adapter")]
pub mod store;
pub mod types;

#[cfg(feature = "adapter")]
pub use cluster::{RedisCluster, RedisSettings};
#[cfg(feature = "adapter")]
pub use driver::SioDriver;
pub use error::{StoreError, StoreResult};
pub use keys::Keys;
#[cfg(feature = "adapter")]
pub use notify::{NotifyBus, UserSubscription};
#[cfg(feature = "adapter")]
pub use routing::{RoomRouting, Routing};
#[cfg(feature = "adapter")]
pub use store::{LocalLeases, Membership, Store};
pub use types::{Appended, NodeInfo, Notification, SocketEntry};

/// The socketioxide adapter of a clustered node.
#[cfg(feature = "adapter")]
pub type ClusterAdapter =
    socketioxide_redis::CustomRedisAdapter<socketioxide::adapter::Emitter, SioDriver>;

#[cfg(feature = "adapter")]
pub use socketioxide_redis::RedisAdapterCtr;
