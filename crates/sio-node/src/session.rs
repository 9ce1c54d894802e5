//! Per-socket state and in-order event handling.
//!
//! socketioxide spawns one task per incoming event, so two events a client sends back to back
//! (`join-room` then `room-message`) may run in either order, and an event sent right after
//! `connect` may race the connect handler. Every socket of this node therefore owns an
//! [`EventQueue`]: handlers are registered in the connect middleware (before the client sees
//! its CONNECT), their futures are queued in arrival order, and the queue only starts once the
//! connect handler has run. Each socket's events are thus handled one at a time, in order.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::{Identity, UserId};
use crate::expiry::TimerId;

/// Events a socket may have waiting before new ones are refused.
pub const MAX_QUEUED_EVENTS: usize = 256;

type Job = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The protected data stays consistent across a panic in a job (jobs never hold the lock
    // while running), so a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A FIFO of a socket's pending event handlers, drained by at most one task at a time.
#[derive(Default)]
pub struct EventQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    /// Jobs with the bytes of the event each was made from.
    jobs: VecDeque<(Job, u64)>,
    /// Bytes of the events queued or running.
    pending_bytes: u64,
    running: bool,
    started: bool,
}

impl std::fmt::Debug for EventQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("EventQueue")
            .field("queued", &s.jobs.len())
            .field("pending_bytes", &s.pending_bytes)
            .field("running", &s.running)
            .field("started", &s.started)
            .finish()
    }
}

/// The queue is full: the client sends faster than its events can be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// [`MAX_QUEUED_EVENTS`] events wait already.
    #[error("too many events waiting for this socket ({MAX_QUEUED_EVENTS}); slow down")]
    Events,
    /// The waiting events hold `--max-pending-bytes` already.
    #[error("too many bytes of events waiting for this socket (at most {0}); slow down")]
    Bytes(u64),
}

impl QueueFull {
    /// The `limit` label of `sio_limit_refusals_total`.
    pub fn limit(self) -> &'static str {
        match self {
            QueueFull::Events => "pending_events",
            QueueFull::Bytes(_) => "pending_bytes",
        }
    }
}

impl EventQueue {
    /// Queues `job`, made from an event of `bytes`, unless [`MAX_QUEUED_EVENTS`] jobs wait or
    /// the waiting and running ones hold `max_bytes` with it; it runs after every job queued
    /// before it, once the queue is started.
    pub fn push(
        self: &Arc<Self>,
        job: impl Future<Output = ()> + Send + 'static,
        bytes: u64,
        max_bytes: u64,
    ) -> Result<(), QueueFull> {
        let mut s = lock(&self.state);
        if s.jobs.len() >= MAX_QUEUED_EVENTS {
            return Err(QueueFull::Events);
        }
        if s.pending_bytes.saturating_add(bytes) > max_bytes {
            return Err(QueueFull::Bytes(max_bytes));
        }
        s.pending_bytes += bytes;
        s.jobs.push_back((Box::pin(job), bytes));
        if s.started && !s.running {
            s.running = true;
            tokio::spawn(self.clone().drain());
        }
        Ok(())
    }

    /// Queues `job` whatever the queue length (for the node's own bookkeeping jobs).
    pub fn push_always(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) {
        let mut s = lock(&self.state);
        s.jobs.push_back((Box::pin(job), 0));
        if s.started && !s.running {
            s.running = true;
            tokio::spawn(self.clone().drain());
        }
    }

    /// Queues `job` before every queued job (the connect handler's own work, which must run
    /// before the events the client sent meanwhile).
    pub fn push_front(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) {
        let mut s = lock(&self.state);
        s.jobs.push_front((Box::pin(job), 0));
        if s.started && !s.running {
            s.running = true;
            tokio::spawn(self.clone().drain());
        }
    }

    /// Lets queued and future jobs run.
    pub fn start(self: &Arc<Self>) {
        let mut s = lock(&self.state);
        s.started = true;
        if !s.running && !s.jobs.is_empty() {
            s.running = true;
            tokio::spawn(self.clone().drain());
        }
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let (job, bytes) = {
                let mut s = lock(&self.state);
                match s.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        s.running = false;
                        return;
                    }
                }
            };
            job.await;
            let mut s = lock(&self.state);
            s.pending_bytes = s.pending_bytes.saturating_sub(bytes);
        }
    }
}

/// How long a socket may stay over `--event-rate` (refusals less than a second apart) before
/// it is disconnected.
pub const RATE_DISCONNECT_AFTER: Duration = Duration::from_secs(5);
/// Refusals further apart than this end a streak over the rate.
const RATE_STREAK_GAP: Duration = Duration::from_secs(1);

/// What the rate limiter says about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the rate.
    Allowed,
    /// Over the rate: refuse the event.
    Refused,
    /// Over the rate for [`RATE_DISCONNECT_AFTER`]: refuse it and disconnect the socket.
    Disconnect,
}

/// A token bucket of `burst` events refilled at `rate` per second, with the streak of
/// refusals that decides a disconnect.
#[derive(Debug)]
pub struct EventRate {
    tokens: f64,
    refilled: Instant,
    /// First refusal of the current streak and the latest refusal.
    streak: Option<(Instant, Instant)>,
    /// A disconnect was asked for already (events read before it took effect are only
    /// refused).
    disconnecting: bool,
}

impl EventRate {
    /// A full bucket of `burst` tokens.
    pub fn new(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            refilled: now,
            streak: None,
            disconnecting: false,
        }
    }

    /// Takes a token for an event at `now`.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> RateVerdict {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return RateVerdict::Allowed;
        }
        let start = match self.streak {
            Some((start, last)) if now.saturating_duration_since(last) <= RATE_STREAK_GAP => start,
            _ => now,
        };
        self.streak = Some((start, now));
        if now.saturating_duration_since(start) >= RATE_DISCONNECT_AFTER && !self.disconnecting {
            self.disconnecting = true;
            RateVerdict::Disconnect
        } else {
            RateVerdict::Refused
        }
    }
}

