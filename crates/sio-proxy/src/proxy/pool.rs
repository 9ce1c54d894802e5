//! Idle HTTP/1.1 connections to the nodes, kept for the next polling request (see
//! [`super::polling`]): last in, first out per backend, so the connection taken is the one
//! most recently proven alive, and the oldest ones age out.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// Idle upstream connections per backend, each kept at most `max_idle`, at most `per_backend`
/// of them per backend (the oldest is closed first).
pub(super) struct UpstreamPool {
    idle: Mutex<HashMap<SocketAddr, VecDeque<Idle>>>,
    max_idle: Duration,
    per_backend: usize,
}

impl UpstreamPool {
    pub(super) fn new(max_idle: Duration, per_backend: usize) -> Self {
        UpstreamPool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            per_backend,
        }
    }

    /// The most recently returned connection to `addr` that is still open and quiet.
    pub(super) fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let queue = idle.get_mut(&addr)?;
                let candidate = queue.pop_back()?;
                if candidate.since.elapsed() >= self.max_idle {
                    // every older one is staler still
                    queue.clear();
                    return None;
                }
                candidate
            };
            // A node that closed the connection (its keep-alive timeout, a restart) or that
            // sent something unasked makes it unusable; a quiet open one would block.
            let mut probe = [0u8; 1];
            match candidate.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Some(candidate.stream);
                }
                _ => continue,
            }
        }
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub(super) fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let queue = idle.entry(addr).or_default();
        while queue
            .front()
            .is_some_and(|c| now.duration_since(c.since) >= self.max_idle)
            || queue.len() >= self.per_backend
        {
            queue.pop_front();
        }
        queue.push_back(Idle { stream, since: now });
    }

    /// Idle connections kept for `addr`.
    #[cfg(test)]
    pub(super) fn idle_count(&self, addr: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get(&addr).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn closed_chatty_and_stale_connections_are_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pool = UpstreamPool::new(Duration::from_secs(60), 2);

        let (open, _open_server) = pair(&listener).await;
        let (closed, closed_server) = pair(&listener).await;
        let (chatty, mut chatty_server) = pair(&listener).await;
        pool.put(addr, open);
        pool.put(addr, closed);
        assert_eq!(pool.idle_count(addr), 2);
        pool.put(addr, chatty);
        // the oldest (the open one) made room
        assert_eq!(pool.idle_count(addr), 2);
        drop(closed_server);
        chatty_server.write_all(b"x").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(addr).is_none(), "closed or chatty taken");

        let (open, _server) = pair(&listener).await;
        pool.put(addr, open);
        assert!(pool.take(addr).is_some());
        assert!(pool.take(addr).is_none());

        let short = UpstreamPool::new(Duration::from_millis(10), 8);
        let (open, _server) = pair(&listener).await;
        short.put(addr, open);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(short.take(addr).is_none(), "stale connection taken");
    }
}
