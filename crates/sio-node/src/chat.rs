//! Namespace `/`: chat broadcast and rooms.
//!
//! Events: `chat-message` (any JSON, broadcast to the whole namespace, sender included, with
//! `{sender, timestamp}` as a second argument), `join-room` (room name, if the token allows
//! it: see [`crate::room_auth`]), `leave-room` (room name), `room-message` (`{room, text}`).
//! The node emits `user-joined` / `user-left` (`{userId, room}`) to the other members,
//! `room-message` (`{id, room, sender, text, timestamp}`) to the room, `presence`
//! (`{userId, room, online}`) when a user's first socket joins or last socket leaves a room,
//! `rooms-restored` (`{rooms}`) right after connect, and `error` for refused events sent
//! without an ack.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;
use socketioxide::{ParserError, SocketIo};

use sio_redis_adapter::{Membership, SocketEntry};

use crate::connect::{self, ConnectRefused};
use crate::events::{self, Ev};
use crate::room_auth::Decision;
use crate::session::SocketSession;
use crate::state::NodeState;
use crate::validate;

/// Path of the chat namespace.
pub const NAMESPACE: &str = "/";
/// Why an event is refused once the node has closed its namespaces.
const SHUTTING_DOWN: &str = "this node is shutting down; the client reconnects to another one";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberEvent<'a> {
    user_id: &'a str,
    room: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PresenceEvent<'a> {
    user_id: &'a str,
    room: &'a str,
    online: bool,
}

/// Second argument of every `chat-message` a client receives.
#[derive(Debug, Serialize)]
struct ChatMeta<'a> {
    sender: &'a str,
    timestamp: String,
}

#[derive(Debug, Serialize)]
struct RoomMessage<'a> {
    id: String,
    room: &'a str,
    sender: &'a str,
    text: &'a str,
    timestamp: String,
}

/// RFC 3339 time with milliseconds, as JavaScript's `toISOString()` writes it.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Connect middleware: authenticates, registers the handlers and re-joins the user's rooms
/// before the client sees its CONNECT, so no event it sends afterwards can be missed.
pub async fn middleware<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<Arc<NodeState>>,
    TryData(auth): TryData<serde_json::Value>,
) -> Result<(), ConnectRefused> {
    let session = connect::admit(&node, &socket, auth.ok().as_ref())?;
    let user = session.user.as_str().to_owned();
    let stored = connect::with_retries(|| node.store.user_rooms(&user))
        .await
        .map_err(|e| ConnectRefused::Unavailable(e.to_string()))?;
    let rooms = allowed_rooms(&node, &session, stored).await;
    let rooms = within_room_limits(&node, &user, rooms);

    events::on(
        &socket,
        &io,
        &node,
        &session,
        "chat-message",
        chat_message::<A>,
    );
    events::on(&socket, &io, &node, &session, "join-room", join_room::<A>);
    events::on(&socket, &io, &node, &session, "leave-room", leave_room::<A>);
    events::on(
        &socket,
        &io,
        &node,
        &session,
        "room-message",
        room_message::<A>,
    );
    socket.on_disconnect(on_disconnect::<A>);

    // Subscribed before the CONNECT is acknowledged: nothing sent to these rooms afterwards
    // can miss this node.
    let channels = futures::future::join_all(
        rooms
            .iter()
            .map(|room| node.room_channels.join(NAMESPACE, room)),
    )
    .await;
    if let Some(Err(e)) = channels.iter().find(|r| r.is_err()) {
        let e = e.clone();
        for (room, joined) in rooms.iter().zip(&channels) {
            if joined.is_ok() {
                node.room_channels.leave(NAMESPACE, room).await;
            }
        }
        return Err(ConnectRefused::Unavailable(format!(
            "rooms not restored: {e}"
        )));
    }
    for room in &rooms {
        socket.join(room.clone());
        if !session.add_room(room) {
            node.room_channels.leave(NAMESPACE, room).await;
        }
    }
    socket.extensions.insert(session);
    Ok(())
}

