//! Active health checks: `GET /readyz` on every known backend each `--health-interval`.
//!
//! A member whose `/readyz` is not 200 gets no new sessions but keeps its live ones (a draining
//! node answers 503 and still serves them). A retained backend that no longer accepts
//! connections is forgotten, so its sessions get `Session ID unknown` at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, BackendSet};

/// Longest answer head read from `/readyz`.
const MAX_STATUS_LINE: usize = 1024;

/// Result of one check.
#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    /// `/readyz` answered 200.
    Ready,
    /// `/readyz` answered another status, or something that is not HTTP.
    NotReady(Option<u16>),
    /// No TCP connection could be made.
    Unreachable,
    /// Connected, but no answer within the timeout.
    TimedOut,
}

/// Checks one backend.
pub async fn check(addr: SocketAddr, timeout: Duration) -> Health {
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) => return Health::Unreachable,
        Err(_) => return Health::TimedOut,
    };
    let exchange = async {
        let request = format!(
            "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sio-proxy\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(128);
        let mut buf = [0u8; 256];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(2).any(|w| w == b"\r\n") || head.len() >= MAX_STATUS_LINE {
                break;
            }
        }
        Ok::<_, std::io::Error>(status_code(&head))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(Some(200))) => Health::Ready,
        Ok(Ok(status)) => Health::NotReady(status),
        Ok(Err(_)) => Health::NotReady(None),
        Err(_) => Health::TimedOut,
    }
}

fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\r').next()?;
    let mut parts = line.split(|b| *b == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

/// Checks every member and retained backend once, concurrently, and records the results.
pub async fn check_all(backends: &BackendSet, timeout: Duration) {
    let snapshot = backends.snapshot();
    let members: Vec<Arc<Backend>> = snapshot.members().to_vec();
    let retained: Vec<Arc<Backend>> = snapshot.retained().cloned().collect();
    drop(snapshot);
    let member_checks = futures::future::join_all(members.iter().map(|b| check(b.addr, timeout)));
    let retained_checks =
        futures::future::join_all(retained.iter().map(|b| check(b.addr, timeout)));
    let (member_results, retained_results) = tokio::join!(member_checks, retained_checks);
    for (backend, health) in members.iter().zip(member_results) {
        record(backend, &health);
    }
    for (backend, health) in retained.iter().zip(retained_results) {
        record(backend, &health);
        if health == Health::Unreachable {
            backends.forget_retained(backend.addr);
        }
    }
}

fn record(backend: &Backend, health: &Health) {
    let was_ready = match health {
        Health::Ready => backend.set_ready(true),
        Health::NotReady(Some(_)) | Health::Unreachable => backend.set_ready(false),
        Health::NotReady(None) | Health::TimedOut => backend.missed(),
    };
    let ready = backend.is_ready();
    if was_ready != ready {
        if ready {
            tracing::info!(backend = %backend.addr, "backend ready");
        } else {
            tracing::warn!(backend = %backend.addr, ?health, "backend not ready; no new sessions");
        }
    }
}

/// Checks all backends every `interval`, and at once when `new_backends` is notified.
pub async fn run(
    backends: Arc<BackendSet>,
    interval: Duration,
    timeout: Duration,
    new_backends: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = check_all(&backends, timeout) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = new_backends.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn classifies_answers() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let draining = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let garbage = serve_once(b"SSH-2.0-OpenSSH\r\n").await;
        let timeout = Duration::from_secs(2);
        assert_eq!(check(ok, timeout).await, Health::Ready);
        assert_eq!(check(draining, timeout).await, Health::NotReady(Some(503)));
        assert_eq!(check(garbage, timeout).await, Health::NotReady(None));

        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        assert_eq!(check(closed_addr, timeout).await, Health::Unreachable);
    }

    #[tokio::test]
    async fn a_backend_that_hangs_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        assert_eq!(
            check(addr, Duration::from_millis(200)).await,
            Health::TimedOut
        );
    }
}
