//! The shared state a node reads and writes: one type, two backends.
//!
//! [`Store::Memory`] serves a standalone node; [`Store::Redis`] serves a cluster, where every
//! node sees the same users, rooms, presence, notifications and registry.

use std::sync::Arc;
use std::time::Duration;

use crate::error::StoreResult;
use crate::memory::MemoryStore;
use crate::redis_store::RedisStore;
use crate::types::{Appended, NodeInfo, Notification, SocketEntry, now_ms};

/// A presence membership a node holds: `user` has socket `sid` in `room`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Room name.
    pub room: String,
    /// User id.
    pub user: String,
    /// Socket id.
    pub sid: String,
}

/// Everything a node holds that leases must keep alive (see [`Store::refresh_leases`]).
#[derive(Debug, Clone, Default)]
pub struct LocalLeases {
    /// Every live socket of the node with its user.
    pub sockets: Vec<(String, SocketEntry)>,
    /// Every room membership of the node's sockets.
    pub memberships: Vec<Membership>,
}

/// Shared state of the cluster (or of one standalone node).
#[derive(Debug, Clone)]
pub enum Store {
    /// In-process state of a standalone node.
    Memory(Arc<MemoryStore>),
    /// The cluster's state in Redis.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// The store on Redis.
    pub fn redis(store: RedisStore) -> Self {
        Store::Redis(Arc::new(store))
    }

    /// A store in memory, for a node without Redis.
    pub fn memory(notification_maxlen: usize) -> Self {
        Store::Memory(Arc::new(MemoryStore::new(notification_maxlen)))
    }

    /// Records a live socket of `user`.
    pub async fn add_socket(&self, user: &str, entry: &SocketEntry) -> StoreResult<()> {
        match self {
            Store::Memory(m) => m.add_socket(user, entry.clone()),
            Store::Redis(r) => r.add_socket(user, entry).await?,
        }
        Ok(())
    }

    /// Forgets a socket of `user`.
    pub async fn remove_socket(&self, user: &str, entry: &SocketEntry) -> StoreResult<()> {
        match self {
            Store::Memory(m) => m.remove_socket(user, entry),
            Store::Redis(r) => r.remove_socket(user, entry).await?,
        }
        Ok(())
    }

    /// Live sockets of `user` on every node.
    pub async fn user_sockets(&self, user: &str) -> StoreResult<Vec<SocketEntry>> {
        match self {
            Store::Memory(m) => Ok(m.user_sockets(user)),
            Store::Redis(r) => r.user_sockets(user).await,
        }
    }

    /// Rooms `user` has joined and not left, to restore on reconnect.
    pub async fn user_rooms(&self, user: &str) -> StoreResult<Vec<String>> {
        match self {
            Store::Memory(m) => Ok(m.user_rooms(user)),
            Store::Redis(r) => r.user_rooms(user).await,
        }
    }

    /// Remembers that `user` joined `room`.
    pub async fn add_user_room(&self, user: &str, room: &str) -> StoreResult<()> {
        match self {
            Store::Memory(m) => m.add_user_room(user, room),
            Store::Redis(r) => r.add_user_room(user, room).await?,
        }
        Ok(())
    }

    /// Forgets that `user` joined `room`.
    pub async fn remove_user_room(&self, user: &str, room: &str) -> StoreResult<()> {
        match self {
            Store::Memory(m) => m.remove_user_room(user, room),
            Store::Redis(r) => r.remove_user_room(user, room).await?,
        }
        Ok(())
    }

    /// Marks socket `sid` of `user` present in `room`; true when it is the user's first
    /// socket there (the user just came online in the room).
    pub async fn presence_join(&self, m: &Membership) -> StoreResult<bool> {
        match self {
            Store::Memory(s) => Ok(s.presence_join(&m.room, &m.user, &m.sid)),
            Store::Redis(r) => r.presence_join(m).await,
        }
    }

