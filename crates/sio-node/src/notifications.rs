//! Namespace `/notifications`: server push of `notification` (`{id, message, timestamp}`) to
//! every socket of a user, live or replayed.
//!
//! A client that connects with `auth.lastNotificationId` first receives, in order, every
//! stored notification after that id, then live ones; a notification published while the
//! replay runs is held back and delivered after it, and one the replay already delivered is
//! not delivered again. Each notification therefore reaches each socket exactly once. Every
//! connect ends with `notifications-synced` `{lastNotificationId, replayed}`, the id the client
//! is up to date with (`"0-0"` for a user without notifications), for it to pass back on its
//! next connect.

use std::sync::Arc;

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use sio_redis_adapter::types::parse_stream_id;
use sio_redis_adapter::{Notification, SocketEntry};

use crate::connect::{self, ConnectRefused};
use crate::session::{NotificationCursor, SocketSession};
use crate::state::NodeState;

/// Path of the notifications namespace.
pub const NAMESPACE: &str = "/notifications";

/// The local room holding every `/notifications` socket of `user` on this node.
pub fn user_room(user: &str) -> String {
    format!("user:{user}")
}

fn last_notification_id(
    auth: Option<&serde_json::Value>,
) -> Result<Option<String>, ConnectRefused> {
    let bad = || {
        ConnectRefused::BadInput(
            "lastNotificationId must be the id of a notification you received, like \"1712345678901-0\"".into(),
        )
    };
    match auth.and_then(|a| a.get("lastNotificationId")) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => {
            parse_stream_id(s).map(|_| Some(s.clone())).ok_or_else(bad)
        }
        Some(serde_json::Value::Number(n)) if n.is_u64() => Ok(Some(format!("{n}-0"))),
        Some(_) => Err(bad()),
    }
}

/// Connect middleware: authenticates, puts the socket in its user's room and prepares the
/// replay before the client sees its CONNECT.
pub async fn middleware<A: Adapter>(
    socket: SocketRef<A>,
    State(node): State<Arc<NodeState>>,
    TryData(auth): TryData<serde_json::Value>,
) -> Result<(), ConnectRefused> {
    let auth = auth.ok();
    let session = connect::admit(&node, &socket, auth.as_ref())?;
    let after = last_notification_id(auth.as_ref())?;
    // Live notifications wait until the replay (or the look-up of the newest id) is done.
    *session.cursor() = NotificationCursor::Replaying {
        after: after.clone(),
        pending: Vec::new(),
    };
    socket.on_disconnect(on_disconnect::<A>);
    socket.join(user_room(session.user.as_str()));
    socket.extensions.insert(session);
    Ok(())
}

/// Connect handler: replays what the client missed, then lets the queued events run.
pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<Arc<NodeState>>,
) {
    let (s, n) = (socket.clone(), node.clone());
    connect::connected(&node, &io, &socket, move |session| {
        let after = match &*session.cursor() {
            NotificationCursor::Replaying { after, .. } => after.clone(),
            NotificationCursor::Live { .. } => None,
        };
        after_connect(s, n, session, after)
    });
}

