//! Counters of the measured servers around each step: Prometheus text read from `--stats-url`
//! before and after the send window, kept for the samples whose names start with one of
//! `--stats-prefix` (e.g. `sio_adapter_messages_`), reported as differences.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

/// Longest wait for one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read (a node's whole /metrics is ~20 KB).
const MAX_BODY: u64 = 4 << 20;

/// A loopback HTTP endpoint serving Prometheus text.
#[derive(Clone, Debug)]
pub struct StatsUrl {
    addr: SocketAddr,
    path: String,
    text: String,
}

impl std::fmt::Display for StatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for StatsUrl {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .context("a stats URL starts with http://")?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{host}: give an IP address and a port"))?;
        ensure!(
            addr.ip().is_loopback(),
            "{addr}: the load generator only reads loopback addresses"
        );
        Ok(StatsUrl {
            addr,
            path: format!("/{path}"),
            text: url.to_owned(),
        })
    }
}

/// The samples of `url` whose metric name starts with one of `prefixes`, by
/// `name{labels}`.
pub fn scrape(url: &StatsUrl, prefixes: &[String]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut stream = TcpStream::connect_timeout(&url.addr, SCRAPE_TIMEOUT)
        .with_context(|| format!("connect to {url}"))?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    write!(
        stream,
        "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
        url.path, url.addr
    )?;
    let mut answer = Vec::new();
    stream
        .take(MAX_BODY)
        .read_to_end(&mut answer)
        .with_context(|| format!("read {url}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{url}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(parse(body, prefixes))
}

/// Samples of a Prometheus text body whose names start with one of `prefixes`.
pub fn parse(body: &str, prefixes: &[String]) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p.as_str())))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.trim().to_owned(), value.parse::<f64>().ok()?))
        })
        .collect()
}

/// `after - before`, sample by sample (a sample missing before counts from 0).
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_samples_asked_for() {
        let body = "# HELP sio_adapter_messages_received_total x\n\
                    # TYPE sio_adapter_messages_received_total counter\n\
                    sio_adapter_messages_received_total{kind=\"request\"} 12\n\
                    sio_adapter_messages_received_total{kind=\"response\"} 1\n\
                    sio_connections{namespace=\"/\",transport=\"websocket\"} 300\n";
        let prefixes = vec!["sio_adapter_messages_".to_owned()];
        let got = parse(body, &prefixes);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got["sio_adapter_messages_received_total{kind=\"request\"}"],
            12.0
        );
        let mut later = got.clone();
        later.insert(
            "sio_adapter_messages_received_total{kind=\"request\"}".into(),
            20.0,
        );
        later.insert(
            "sio_adapter_messages_received_total{kind=\"room\"}".into(),
            3.0,
        );
        let d = delta(&got, &later);
        assert_eq!(
            d["sio_adapter_messages_received_total{kind=\"request\"}"],
            8.0
        );
        assert_eq!(
            d["sio_adapter_messages_received_total{kind=\"response\"}"],
            0.0
        );
        assert_eq!(d["sio_adapter_messages_received_total{kind=\"room\"}"], 3.0);
    }

    #[test]
    fn stats_urls_are_loopback_only() {
        assert!("http://127.0.0.1:9000/metrics".parse::<StatsUrl>().is_ok());
        assert!("http://10.0.0.1:9000/metrics".parse::<StatsUrl>().is_err());
        assert!("https://127.0.0.1:9000/".parse::<StatsUrl>().is_err());
    }
}
