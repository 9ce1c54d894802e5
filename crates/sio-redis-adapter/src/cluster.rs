//! Connecting a node to Redis: the two clients, the driver and the store.

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
use fred::types::RespVersion;
use socketioxide_redis::RedisAdapterConfig;

use crate::driver::SioDriver;
use crate::error::{StoreError, StoreResult};
use crate::keys::Keys;
use crate::metrics::AdapterMetrics;
use crate::redis_store::RedisStore;
use crate::routing::RoomRouting;
use crate::store::Store;

/// Commands fail after this long instead of queueing while Redis is away.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnection back-off: 100 ms doubling up to this.
pub const MAX_RECONNECT_DELAY_MS: u32 = 2_000;
/// Capacity of the subscriber's message buffer before messages are counted as dropped.
/// (fred preallocates every slot of each of its broadcast channels, so this costs memory
/// whether used or not: ~2 MB at this size.)
pub const SUBSCRIBER_BUFFER: usize = 8_192;
/// Capacity of the publisher's event channels (it receives no messages).
const PUBLISHER_EVENT_BUFFER: usize = 32;

/// How a node uses Redis.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://`, `redis-cluster://…`, `redis-sentinel://…`.
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Lease of registry entries, user sockets and presence.
    pub lease: Duration,
    /// Notifications kept per user.
    pub notification_maxlen: usize,
    /// How long cross-node requests (fetch sockets, rooms, acks) wait for every node.
    pub request_timeout: Duration,
    /// How room broadcasts are routed (`--adapter-routing`), and for which namespaces.
    pub routing: RoomRouting,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("notification_maxlen", &self.notification_maxlen)
            .field("request_timeout", &self.request_timeout)
            .field("routing", &self.routing)
            .finish()
    }
}

/// A node's connection to the cluster's Redis.
#[derive(Debug, Clone)]
pub struct RedisCluster {
    /// Pub/sub driver for the socketioxide adapter and the notification bus.
    pub driver: SioDriver,
    /// Shared state.
    pub store: Store,
    /// Key and channel names.
    pub keys: Keys,
    /// Configuration for socketioxide-redis's `RedisAdapterCtr::new_with_driver`.
    pub adapter_config: RedisAdapterConfig,
}

impl RedisCluster {
    /// Connects both clients (failing fast if Redis cannot be reached) and starts the driver.
    pub async fn connect(
        settings: &RedisSettings,
        registry: &prometheus::Registry,
    ) -> StoreResult<Self> {
        let bad_url = |e: fred::error::Error| {
            StoreError::Unavailable(format!(
                "invalid --redis-url {}: {e}",
                redact(&settings.url)
            ))
        };
        let mut config = Config::from_url(&settings.url).map_err(bad_url)?;
        // The URL cannot ask for RESP3; sharded pub/sub on a shared connection needs it.
        config.version = RespVersion::RESP3;
        config.fail_fast = true;
        let policy = ReconnectPolicy::new_exponential(0, 100, MAX_RECONNECT_DELAY_MS, 2);
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(policy)
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                c.max_command_attempts = 2;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
                p.broadcast_channel_capacity = PUBLISHER_EVENT_BUFFER;
            });
        let unreachable = |e: fred::error::Error| {
            StoreError::Unavailable(format!(
                "cannot reach Redis at {}: {e} (is it running? check --redis-url)",
                redact(&settings.url)
            ))
        };
        let publisher = builder.build().map_err(bad_url)?;
        builder.with_performance_config(|p| p.broadcast_channel_capacity = SUBSCRIBER_BUFFER);
        let subscriber = builder.build_subscriber_client().map_err(bad_url)?;
        publisher.init().await.map_err(unreachable)?;
        subscriber.init().await.map_err(unreachable)?;

        let metrics = AdapterMetrics::new(registry);
        let keys = Keys::new(settings.prefix.clone());
        let driver = SioDriver::start(
            subscriber,
            publisher.clone(),
            metrics.clone(),
            keys.clone(),
            settings.routing.clone(),
        );
        let store = Store::redis(RedisStore::new(
            publisher,
            keys.clone(),
            settings.lease,
            settings.notification_maxlen,
            metrics,
        ));
        let adapter_config = RedisAdapterConfig::new()
            .with_prefix(keys.adapter_prefix())
            .with_request_timeout(settings.request_timeout)
            .with_stream_buffer(4096)
            .with_ack_response_buffer(1024);
        Ok(Self {
            driver,
            store,
            keys,
            adapter_config,
        })
    }
}

/// Query parameters whose values are safe to show (fred's Redis URL options that name hosts
/// and services); every other query value is hidden, since any may be a password
/// (`sentinelPassword`, a token, …).
const SAFE_QUERY_KEYS: [&str; 3] = ["node", "sentinelServiceName", "sentinelUsername"];

/// `url` without its secrets, for logs and messages: the password of the user info and
/// every query value not known to be harmless become `***`, the fragment goes. A string that
/// does not parse as a URL is replaced whole (it might be anything).
pub fn redact(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "<unparseable URL>".to_owned();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if SAFE_QUERY_KEYS.contains(&k.as_ref()) {
                    v.into_owned()
                } else {
                    "***".to_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_in_user_info_and_query() {
        let shown = redact(
            "redis-sentinel://user:pw1@h1:26379/0?node=h2:26379&sentinelServiceName=m&sentinelPassword=pw2&x=pw3#pw4",
        );
        for secret in ["pw1", "pw2", "pw3", "pw4"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("user:***@h1"), "{shown}");
        assert!(shown.contains("sentinelServiceName=m"), "{shown}");
        assert!(shown.contains("node=h2"), "{shown}");
        assert_eq!(redact("redis://:p@ss word@[::1"), "<unparseable URL>");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn settings_debug_hides_the_url_password() {
        let s = RedisSettings {
            url: "redis://:hunter2-pw@h:6379?password=also-secret".into(),
            prefix: "sio".into(),
            lease: Duration::from_secs(15),
            notification_maxlen: 10,
            request_timeout: Duration::from_secs(2),
            routing: RoomRouting::default(),
        };
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("hunter2-pw") && !debug.contains("also-secret"),
            "{debug}"
        );
    }
}
