//! Sockets do not outlive their tokens.
//!
//! Every socket authenticated with a token gets one timer, due when the token stops being
//! accepted (`exp` plus `--jwt-leeway`). All timers live in one [`DelayQueue`] driven by one
//! task, so a node with 100,000 sockets holds 100,000 queue entries, not 100,000 tasks, and
//! nothing polls per socket. A socket's disconnect cancels its timer.
//!
//! When a timer fires, the socket gets the usual `error` event
//! `{event: "auth", code: "token_expired", message}`, and half a second later its Engine.IO
//! session is closed at the transport, as the drain does ([`crate::drain::close_transport`]).
//! The official client then reconnects by itself, and its `auth` callback supplies a fresh
//! token (its rooms are restored as on any reconnect); a client that sends the expired token
//! again gets `connect_error` `unauthorized: token expired`. A Socket.IO disconnect would tell
//! the client *not* to reconnect, which is why the transport is closed instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::session::SocketSession;
use crate::state::NodeState;

/// Time between the `token_expired` error and the closing of the transport, for the error
/// to reach the client first.
pub const NOTICE_BEFORE_CLOSE: Duration = Duration::from_millis(500);
/// Longest single wait of a timer (the queue's wheel holds about two years); a token valid
/// for longer is simply looked at again then.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a timer does when it fires. (Jobs hold the node weakly: the node holds the timers.)
pub type Job = Box<dyn FnOnce() + Send>;

/// Identifies a timer, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

struct Entry {
    key: delay_queue::Key,
    due: SystemTime,
    job: Job,
}

#[derive(Default)]
struct Timers {
    queue: DelayQueue<TimerId>,
    // Only ids in here have a live key: a fired timer leaves the map in the same critical
    // section as it leaves the queue, so a cancel never removes another timer's key.
    entries: HashMap<TimerId, Entry>,
    next_id: u64,
}

/// Every expiry timer of the node.
#[derive(Default)]
pub struct ExpiryTimers {
    timers: Mutex<Timers>,
}

impl std::fmt::Debug for ExpiryTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryTimers")
            .field("pending", &self.len())
            .finish()
    }
}

fn wait_until(due: SystemTime) -> Duration {
    due.duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(MAX_WAIT)
}

impl ExpiryTimers {
    fn lock(&self) -> MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` at wall-clock time `due` (at once if it has passed).
    pub fn schedule(&self, due: SystemTime, job: Job) -> TimerId {
        let mut t = self.lock();
        let id = TimerId(t.next_id);
        t.next_id += 1;
        let key = t.queue.insert(id, wait_until(due));
        t.entries.insert(id, Entry { key, due, job });
        id
    }

    /// Cancels a timer; nothing happens if it already fired.
    pub fn cancel(&self, id: TimerId) {
        let mut t = self.lock();
        if let Some(entry) = t.entries.remove(&id) {
            t.queue.try_remove(&entry.key);
        }
    }

    /// Timers waiting.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no timer waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next due job; timers that fired early (a long wait was capped, or the wall clock
    /// moved) wait again.
    async fn next_due(&self) -> Job {
        std::future::poll_fn(|cx| {
            let mut t = self.lock();
            loop {
                // An empty queue answers `Ready(None)` and keeps the waker: the next insert
                // wakes this task.
                let Poll::Ready(Some(expired)) = t.queue.poll_expired(cx) else {
                    return Poll::Pending;
                };
                let id = expired.into_inner();
                let Some(entry) = t.entries.remove(&id) else {
                    continue;
                };
                if SystemTime::now() < entry.due {
                    let key = t.queue.insert(id, wait_until(entry.due));
                    t.entries.insert(id, Entry { key, ..entry });
                    continue;
                }
                return Poll::Ready(entry.job);
            }
        })
        .await
    }

    /// Fires due timers until `stop` is cancelled.
    pub async fn run(&self, stop: CancellationToken) {
        loop {
            let job = tokio::select! {
                _ = stop.cancelled() => return,
                job = self.next_due() => job,
            };
            job();
        }
    }
}

/// Starts the expiry timer of a connected socket whose token expires (every namespace's
/// connect handler calls it).
pub fn watch<A: Adapter>(
    node: &Arc<NodeState>,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    session: &SocketSession,
) {
    let Some(due) = session.identity.expires_at else {
        return;
    };
    let (weak, io, socket) = (Arc::downgrade(node), io.clone(), socket.clone());
    let id = node.expiry.schedule(
        due,
        Box::new(move || {
            if let Some(node) = weak.upgrade() {
                tokio::spawn(expire(node, io, socket));
            }
        }),
    );
    session.set_expiry_timer(id);
}

/// Cancels the expiry timer of a disconnected socket.
pub fn unwatch(node: &NodeState, session: &SocketSession) {
    if let Some(id) = session.take_expiry_timer() {
        node.expiry.cancel(id);
    }
}

async fn expire<A: Adapter>(node: Arc<NodeState>, io: SocketIo<A>, socket: SocketRef<A>) {
    if !socket.connected() {
        return;
    }
    node.metrics
        .token_expiry_disconnects
        .with_label_values(&[socket.ns()])
        .inc();
    tracing::debug!(ns = socket.ns(), sid = %socket.id, "token expired: closing the session");
    let body = serde_json::json!({
        "event": "auth",
        "code": "token_expired",
        "message": "your token expired; the connection closes and the client reconnects with the token its auth callback gives",
    });
    let _ = socket.emit("error", &body);
    tokio::time::sleep(NOTICE_BEFORE_CLOSE).await;
    if socket.connected() {
        crate::drain::close_transport(&node, &io, &socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timers_fire_in_order_and_cancelled_ones_never() {
        let timers = ExpiryTimers::default();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let now = SystemTime::now();
        let mut ids = Vec::new();
        for (i, ms) in [(0u32, 300u64), (1, 100), (2, 200), (3, 50)] {
            let fired = fired.clone();
            ids.push(timers.schedule(
                now + Duration::from_millis(ms),
                Box::new(move || fired.lock().unwrap().push(i)),
            ));
        }
        timers.cancel(ids[2]);
        assert_eq!(timers.len(), 3);
        for _ in 0..3 {
            let job = tokio::time::timeout(Duration::from_secs(5), timers.next_due())
                .await
                .expect("a timer fires");
            let before = fired.lock().unwrap().len();
            job();
            assert_eq!(fired.lock().unwrap().len(), before + 1);
        }
        assert_eq!(*fired.lock().unwrap(), vec![3, 1, 0]);
        assert!(timers.is_empty());
        // cancelling a fired timer is harmless, even once its slot is reused
        let again = timers.schedule(now + Duration::from_secs(60), Box::new(|| {}));
        timers.cancel(ids[0]);
        assert_eq!(timers.len(), 1);
        timers.cancel(again);
        assert!(timers.is_empty());
    }

    #[tokio::test]
    async fn an_insert_wakes_an_idle_queue_and_past_dues_fire_at_once() {
        let timers = Arc::new(ExpiryTimers::default());
        let t = timers.clone();
        let waiter = tokio::spawn(async move {
            let _job = t.next_due().await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        timers.schedule(SystemTime::now() - Duration::from_secs(1), Box::new(|| {}));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
