//! Command-line and environment configuration of a node: one typed struct.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::secret::{Secret, SecretUrl};

/// Default address to listen on.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3000";
/// Default Engine.IO ping interval (Socket.IO's own default).
pub const DEFAULT_PING_INTERVAL: &str = "25s";
/// Default Engine.IO ping timeout (Socket.IO's own default).
pub const DEFAULT_PING_TIMEOUT: &str = "20s";
/// Default time a client has to connect to a namespace after the handshake.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "45s";
/// Default largest accepted payload in bytes (Socket.IO's `maxHttpBufferSize`).
pub const DEFAULT_MAX_PAYLOAD: u64 = 1_000_000;
/// Default time given to a clean shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
/// Default prefix of every Redis key and channel.
pub const DEFAULT_REDIS_PREFIX: &str = "sio";
/// Default sockets disconnected per drain batch.
pub const DEFAULT_DRAIN_BATCH: usize = 50;
/// Default pause between drain batches.
pub const DEFAULT_DRAIN_INTERVAL: &str = "100ms";
/// Default wait between being marked draining and closing the first sessions.
pub const DEFAULT_DRAIN_DELAY: &str = "2s";
/// Default notifications kept per user.
pub const DEFAULT_NOTIFICATION_MAXLEN: usize = 1000;
/// Default lease of registry entries, user sockets and presence.
pub const DEFAULT_LEASE_TTL: &str = "15s";
/// Default period of `cluster-stats` on `/dashboard`.
pub const DEFAULT_DASHBOARD_INTERVAL: &str = "2s";
/// Default packets buffered per socket before emits fail.
pub const DEFAULT_MAX_BUFFER_SIZE: usize = 1024;
/// Default WebSocket read buffer per connection, bytes.
pub const DEFAULT_WS_READ_BUFFER: usize = 1024;
/// Default clock skew allowed when checking a token's `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: &str = "5s";
/// Default time the join hook has to answer.
pub const DEFAULT_JOIN_HOOK_TIMEOUT: &str = "2s";
/// Default time a join hook answer is reused for the same user and room.
pub const DEFAULT_JOIN_HOOK_CACHE_TTL: &str = "10s";
/// Default number of join hook answers kept.
pub const DEFAULT_JOIN_HOOK_CACHE_SIZE: usize = 10_000;
/// Default chat rooms one socket may be in (a chat user's rooms, with room to spare).
pub const DEFAULT_MAX_ROOMS_PER_SOCKET: usize = 100;
/// Default chat rooms one user may have joined (the stored set, restored on reconnect).
pub const DEFAULT_MAX_ROOMS_PER_USER: usize = 200;
/// Default bytes of events one socket may have waiting to be handled (two largest payloads).
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 2_000_000;
/// Default events per second one socket may send, on average.
pub const DEFAULT_EVENT_RATE: u32 = 50;
/// Default events one socket may send at once above the rate (the token bucket's size).
pub const DEFAULT_EVENT_BURST: u32 = 100;
/// Default largest `chat-message`, bytes of its JSON argument.
pub const DEFAULT_MAX_CHAT_BYTES: usize = 4096;

/// How clients authenticate on connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// `handshake.auth.token` must be a JWT signed with the configured key; `sub` is the user id.
    Jwt,
    /// Development only: `handshake.auth.userId` (and `rooms`, `admin`) are trusted as given.
    None,
}

/// The algorithm JWTs must be signed with (never taken from the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `--jwt-secret`.
    #[value(name = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256, checked with `--jwt-public-key`.
    #[value(name = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256, checked with `--jwt-public-key`.
    #[value(name = "ES256")]
    Es256,
}

/// Which rooms a socket may join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoomAuth {
    /// The token's `rooms` claim (then the join hook, if configured) decides.
    Claims,
    /// Development only: every authenticated socket may join every room.
    Open,
}

/// How the cross-node adapter publishes broadcasts to rooms (`--adapter-routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdapterRouting {
    /// On each room's own channel: only nodes with members of the room receive it.
    Rooms,
    /// On the namespace's request channel: every node receives and decodes every room
    /// message (the first release's routing, kept to compare and to fall back to).
    Broadcast,
}

impl From<AdapterRouting> for sio_redis_adapter::Routing {
    fn from(r: AdapterRouting) -> Self {
        match r {
            AdapterRouting::Rooms => Self::Rooms,
            AdapterRouting::Broadcast => Self::Broadcast,
        }
    }
}