/// The restored rooms a socket re-joins: at most `--max-rooms-per-socket` of them (in name
/// order). The others stay in the user's set (a later limit may allow them again) and count as
/// refusals.
fn within_room_limits(node: &NodeState, user: &str, mut rooms: Vec<String>) -> Vec<String> {
    let max = node.config.max_rooms_per_socket;
    if rooms.len() > max {
        let skipped = rooms.len() - max;
        tracing::info!(
            user,
            restored = max,
            skipped,
            "more stored rooms than --max-rooms-per-socket: only the first are re-joined"
        );
        node.metrics
            .limit_refusals
            .with_label_values(&["rooms_per_socket"])
            .inc_by(skipped as u64);
        rooms.truncate(max);
    }
    rooms
}

/// Joins restored on a connect checked at once, at most.
const RESTORE_CHECKS_IN_FLIGHT: usize = 8;

/// The stored rooms the new token still allows. A room it no longer allows (the claims do
/// not grant it and the hook, if any, refuses it) is also dropped from the user's set; a room
/// the hook could not decide is skipped for this connect but kept.
async fn allowed_rooms(
    node: &NodeState,
    session: &SocketSession,
    stored: Vec<String>,
) -> Vec<String> {
    use futures::StreamExt;
    let user = session.user.as_str();
    // A set larger than the user's limit (the limit was lowered) is not worth checking whole.
    let checked = node.config.max_rooms_per_user;
    let decisions: Vec<(String, Decision)> =
        futures::stream::iter(stored.into_iter().take(checked))
            .map(|room| async move {
                let d = node.rooms.decide(&session.identity, &room).await;
                (room, d)
            })
            .buffered(RESTORE_CHECKS_IN_FLIGHT)
            .collect()
            .await;
    let mut rooms = Vec::with_capacity(decisions.len());
    for (room, decision) in decisions {
        match decision {
            Decision::Allowed => rooms.push(room),
            Decision::Denied(why) => {
                tracing::debug!(user, room, "room not restored and forgotten: {why}");
                node.metrics.restored_rooms_dropped.inc();
                if let Err(e) = node.store.remove_user_room(user, &room).await {
                    tracing::warn!(user, room, "could not forget a room no longer allowed: {e}");
                }
            }
            Decision::Unknown(why) => {
                tracing::debug!(user, room, "room not restored this time: {why}");
            }
        }
    }
    rooms
}

/// Connect handler: announces the restored rooms and presence, then lets the queued events run.
pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(node): State<Arc<NodeState>>,
) {
    let (s, n, i) = (socket.clone(), node.clone(), io.clone());
    connect::connected(&node, &i, &socket, move |session| {
        let rooms = session.rooms();
        after_connect(s, io, n, session, rooms)
    });
}

async fn after_connect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    node: Arc<NodeState>,
    session: Arc<SocketSession>,
    rooms: Vec<String>,
) {
    let user = session.user.as_str();
    let _ = socket.emit("rooms-restored", &serde_json::json!({ "rooms": rooms }));
    node.metrics
        .events_sent
        .with_label_values(&[NAMESPACE])
        .inc();
    let entry = SocketEntry {
        sid: socket.id.to_string(),
        node: node.node_id.clone(),
        ns: NAMESPACE.to_owned(),
    };
    if let Err(e) = node.store.add_socket(user, &entry).await {
        tracing::warn!(user, "could not record socket: {e}");
    }
    for room in &rooms {
        presence_join(&io, &node, &socket, user, room).await;
    }
}

async fn on_disconnect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    reason: DisconnectReason,
    State(node): State<Arc<NodeState>>,
) {
    connect::disconnected(&node, &socket, reason);
    let Some(session) = connect::session(&socket) else {
        return;
    };
    let s = session.clone();
    let cleanup = node.cleanups.token();
    session.queue.push_always(async move {
        let _cleanup = cleanup;
        let user = s.user.as_str();
        let sid = socket.id.to_string();
        for room in s.take_rooms() {
            node.room_channels.leave(NAMESPACE, &room).await;
            let m = Membership {
                room: room.clone(),
                user: user.to_owned(),
                sid: sid.clone(),
            };
            match node.store.presence_leave(&m).await {
                Ok(true) => emit_presence(&io, &node, user, &room, false).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(user, room, "presence not updated on disconnect: {e}"),
            }
        }
        let entry = SocketEntry {
            sid,
            node: node.node_id.clone(),
            ns: NAMESPACE.to_owned(),
        };
        if let Err(e) = node.store.remove_socket(user, &entry).await {
            tracing::warn!(user, "could not forget socket: {e}");
        }
    });
    session.queue.start();
}