async fn after_connect<A: Adapter>(
    socket: SocketRef<A>,
    node: Arc<NodeState>,
    session: Arc<SocketSession>,
    after: Option<String>,
) {
    let user = session.user.as_str();
    let entry = SocketEntry {
        sid: socket.id.to_string(),
        node: node.node_id.clone(),
        ns: NAMESPACE.to_owned(),
    };
    if let Err(e) = node.store.add_socket(user, &entry).await {
        tracing::warn!(user, "could not record socket: {e}");
    }
    let replay_failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(user, "notification replay failed: {e}");
        let _ = socket.emit(
            "error",
            &serde_json::json!({
                "event": "notification",
                "code": "replay_failed",
                "message": format!("missed notifications could not be loaded ({e}); reconnect to retry"),
            }),
        );
    };
    // With a last id: the stored notifications after it. Without: nothing to replay, but the
    // newest stored id tells the client where it stands (see `notifications-synced`).
    let (stored, tail) = match &after {
        Some(after) => {
            match connect::with_retries(|| node.store.notifications_after(user, after)).await {
                Ok(list) => (list, None),
                Err(e) => {
                    replay_failed(&e);
                    (Vec::new(), None)
                }
            }
        }
        None => match connect::with_retries(|| node.store.last_notification_id(user)).await {
            Ok(tail) => (Vec::new(), tail),
            Err(e) => {
                replay_failed(&e);
                (Vec::new(), None)
            }
        },
    };
    let after_id = after.as_deref().and_then(parse_stream_id);
    // Everything up to the newest stored id was read by the replay; a stream id is never
    // reused nor issued out of order, so live notifications at or below it are duplicates.
    // Without a replay every live notification is new to this socket.
    let floor = if after.is_some() {
        stored
            .iter()
            .filter_map(|n| parse_stream_id(&n.id))
            .max()
            .max(after_id)
    } else {
        None
    };
    let mut cursor = session.cursor();
    let mut pending = match std::mem::replace(&mut *cursor, NotificationCursor::Live { floor }) {
        NotificationCursor::Replaying { pending, .. } => pending,
        NotificationCursor::Live { .. } => Vec::new(),
    };
    pending.sort_by_key(|n| parse_stream_id(&n.id));
    pending.dedup_by(|a, b| a.id == b.id);
    let mut sent = 0;
    let mut last = floor.max(tail.as_deref().and_then(parse_stream_id));
    let replayed: Vec<&Notification> = stored
        .iter()
        .filter(|n| parse_stream_id(&n.id) > after_id)
        .collect();
    let held_back = pending.iter().filter(|n| parse_stream_id(&n.id) > floor);
    for n in replayed.iter().copied().chain(held_back) {
        if socket.emit("notification", n).is_ok() {
            sent += 1;
        }
        last = last.max(parse_stream_id(&n.id));
    }
    // "0-0" when the user has no notification yet: passed back on a reconnect, it replays
    // everything stored since, including what was in flight when the connection dropped.
    let (ms, seq) = last.unwrap_or((0, 0));
    let synced = serde_json::json!({
        "lastNotificationId": format!("{ms}-{seq}"),
        "replayed": replayed.len(),
    });
    let _ = socket.emit("notifications-synced", &synced);
    drop(cursor);
    node.metrics.notifications_delivered.inc_by(sent);
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    reason: DisconnectReason,
    State(node): State<Arc<NodeState>>,
) {
    connect::disconnected(&node, &socket, reason);
    let Some(session) = connect::session(&socket) else {
        return;
    };
    let s = session.clone();
    session.queue.push_always(async move {
        let entry = SocketEntry {
            sid: socket.id.to_string(),
            node: node.node_id.clone(),
            ns: NAMESPACE.to_owned(),
        };
        if let Err(e) = node.store.remove_socket(s.user.as_str(), &entry).await {
            tracing::warn!(user = s.user.as_str(), "could not forget socket: {e}");
        }
    });
    session.queue.start();
}

/// Hands `n` to every `/notifications` socket of `user` on this node; returns how many
/// sockets got it (or will get it once their replay ends).
pub fn deliver_local<A: Adapter>(
    io: &SocketIo<A>,
    node: &NodeState,
    user: &str,
    n: &Notification,
) -> u64 {
    let Some(ns) = io.of(NAMESPACE) else {
        return 0;
    };
    let id = parse_stream_id(&n.id);
    let mut reached = 0;
    let mut sent = 0;
    for socket in ns.local().within(user_room(user)).sockets() {
        let Some(session) = connect::session(&socket) else {
            continue;
        };
        let mut cursor = session.cursor();
        match &mut *cursor {
            NotificationCursor::Replaying { pending, .. } => {
                pending.push(n.clone());
                reached += 1;
            }
            NotificationCursor::Live { floor } => {
                if id.is_some() && id <= *floor {
                    // already replayed to this socket
                    reached += 1;
                } else if socket.emit("notification", n).is_ok() {
                    reached += 1;
                    sent += 1;
                }
            }
        }
    }
    node.metrics.notifications_delivered.inc_by(sent);
    reached
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn last_notification_id_forms() {
        assert_eq!(last_notification_id(None).unwrap(), None);
        assert_eq!(last_notification_id(Some(&json!({}))).unwrap(), None);
        assert_eq!(
            last_notification_id(Some(&json!({"lastNotificationId": "17-3"}))).unwrap(),
            Some("17-3".into())
        );
        assert_eq!(
            last_notification_id(Some(&json!({"lastNotificationId": 17}))).unwrap(),
            Some("17-0".into())
        );
        assert!(last_notification_id(Some(&json!({"lastNotificationId": "yesterday"}))).is_err());
        assert!(last_notification_id(Some(&json!({"lastNotificationId": [1]}))).is_err());
    }
}
