//! The per-socket notification cursor: the id of the last notification a `/notifications`
//! socket was actually sent, and the catch-up that fills any gap from the user's stream before
//! anything newer is delivered.
//!
//! A live notification (with the id of the entry before it in the stream, `previous`) is
//! emitted at once only when the socket is live and its cursor is `previous`. Otherwise the
//! socket missed something: an earlier emit failed because its buffer was full (a slow
//! client), a message was lost while this node's subscription was down, or two notifications
//! crossed on their way here. The socket then *catches up*: one task reads the stream after
//! the cursor in pages (`XRANGE (<cursor> + COUNT 100`) and emits in order, waiting with a
//! growing pause while the buffer is full; live notifications meanwhile only ask it to read
//! once more. The cursor moves only past what was emitted, so each notification reaches the
//! socket once, in stream order, and `notifications-synced` never names an id the client was
//! not sent. A connect is the same catch-up, starting at the client's `lastNotificationId`
//! (or at the stream's newest entry), ended by `notifications-synced`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use tokio::sync::Semaphore;

use sio_redis_adapter::types::parse_stream_id;
use sio_redis_adapter::{Appended, Notification};

use crate::state::NodeState;

/// A stream id, `(ms, seq)`.
pub type StreamId = (u64, u64);

/// Notifications read per `XRANGE` of a catch-up.
pub const PAGE: usize = 100;
/// Stream reads in flight per node (every socket catches up at once after a resubscription).
const CONCURRENT_READS: usize = 32;
/// First pause after a full buffer or a failed read; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(1);

static STREAM_READS: Semaphore = Semaphore::const_new(CONCURRENT_READS);

/// Why a live socket started to catch up (the label of `sio_notification_catchups_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpReason {
    /// An emit failed: the socket's buffer was full.
    BufferFull,
    /// A notification arrived whose predecessor the socket was not sent.
    Gap,
    /// The node's subscription came back, or a queue overflowed: messages may be lost.
    Resync,
}

impl CatchUpReason {
    /// Every reason.
    pub const ALL: [CatchUpReason; 3] = [Self::BufferFull, Self::Gap, Self::Resync];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::BufferFull => "buffer_full",
            Self::Gap => "gap",
            Self::Resync => "resync",
        }
    }
}

/// What became of a live notification offered to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Emitted now.
    Sent,
    /// The socket already had it.
    Duplicate,
    /// A catch-up runs; it will read this one from the stream.
    Deferred,
    /// The caller must start a catch-up ([`catch_up`]), which will deliver it.
    CatchUp(CatchUpReason),
    /// The socket is gone.
    Closed,
}

/// Where one `/notifications` socket stands.
#[derive(Debug)]
pub struct NotificationCursor {
    state: Mutex<CursorState>,
}

#[derive(Debug)]
struct CursorState {
    /// Id of the last notification emitted to the socket; `None` until its connect read
    /// where the client stands.
    sent: Option<StreamId>,
    /// A catch-up (or the connect's replay) runs; nothing is emitted live meanwhile.
    catching_up: bool,
    /// Something arrived (or may have been lost) since the catch-up's last read began.
    recheck: bool,
    /// While the connect runs without a last id: the lowest `previous` of the notifications
    /// that arrived meanwhile, so they are delivered even if the stream's newest id, read
    /// later, already includes them.
    first_previous: Option<StreamId>,
}

fn lock(m: &Mutex<CursorState>) -> MutexGuard<'_, CursorState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn format_id((ms, seq): StreamId) -> String {
    format!("{ms}-{seq}")
}

/// Emits `event` unless the buffer is full (`Ok(false)`) or the socket is gone (`Err`).
fn try_emit<A: Adapter, T: serde::Serialize + ?Sized>(
    socket: &SocketRef<A>,
    event: &str,
    data: &T,
) -> Result<bool, ()> {
    match socket.emit(event, data) {
        Ok(()) => Ok(true),
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Ok(false),
        Err(_) => Err(()),
    }
}