async fn presence_join<A: Adapter>(
    io: &SocketIo<A>,
    node: &NodeState,
    socket: &SocketRef<A>,
    user: &str,
    room: &str,
) {
    let m = Membership {
        room: room.to_owned(),
        user: user.to_owned(),
        sid: socket.id.to_string(),
    };
    match node.store.presence_join(&m).await {
        Ok(true) => emit_presence(io, node, user, room, true).await,
        Ok(false) => {}
        Err(e) => tracing::warn!(user, room, "presence not updated on join: {e}"),
    }
}

/// Emits `presence` to every member of `room` on every node.
pub async fn emit_presence<A: Adapter>(
    io: &SocketIo<A>,
    node: &NodeState,
    user: &str,
    room: &str,
    online: bool,
) {
    let body = PresenceEvent {
        user_id: user,
        room,
        online,
    };
    let Some(ns) = io.of(NAMESPACE) else {
        tracing::debug!(room, "node shutting down: presence not broadcast from here");
        return;
    };
    let res = ns.to(room.to_owned()).emit("presence", &body).await;
    if let Err(e) = events::delivered(node, NAMESPACE, res) {
        tracing::warn!(room, "presence not broadcast: {e}");
    }
}

async fn chat_message<A: Adapter>(ev: Ev<A>, data: Result<serde_json::Value, ParserError>) {
    let data = match data {
        Ok(d) => d,
        Err(e) => {
            return ev.fail(
                "invalid_payload",
                format!("chat-message needs a JSON argument: {e}"),
            );
        }
    };
    // It reaches every socket of the cluster: its own limit, far below `--max-payload`.
    let max = ev.node.config.max_chat_bytes;
    let size = serde_json::to_vec(&data).map_or(usize::MAX, |b| b.len());
    if size > max {
        return ev.fail_at_limit(
            "chat_bytes",
            "payload_too_large",
            format!("chat-message of {size} bytes; at most {max} (--max-chat-bytes)"),
        );
    }
    let Some(ns) = ev.io.of(NAMESPACE) else {
        return ev.fail("unavailable", SHUTTING_DOWN);
    };
    // The client's data goes out unchanged as the first argument, so existing handlers keep
    // working; the second names the sender as the server knows it, so nobody can pose as
    // another user.
    let meta = ChatMeta {
        sender: ev.session.user.as_str(),
        timestamp: timestamp(),
    };
    let res = ns.emit("chat-message", &(data, meta)).await;
    match events::delivered(&ev.node, NAMESPACE, res) {
        Ok(()) => ev.reply(&serde_json::json!({ "ok": true })),
        Err(e) => ev.fail("unavailable", format!("message not delivered: {e}")),
    }
}

async fn join_room<A: Adapter>(ev: Ev<A>, data: Result<serde_json::Value, ParserError>) {
    let room = match data
        .map_err(|e| e.to_string())
        .and_then(|v| validate::room(&v).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return ev.fail("invalid_room", format!("join-room needs a room name: {e}")),
    };
    let user = ev.session.user.as_str().to_owned();
    if ev.session.in_room(&room) {
        return ev.reply(&serde_json::json!({ "ok": true, "room": room }));
    }
    let per_socket = ev.node.config.max_rooms_per_socket;
    if ev.session.room_count() >= per_socket {
        return ev.fail_at_limit(
            "rooms_per_socket",
            "too_many_rooms",
            format!(
                "this socket is in {per_socket} rooms already (--max-rooms-per-socket); leave one first"
            ),
        );
    }
    match ev.node.rooms.decide(&ev.session.identity, &room).await {
        Decision::Allowed => {}
        Decision::Denied(why) | Decision::Unknown(why) => return ev.fail("forbidden", why),
    }
    let per_user = ev.node.config.max_rooms_per_user;
    match ev.node.store.user_rooms(&user).await {
        Ok(joined) if joined.len() >= per_user && !joined.contains(&room) => {
            return ev.fail_at_limit(
                "rooms_per_user",
                "too_many_rooms",
                format!(
                    "user {user:?} has joined {per_user} rooms already (--max-rooms-per-user); leave one first"
                ),
            );
        }
        Ok(_) => {}
        Err(e) => return ev.fail("unavailable", format!("could not join {room:?}: {e}")),
    }
    // The room's channel is subscribed before the socket joins and the join is
    // acknowledged, so a message sent right after the acknowledgement reaches it.
    if let Err(e) = ev.node.room_channels.join(NAMESPACE, &room).await {
        return ev.fail("unavailable", format!("could not join {room:?}: {e}"));
    }
    if let Err(e) = ev.node.store.add_user_room(&user, &room).await {
        ev.node.room_channels.leave(NAMESPACE, &room).await;
        return ev.fail("unavailable", format!("could not join {room:?}: {e}"));
    }
    ev.socket.join(room.clone());
    if !ev.session.add_room(&room) {
        // joined meanwhile (an admin command): one channel membership per socket and room
        ev.node.room_channels.leave(NAMESPACE, &room).await;
    }
    let joined = MemberEvent {
        user_id: &user,
        room: &room,
    };
    let res = ev
        .socket
        .to(room.clone())
        .emit("user-joined", &joined)
        .await;
    if let Err(e) = events::delivered(&ev.node, NAMESPACE, res) {
        tracing::warn!(room, "user-joined not broadcast: {e}");
    }
    presence_join(&ev.io, &ev.node, &ev.socket, &user, &room).await;
    ev.reply(&serde_json::json!({ "ok": true, "room": room }));
}