/// A transport clients may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// HTTP long-polling.
    Polling,
    /// WebSocket.
    Websocket,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Configuration of a sio-node. Every flag also reads an `SIO_*` environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sio-node",
    version,
    about = "Stateless Socket.IO node of sio-cluster"
)]
pub struct Config {
    /// Address to serve Socket.IO (`/socket.io/`) and the HTTP routes on.
    #[arg(long, env = "SIO_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Node id shown in metrics, stats and the registry [default: host name, else random].
    #[arg(long, env = "SIO_NODE_ID")]
    pub node_id: Option<String>,

    /// Address proxies use to reach this node (`host:port`) [default: the listen address,
    /// with 127.0.0.1 in place of an unspecified IP].
    #[arg(long, env = "SIO_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// Redis URL (`redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://`); without it
    /// the node runs standalone with socketioxide's local adapter and in-memory state.
    /// Passwords in it never appear in logs or errors.
    #[arg(long, env = "SIO_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretUrl>,

    /// Prefix of every Redis key and channel this node uses.
    #[arg(long, env = "SIO_REDIS_PREFIX", default_value = DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,

    /// How room broadcasts travel between nodes: `rooms` publishes a room message on the
    /// room's own channel, which only nodes with local members of the room subscribe to;
    /// `broadcast` publishes it on the namespace's channel that every node reads. Nodes of
    /// either routing can share a cluster (every node subscribes to its rooms' channels).
    #[arg(long, env = "SIO_ADAPTER_ROUTING", value_enum, default_value_t = AdapterRouting::Rooms)]
    pub adapter_routing: AdapterRouting,

    /// How clients authenticate on connect.
    #[arg(long, env = "SIO_AUTH", value_enum, default_value_t = AuthMode::Jwt)]
    pub auth: AuthMode,

    /// HS256 secret JWTs are checked against, at least 32 bytes (`openssl rand -base64 48`).
    #[arg(long, env = "SIO_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256) JWTs are checked against.
    #[arg(long, env = "SIO_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// The only algorithm accepted [default: HS256 with --jwt-secret, else RS256 or ES256
    /// from the type of --jwt-public-key].
    #[arg(long, env = "SIO_JWT_ALGORITHM", value_enum, ignore_case = true)]
    pub jwt_algorithm: Option<JwtAlgorithm>,

    /// Required `iss` of every token (unchecked when unset).
    #[arg(long, env = "SIO_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of every token (unchecked when unset: tokens with any `aud` pass).
    #[arg(long, env = "SIO_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed when checking `exp` and `nbf` (also added to the expiry that
    /// disconnects a socket).
    #[arg(long, env = "SIO_JWT_LEEWAY", value_parser = humantime::parse_duration, default_value = DEFAULT_JWT_LEEWAY)]
    pub jwt_leeway: Duration,

    /// Which rooms a socket may join: `claims` (the token's `rooms` claim, then the join hook)
    /// or `open` (development: any room).
    #[arg(long, env = "SIO_ROOM_AUTH", value_enum, default_value_t = RoomAuth::Claims)]
    pub room_auth: RoomAuth,

    /// URL the node POSTs `{userId, room, claims}` to when the token's claims do not allow a
    /// room; 200 allows the join, anything else refuses it.
    #[arg(long, env = "SIO_JOIN_HOOK_URL", hide_env_values = true)]
    pub join_hook_url: Option<SecretUrl>,

    /// Time the join hook has to answer before the join is refused.
    #[arg(long, env = "SIO_JOIN_HOOK_TIMEOUT", value_parser = humantime::parse_duration, default_value = DEFAULT_JOIN_HOOK_TIMEOUT)]
    pub join_hook_timeout: Duration,

    /// Time a join hook answer is reused for the same user and room (0s: never).
    #[arg(long, env = "SIO_JOIN_HOOK_CACHE_TTL", value_parser = humantime::parse_duration, default_value = DEFAULT_JOIN_HOOK_CACHE_TTL)]
    pub join_hook_cache_ttl: Duration,

    /// Join hook answers kept at most.
    #[arg(long, env = "SIO_JOIN_HOOK_CACHE_SIZE", default_value_t = DEFAULT_JOIN_HOOK_CACHE_SIZE)]
    pub join_hook_cache_size: usize,

    /// Bearer key guarding `/api/*`; without it the API answers 503.
    #[arg(long, env = "SIO_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// Origins allowed cross-origin (repeatable or comma-separated); `*` allows any.
    #[arg(long, env = "SIO_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,

