//! Namespace `/notifications`: server push of `notification` (`{id, message, timestamp}`) to
//! every socket of a user, live or replayed.
//!
//! A client that connects with `auth.lastNotificationId` first receives, in order, every
//! stored notification after that id, then live ones. Each socket has a cursor (the last id
//! it was actually sent) and delivers nothing newer before the gaps behind it are filled from
//! the stream (see [`crate::notification_cursor`]): each notification reaches each socket
//! exactly once, in order, even when its buffer was full or the node missed a message. Every
//! connect ends with `notifications-synced` `{lastNotificationId, replayed}`, the id the client
//! is up to date with (`"0-0"` for a user without notifications), for it to pass back on its
//! next connect.

use std::sync::Arc;

use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use sio_redis_adapter::types::parse_stream_id;
use sio_redis_adapter::{Appended, SocketEntry, UserSubscription};

use crate::connect::{self, ConnectRefused};
use crate::notification_cursor::{
    CatchUpReason, Connect, NotificationCursor, Offered, StreamId, catch_up,
};
use crate::session::SocketSession;
use crate::state::NodeState;

/// Path of the notifications namespace.
pub const NAMESPACE: &str = "/notifications";

/// The local room holding every `/notifications` socket of `user` on this node.
pub fn user_room(user: &str) -> String {
    format!("user:{user}")
}

fn last_notification_id(
    auth: Option<&serde_json::Value>,
) -> Result<Option<StreamId>, ConnectRefused> {
    let bad = || {
        ConnectRefused::BadInput(
            "lastNotificationId must be the id of a notification you received, like \"1712345678901-0\"".into(),
        )
    };
    match auth.and_then(|a| a.get("lastNotificationId")) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => parse_stream_id(s).map(Some).ok_or_else(bad),
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|ms| Some((ms, 0))).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// Connect middleware: authenticates and puts the socket in its user's room, its cursor
/// waiting for the connect's catch-up, before the client sees its CONNECT.
pub async fn middleware<A: Adapter>(
    socket: SocketRef<A>,
    State(node): State<Arc<NodeState>>,
    TryData(auth): TryData<serde_json::Value>,
) -> Result<(), ConnectRefused> {
    let auth = auth.ok();
    let session = connect::admit(&node, &socket, auth.as_ref())?;
    let after = last_notification_id(auth.as_ref())?;
    // With Redis, this node must receive the user's notifications before the client is told
    // it is connected: its catch-up reads the stream, and live ones must follow.
    if let Some(bus) = node.notify_bus.get() {
        let subscription = connect::with_retries(|| bus.subscribe_user(session.user.as_str()))
            .await
            .map_err(|e| ConnectRefused::Unavailable(e.to_string()))?;
        socket.extensions.insert(Arc::new(subscription));
    }
    socket.extensions.insert(LastNotificationId(after));
    socket.extensions.insert(NotificationCursor::connecting());
    socket.on_disconnect(on_disconnect::<A>);
    socket.join(user_room(session.user.as_str()));
    socket.extensions.insert(session);
    Ok(())
}

/// The `lastNotificationId` a socket connected with.
#[derive(Debug, Clone, Copy)]
struct LastNotificationId(Option<StreamId>);

fn cursor<A: Adapter>(socket: &SocketRef<A>) -> Option<Arc<NotificationCursor>> {
    socket.extensions.get::<Arc<NotificationCursor>>()
}

/// Connect handler: records the socket, replays what the client missed, then lets the queued
/// events run.
pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<Arc<NodeState>>,
) {
    let (s, n) = (socket.clone(), node.clone());
    connect::connected(&node, &io, &socket, move |session| {
        after_connect(s, n, session)
    });
}

async fn after_connect<A: Adapter>(
    socket: SocketRef<A>,
    node: Arc<NodeState>,
    session: Arc<SocketSession>,
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
    let (Some(cursor), Some(LastNotificationId(after))) = (
        cursor(&socket),
        socket.extensions.get::<LastNotificationId>(),
    ) else {
        return;
    };
    catch_up(
        socket,
        node,
        user.to_owned(),
        cursor,
        Some(Connect { after }),
    )
    .await;
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    reason: DisconnectReason,
    State(node): State<Arc<NodeState>>,
) {
    connect::disconnected(&node, &socket, reason);
    // The user's channel is left with the user's last socket on this node.
    drop(socket.extensions.remove::<Arc<UserSubscription>>());
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
/// sockets got it, or will get it from the stream (connect replay or catch-up).
pub fn deliver_local<A: Adapter>(
    io: &SocketIo<A>,
    node: &Arc<NodeState>,
    user: &str,
    n: &Appended,
) -> u64 {
    let Some(ns) = io.of(NAMESPACE) else {
        return 0;
    };
    let mut reached = 0;
    let mut sent = 0;
    for socket in ns.local().within(user_room(user)).sockets() {
        let Some(cursor) = cursor(&socket) else {
            continue;
        };
        match cursor.offer(&socket, n) {
            Offered::Sent => {
                sent += 1;
                reached += 1;
            }
            Offered::Duplicate | Offered::Deferred => reached += 1,
            Offered::CatchUp(reason) => {
                reached += 1;
                start_catch_up(node, socket, user.to_owned(), cursor, reason);
            }
            Offered::Closed => {}
        }
    }
    node.metrics.notifications_delivered.inc_by(sent);
    reached
}

/// Notifications may have been lost on their way to this node: every local `/notifications`
/// socket reads its user's stream after its cursor.
pub fn resync_local<A: Adapter>(io: &SocketIo<A>, node: &Arc<NodeState>) {
    let Some(ns) = io.of(NAMESPACE) else {
        return;
    };
    for socket in ns.local().sockets() {
        let (Some(cursor), Some(session)) = (cursor(&socket), connect::session(&socket)) else {
            continue;
        };
        if cursor.resync() {
            let user = session.user.as_str().to_owned();
            start_catch_up(node, socket, user, cursor, CatchUpReason::Resync);
        }
    }
}

fn start_catch_up<A: Adapter>(
    node: &Arc<NodeState>,
    socket: SocketRef<A>,
    user: String,
    cursor: Arc<NotificationCursor>,
    reason: CatchUpReason,
) {
    node.metrics
        .notification_catchups
        .with_label_values(&[reason.label()])
        .inc();
    tokio::spawn(catch_up(socket, node.clone(), user, cursor, None));
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
            Some((17, 3))
        );
        assert_eq!(
            last_notification_id(Some(&json!({"lastNotificationId": 17}))).unwrap(),
            Some((17, 0))
        );
        assert!(last_notification_id(Some(&json!({"lastNotificationId": "yesterday"}))).is_err());
        assert!(last_notification_id(Some(&json!({"lastNotificationId": [1]}))).is_err());
    }
}