impl NotificationCursor {
    /// The cursor of a connecting socket: live notifications wait for its connect catch-up.
    pub fn connecting() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(CursorState {
                sent: None,
                catching_up: true,
                recheck: false,
                first_previous: None,
            }),
        })
    }

    /// Id of the last notification emitted to the socket.
    pub fn sent(&self) -> Option<StreamId> {
        lock(&self.state).sent
    }

    /// Offers a live notification; emits it when the socket is in step with the stream.
    pub fn offer<A: Adapter>(&self, socket: &SocketRef<A>, appended: &Appended) -> Offered {
        let n = &appended.notification;
        let (Some(id), Some(previous)) =
            (parse_stream_id(&n.id), parse_stream_id(&appended.previous))
        else {
            return Offered::Duplicate;
        };
        let mut st = lock(&self.state);
        match st.on_live(id, previous) {
            Step::Deferred => Offered::Deferred,
            Step::Duplicate => Offered::Duplicate,
            Step::CatchUp => Offered::CatchUp(CatchUpReason::Gap),
            Step::Emit => match try_emit(socket, "notification", n) {
                Ok(true) => {
                    st.sent = Some(id);
                    Offered::Sent
                }
                Ok(false) => {
                    st.catching_up = true;
                    Offered::CatchUp(CatchUpReason::BufferFull)
                }
                Err(()) => Offered::Closed,
            },
        }
    }

    /// Notifications may have been lost on their way here: true when the caller must start a
    /// catch-up (one already running reads once more).
    pub fn resync(&self) -> bool {
        lock(&self.state).on_possible_loss()
    }
}

/// What to do with a live notification (pure, for [`NotificationCursor::offer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The socket is in step: emit it (and move the cursor if that works).
    Emit,
    /// The socket already had it.
    Duplicate,
    /// A catch-up runs and will read it (it was told to read once more).
    Deferred,
    /// Its predecessor was not sent: a catch-up must start (marked as running).
    CatchUp,
}

impl CursorState {
    fn on_live(&mut self, id: StreamId, previous: StreamId) -> Step {
        if self.catching_up {
            self.recheck = true;
            if self.sent.is_none() {
                self.first_previous =
                    Some(self.first_previous.map_or(previous, |p| p.min(previous)));
            }
            return Step::Deferred;
        }
        let Some(sent) = self.sent else {
            self.catching_up = true;
            return Step::CatchUp;
        };
        if id <= sent {
            Step::Duplicate
        } else if previous != sent {
            self.catching_up = true;
            Step::CatchUp
        } else {
            Step::Emit
        }
    }

    fn on_possible_loss(&mut self) -> bool {
        if self.catching_up {
            self.recheck = true;
            return false;
        }
        self.catching_up = true;
        true
    }
}

/// What the connect's catch-up reports at its end.
#[derive(Debug)]
pub struct Connect {
    /// The client's `lastNotificationId`, if it passed one.
    pub after: Option<StreamId>,
}

/// Reads the user's stream after the socket's cursor and emits every notification in order,
/// pausing while the buffer is full, until the socket is in step with the stream (or gone).
/// With `connect`, first finds where the client stands and ends with `notifications-synced`.
pub async fn catch_up<A: Adapter>(
    socket: SocketRef<A>,
    node: Arc<NodeState>,
    user: String,
    cursor: Arc<NotificationCursor>,
    connect: Option<Connect>,
) {
    let mut pause = FIRST_PAUSE;
    let mut told_failure = false;
    let mut replayed = 0u64;
    let backoff = |pause: &mut Duration| {
        let p = *pause;
        *pause = (*pause * 2).min(MAX_PAUSE);
        p
    };
    // Where the client stands: its last id, or the stream's newest entry (lowered to just
    // before what arrived live while we looked).
    if let Some(Connect { after }) = &connect {
        let start = match after {
            Some(after) => *after,
            None => loop {
                if !socket.connected() {
                    return;
                }
                let read = {
                    let _permit = STREAM_READS.acquire().await;
                    node.store.last_notification_id(&user).await
                };
                match read {
                    Ok(tail) => break tail.as_deref().and_then(parse_stream_id).unwrap_or((0, 0)),
                    Err(e) => {
                        report_failure(&socket, &user, &e, &mut told_failure);
                        tokio::time::sleep(backoff(&mut pause)).await;
                    }
                }
            },
        };
        let mut st = lock(&cursor.state);
        st.sent = Some(st.first_previous.take().map_or(start, |p| p.min(start)));
        drop(st);
    }
    loop {
        if !socket.connected() {
            return;
        }
        let after = {
            let mut st = lock(&cursor.state);
            st.recheck = false;
            st.sent.unwrap_or((0, 0))
        };
        let read = {
            let _permit = STREAM_READS.acquire().await;
            node.store
                .notifications_page(&user, &format_id(after), PAGE)
                .await
        };
        let page = match read {
            Ok(page) => page,
            Err(e) => {
                report_failure(&socket, &user, &e, &mut told_failure);
                tokio::time::sleep(backoff(&mut pause)).await;
                continue;
            }
        };
        let full = page.len() == PAGE;
        for n in &page {
            match emit_in_order(&socket, &cursor, n, &mut pause).await {
                Some(true) => {
                    replayed += 1;
                    node.metrics.notifications_delivered.inc();
                    node.metrics.notifications_replayed.inc();
                }
                Some(false) => {}
                None => return,
            }
        }
        if full {
            continue;
        }
        // In step with the stream unless something arrived since the read began.
        let finished = {
            let mut st = lock(&cursor.state);
            if st.recheck {
                continue;
            }
            let synced = match &connect {
                None => Ok(true),
                Some(_) => {
                    let synced = serde_json::json!({
                        "lastNotificationId": format_id(st.sent.unwrap_or((0, 0))),
                        "replayed": replayed,
                    });
                    // Under the lock, so no live notification overtakes it.
                    try_emit(&socket, "notifications-synced", &synced)
                }
            };
            if synced == Ok(true) {
                st.catching_up = false;
            }
            synced
        };
        match finished {
            Ok(true) => return,
            Ok(false) => tokio::time::sleep(backoff(&mut pause)).await,
            Err(()) => return,
        }
    }
}

