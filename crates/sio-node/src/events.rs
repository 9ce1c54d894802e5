//! Registration of in-order event handlers and the answers they give.
//!
//! [`on`] registers a handler whose invocations are queued on the socket's
//! [`EventQueue`](crate::session::EventQueue) instead of being spawned, so a socket's events
//! are handled one at a time in the order the client sent them. A handler gets an [`Ev`] and
//! the event's first argument, parsed or with the parse error.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler};
use socketioxide::socket::Socket;
use socketioxide::{BroadcastError, ParserError, SocketIo};
use socketioxide_core::Value;

use crate::session::{RateVerdict, SocketSession};
use crate::state::NodeState;

/// Everything an event handler needs.
pub struct Ev<A: Adapter> {
    /// The socket that sent the event.
    pub socket: SocketRef<A>,
    /// The server, to broadcast to a namespace or room.
    pub io: SocketIo<A>,
    /// The node.
    pub node: Arc<NodeState>,
    /// The socket's session.
    pub session: Arc<SocketSession>,
    /// Event name, for errors and metrics.
    pub event: &'static str,
    ack: AckSender<A>,
    wants_ack: bool,
}

/// The shape of every error the node sends to a client: `{ error: { code, message } }` as an
/// ack, or `{ event, code, message }` as an `error` event when no ack was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody<'a> {
    /// Stable code.
    pub code: &'a str,
    /// Explanation for people.
    pub message: String,
}

impl<A: Adapter> Ev<A> {
    /// True when the client passed an acknowledgement callback.
    pub fn wants_ack(&self) -> bool {
        self.wants_ack
    }

    /// Acknowledges with `data` when the client asked for an ack.
    pub fn reply<T: Serialize + ?Sized>(self, data: &T) {
        if self.wants_ack
            && let Err(e) = self.ack.send(data)
        {
            tracing::debug!(event = self.event, "ack not sent: {e}");
        }
    }

    /// Refuses the event at a limit: as [`Ev::fail`], and counted as `limit` in
    /// `sio_limit_refusals_total`.
    pub fn fail_at_limit(self, limit: &str, code: &str, message: impl Into<String>) {
        self.node
            .metrics
            .limit_refusals
            .with_label_values(&[limit])
            .inc();
        self.fail(code, message);
    }

    /// Refuses the event: error ack when asked for, else an `error` event; counted.
    pub fn fail(self, code: &str, message: impl Into<String>) {
        let message = message.into();
        self.node
            .metrics
            .event_errors
            .with_label_values(&[self.socket.ns(), code])
            .inc();
        tracing::debug!(event = self.event, code, %message, sid = %self.socket.id, "event refused");
        send_error(
            &self.socket,
            self.ack,
            self.wants_ack,
            self.event,
            code,
            message,
        );
    }
}

fn send_error<A: Adapter>(
    socket: &SocketRef<A>,
    ack: AckSender<A>,
    wants_ack: bool,
    event: &str,
    code: &str,
    message: String,
) {
    if wants_ack {
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let _ = ack.send(&body);
    } else {
        let body = serde_json::json!({ "event": event, "code": code, "message": message });
        let _ = socket.emit("error", &body);
    }
}

