//! Errors of the proxy library.

use std::net::SocketAddr;

/// A configuration that cannot work; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No backend source at all.
    #[error(
        "no backend discovery source: give at least one of --backend (SIO_PROXY_BACKENDS), \
         --backends-dns (SIO_PROXY_BACKENDS_DNS) or --backends-redis (SIO_PROXY_BACKENDS_REDIS)"
    )]
    NoDiscoverySource,
    /// A duration flag set to zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// The registry URL does not parse.
    #[error("--backends-redis `{url}` is not a Redis URL ({reason}); use redis://host:6379")]
    RedisUrl {
        /// The URL given (shown without its passwords).
        url: crate::secret::SecretUrl,
        /// Why fred rejected it.
        reason: String,
    },
    /// `--redis-prefix ""`.
    #[error("--redis-prefix must not be empty")]
    EmptyRedisPrefix,
    /// `--sid-secret ""`.
    #[error("--sid-secret must not be empty (omit it to use the development secret)")]
    EmptySidSecret,
    /// `--forward-paths ""`.
    #[error(
        "--forward-paths must name at least one path prefix (default {})",
        crate::forward::DEFAULT_FORWARD_PATHS
    )]
    NoForwardPaths,
    /// Proxy and metrics on the same socket.
    #[error("--listen and --metrics-listen are both {0}; give them different ports")]
    SameListenAddress(SocketAddr),
}

/// Errors that stop the proxy from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listening address is taken or not ours.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--tunnel-io uring` on a kernel that refuses io_uring.
    #[error("--tunnel-io uring: io_uring is unavailable here ({0}); use auto or epoll")]
    TunnelIo(std::io::Error),
    /// The control runtime could not start.
    #[error("cannot start the control runtime: {0}")]
    Runtime(std::io::Error),
    /// Metrics registration failed (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Errors of one discovery source; the last known set of that source is kept.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// DNS resolution failed.
    #[error("resolving {name}: {source}")]
    Resolve {
        /// The name resolved.
        name: String,
        /// The resolver error.
        source: std::io::Error,
    },
    /// A lookup took too long.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A Redis command failed.
    #[error("registry: {0}")]
    Redis(#[from] fred::error::Error),
}