    /// Engine.IO ping interval.
    #[arg(long, env = "SIO_PING_INTERVAL", value_parser = humantime::parse_duration, default_value = DEFAULT_PING_INTERVAL)]
    pub ping_interval: Duration,

    /// Engine.IO ping timeout.
    #[arg(long, env = "SIO_PING_TIMEOUT", value_parser = humantime::parse_duration, default_value = DEFAULT_PING_TIMEOUT)]
    pub ping_timeout: Duration,

    /// Time a client has to connect to a namespace after the Engine.IO handshake.
    #[arg(long, env = "SIO_CONNECT_TIMEOUT", value_parser = humantime::parse_duration, default_value = DEFAULT_CONNECT_TIMEOUT)]
    pub connect_timeout: Duration,

    /// Largest payload accepted, in bytes: a polling request body, a WebSocket message or an
    /// HTTP API body.
    #[arg(long, env = "SIO_MAX_PAYLOAD", default_value_t = DEFAULT_MAX_PAYLOAD)]
    pub max_payload: u64,

    /// Transports clients may use (comma-separated).
    #[arg(long, env = "SIO_TRANSPORTS", value_enum, value_delimiter = ',', default_values_t = [Transport::Polling, Transport::Websocket])]
    pub transports: Vec<Transport>,

    /// Packets buffered per socket before emits to it fail (slow-client protection).
    #[arg(long, env = "SIO_MAX_BUFFER_SIZE", default_value_t = DEFAULT_MAX_BUFFER_SIZE)]
    pub max_buffer_size: usize,

    /// Chat rooms one socket may be in; a `join-room` beyond gets `too_many_rooms`.
    #[arg(long, env = "SIO_MAX_ROOMS_PER_SOCKET", default_value_t = DEFAULT_MAX_ROOMS_PER_SOCKET)]
    pub max_rooms_per_socket: usize,

    /// Chat rooms one user may have joined (over all its sockets and nodes: the stored set
    /// restored on reconnect); a `join-room` beyond gets `too_many_rooms`.
    #[arg(long, env = "SIO_MAX_ROOMS_PER_USER", default_value_t = DEFAULT_MAX_ROOMS_PER_USER)]
    pub max_rooms_per_user: usize,

    /// Bytes of received events one socket may have waiting to be handled; an event beyond
    /// gets `overloaded` (as one beyond 256 waiting events does). At least `--max-payload`.
    #[arg(long, env = "SIO_MAX_PENDING_BYTES", default_value_t = DEFAULT_MAX_PENDING_BYTES)]
    pub max_pending_bytes: u64,

    /// Events per second one socket may send on average (token bucket); an event beyond gets
    /// `rate_limited` and is not handled; a socket over it for 5 s is disconnected.
    #[arg(long, env = "SIO_EVENT_RATE", default_value_t = DEFAULT_EVENT_RATE)]
    pub event_rate: u32,

    /// Events one socket may send in a burst above `--event-rate` (the bucket's size).
    #[arg(long, env = "SIO_EVENT_BURST", default_value_t = DEFAULT_EVENT_BURST)]
    pub event_burst: u32,

    /// Largest `chat-message` (bytes of its JSON argument): a larger one gets
    /// `payload_too_large` (it would reach every socket of the cluster).
    #[arg(long, env = "SIO_MAX_CHAT_BYTES", default_value_t = DEFAULT_MAX_CHAT_BYTES)]
    pub max_chat_bytes: usize,

    /// WebSocket read buffer per connection, in bytes.
    #[arg(long, env = "SIO_WS_READ_BUFFER", default_value_t = DEFAULT_WS_READ_BUFFER)]
    pub ws_read_buffer: usize,

    /// Time a clean shutdown may take (drain included) before the node exits anyway.
    #[arg(long, env = "SIO_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = DEFAULT_SHUTDOWN_GRACE)]
    pub shutdown_grace: Duration,

    /// Sockets disconnected per batch while draining.
    #[arg(long, env = "SIO_DRAIN_BATCH", default_value_t = DEFAULT_DRAIN_BATCH)]
    pub drain_batch: usize,

    /// Pause between drain batches (a random jitter of up to half of it is added).
    #[arg(long, env = "SIO_DRAIN_INTERVAL", value_parser = humantime::parse_duration, default_value = DEFAULT_DRAIN_INTERVAL)]
    pub drain_interval: Duration,