/// Emits `n` unless the socket already had it, waiting while its buffer is full. `Some(true)`
/// when emitted, `Some(false)` when skipped, `None` when the socket is gone.
async fn emit_in_order<A: Adapter>(
    socket: &SocketRef<A>,
    cursor: &NotificationCursor,
    n: &Notification,
    pause: &mut Duration,
) -> Option<bool> {
    let id = parse_stream_id(&n.id)?;
    loop {
        {
            let mut st = lock(&cursor.state);
            if st.sent.is_some_and(|sent| id <= sent) {
                return Some(false);
            }
            match try_emit(socket, "notification", n) {
                Ok(true) => {
                    st.sent = Some(id);
                    *pause = FIRST_PAUSE;
                    return Some(true);
                }
                Ok(false) => {}
                Err(()) => return None,
            }
        }
        tokio::time::sleep(*pause).await;
        *pause = (*pause * 2).min(MAX_PAUSE);
        if !socket.connected() {
            return None;
        }
    }
}

fn report_failure<A: Adapter>(
    socket: &SocketRef<A>,
    user: &str,
    e: &sio_redis_adapter::StoreError,
    told: &mut bool,
) {
    if *told {
        return;
    }
    *told = true;
    tracing::warn!(user, "notification catch-up failed, retrying: {e}");
    let _ = socket.emit(
        "error",
        &serde_json::json!({
            "event": "notification",
            "code": "replay_failed",
            "message": format!("missed notifications could not be loaded yet ({e}); retrying"),
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(sent: StreamId) -> CursorState {
        CursorState {
            sent: Some(sent),
            catching_up: false,
            recheck: false,
            first_previous: None,
        }
    }

    #[test]
    fn a_socket_in_step_emits_and_skips_what_it_had() {
        let mut st = live((5, 0));
        assert_eq!(st.on_live((6, 0), (5, 0)), Step::Emit);
        assert_eq!(st.on_live((5, 0), (4, 0)), Step::Duplicate);
        assert_eq!(st.on_live((3, 0), (2, 0)), Step::Duplicate);
        assert!(!st.catching_up);
    }

    #[test]
    fn a_missing_predecessor_starts_one_catch_up_that_later_ones_join() {
        let mut st = live((5, 0));
        // 6-0 was lost (or is still on its way): 7-0 must not overtake it
        assert_eq!(st.on_live((7, 0), (6, 0)), Step::CatchUp);
        assert!(st.catching_up);
        st.recheck = false;
        assert_eq!(st.on_live((8, 0), (7, 0)), Step::Deferred);
        assert!(st.recheck, "the running catch-up reads once more");
        assert_eq!(st.sent, Some((5, 0)), "the cursor moves only on emits");
    }

    #[test]
    fn a_possible_loss_starts_a_catch_up_or_makes_the_running_one_read_again() {
        let mut st = live((5, 0));
        assert!(st.on_possible_loss());
        assert!(st.catching_up);
        st.recheck = false;
        assert!(!st.on_possible_loss(), "one catch-up per socket");
        assert!(st.recheck);
    }

    #[test]
    fn notifications_during_a_connect_without_a_last_id_lower_its_start() {
        let mut st = CursorState {
            sent: None,
            catching_up: true,
            recheck: false,
            first_previous: None,
        };
        assert_eq!(st.on_live((9, 0), (8, 0)), Step::Deferred);
        assert_eq!(st.on_live((10, 0), (9, 0)), Step::Deferred);
        // the stream's newest id, read after both arrived, is 10-0; starting there would skip
        // them, so the catch-up starts before the first
        assert_eq!(st.first_previous, Some((8, 0)));
    }

    #[test]
    fn catch_up_reasons_have_distinct_labels() {
        let labels: std::collections::BTreeSet<_> =
            CatchUpReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), CatchUpReason::ALL.len());
    }
}
