//! `sio-proxy` binary: parse the configuration, set up logging, run the proxy.

use clap::Parser as _;
use sio_proxy::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// Every proxied HTTP request allocates and frees pingora's session and buffers; mimalloc
/// does that far cheaper than glibc's malloc (measured: polling through the proxy).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(sio_proxy::run(config)?)
}