    /// Wait after being marked draining before closing sessions, so proxies stop sending
    /// new handshakes first (about one proxy health-check interval).
    #[arg(long, env = "SIO_DRAIN_DELAY", value_parser = humantime::parse_duration, default_value = DEFAULT_DRAIN_DELAY)]
    pub drain_delay: Duration,

    /// Notifications kept per user for offline delivery (Redis `MAXLEN ~`).
    #[arg(long, env = "SIO_NOTIFICATION_MAXLEN", default_value_t = DEFAULT_NOTIFICATION_MAXLEN)]
    pub notification_maxlen: usize,

    /// Lease of this node's registry entry, user sockets and presence; renewed every third of it.
    #[arg(long, env = "SIO_LEASE_TTL", value_parser = humantime::parse_duration, default_value = DEFAULT_LEASE_TTL)]
    pub lease_ttl: Duration,

    /// Period of `cluster-stats` events on `/dashboard`.
    #[arg(long, env = "SIO_DASHBOARD_INTERVAL", value_parser = humantime::parse_duration, default_value = DEFAULT_DASHBOARD_INTERVAL)]
    pub dashboard_interval: Duration,

    /// Log format.
    #[arg(long, env = "SIO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Admin UI (`@socket.io/admin-ui`) flags.
    #[command(flatten)]
    pub admin: crate::admin::AdminConfig,

