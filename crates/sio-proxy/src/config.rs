//! The proxy's configuration: one typed struct, every flag also readable from a `SIO_PROXY_*`
//! environment variable, validated once at start-up.

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::error::ConfigError;
use crate::forward::{DEFAULT_FORWARD_PATHS, PathPrefix};
use crate::secret::{Secret, SecretUrl};
use crate::uring::TunnelIo;

/// Default address of the proxy listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4000";
/// Default address of the metrics listener.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9091";
/// Default key prefix of the node registry in Redis.
pub const DEFAULT_REDIS_PREFIX: &str = "sio";
/// Default interval between two `/readyz` checks of every backend.
pub const DEFAULT_HEALTH_INTERVAL: &str = "2s";
/// Default interval between two rounds of DNS and Redis discovery.
pub const DEFAULT_DISCOVERY_INTERVAL: &str = "5s";
/// Default time a backend that left discovery stays routable for its live sessions.
pub const DEFAULT_BACKEND_RETENTION: &str = "5m";
/// Default idle timeout of WebSocket tunnels and long-polling requests.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: &str = "120s";
/// Default time to wait for the response header of a request a node answers at once.
pub const DEFAULT_RESPONSE_TIMEOUT: &str = "10s";
/// Default TCP connect timeout towards a backend.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "2s";
/// Default grace period given to open tunnels on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
/// Default time a client has to send a complete request head.
pub const DEFAULT_HEADER_TIMEOUT: &str = "5s";
/// Default cap of connections still sending their request head, all addresses together.
pub const DEFAULT_MAX_PENDING_HEADS: &str = "10000";
/// Default cap of connections still sending their request head, per client address.
pub const DEFAULT_MAX_PENDING_HEADS_PER_ADDRESS: &str = "1000";
/// Default cap of concurrent connections per client address: 10,000 clients behind one NAT
/// address, two connections each (a long-poll and a POST, or a tunnel during the upgrade).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: &str = "20000";
/// Default handshakes per second per client address: with the burst, 10,000 clients behind
/// one address connect within a minute (1,000 + 200 x 60 = 13,000).
pub const DEFAULT_HANDSHAKE_RATE: &str = "200";
/// Default handshakes a client address may make at once.
pub const DEFAULT_HANDSHAKE_BURST: &str = "1000";
/// Secret used when `--sid-secret` is not given; fine for development only.
pub const DEVELOPMENT_SID_SECRET: &str = "sio-proxy-development-secret-change-me";
/// Engine.IO default ping interval + ping timeout of the nodes (25 s + 20 s): a shorter idle
/// timeout cuts healthy long-polls and tunnels.
pub const MIN_SAFE_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// How the proxy picks the backend of a new Engine.IO session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Balance {
    /// Consistent hashing (Ketama) of the client IP.
    IpHash,
    /// The healthy backend with the fewest open tunnels and in-flight requests through this
    /// replica.
    LeastConn,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// An IP network (`10.0.0.0/8`, `::1/128`) or a single address (`127.0.0.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network. An IPv4 address and its IPv4-mapped IPv6 form are
    /// one address: either matches an IPv4 network, and an IPv6 network that holds the mapped
    /// form (`::ffff:10.0.0.0/104` is `10.0.0.0/8`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ip = match (self.addr, ip) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 5s or 2m: {e}"))
}

fn parse_host_port(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "`{s}` is not HOST:PORT (e.g. 10.0.0.5:3000 or sio-node:3000)"
        )),
    }
}

/// Command-line and environment configuration of `sio-proxy`.
#[derive(Clone, Debug, Parser)]
#[command(name = "sio-proxy", version, about)]
pub struct Config {
    /// Address the proxy listens on for Socket.IO clients and the nodes' HTTP routes.
    #[arg(long, env = "SIO_PROXY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Address of the Prometheus endpoint (`/metrics`, plus `/healthz`).
    #[arg(long, env = "SIO_PROXY_METRICS_LISTEN", default_value = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: SocketAddr,

    /// A static backend, HOST:PORT; repeatable (the variable takes a comma-separated list).
    #[arg(long = "backend", env = "SIO_PROXY_BACKENDS", value_delimiter = ',', value_parser = parse_host_port)]
    pub backends: Vec<String>,

    /// A DNS name whose A/AAAA records are the backends (a Kubernetes headless Service),
    /// NAME:PORT, re-resolved every discovery interval; repeatable.
    #[arg(long, env = "SIO_PROXY_BACKENDS_DNS", value_delimiter = ',', value_parser = parse_host_port)]
    pub backends_dns: Vec<String>,

    /// Redis URL of the node registry (`redis://`, `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`), polled every discovery interval. Passwords in it never appear in
    /// logs or errors.
    #[arg(long, env = "SIO_PROXY_BACKENDS_REDIS", hide_env_values = true)]
    pub backends_redis: Option<SecretUrl>,

