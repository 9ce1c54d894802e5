//! The protocol conformance server (`sio-node --conformance`), serving what the official
//! socket.io-protocol and engine.io-protocol suites expect (see CONFORMANCE.md):
//! `/socket.io/` with namespaces `/` and `/custom` (each emits `auth` with the handshake
//! payload; `/` echoes `message` as `message-back` and acks `message-with-ack` with the same
//! arguments, binary included), and an Engine.IO echo server on `/engine.io/`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engineioxide::Str;
use engineioxide::handler::EngineIoHandler;
use engineioxide::socket::{DisconnectReason as EioDisconnectReason, Socket as EioSocket};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};

use crate::args::Args;

/// Ping interval the suites expect.
pub const PING_INTERVAL: Duration = Duration::from_millis(300);
/// Ping timeout the suites expect.
pub const PING_TIMEOUT: Duration = Duration::from_millis(200);
/// Max payload the suites expect.
pub const MAX_PAYLOAD: u64 = 1_000_000;
/// Connect timeout the suites expect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Connect handler of `/` and `/custom`.
pub async fn on_connect<A: Adapter>(socket: SocketRef<A>, TryData(auth): TryData<rmpv::Value>) {
    let auth = auth.unwrap_or(rmpv::Value::Map(Vec::new()));
    let _ = socket.emit("auth", &auth);
    socket.on(
        "message",
        async |socket: SocketRef<A>, Data(args): Data<Args<rmpv::Value>>| {
            let _ = socket.emit("message-back", &args);
        },
    );
    socket.on(
        "message-with-ack",
        async |Data(args): Data<Args<rmpv::Value>>, ack: AckSender<A>| {
            let _ = ack.send(&args);
        },
    );
}

/// Engine.IO echo handler for the engine.io-protocol suite.
#[derive(Debug, Default, Clone)]
pub struct EngineEcho;

impl EngineIoHandler for EngineEcho {
    type Data = ();

    fn on_connect(self: Arc<Self>, _socket: Arc<EioSocket<()>>) {}

    fn on_disconnect(&self, _socket: Arc<EioSocket<()>>, _reason: EioDisconnectReason) {}

    fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<EioSocket<()>>) {
        let _ = socket.emit(msg);
    }

    fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<EioSocket<()>>) {
        let _ = socket.emit_binary(data);
    }
}