    /// Removes socket `sid` of `user` from `room`; true when it was the user's last socket
    /// there (the user just went offline in the room).
    pub async fn presence_leave(&self, m: &Membership) -> StoreResult<bool> {
        match self {
            Store::Memory(s) => Ok(s.presence_leave(&m.room, &m.user, &m.sid)),
            Store::Redis(r) => r.presence_leave(m).await,
        }
    }

    /// Users online in `room`, sorted.
    pub async fn presence(&self, room: &str) -> StoreResult<Vec<String>> {
        match self {
            Store::Memory(m) => Ok(m.presence(room)),
            Store::Redis(r) => r.presence(room).await,
        }
    }

    /// Removes the memberships of `rooms` whose lease expired (their node died) and returns
    /// the `(room, user)` pairs that went offline because of it. A node passes the rooms of
    /// its own sockets: its work grows with them, not with the cluster's rooms, and a room
    /// with no live member anywhere has nobody to tell (its entries expire with their key).
    pub async fn expire_presence(&self, rooms: &[String]) -> StoreResult<Vec<(String, String)>> {
        match self {
            Store::Memory(_) => Ok(Vec::new()),
            Store::Redis(r) => r.expire_presence(rooms).await,
        }
    }

    /// Extends the leases of everything the node holds.
    pub async fn refresh_leases(&self, leases: &LocalLeases) -> StoreResult<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.refresh_leases(leases).await,
        }
    }

    /// Appends a notification to `user`'s capped log and returns it with its id and the id of
    /// the entry before it.
    pub async fn append_notification(
        &self,
        user: &str,
        message: &str,
        timestamp: &str,
    ) -> StoreResult<Appended> {
        match self {
            Store::Memory(m) => Ok(m.append_notification(user, message, timestamp)),
            Store::Redis(r) => r.append_notification(user, message, timestamp).await,
        }
    }

    /// Notifications of `user` strictly after stream id `after`, oldest first.
    pub async fn notifications_after(
        &self,
        user: &str,
        after: &str,
    ) -> StoreResult<Vec<Notification>> {
        match self {
            Store::Memory(m) => Ok(m.notifications_after(user, after, None)),
            Store::Redis(r) => r.notifications_after(user, after, None).await,
        }
    }

    /// At most `limit` notifications of `user` strictly after stream id `after`, oldest first
    /// (one page of a catch-up).
    pub async fn notifications_page(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        match self {
            Store::Memory(m) => Ok(m.notifications_after(user, after, Some(limit))),
            Store::Redis(r) => r.notifications_after(user, after, Some(limit)).await,
        }
    }

    /// Id of `user`'s newest stored notification, if any.
    pub async fn last_notification_id(&self, user: &str) -> StoreResult<Option<String>> {
        match self {
            Store::Memory(m) => Ok(m.last_notification_id(user)),
            Store::Redis(r) => r.last_notification_id(user).await,
        }
    }

    /// Writes the node's registry entry with a lease of `ttl`.
    pub async fn heartbeat(&self, info: &NodeInfo, ttl: Duration) -> StoreResult<()> {
        let expires = now_ms() + ttl.as_millis() as u64;
        match self {
            Store::Memory(m) => m.heartbeat(info, expires),
            Store::Redis(r) => r.heartbeat(info, ttl).await?,
        }
        Ok(())
    }

    /// Removes the node's registry entry (clean shutdown).
    pub async fn deregister(&self, id: &str) -> StoreResult<()> {
        match self {
            Store::Memory(m) => m.deregister(id),
            Store::Redis(r) => r.deregister(id).await?,
        }
        Ok(())
    }

    /// Live nodes of the cluster, sorted by id.
    pub async fn nodes(&self) -> StoreResult<Vec<NodeInfo>> {
        match self {
            Store::Memory(m) => Ok(m.nodes()),
            Store::Redis(r) => r.nodes().await,
        }
    }
}
