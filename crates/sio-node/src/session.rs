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
    jobs: VecDeque<Job>,
    running: bool,
    started: bool,
}

impl std::fmt::Debug for EventQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("EventQueue")
            .field("queued", &s.jobs.len())
            .field("running", &s.running)
            .field("started", &s.started)
            .finish()
    }
}

/// The queue is full: the client sends faster than its events can be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many events waiting for this socket ({MAX_QUEUED_EVENTS}); slow down")]
pub struct QueueFull;

impl EventQueue {
    /// Queues `job`; it runs after every job queued before it, once the queue is started.
    pub fn push(
        self: &Arc<Self>,
        job: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), QueueFull> {
        let mut s = lock(&self.state);
        if s.jobs.len() >= MAX_QUEUED_EVENTS {
            return Err(QueueFull);
        }
        s.jobs.push_back(Box::pin(job));
        if s.started && !s.running {
            s.running = true;
            tokio::spawn(self.clone().drain());
        }
        Ok(())
    }

    /// Queues `job` whatever the queue length (for the node's own bookkeeping jobs).
    pub fn push_always(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) {
        let mut s = lock(&self.state);
        s.jobs.push_back(Box::pin(job));
        if s.started && !s.running {
            s.running = true;
            tokio::spawn(self.clone().drain());
        }
    }

    /// Queues `job` before every queued job (the connect handler's own work, which must run
    /// before the events the client sent meanwhile).
    pub fn push_front(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) {
        let mut s = lock(&self.state);
        s.jobs.push_front(Box::pin(job));
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
            let job = {
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
        })
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
            q.push(async move {
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                log.lock().unwrap().push(i);
            })
            .unwrap();
        }
        tokio::task::yield_now().await;
        assert!(log.lock().unwrap().is_empty(), "nothing runs before start");
        q.start();
        for i in 100..200 {
            let log = log.clone();
            q.push(async move { log.lock().unwrap().push(i) }).unwrap();
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
            q.push(async move {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        }
        assert_eq!(q.push(async {}), Err(QueueFull));
    }
}
