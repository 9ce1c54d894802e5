//! The shared state on Redis (see the crate docs for every key).
//!
//! Leases make a dead node's state disappear: a node writes its sockets and room memberships
//! with an expiry `lease` ahead and renews them every heartbeat; readers ignore expired
//! entries, and the presence sweep removes them and reports who went offline.

use std::collections::HashMap;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{
    HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface, StreamsInterface,
};
use fred::types::scripts::Script;
use fred::types::sorted_sets::Ordering as ZOrdering;
use fred::types::{ExpireOptions, SetOptions};

use crate::error::{StoreError, StoreResult};
use crate::keys::Keys;
use crate::metrics::AdapterMetrics;
use crate::store::{LocalLeases, Membership};
use crate::types::{Appended, NodeInfo, Notification, SocketEntry, now_ms};

/// How long a user's room list and notification stream live without activity.
pub const USER_STATE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Registry entries expired longer than this are deleted by the heartbeat.
const REGISTRY_GC_AFTER_MS: u64 = 10 * 60 * 1000;

/// KEYS: users, user's sockets. ARGV: user, sid, expiry, now. Returns 1 if the user was not
/// present before (came online).
const PRESENCE_JOIN: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local before = redis.call('ZCARD', KEYS[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('PEXPIREAT', KEYS[2], ARGV[3], 'GT')
redis.call('PEXPIREAT', KEYS[2], ARGV[3], 'NX')
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[3], 'GT')
redis.call('PEXPIREAT', KEYS[1], ARGV[3], 'NX')
if before == 0 then return 1 else return 0 end
"#;

/// KEYS: users, user's sockets. ARGV: user, sid, now. Returns 1 if it was the user's last
/// socket in the room (went offline).
const PRESENCE_LEAVE: &str = r#"
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[2]) == 0 then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"#;

/// KEYS: users. ARGV: now, prefix of the user socket keys. Removes users whose every socket
/// lease expired and returns them.
const PRESENCE_SWEEP: &str = r#"
local gone = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, user in ipairs(expired) do
  local key = ARGV[2] .. user
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('ZREM', KEYS[1], user)
    table.insert(gone, user)
  else
    redis.call('ZADD', KEYS[1], top[2], user)
  end
end
return gone
"#;

/// KEYS: the user's notification stream. ARGV: maxlen, ttl (s), message, timestamp. Appends
/// and returns `{new id, id of the newest entry before it or "0-0"}`, atomically, so the pair
/// tells a node exactly which entry must precede the new one.
const NOTIFY_APPEND: &str = r#"
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local previous = '0-0'
if #newest > 0 then previous = newest[1][1] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'message', ARGV[3], 'timestamp', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {id, previous}
"#;