/// Reads a broadcast's outcome: sockets whose send buffers were full are slow clients (they
/// miss this packet, which is counted in `sio_slow_client_drops_total`), not a failure of the
/// sender; an adapter or encoding error means nothing was delivered and is returned.
pub fn delivered(
    node: &NodeState,
    ns: &str,
    res: Result<(), BroadcastError>,
) -> Result<(), String> {
    match res {
        Ok(()) => {
            node.metrics.events_sent.with_label_values(&[ns]).inc();
            Ok(())
        }
        Err(BroadcastError::Socket(errors)) => {
            node.metrics.events_sent.with_label_values(&[ns]).inc();
            node.metrics
                .slow_client_drops
                .with_label_values(&[ns])
                .inc_by(errors.len() as u64);
            tracing::debug!(
                ns,
                dropped = errors.len(),
                "packet dropped for slow clients"
            );
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Marker type tying a handler to its argument type.
pub struct Ordered<T>(PhantomData<fn() -> T>);

struct OrderedHandler<A: Adapter, T, F> {
    f: F,
    io: SocketIo<A>,
    node: Arc<NodeState>,
    session: Arc<SocketSession>,
    event: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<A, T, F, Fut> MessageHandler<A, Ordered<T>> for OrderedHandler<A, T, F>
where
    A: Adapter,
    T: DeserializeOwned + Send + 'static,
    F: Fn(Ev<A>, Result<T, ParserError>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn call(&self, s: Arc<Socket<A>>, mut v: Value, ack_id: Option<i64>) {
        let bytes = value_bytes(&v);
        self.node
            .metrics
            .events_received
            .with_label_values(&[s.ns()])
            .inc();
        let config = &self.node.config;
        let verdict = self
            .session
            .take_event_token(config.event_rate, config.event_burst);
        if verdict != RateVerdict::Allowed {
            let Ok(ack) = AckSender::<A>::from_message_parts(&s, &mut v, &ack_id);
            refuse(
                &self.node,
                &SocketRef::from(s.clone()),
                ack,
                ack_id.is_some(),
                self.event,
                ("event_rate", "rate_limited"),
                format!(
                    "more than {} events per second (bursts of {}); slow down",
                    config.event_rate, config.event_burst
                ),
            );
            if verdict == RateVerdict::Disconnect {
                self.node.metrics.rate_limit_disconnects.inc();
                tracing::info!(sid = %s.id, user = self.session.user.as_str(), "socket disconnected: over the event rate for too long");
                let _ = SocketRef::from(s).disconnect();
            }
            return;
        }
        let Ok(TryData(data)) = TryData::<T>::from_message_parts(&s, &mut v, &ack_id);
        let Ok(ack) = AckSender::<A>::from_message_parts(&s, &mut v, &ack_id);
        let ev = Ev {
            socket: SocketRef::from(s.clone()),
            io: self.io.clone(),
            node: self.node.clone(),
            session: self.session.clone(),
            event: self.event,
            ack,
            wants_ack: ack_id.is_some(),
        };
        if let Err(full) =
            self.session
                .queue
                .push((self.f)(ev, data), bytes, config.max_pending_bytes)
        {
            let Ok(ack) = AckSender::<A>::from_message_parts(&s, &mut v, &ack_id);
            refuse(
                &self.node,
                &SocketRef::from(s),
                ack,
                ack_id.is_some(),
                self.event,
                (full.limit(), "overloaded"),
                full.to_string(),
            );
        }
    }
}

/// Bytes of an event as it came (its text and binary attachments).
fn value_bytes(v: &Value) -> u64 {
    let n = match v {
        Value::Str(text, bins) => {
            text.len() + bins.as_ref().map_or(0, |b| b.iter().map(|b| b.len()).sum())
        }
        Value::Bytes(b) => b.len(),
    };
    n as u64
}

/// Refuses an event at a limit before it is queued: counted as `limit` in
/// `sio_limit_refusals_total` and as `code` in `sio_event_errors_total`.
fn refuse<A: Adapter>(
    node: &NodeState,
    socket: &SocketRef<A>,
    ack: AckSender<A>,
    wants_ack: bool,
    event: &str,
    (limit, code): (&str, &str),
    message: String,
) {
    node.metrics
        .limit_refusals
        .with_label_values(&[limit])
        .inc();
    node.metrics
        .event_errors
        .with_label_values(&[socket.ns(), code])
        .inc();
    tracing::debug!(event, code, limit, sid = %socket.id, "event refused at a limit");
    send_error(socket, ack, wants_ack, event, code, message);
}

/// Registers `f` for `event` on `socket`, run in order on the socket's queue.
pub fn on<A, T, F, Fut>(
    socket: &SocketRef<A>,
    io: &SocketIo<A>,
    node: &Arc<NodeState>,
    session: &Arc<SocketSession>,
    event: &'static str,
    f: F,
) where
    A: Adapter,
    T: DeserializeOwned + Send + 'static,
    F: Fn(Ev<A>, Result<T, ParserError>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    socket.on(
        event,
        OrderedHandler {
            f,
            io: io.clone(),
            node: node.clone(),
            session: session.clone(),
            event,
            _t: PhantomData,
        },
    );
}
