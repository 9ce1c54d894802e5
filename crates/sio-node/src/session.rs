//! Per-socket state and in-order event handling.
//!
//! socketioxide spawns one task per incoming event, so two events a client sends back to back
//! (`join-room` then `room-message`) may run in either order, and an event sent right after
//! `connect` may race the connect handler. Every socket of this node therefore owns an
//! [`EventQueue`]: handlers are registered in the connect middleware (before the client sees
//! its CONNECT), their futures are queued in arrival order, and the queue only starts once the
//! connect handler has run. Each socket's events are thus started one at a time, in order.
//!
//! A *pipelined* job ([`EventQueue::push_pipelined`]) ends once it has issued its work (a
//! Redis publish) and hands back a [`Rest`] that finishes it (awaits the publish, delivers
//! locally, acknowledges). The next job may start while rests are in flight; rests are
//! finished strictly one after another in the order of their events, so acknowledgements and
//! local deliveries keep the client's order. Every other job is a *barrier*: it starts only
//! once every earlier rest has finished, so it sees (and its answer follows) everything the
//! events before it did.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::auth::{Identity, UserId};
use crate::expiry::TimerId;

/// Events a socket may have waiting before new ones are refused.
pub const MAX_QUEUED_EVENTS: usize = 256;
/// Pipelined events of a socket whose rest may be in flight at once; the next pipelined event
/// waits (and events beyond [`MAX_QUEUED_EVENTS`] or `--max-pending-bytes` are refused) until
/// the oldest finishes. Their bytes count against `--max-pending-bytes` until they finish.
pub const MAX_IN_FLIGHT: usize = 64;

type Job = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type PipelinedJob = Pin<Box<dyn Future<Output = Rest> + Send + 'static>>;

/// What a pipelined job leaves to finish once its work is issued (see the module docs).
pub type Rest = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