async fn leave_room<A: Adapter>(ev: Ev<A>, data: Result<serde_json::Value, ParserError>) {
    let room = match data
        .map_err(|e| e.to_string())
        .and_then(|v| validate::room(&v).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return ev.fail("invalid_room", format!("leave-room needs a room name: {e}")),
    };
    if !ev.session.in_room(&room) {
        return ev.fail("not_in_room", format!("not a member of room {room:?}"));
    }
    let user = ev.session.user.as_str().to_owned();
    if let Err(e) = ev.node.store.remove_user_room(&user, &room).await {
        return ev.fail("unavailable", format!("could not leave {room:?}: {e}"));
    }
    ev.socket.leave(room.clone());
    if ev.session.remove_room(&room) {
        ev.node.room_channels.leave(NAMESPACE, &room).await;
    }
    let left = MemberEvent {
        user_id: &user,
        room: &room,
    };
    let res = ev.socket.to(room.clone()).emit("user-left", &left).await;
    if let Err(e) = events::delivered(&ev.node, NAMESPACE, res) {
        tracing::warn!(room, "user-left not broadcast: {e}");
    }
    let m = Membership {
        room: room.clone(),
        user: user.clone(),
        sid: ev.socket.id.to_string(),
    };
    match ev.node.store.presence_leave(&m).await {
        Ok(true) => emit_presence(&ev.io, &ev.node, &user, &room, false).await,
        Ok(false) => {}
        Err(e) => tracing::warn!(user, room, "presence not updated on leave: {e}"),
    }
    ev.reply(&serde_json::json!({ "ok": true, "room": room }));
}

async fn room_message<A: Adapter>(ev: Ev<A>, data: Result<serde_json::Value, ParserError>) {
    let data = match data {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) | Err(_) => {
            return ev.fail(
                "invalid_payload",
                "room-message needs an object {room, text}",
            );
        }
    };
    let null = serde_json::Value::Null;
    let room = match validate::room(data.get("room").unwrap_or(&null)) {
        Ok(r) => r,
        Err(e) => return ev.fail(e.code(), e.to_string()),
    };
    let text = match validate::text(data.get("text").unwrap_or(&null)) {
        Ok(t) => t,
        Err(e) => return ev.fail(e.code(), e.to_string()),
    };
    if !ev.session.in_room(&room) {
        return ev.fail(
            "not_in_room",
            format!("join room {room:?} before sending to it"),
        );
    }
    let msg = RoomMessage {
        id: uuid::Uuid::now_v7().to_string(),
        room: &room,
        sender: ev.session.user.as_str(),
        text: &text,
        timestamp: timestamp(),
    };
    let Some(ns) = ev.io.of(NAMESPACE) else {
        return ev.fail("unavailable", SHUTTING_DOWN);
    };
    let res = ns.to(room.clone()).emit("room-message", &msg).await;
    match events::delivered(&ev.node, NAMESPACE, res) {
        Ok(()) => {
            let id = msg.id.clone();
            ev.reply(&serde_json::json!({ "id": id }));
        }
        Err(e) => ev.fail("unavailable", format!("message not delivered: {e}")),
    }
}