    /// Serve the protocol conformance server instead of the application (see CONFORMANCE.md):
    /// `/socket.io/` with namespaces `/` and `/custom`, and an Engine.IO echo on `/engine.io/`.
    #[arg(long, env = "SIO_CONFORMANCE")]
    pub conformance: bool,
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--auth jwt` without a key.
    #[error(
        "--auth jwt needs a key: set --jwt-secret / SIO_JWT_SECRET (HS256) or --jwt-public-key / SIO_JWT_PUBLIC_KEY (RS256, ES256), or use --auth none for development"
    )]
    MissingJwtKey,
    /// Both a secret and a public key, and no algorithm to choose.
    #[error(
        "both --jwt-secret and --jwt-public-key are set: choose with --jwt-algorithm HS256, RS256 or ES256"
    )]
    AmbiguousJwtKey,
    /// A key given for another algorithm than the chosen one.
    #[error("{0}")]
    KeyForOtherAlgorithm(&'static str),
    /// An HS256 secret shorter than 32 bytes.
    #[error(
        "--jwt-secret is {0} bytes long; HS256 needs at least 32 (generate one with `openssl rand -base64 48`)"
    )]
    ShortSecret(usize),
    /// RS256 or ES256 without a public key.
    #[error(
        "--jwt-algorithm {0} needs --jwt-public-key FILE (SIO_JWT_PUBLIC_KEY), a PEM public key"
    )]
    MissingPublicKey(&'static str),
    /// The public key file is unusable.
    #[error("--jwt-public-key {path}: {why}")]
    BadPublicKey {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        why: String,
    },
    /// The Redis URL does not parse.
    #[error("--redis-url is not a URL ({0}); use redis://[:PASSWORD@]HOST:PORT")]
    BadRedisUrl(String),
    /// The join hook URL is not an http(s) URL.
    #[error("--join-hook-url must be an http:// or https:// URL (got {0})")]
    BadHookUrl(String),
    /// A join hook with open rooms would never be asked.
    #[error("--join-hook-url needs --room-auth claims (with open rooms it would never be asked)")]
    HookWithOpenRooms,
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// No transport left.
    #[error("--transports needs at least one of polling, websocket")]
    NoTransport,
    /// Payload limit too small for any packet.
    #[error("--max-payload must be at least 1024 bytes (got {0})")]
    PayloadTooSmall(u64),
    /// `--max-pending-bytes` below `--max-payload`: a single event could never be queued.
    #[error(
        "--max-pending-bytes ({pending}) must be at least --max-payload ({payload}): one event of the largest size must fit"
    )]
    PendingBelowPayload {
        /// `--max-pending-bytes`.
        pending: u64,
        /// `--max-payload`.
        payload: u64,
    },
    /// A count that must be positive is zero.
    #[error("{0} must be at least 1")]
    ZeroCount(&'static str),
    /// The node id contains characters that would break keys, labels or logs.
    #[error(
        "--node-id may only contain letters, digits, '-', '_' and '.' (1 to 64 of them); got {0:?}"
    )]
    BadNodeId(String),
    /// The Redis URL scheme is not understood.
    #[error(
        "--redis-url must start with redis://, rediss://, redis-cluster://, rediss-cluster://, redis-sentinel:// or rediss-sentinel:// (got {0})"
    )]
    BadRedisScheme(String),
    /// An empty or malformed key prefix.
    #[error("--redis-prefix must be 1 to 64 characters without spaces or braces (got {0:?})")]
    BadPrefix(String),
    /// The lease is too short for the heartbeat to keep it.
    #[error("--lease-ttl must be at least 3s (got {0:?})")]
    LeaseTooShort(Duration),
    /// A CORS origin that is not `*` nor an origin.
    #[error("--cors-origin {0:?} is not `*` nor an origin like https://app.example.com")]
    BadOrigin(String),
    /// An admin UI flag that cannot work.
    #[error(transparent)]
    Admin(#[from] crate::admin::config::AdminConfigError),
}

impl Config {
    /// Checks combinations clap cannot check; the message says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // The conformance server authenticates nobody: it needs no key.
        if self.auth == AuthMode::Jwt && !self.conformance {
            crate::jwt_key::load(self)?;
        }
        for (name, d) in [
            ("--ping-interval", self.ping_interval),
            ("--ping-timeout", self.ping_timeout),
            ("--connect-timeout", self.connect_timeout),
            ("--shutdown-grace", self.shutdown_grace),
            ("--dashboard-interval", self.dashboard_interval),
            ("--join-hook-timeout", self.join_hook_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if self.transports.is_empty() {
            return Err(ConfigError::NoTransport);
        }
        if self.max_payload < 1024 {
            return Err(ConfigError::PayloadTooSmall(self.max_payload));
        }
        for (name, n) in [
            ("--drain-batch", self.drain_batch),
            ("--notification-maxlen", self.notification_maxlen),
            ("--max-buffer-size", self.max_buffer_size),
            ("--ws-read-buffer", self.ws_read_buffer),
            ("--join-hook-cache-size", self.join_hook_cache_size),
            ("--max-rooms-per-socket", self.max_rooms_per_socket),
            ("--max-rooms-per-user", self.max_rooms_per_user),
            ("--event-rate", self.event_rate as usize),
            ("--event-burst", self.event_burst as usize),
            ("--max-chat-bytes", self.max_chat_bytes),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroCount(name));
            }
        }
        if self.max_pending_bytes < self.max_payload {
            return Err(ConfigError::PendingBelowPayload {
                pending: self.max_pending_bytes,
                payload: self.max_payload,
            });
        }
        if let Some(id) = &self.node_id
            && !valid_node_id(id)
        {
            return Err(ConfigError::BadNodeId(id.clone()));
        }
        if let Some(url) = &self.redis_url {
            let url = url::Url::parse(url.expose())
                .map_err(|e| ConfigError::BadRedisUrl(e.to_string()))?;
            let ok = [
                "redis",
                "rediss",
                "redis-cluster",
                "rediss-cluster",
                "redis-sentinel",
                "rediss-sentinel",
            ]
            .contains(&url.scheme());
            if !ok {
                return Err(ConfigError::BadRedisScheme(url.scheme().to_owned()));
            }
        }
        let p = &self.redis_prefix;
        if p.is_empty()
            || p.len() > 64
            || p.contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(ConfigError::BadPrefix(p.clone()));
        }
        if self.lease_ttl < Duration::from_secs(3) {
            return Err(ConfigError::LeaseTooShort(self.lease_ttl));
        }
        if let Some(hook) = &self.join_hook_url {
            if !hook
                .parsed()
                .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            {
                return Err(ConfigError::BadHookUrl(hook.to_string()));
            }
            if self.room_auth == RoomAuth::Open {
                return Err(ConfigError::HookWithOpenRooms);
            }
        }
        for origin in &self.cors_origin {
            if origin != "*" && origin.parse::<axum::http::HeaderValue>().is_err()
                || origin != "*"
                    && !(origin.starts_with("http://") || origin.starts_with("https://"))
            {
                return Err(ConfigError::BadOrigin(origin.clone()));
            }
        }
        self.admin.validate()?;
        Ok(())
    }

    /// The node id: the configured one, else the host name, else a random one.
    pub fn resolved_node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| valid_node_id(h))
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()))
    }

    /// The address proxies should use to reach this node.
    pub fn resolved_advertise_addr(&self, bound: SocketAddr) -> String {
        if let Some(addr) = &self.advertise_addr {
            return addr.clone();
        }
        if bound.ip().is_unspecified() {
            format!("127.0.0.1:{}", bound.port())
        } else {
            bound.to_string()
        }
    }
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-more-than-32-bytes!";

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["sio-node"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("parse")
    }

    #[test]
    fn defaults_are_socket_io_defaults() {
        let c = parse(&["--jwt-secret", SECRET]);
        assert_eq!(c.room_auth, RoomAuth::Claims);
        assert_eq!(c.jwt_leeway, Duration::from_secs(5));
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.ping_timeout, Duration::from_secs(20));
        assert_eq!(c.transports, vec![Transport::Polling, Transport::Websocket]);
        c.validate().unwrap();
    }

    #[test]
    fn jwt_without_secret_is_rejected() {
        let c = parse(&[]);
        assert!(matches!(c.validate(), Err(ConfigError::MissingJwtKey)));
        parse(&["--auth", "none"]).validate().unwrap();
        // the conformance server authenticates nobody
        parse(&["--conformance"]).validate().unwrap();
    }

    #[test]
    fn short_secrets_are_refused_without_showing_them() {
        let c = parse(&["--jwt-secret", "0123456789abcdef0123456789abcde"]);
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::ShortSecret(31)), "{e}");
        assert!(!e.to_string().contains("0123456789"), "{e}");
        assert!(e.to_string().contains("openssl rand"), "{e}");
    }

    #[test]
    fn secrets_and_url_passwords_stay_out_of_debug_and_errors() {
        let c = parse(&[
            "--jwt-secret",
            SECRET,
            "--api-key",
            "api-key-value-xyz",
            "--redis-url",
            "redis-sentinel://u:redis-pw-1@h:26379?sentinelPassword=redis-pw-2",
            "--join-hook-url",
            "https://hook.example/join?token=hook-token-3",
        ]);
        let debug = format!("{c:?}");
        for secret in [
            SECRET,
            "api-key-value-xyz",
            "redis-pw-1",
            "redis-pw-2",
            "hook-token-3",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        let c = parse(&["--auth", "none", "--redis-url", "http://u:redis-pw-1@h"]);
        let e = c.validate().unwrap_err().to_string();
        assert!(!e.contains("redis-pw-1"), "{e}");
        let c = parse(&["--auth", "none", "--redis-url", "redis://u:redis-pw-1@[h"]);
        let e = c.validate().unwrap_err().to_string();
        assert!(!e.contains("redis-pw-1"), "{e}");
        let c = parse(&["--auth", "none", "--join-hook-url", "ftp://u:hook-pw@h/x"]);
        let e = c.validate().unwrap_err().to_string();
        assert!(!e.contains("hook-pw"), "{e}");
    }

    #[test]
    fn a_join_hook_needs_claims() {
        let c = parse(&[
            "--auth",
            "none",
            "--room-auth",
            "open",
            "--join-hook-url",
            "http://127.0.0.1:9/join",
        ]);
        assert!(matches!(c.validate(), Err(ConfigError::HookWithOpenRooms)));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::try_parse_from(["sio-node", "--ping-interval", "soon"]).is_err());
        assert!(Config::try_parse_from(["sio-node", "--transports", "carrier-pigeon"]).is_err());
        let c = parse(&["--auth", "none", "--node-id", "a b"]);
        assert!(matches!(c.validate(), Err(ConfigError::BadNodeId(_))));
        let c = parse(&["--auth", "none", "--redis-url", "http://x"]);
        assert!(matches!(c.validate(), Err(ConfigError::BadRedisScheme(_))));
        let c = parse(&["--auth", "none", "--max-payload", "10"]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PayloadTooSmall(10))
        ));
        let c = parse(&["--auth", "none", "--cors-origin", "example.com"]);
        assert!(matches!(c.validate(), Err(ConfigError::BadOrigin(_))));
        let c = parse(&["--auth", "none", "--cors-origin", "*,https://a.example"]);
        c.validate().unwrap();
    }

    #[test]
    fn advertise_addr_replaces_unspecified_ip() {
        let c = parse(&["--auth", "none"]);
        assert_eq!(
            c.resolved_advertise_addr("0.0.0.0:3001".parse().unwrap()),
            "127.0.0.1:3001"
        );
        assert_eq!(
            c.resolved_advertise_addr("10.1.2.3:3001".parse().unwrap()),
            "10.1.2.3:3001"
        );
    }
}