/// Shared state of the cluster on Redis.
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    keys: Keys,
    lease: Duration,
    notification_maxlen: u64,
    metrics: AdapterMetrics,
    join: Script,
    leave: Script,
    sweep: Script,
    append: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix())
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on a connected `client`, with leases of `lease`.
    pub fn new(
        client: Client,
        keys: Keys,
        lease: Duration,
        notification_maxlen: usize,
        metrics: AdapterMetrics,
    ) -> Self {
        Self {
            client,
            keys,
            lease,
            notification_maxlen: notification_maxlen.max(1) as u64,
            metrics,
            join: Script::from_lua(PRESENCE_JOIN),
            leave: Script::from_lua(PRESENCE_LEAVE),
            sweep: Script::from_lua(PRESENCE_SWEEP),
            append: Script::from_lua(NOTIFY_APPEND),
        }
    }

    fn expiry(&self) -> u64 {
        now_ms() + self.lease.as_millis() as u64
    }

    fn count<T>(&self, r: Result<T, fred::error::Error>) -> StoreResult<T> {
        r.map_err(|e| {
            self.metrics.store_errors.inc();
            StoreError::from(e)
        })
    }

    pub(crate) async fn add_socket(&self, user: &str, entry: &SocketEntry) -> StoreResult<()> {
        let key = self.keys.user_sockets(user);
        let exp = self.expiry();
        let r: Result<(), _> = self
            .client
            .zadd(&key, None, None, false, false, (exp as f64, entry.member()))
            .await;
        self.count(r)?;
        // Never shorten the key's life: other nodes' sockets in it may have later leases (a
        // longer --lease-ttl, a clock ahead). GT extends an expiry, NX sets a new key's.
        let r: Result<(), _> = self
            .client
            .pexpire_at(&key, exp as i64, Some(ExpireOptions::GT))
            .await;
        self.count(r)?;
        let r: Result<(), _> = self
            .client
            .pexpire_at(&key, exp as i64, Some(ExpireOptions::NX))
            .await;
        self.count(r)
    }

    pub(crate) async fn remove_socket(&self, user: &str, entry: &SocketEntry) -> StoreResult<()> {
        let r: Result<(), _> = self
            .client
            .zrem(self.keys.user_sockets(user), entry.member())
            .await;
        self.count(r)
    }

    pub(crate) async fn user_sockets(&self, user: &str) -> StoreResult<Vec<SocketEntry>> {
        let r: Result<Vec<String>, _> = self
            .client
            .zrangebyscore(
                self.keys.user_sockets(user),
                now_ms() as f64,
                "+inf",
                false,
                None,
            )
            .await;
        Ok(self
            .count(r)?
            .iter()
            .filter_map(|m| SocketEntry::from_member(m))
            .collect())
    }

    pub(crate) async fn user_rooms(&self, user: &str) -> StoreResult<Vec<String>> {
        let r: Result<Vec<String>, _> = self.client.smembers(self.keys.user_rooms(user)).await;
        let mut rooms = self.count(r)?;
        rooms.sort();
        Ok(rooms)
    }

    pub(crate) async fn add_user_room(&self, user: &str, room: &str) -> StoreResult<()> {
        let key = self.keys.user_rooms(user);
        let r: Result<(), _> = self.client.sadd(&key, room).await;
        self.count(r)?;
        let r: Result<(), _> = self
            .client
            .expire(&key, USER_STATE_TTL.as_secs() as i64, None)
            .await;
        self.count(r)
    }

    pub(crate) async fn remove_user_room(&self, user: &str, room: &str) -> StoreResult<()> {
        let r: Result<(), _> = self.client.srem(self.keys.user_rooms(user), room).await;
        self.count(r)
    }

    pub(crate) async fn presence_join(&self, m: &Membership) -> StoreResult<bool> {
        let keys = vec![
            self.keys.presence_users(&m.room),
            self.keys.presence_sockets(&m.room, &m.user),
        ];
        let args = vec![
            m.user.clone(),
            m.sid.clone(),
            self.expiry().to_string(),
            now_ms().to_string(),
        ];
        let r: Result<i64, _> = self
            .join
            .evalsha_with_reload(&self.client, keys, args)
            .await;
        Ok(self.count(r)? == 1)
    }

    pub(crate) async fn presence_leave(&self, m: &Membership) -> StoreResult<bool> {
        let keys = vec![
            self.keys.presence_users(&m.room),
            self.keys.presence_sockets(&m.room, &m.user),
        ];
        let args = vec![m.user.clone(), m.sid.clone(), now_ms().to_string()];
        let r: Result<i64, _> = self
            .leave
            .evalsha_with_reload(&self.client, keys, args)
            .await;
        Ok(self.count(r)? == 1)
    }

    pub(crate) async fn presence(&self, room: &str) -> StoreResult<Vec<String>> {
        let r: Result<Vec<String>, _> = self
            .client
            .zrangebyscore(
                self.keys.presence_users(room),
                now_ms() as f64,
                "+inf",
                false,
                None,
            )
            .await;
        let mut users = self.count(r)?;
        users.sort();
        Ok(users)
    }

    pub(crate) async fn expire_presence(
        &self,
        rooms: &[String],
    ) -> StoreResult<Vec<(String, String)>> {
        let now = now_ms().to_string();
        let mut gone = Vec::new();
        for room in rooms {
            let keys = vec![self.keys.presence_users(room)];
            let args = vec![now.clone(), self.keys.presence_sockets_prefix(room)];
            let r: Result<Vec<String>, _> = self
                .sweep
                .evalsha_with_reload(&self.client, keys, args)
                .await;
            for user in self.count(r)? {
                gone.push((room.clone(), user));
            }
        }
        Ok(gone)
    }

    pub(crate) async fn refresh_leases(&self, leases: &LocalLeases) -> StoreResult<()> {
        if leases.sockets.is_empty() && leases.memberships.is_empty() {
            return Ok(());
        }
        let exp = self.expiry();
        let pipe = self.client.pipeline();
        for (user, entry) in &leases.sockets {
            let key = self.keys.user_sockets(user);
            let _: () = pipe
                .zadd(
                    &key,
                    Some(SetOptions::XX),
                    None,
                    false,
                    false,
                    (exp as f64, entry.member()),
                )
                .await?;
            let _: () = pipe
                .pexpire_at(&key, exp as i64, Some(ExpireOptions::GT))
                .await?;
        }
        for m in &leases.memberships {
            let sockets = self.keys.presence_sockets(&m.room, &m.user);
            let users = self.keys.presence_users(&m.room);
            let _: () = pipe
                .zadd(
                    &sockets,
                    Some(SetOptions::XX),
                    None,
                    false,
                    false,
                    (exp as f64, m.sid.as_str()),
                )
                .await?;
            let _: () = pipe
                .pexpire_at(&sockets, exp as i64, Some(ExpireOptions::GT))
                .await?;
            let _: () = pipe
                .zadd(
                    &users,
                    Some(SetOptions::XX),
                    Some(ZOrdering::GreaterThan),
                    false,
                    false,
                    (exp as f64, m.user.as_str()),
                )
                .await?;
            let _: () = pipe
                .pexpire_at(&users, exp as i64, Some(ExpireOptions::GT))
                .await?;
        }
        let r: Result<Vec<fred::types::Value>, _> = pipe.all().await;
        self.count(r).map(|_| ())
    }

    pub(crate) async fn append_notification(
        &self,
        user: &str,
        message: &str,
        timestamp: &str,
    ) -> StoreResult<Appended> {
        let r: Result<(String, String), _> = self
            .append
            .evalsha_with_reload(
                &self.client,
                vec![self.keys.notifications(user)],
                vec![
                    self.notification_maxlen.to_string(),
                    USER_STATE_TTL.as_secs().to_string(),
                    message.to_owned(),
                    timestamp.to_owned(),
                ],
            )
            .await;
        let (id, previous) = self.count(r)?;
        Ok(Appended {
            notification: Notification {
                id,
                message: message.to_owned(),
                timestamp: timestamp.to_owned(),
            },
            previous,
        })
    }

    pub(crate) async fn last_notification_id(&self, user: &str) -> StoreResult<Option<String>> {
        let r: Result<Vec<(String, HashMap<String, String>)>, _> = self
            .client
            .xrevrange_values(self.keys.notifications(user), "+", "-", Some(1))
            .await;
        Ok(self.count(r)?.into_iter().next().map(|(id, _)| id))
    }

    pub(crate) async fn notifications_after(
        &self,
        user: &str,
        after: &str,
        limit: Option<usize>,
    ) -> StoreResult<Vec<Notification>> {
        let r: Result<Vec<(String, HashMap<String, String>)>, _> = self
            .client
            .xrange_values(
                self.keys.notifications(user),
                format!("({after}"),
                "+",
                limit.map(|n| n as u64),
            )
            .await;
        Ok(self
            .count(r)?
            .into_iter()
            .map(|(id, mut fields)| Notification {
                id,
                message: fields.remove("message").unwrap_or_default(),
                timestamp: fields.remove("timestamp").unwrap_or_default(),
            })
            .collect())
    }

    pub(crate) async fn heartbeat(&self, info: &NodeInfo, ttl: Duration) -> StoreResult<()> {
        let json = serde_json::to_string(info).map_err(|e| StoreError::Malformed(e.to_string()))?;
        let now = now_ms();
        let exp = now + ttl.as_millis() as u64;
        let r: Result<(), _> = self
            .client
            .zadd(
                self.keys.nodes(),
                None,
                None,
                false,
                false,
                (exp as f64, info.id.as_str()),
            )
            .await;
        self.count(r)?;
        let r: Result<(), _> = self
            .client
            .hset(self.keys.nodes_info(), (info.id.as_str(), json))
            .await;
        self.count(r)?;
        // forget nodes that died long ago
        let cutoff = now.saturating_sub(REGISTRY_GC_AFTER_MS) as f64;
        let r: Result<Vec<String>, _> = self
            .client
            .zrangebyscore(self.keys.nodes(), "-inf", cutoff, false, None)
            .await;
        let dead = self.count(r)?;
        if !dead.is_empty() {
            let r: Result<(), _> = self.client.zrem(self.keys.nodes(), dead.clone()).await;
            self.count(r)?;
            let r: Result<(), _> = self.client.hdel(self.keys.nodes_info(), dead).await;
            self.count(r)?;
        }
        Ok(())
    }

    pub(crate) async fn deregister(&self, id: &str) -> StoreResult<()> {
        let r: Result<(), _> = self.client.zrem(self.keys.nodes(), id).await;
        self.count(r)?;
        let r: Result<(), _> = self.client.hdel(self.keys.nodes_info(), id).await;
        self.count(r)
    }

    pub(crate) async fn nodes(&self) -> StoreResult<Vec<NodeInfo>> {
        let r = crate::registry::live_nodes(&self.client, &self.keys).await;
        self.count(r)
    }
}
