//! The bare socketioxide baseline of `make bench`: socketioxide 0.18 and socketioxide-redis 0.4
//! (its own fred driver, sharded pub/sub) with the chat events and payloads of the Node
//! baseline (`bench/baselines/node/server.js`) and of sio-node with `--auth none`:
//!
//! - `join-room` (room name): joins, `user-joined {userId, room}` to the others, `presence
//!   {userId, room, online: true}` to the room, ack `{ok, room}`;
//! - `room-message` (`{room, text}`): `room-message {id, room, sender, text, timestamp}` to the
//!   room, ack `{id}`;
//! - `chat-message` (any JSON): to the whole namespace, ack `{ok: true}`;
//! - `rooms-restored {rooms: []}` right after connect; the user is `auth.userId`.
//!
//! Nothing else: no auth, no shared state, no metrics. What it measures is what socketioxide and
//! socketioxide-redis cost by themselves.
//!
//! ```text
//! LISTEN=127.0.0.1:3201 REDIS_URL=redis://127.0.0.1:6380 REDIS_PREFIX=b sio-bench-socketioxide-redis
//! ```
//! `PING_INTERVAL` / `PING_TIMEOUT` (ms) default to 25000 / 20000, as every benchmarked system;
//! `MAX_BUFFER_SIZE` (packets queued per socket) to 1024, sio-node's default.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide_redis::{FredAdapter, RedisAdapterConfig, RedisAdapterCtr};

/// The user of a socket (`auth.userId`, else the socket id).
#[derive(Clone)]
struct User(Arc<str>);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Member<'a> {
    user_id: &'a str,
    room: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Presence<'a> {
    user_id: &'a str,
    room: &'a str,
    online: bool,
}

#[derive(Serialize)]
struct RoomMessage<'a> {
    id: String,
    room: &'a str,
    sender: &'a str,
    text: &'a str,
    timestamp: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn millis(name: &str, default: u64) -> Duration {
    Duration::from_millis(number(name, default))
}

fn valid_room(v: &Value) -> Option<&str> {
    v.as_str().filter(|r| !r.is_empty() && r.len() <= 128)
}

fn user_of<A: Adapter>(socket: &SocketRef<A>) -> Arc<str> {
    socket
        .extensions
        .get::<User>()
        .map_or_else(|| Arc::from(socket.id.as_str()), |u| u.0)
}

/// Refuses an event in its ack (socketioxide's `AckSender` does not tell whether the client
/// asked for one, so an event sent without an ack is refused silently; the benchmark never
/// sends a refused event).
fn fail<A: Adapter>(ack: AckSender<A>, code: &str, msg: &str) {
    let _ = ack.send(&json!({ "error": { "code": code, "message": msg } }));
}

async fn join_room<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    let data = data.unwrap_or(Value::Null);
    let Some(room) = valid_room(&data) else {
        return fail(ack, "invalid_room", "join-room needs a room name");
    };
    let room = room.to_owned();
    let user = user_of(&socket);
    if !socket.rooms().iter().any(|r| *r == room) {
        socket.join(room.clone());
        let joined = Member {
            user_id: &user,
            room: &room,
        };
        let _ = socket.to(room.clone()).emit("user-joined", &joined).await;
        let presence = Presence {
            user_id: &user,
            room: &room,
            online: true,
        };
        let _ = io.to(room.clone()).emit("presence", &presence).await;
    }
    let _ = ack.send(&json!({ "ok": true, "room": room }));
}

async fn room_message<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    let data = data.unwrap_or(Value::Null);
    let Some(room) = data.get("room").and_then(valid_room) else {
        return fail(ack, "invalid_room", "bad room");
    };
    let Some(text) = data
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.chars().count() <= 10_000)
    else {
        return fail(ack, "invalid_payload", "bad text");
    };
    if !socket.rooms().iter().any(|r| r == room) {
        let msg = format!("join room {room} before sending to it");
        return fail(ack, "not_in_room", &msg);
    }
    let user = user_of(&socket);
    let msg = RoomMessage {
        id: uuid::Uuid::now_v7().to_string(),
        room,
        sender: &user,
        text,
        timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    };
    let _ = io.to(room.to_owned()).emit("room-message", &msg).await;
    let _ = ack.send(&json!({ "id": msg.id }));
}

async fn chat_message<A: Adapter>(
    io: SocketIo<A>,
    TryData(data): TryData<Value>,
    ack: AckSender<A>,
) {
    let _ = io.emit("chat-message", &data.unwrap_or(Value::Null)).await;
    let _ = ack.send(&json!({ "ok": true }));
}

/// Registers the handlers before the client sees its CONNECT (socketioxide acknowledges the
/// CONNECT before the connect handler runs: an event sent right after it could be missed).
async fn middleware<A: Adapter>(
    socket: SocketRef<A>,
    TryData(auth): TryData<Value>,
) -> Result<(), std::convert::Infallible> {
    let user = auth
        .ok()
        .and_then(|a| a.get("userId").cloned())
        .map(|u| match u {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_else(|| socket.id.to_string());
    socket.extensions.insert(User(Arc::from(user)));
    socket.on("join-room", join_room::<A>);
    socket.on("room-message", room_message::<A>);
    socket.on("chat-message", chat_message::<A>);
    Ok(())
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    let _ = socket.emit("rooms-restored", &json!({ "rooms": [] }));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = env_or("LISTEN", "127.0.0.1:3201").parse()?;
    let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let mut config = fred::prelude::Config::from_url(&redis_url)?;
    // socketioxide-redis's fred driver needs RESP3; fred does not read it from the URL.
    config.version = fred::types::RespVersion::RESP3;
    let client = fred::prelude::Builder::from_config(config).build_subscriber_client()?;
    let adapter = RedisAdapterCtr::new_with_fred_config(
        client,
        RedisAdapterConfig::new().with_prefix(env_or("REDIS_PREFIX", "socket.io")),
    )
    .await?;
    let (layer, io) = SocketIo::builder()
        .ping_interval(millis("PING_INTERVAL", 25_000))
        .ping_timeout(millis("PING_TIMEOUT", 20_000))
        .max_payload(1_000_000)
        // sio-node's default (`--max-buffer-size 1024`); socketioxide's own 128 closes a
        // session whose queue fills, which a join into a room of 1,000 (1,000 `user-joined` and
        // `presence` events) does.
        .max_buffer_size(number("MAX_BUFFER_SIZE", 1024))
        .with_adapter::<FredAdapter<_>>(adapter)
        .build_layer();
    io.ns("/", on_connect.with(middleware)).await?;

    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("socketioxide-redis baseline listening on {listen}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