    /// Key prefix of the node registry (`{prefix}:nodes`, `{prefix}:nodes:info`).
    #[arg(long, env = "SIO_PROXY_REDIS_PREFIX", default_value = DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,

    /// How new sessions are spread over healthy backends.
    #[arg(long, env = "SIO_PROXY_BALANCE", value_enum, default_value_t = Balance::IpHash)]
    pub balance: Balance,

    /// Path prefixes of the client-facing listener that reach the nodes (comma-separated or
    /// repeated); any other path gets a 404 from the proxy itself. The nodes' `/metrics`,
    /// `/readyz` and `/healthz` stay on their own ports.
    #[arg(long, env = "SIO_PROXY_FORWARD_PATHS", value_delimiter = ',', default_value = DEFAULT_FORWARD_PATHS)]
    pub forward_paths: Vec<PathPrefix>,

    /// Peers (IPs or CIDRs, comma-separated or repeated) whose `X-Forwarded-For` is believed.
    #[arg(long, env = "SIO_PROXY_TRUST_FORWARDED", value_delimiter = ',')]
    pub trust_forwarded: Vec<IpNet>,

    /// Secret keying the backend tag in session ids; every replica must share it.
    /// Without it a built-in development secret is used (and a warning logged).
    #[arg(long, env = "SIO_PROXY_SID_SECRET", hide_env_values = true)]
    pub sid_secret: Option<Secret>,

    /// Interval of the `/readyz` health check of every backend.
    #[arg(long, env = "SIO_PROXY_HEALTH_INTERVAL", default_value = DEFAULT_HEALTH_INTERVAL, value_parser = parse_duration)]
    pub health_interval: Duration,

    /// Interval of DNS re-resolution and registry polling.
    #[arg(long, env = "SIO_PROXY_DISCOVERY_INTERVAL", default_value = DEFAULT_DISCOVERY_INTERVAL, value_parser = parse_duration)]
    pub discovery_interval: Duration,

    /// How long a backend that left discovery stays routable for its live sessions (while it
    /// still answers).
    #[arg(long, env = "SIO_PROXY_BACKEND_RETENTION", default_value = DEFAULT_BACKEND_RETENTION, value_parser = parse_duration)]
    pub backend_retention: Duration,

    /// Idle timeout of WebSocket tunnels and long-polling requests; keep it above the nodes'
    /// ping interval + ping timeout (45 s by default).
    #[arg(long, env = "SIO_PROXY_TUNNEL_IDLE_TIMEOUT", default_value = DEFAULT_TUNNEL_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub tunnel_idle_timeout: Duration,

    /// Time to wait for the response of requests a node answers at once (handshakes, POSTs,
    /// WebSocket upgrades, other routes); a hanging backend then gets a 504.
    #[arg(long, env = "SIO_PROXY_RESPONSE_TIMEOUT", default_value = DEFAULT_RESPONSE_TIMEOUT, value_parser = parse_duration)]
    pub response_timeout: Duration,

    /// TCP connect timeout towards a backend.
    #[arg(long, env = "SIO_PROXY_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// On SIGTERM: stop accepting, then wait at most this long for open tunnels and requests.
    #[arg(long, env = "SIO_PROXY_SHUTDOWN_GRACE", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Time a client has to send a complete request head (the first one from its connection,
    /// each later one from its first byte); a late connection is closed.
    #[arg(long, env = "SIO_PROXY_HEADER_TIMEOUT", default_value = DEFAULT_HEADER_TIMEOUT, value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Connections still sending their request head, all addresses together; more are closed
    /// at once.
    #[arg(long, env = "SIO_PROXY_MAX_PENDING_HEADS", default_value = DEFAULT_MAX_PENDING_HEADS)]
    pub max_pending_heads: NonZeroUsize,

    /// Connections still sending their request head, per client address (direct clients;
    /// a trusted peer's connections count only in the total).
    #[arg(long, env = "SIO_PROXY_MAX_PENDING_HEADS_PER_ADDRESS", default_value = DEFAULT_MAX_PENDING_HEADS_PER_ADDRESS)]
    pub max_pending_heads_per_address: NonZeroU32,

    /// Concurrent connections per client address (an IPv6 client counts by its /64); more are
    /// closed at once (a client named by `X-Forwarded-For`: its requests and tunnels, 429).
    #[arg(long, env = "SIO_PROXY_MAX_CONNECTIONS_PER_ADDRESS", default_value = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub max_connections_per_address: NonZeroU32,