enum Queued {
    /// Starts after every earlier job and rest has finished.
    Barrier(Job),
    /// Starts after every earlier job; its rest finishes after every earlier rest.
    Pipelined(PipelinedJob),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The protected data stays consistent across a panic in a job (jobs never hold the lock
    // while running), so a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A FIFO of a socket's pending event handlers, drained by at most one task at a time.
#[derive(Default)]
pub struct EventQueue {
    state: Mutex<QueueState>,
    /// Wakes the draining task, waiting for a rest, when a job is queued.
    pushed: Notify,
}

#[derive(Default)]
struct QueueState {
    /// Jobs with the bytes of the event each was made from.
    jobs: VecDeque<(Queued, u64)>,
    /// Bytes of the events queued, running or with a rest in flight.
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
    /// the waiting, running and in-flight ones hold `max_bytes` with it; it runs after every
    /// job queued before it has finished (rests included), once the queue is started.
    pub fn push(
        self: &Arc<Self>,
        job: impl Future<Output = ()> + Send + 'static,
        bytes: u64,
        max_bytes: u64,
    ) -> Result<(), QueueFull> {
        self.push_bounded(Queued::Barrier(Box::pin(job)), bytes, max_bytes)
    }

    /// Queues a pipelined `job` (see the module docs), bounded as [`EventQueue::push`]: it
    /// starts once every job queued before it has returned its rest and fewer than
    /// [`MAX_IN_FLIGHT`] rests are in flight; the [`Rest`] it returns finishes after theirs.
    pub fn push_pipelined(
        self: &Arc<Self>,
        job: impl Future<Output = Rest> + Send + 'static,
        bytes: u64,
        max_bytes: u64,
    ) -> Result<(), QueueFull> {
        self.push_bounded(Queued::Pipelined(Box::pin(job)), bytes, max_bytes)
    }

    fn push_bounded(
        self: &Arc<Self>,
        job: Queued,
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
        s.jobs.push_back((job, bytes));
        self.wake(&mut s);
        Ok(())
    }

    /// Queues `job` whatever the queue length (for the node's own bookkeeping jobs), as a
    /// barrier.
    pub fn push_always(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) {
        let mut s = lock(&self.state);
        s.jobs.push_back((Queued::Barrier(Box::pin(job)), 0));
        self.wake(&mut s);
    }

    /// Queues `job` before every queued job (the connect handler's own work, which must run
    /// before the events the client sent meanwhile).
    pub fn push_front(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) {
        let mut s = lock(&self.state);
        s.jobs.push_front((Queued::Barrier(Box::pin(job)), 0));
        self.wake(&mut s);
    }

    /// Lets queued and future jobs run.
    pub fn start(self: &Arc<Self>) {
        let mut s = lock(&self.state);
        s.started = true;
        if !s.jobs.is_empty() {
            self.wake(&mut s);
        }
    }

    /// A job was queued: starts the draining task, or wakes it if it waits for a rest.
    fn wake(self: &Arc<Self>, s: &mut QueueState) {
        if !s.started {
            return;
        }
        if s.running {
            // stores a permit if the task is not waiting now: it re-checks the jobs anyway
            self.pushed.notify_one();
        } else {
            s.running = true;
            tokio::spawn(self.clone().drain());
        }
    }

    /// Runs the jobs in order, finishing rests in order meanwhile. Stops when no job waits
    /// and no rest is in flight (a socket gone with rests in flight thus keeps this task only
    /// until they finish: each awaits one Redis command, bounded by the command timeout).
    async fn drain(self: Arc<Self>) {
        let mut rests: VecDeque<(Rest, u64)> = VecDeque::new();
        loop {
            std::future::poll_fn(|cx| {
                self.finish_ready(&mut rests, cx);
                Poll::Ready(())
            })
            .await;
            let next = {
                let mut s = lock(&self.state);
                let may_start = match s.jobs.front() {
                    Some((Queued::Barrier(_), _)) => rests.is_empty(),
                    Some((Queued::Pipelined(_), _)) => rests.len() < MAX_IN_FLIGHT,
                    None => false,
                };
                if may_start {
                    s.jobs.pop_front()
                } else if s.jobs.is_empty() && rests.is_empty() {
                    s.running = false;
                    return;
                } else {
                    None
                }
            };
            match next {
                Some((Queued::Barrier(job), bytes)) => {
                    job.await;
                    self.release(bytes);
                }
                Some((Queued::Pipelined(job), bytes)) => rests.push_back((job.await, bytes)),
                None => {
                    // a rest is in flight (else the job would have started or the task
                    // stopped): wait for it to finish or for a new job
                    let pushed = self.pushed.notified();
                    let mut pushed = std::pin::pin!(pushed);
                    std::future::poll_fn(|cx| {
                        let before = rests.len();
                        self.finish_ready(&mut rests, cx);
                        if rests.len() < before || pushed.as_mut().poll(cx).is_ready() {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                }
            }
        }
    }

    /// Finishes the oldest rests until one is still pending. Only the oldest is ever polled,
    /// so a rest's effects (local delivery, acknowledgement) follow those of every earlier one.
    fn finish_ready(&self, rests: &mut VecDeque<(Rest, u64)>, cx: &mut Context<'_>) {
        while let Some((rest, bytes)) = rests.front_mut() {
            if rest.as_mut().poll(cx).is_pending() {
                return;
            }
            let bytes = *bytes;
            rests.pop_front();
            self.release(bytes);
        }
    }

    fn release(&self, bytes: u64) {
        let mut s = lock(&self.state);
        s.pending_bytes = s.pending_bytes.saturating_sub(bytes);
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

    /// Pipelined jobs start before earlier rests finish, but rests finish in event order even
    /// when their work completes in reverse; a barrier waits for every earlier rest; the bytes
    /// of an event are held until its rest finishes; at most MAX_IN_FLIGHT rests at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rests_finish_in_order_and_barriers_wait_for_them() {
        use tokio::sync::oneshot;
        let q = Arc::new(EventQueue::default());
        q.start();
        let log = Arc::new(Mutex::new(Vec::new()));
        let n = MAX_IN_FLIGHT + 8;
        let mut completions = Vec::new();
        for i in 0..n {
            let (tx, rx) = oneshot::channel::<()>();
            completions.push(tx);
            let log = log.clone();
            q.push_pipelined(
                async move {
                    log.lock().unwrap().push(format!("start {i}"));
                    let rest: Rest = Box::pin(async move {
                        let _ = rx.await;
                        log.lock().unwrap().push(format!("rest {i}"));
                    });
                    rest
                },
                10,
                u64::MAX,
            )
            .unwrap();
        }
        let barrier_log = log.clone();
        q.push(
            async move { barrier_log.lock().unwrap().push("barrier".into()) },
            1,
            u64::MAX,
        )
        .unwrap();
        // the first MAX_IN_FLIGHT start without waiting for any rest, then the queue waits
        let started = |log: &Mutex<Vec<String>>| {
            log.lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with("start"))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while started(&log) < MAX_IN_FLIGHT && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(started(&log), MAX_IN_FLIGHT, "in flight bounded");
        assert_eq!(
            lock(&q.state).pending_bytes,
            n as u64 * 10 + 1,
            "bytes held while in flight"
        );
        // complete the work in reverse order: the rests still finish in event order
        for tx in completions.into_iter().rev() {
            let _ = tx.send(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log.lock().unwrap().iter().any(|l| l == "barrier") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let log = log.lock().unwrap().clone();
        let rests: Vec<String> = log
            .iter()
            .filter(|l| l.starts_with("rest"))
            .cloned()
            .collect();
        assert_eq!(
            rests,
            (0..n).map(|i| format!("rest {i}")).collect::<Vec<_>>()
        );
        assert_eq!(log.last().map(String::as_str), Some("barrier"), "{log:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&q.state).pending_bytes > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(lock(&q.state).pending_bytes, 0, "every byte released");
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
