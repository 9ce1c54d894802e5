//! What a worker process needs to know, handed over as one JSON argument, and the line
//! protocol between the coordinator and its workers (one JSON object per line each way:
//! every command gets exactly one answer).

use serde::{Deserialize, Serialize};

use crate::client::Transport;
use crate::target::Target;

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