    /// New Engine.IO sessions per second per client address (token bucket refill); over it a
    /// handshake gets 429.
    #[arg(long, env = "SIO_PROXY_HANDSHAKE_RATE", default_value = DEFAULT_HANDSHAKE_RATE)]
    pub handshake_rate: NonZeroU32,

    /// New Engine.IO sessions a client address may open at once (token bucket size).
    #[arg(long, env = "SIO_PROXY_HANDSHAKE_BURST", default_value = DEFAULT_HANDSHAKE_BURST)]
    pub handshake_burst: NonZeroU32,

    /// Worker threads of the proxy (default: the number of CPUs).
    #[arg(long, env = "SIO_PROXY_THREADS")]
    pub threads: Option<NonZeroUsize>,

    /// How WebSocket tunnels move bytes after the upgrade: `epoll` (a tokio task per tunnel,
    /// the default: io_uring did not use less CPU per frame in our measurement), `uring` (one
    /// io_uring thread for every tunnel; start-up fails where the kernel refuses it), or
    /// `auto` (io_uring when available, else epoll).
    #[arg(long, env = "SIO_PROXY_TUNNEL_IO", value_enum, default_value_t = TunnelIo::Epoll)]
    pub tunnel_io: TunnelIo,

    /// Log format (the level comes from `RUST_LOG`, default `info`).
    #[arg(long, env = "SIO_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Rejects configurations that cannot work, with a message saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backends.is_empty() && self.backends_dns.is_empty() && self.backends_redis.is_none()
        {
            return Err(ConfigError::NoDiscoverySource);
        }
        for (flag, value) in [
            ("--health-interval", self.health_interval),
            ("--discovery-interval", self.discovery_interval),
            ("--tunnel-idle-timeout", self.tunnel_idle_timeout),
            ("--response-timeout", self.response_timeout),
            ("--connect-timeout", self.connect_timeout),
            ("--header-timeout", self.header_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(flag));
            }
        }
        if let Some(url) = &self.backends_redis {
            fred::prelude::Config::from_url(url.expose()).map_err(|e| ConfigError::RedisUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        }
        if self.redis_prefix.is_empty() {
            return Err(ConfigError::EmptyRedisPrefix);
        }
        if self
            .sid_secret
            .as_ref()
            .is_some_and(|s| s.expose().is_empty())
        {
            return Err(ConfigError::EmptySidSecret);
        }
        if self.forward_paths.is_empty() {
            return Err(ConfigError::NoForwardPaths);
        }
        if self.listen == self.metrics_listen {
            return Err(ConfigError::SameListenAddress(self.listen));
        }
        Ok(())
    }

    /// The secret that keys session tags.
    pub fn sid_secret(&self) -> &str {
        self.sid_secret
            .as_ref()
            .map_or(DEVELOPMENT_SID_SECRET, Secret::expose)
    }

    /// The admission limits of the client-facing listener.
    pub fn admission_limits(&self) -> crate::admission::AdmissionLimits {
        crate::admission::AdmissionLimits {
            header_timeout: self.header_timeout,
            max_pending_heads: self.max_pending_heads.get(),
            max_pending_heads_per_address: self.max_pending_heads_per_address.get(),
            max_connections_per_address: self.max_connections_per_address.get(),
            handshake_rate: f64::from(self.handshake_rate.get()),
            handshake_burst: f64::from(self.handshake_burst.get()),
        }
    }

    /// Worker threads for the proxy service.
    pub fn worker_threads(&self) -> usize {
        self.threads
            .map(NonZeroUsize::get)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("sio-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_need_a_discovery_source() {
        let config = parse(&[]).expect("parses");
        assert_eq!(config.validate(), Err(ConfigError::NoDiscoverySource));
        assert_eq!(config.listen, "0.0.0.0:4000".parse().expect("addr"));
        assert_eq!(config.balance, Balance::IpHash);
        assert_eq!(config.tunnel_idle_timeout, Duration::from_secs(120));
        let forwarded: Vec<&str> = config
            .forward_paths
            .iter()
            .map(PathPrefix::as_str)
            .collect();
        assert_eq!(forwarded, ["/socket.io/", "/api/", "/admin/"]);
        let limits = config.admission_limits();
        assert_eq!(limits.header_timeout, Duration::from_secs(5));
        // 10,000 clients behind one NAT address connect within a minute
        assert!(limits.handshake_burst + 60.0 * limits.handshake_rate >= 10_000.0);
        assert!(limits.max_connections_per_address >= 10_000);
        assert!(parse(&["--handshake-rate", "0"]).is_err());
    }

    #[test]
    fn forward_paths_replace_the_default() {
        let config = parse(&[
            "--backend",
            "h:1",
            "--forward-paths",
            "/socket.io/,/engine.io/",
        ])
        .expect("parses");
        let forwarded: Vec<&str> = config
            .forward_paths
            .iter()
            .map(PathPrefix::as_str)
            .collect();
        assert_eq!(forwarded, ["/socket.io/", "/engine.io/"]);
        assert!(parse(&["--forward-paths", "metrics"]).is_err());
    }

    #[test]
    fn repeatable_and_comma_separated_backends() {
        let config = parse(&[
            "--backend",
            "127.0.0.1:3001,127.0.0.1:3002",
            "--backend",
            "node:3003",
            "--trust-forwarded",
            "10.0.0.0/8,127.0.0.1",
            "--balance",
            "least-conn",
            "--health-interval",
            "500ms",
        ])
        .expect("parses");
        assert_eq!(config.backends.len(), 3);
        assert_eq!(config.trust_forwarded.len(), 2);
        assert_eq!(config.balance, Balance::LeastConn);
        assert_eq!(config.health_interval, Duration::from_millis(500));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--backend", "nohost"]).is_err());
        assert!(parse(&["--backend", "h:0"]).is_err());
        assert!(parse(&["--trust-forwarded", "10.0.0.0/33"]).is_err());
        assert!(parse(&["--health-interval", "often"]).is_err());
        assert!(parse(&["--balance", "random"]).is_err());
        let zero = parse(&["--backend", "h:1", "--health-interval", "0s"]).expect("parses");
        assert_eq!(
            zero.validate(),
            Err(ConfigError::ZeroDuration("--health-interval"))
        );
        let redis = parse(&["--backends-redis", "not a url"]).expect("parses");
        assert!(matches!(
            redis.validate(),
            Err(ConfigError::RedisUrl { .. })
        ));
    }

    #[test]
    fn secrets_stay_out_of_errors_and_debug() {
        let config = parse(&[
            "--backends-redis",
            "redis://:redis-pw-1@[broken?sentinelPassword=redis-pw-2",
            "--sid-secret",
            "sid-secret-value",
        ])
        .expect("parses");
        let e = config.validate().expect_err("bad url");
        for shown in [e.to_string(), format!("{e:?}"), format!("{config:?}")] {
            for secret in ["redis-pw-1", "redis-pw-2", "sid-secret-value"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
    }

    #[test]
    fn cidr_matching() {
        let net: IpNet = "10.1.0.0/16".parse().expect("cidr");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let any: IpNet = "0.0.0.0/0".parse().expect("cidr");
        assert!(any.contains("192.0.2.1".parse().expect("ip")));
        let mapped: IpNet = "::ffff:10.0.0.0/104".parse().expect("cidr");
        assert!(mapped.contains("10.9.8.7".parse().expect("ip")));
        assert!(mapped.contains("::ffff:10.9.8.7".parse().expect("ip")));
        assert!(!mapped.contains("11.0.0.1".parse().expect("ip")));
        let one: IpNet = "::1".parse().expect("ip");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!(!one.contains("::2".parse().expect("ip")));
    }
}

/// Property tests of `--trust-forwarded` networks.
#[cfg(test)]
mod props {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_text_gets_an_answer(s in "\\PC{0,60}") {
            let _ = s.parse::<IpNet>();
        }

        #[test]
        fn a_network_contains_its_address_and_its_prefix_mates(
            a in any::<[u8; 4]>(),
            b in any::<[u8; 4]>(),
            prefix in 0u8..=32,
        ) {
            let (a, b) = (Ipv4Addr::from(a), Ipv4Addr::from(b));
            let net: IpNet = format!("{a}/{prefix}").parse().expect("a valid CIDR");
            prop_assert!(net.contains(IpAddr::V4(a)));
            prop_assert!(net.contains(IpAddr::V6(a.to_ipv6_mapped())));
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let same = u32::from(a) & mask == u32::from(b) & mask;
            prop_assert_eq!(net.contains(IpAddr::V4(b)), same);
        }

        #[test]
        fn v6_networks_match_v4_addresses_by_their_mapped_form(a in any::<[u8; 16]>(), prefix in 0u8..=128, v4 in any::<[u8; 4]>()) {
            let a = Ipv6Addr::from(a);
            let net: IpNet = format!("{a}/{prefix}").parse().expect("a valid CIDR");
            prop_assert!(net.contains(IpAddr::V6(a)));
            let v4 = Ipv4Addr::from(v4);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            let mapped = u128::from(v4.to_ipv6_mapped());
            prop_assert_eq!(net.contains(IpAddr::V4(v4)), u128::from(a) & mask == mapped & mask);
        }

        #[test]
        fn prefixes_beyond_the_family_are_refused(a in any::<[u8; 4]>(), prefix in 33u16..1000) {
            let s = format!("{}/{prefix}", Ipv4Addr::from(a));
            prop_assert!(s.parse::<IpNet>().is_err());
        }
    }
}
