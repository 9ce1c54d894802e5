//! What a worker process needs to know, handed over as one JSON argument, and the line
//! protocol between the coordinator and its workers (one JSON object per line each way:
//! every command gets exactly one answer).

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::client::Transport;
use crate::target::{Target, source_addr};

/// The part of the run every worker shares.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Client `i` connects to `targets[i % targets.len()]`.
    pub targets: Vec<Target>,
    /// Transport of every client.
    pub transport: Transport,
    /// Members per room; client `i` is in room `i / room_size` and the first member of each
    /// room sends to it. 0: clients join no room and never send (idle capacity).
    pub room_size: usize,
    /// Number of loopback source addresses (127.0.0.2 …) clients spread over.
    pub sources: u8,
    /// When not empty, every member of room `r` connects from `room_sources[r % len]`
    /// instead (a proxy hashing the client address then puts a room on one node).
    pub room_sources: Vec<Ipv4Addr>,
    /// Connection attempts in flight per worker.
    pub connect_concurrency: usize,
    /// Reconnect after a lost session, with socket.io-client's back-off (1 s doubling to
    /// 5 s, ±50 % jitter).
    pub reconnect: bool,
    /// Worker processes; client `i` belongs to worker `i % workers`.
    pub workers: usize,
    /// Tokio worker threads per worker process.
    pub threads: usize,
    /// Prefix of the user ids (`auth.userId`).
    pub user_prefix: String,
}

impl Plan {
    /// Room of client `i`, if it joins one.
    pub fn room_of(&self, i: usize) -> Option<usize> {
        (self.room_size > 0).then(|| i / self.room_size)
    }

    /// Source address of client `i`.
    pub fn source_of(&self, i: usize) -> SocketAddr {
        match self.room_of(i) {
            Some(r) if !self.room_sources.is_empty() => {
                SocketAddr::from((self.room_sources[r % self.room_sources.len()], 0))
            }
            _ => source_addr(i, self.sources),
        }
    }

    /// Index of the target client `i` connects to.
    pub fn target_of(&self, i: usize) -> usize {
        i % self.targets.len().max(1)
    }
}

/// A command from the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Connect this worker's clients among the first `total` (and join their rooms).
    Grow {
        /// Clients of the whole run to have connected.
        total: usize,
    },
    /// Start a send window: every room sends `per_room_rate` messages per second from
    /// `start_unix_ns` for `duration_ms`.
    Step {
        /// Step id, carried in every message so late deliveries of an earlier step are not
        /// counted in this one.
        id: u64,
        /// Broadcasts per second per room.
        per_room_rate: f64,
        /// Wall-clock start (all workers start together).
        start_unix_ns: u64,
        /// Length of the send window.
        duration_ms: u64,
        /// Rooms in the whole run (spreads the rooms' send times over a period).
        rooms: usize,
    },
    /// Counters so far.
    Count,
    /// Counters and histograms of the step; resets them.
    Collect,
    /// Disconnect and exit.
    Quit,
}

/// An answer of a worker.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    /// Sessions open now.
    pub connected: i64,
    /// Clients whose first connection failed (after retries).
    pub failed: u64,
    /// Sessions lost so far (server closed or error).
    pub disconnects: u64,
    /// Messages sent in this step.
    pub sent: u64,
    /// Deliveries of this step received.
    pub received: u64,
    /// Deliveries of an earlier step received during this one.
    pub stale: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Latency histogram of receivers on the sender's target, `[µs, count]` pairs.
    pub local: Vec<(u64, u64)>,
    /// Latency histogram of receivers on another target (cross-node), `[µs, count]`.
    pub remote: Vec<(u64, u64)>,
    /// First connection error seen, if any.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(room_sources: Vec<Ipv4Addr>) -> Plan {
        Plan {
            targets: vec!["http://127.0.0.1:3000/".parse().expect("url")],
            transport: Transport::Websocket,
            room_size: 4,
            sources: 16,
            room_sources,
            connect_concurrency: 1,
            reconnect: false,
            workers: 2,
            threads: 1,
            user_prefix: "u".into(),
        }
    }

    #[test]
    fn a_room_connects_from_its_own_address() {
        let a = Ipv4Addr::new(127, 1, 0, 1);
        let b = Ipv4Addr::new(127, 1, 0, 2);
        let p = plan(vec![a, b]);
        for i in 0..4 {
            assert_eq!(p.source_of(i), SocketAddr::from((a, 0)));
        }
        assert_eq!(p.source_of(4), SocketAddr::from((b, 0)));
        assert_eq!(p.source_of(8), SocketAddr::from((a, 0)));
        // Without room addresses, clients spread over --sources.
        assert_eq!(plan(vec![]).source_of(1), source_addr(1, 16));
    }
}