/// Everything this node keeps about one socket.
#[derive(Debug)]
pub struct SocketSession {
    /// The authenticated user.
    pub user: UserId,
    /// What the socket's token allows (rooms, admin) and when it expires.
    pub identity: Identity,
    /// The timer that disconnects the socket when its token expires.
    expiry: Mutex<Option<TimerId>>,
    /// The socket's pending event handlers.
    pub queue: Arc<EventQueue>,
    /// Chat rooms this socket is in (namespace `/` only).
    rooms: Mutex<BTreeSet<String>>,
    /// The socket's event rate (`--event-rate`, `--event-burst`).
    rate: Mutex<Option<EventRate>>,
}

impl SocketSession {
    /// A session for `identity` with a paused queue.
    pub fn new(identity: Identity) -> Arc<Self> {
        Arc::new(Self {
            user: identity.user.clone(),
            identity,
            expiry: Mutex::new(None),
            queue: Arc::new(EventQueue::default()),
            rooms: Mutex::new(BTreeSet::new()),
            rate: Mutex::new(None),
        })
    }

    /// Takes a token of the socket's event bucket for an event received now.
    pub fn take_event_token(&self, rate: u32, burst: u32) -> RateVerdict {
        let now = Instant::now();
        lock(&self.rate)
            .get_or_insert_with(|| EventRate::new(burst, now))
            .take(rate, burst, now)
    }

    /// Number of chat rooms of the socket.
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// Chat rooms of the socket.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.rooms).iter().cloned().collect()
    }

    /// True when the socket is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        lock(&self.rooms).contains(room)
    }

    /// Records `room`; false when the socket was already in it.
    pub fn add_room(&self, room: &str) -> bool {
        lock(&self.rooms).insert(room.to_owned())
    }

    /// Forgets `room`; false when the socket was not in it.
    pub fn remove_room(&self, room: &str) -> bool {
        lock(&self.rooms).remove(room)
    }

    /// Forgets every room and returns them.
    pub fn take_rooms(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.rooms))
            .into_iter()
            .collect()
    }

    /// Records the expiry timer of the socket.
    pub fn set_expiry_timer(&self, timer: TimerId) {
        *lock(&self.expiry) = Some(timer);
    }

    /// Takes the expiry timer of the socket, to cancel it.
    pub fn take_expiry_timer(&self) -> Option<TimerId> {
        lock(&self.expiry).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn jobs_run_in_order_and_only_after_start() {
        let q = Arc::new(EventQueue::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let log = log.clone();
            q.push(
                async move {
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                    log.lock().unwrap().push(i);
                },
                1,
                u64::MAX,
            )
            .unwrap();
        }
        tokio::task::yield_now().await;
        assert!(log.lock().unwrap().is_empty(), "nothing runs before start");
        q.start();
        for i in 100..200 {
            let log = log.clone();
            q.push(async move { log.lock().unwrap().push(i) }, 1, u64::MAX)
                .unwrap();
        }
        let done = Arc::new(tokio::sync::Notify::new());
        let d = done.clone();
        q.push_always(async move { d.notify_one() });
        done.notified().await;
        assert_eq!(*log.lock().unwrap(), (0..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn full_queue_refuses() {
        let q = Arc::new(EventQueue::default());
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..MAX_QUEUED_EVENTS {
            let ran = ran.clone();
            q.push(
                async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                },
                1,
                u64::MAX,
            )
            .unwrap();
        }
        assert_eq!(q.push(async {}, 1, u64::MAX), Err(QueueFull::Events));
    }

    #[tokio::test]
    async fn queue_refuses_beyond_its_bytes_and_frees_them_once_handled() {
        let q = Arc::new(EventQueue::default());
        q.push(async {}, 600, 1000).unwrap();
        assert_eq!(q.push(async {}, 500, 1000), Err(QueueFull::Bytes(1000)));
        q.push(async {}, 400, 1000).unwrap();
        q.start();
        let done = Arc::new(tokio::sync::Notify::new());
        let d = done.clone();
        q.push_always(async move { d.notify_one() });
        done.notified().await;
        tokio::task::yield_now().await;
        q.push(async {}, 1000, 1000).unwrap();
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate_and_disconnects_a_socket_that_stays_over() {
        let t0 = Instant::now();
        let mut r = EventRate::new(10, t0);
        for _ in 0..10 {
            assert_eq!(r.take(5, 10, t0), RateVerdict::Allowed);
        }
        assert_eq!(r.take(5, 10, t0), RateVerdict::Refused);
        // 5/s: one more token every 200 ms
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(r.take(5, 10, t1), RateVerdict::Allowed);
        assert_eq!(r.take(5, 10, t1), RateVerdict::Refused);
        // a socket that keeps sending 20/s stays over the rate and is disconnected after 5 s
        let mut verdicts = Vec::new();
        for i in 1..=120 {
            verdicts.push(r.take(5, 10, t1 + Duration::from_millis(50 * i)));
        }
        let first = verdicts.iter().position(|v| *v == RateVerdict::Disconnect);
        assert!(first.is_some_and(|i| i >= 95), "{first:?}");
        let asked = verdicts
            .iter()
            .filter(|v| **v == RateVerdict::Disconnect)
            .count();
        assert_eq!(asked, 1, "a disconnect is asked for once");
        // one that pauses starts over
        let later = t1 + Duration::from_secs(60);
        assert_eq!(r.take(5, 10, later), RateVerdict::Allowed);
    }
}
