//! Registration of in-order event handlers and the answers they give.
//!
//! [`on`] registers a handler whose invocations are queued on the socket's
//! [`EventQueue`](crate::session::EventQueue) instead of being spawned, so a socket's events
//! are handled in the order the client sent them. A handler gets an [`Ev`] and the event's
//! first argument, parsed or with the parse error.
//!
//! A handler returning `()` runs alone: it starts once everything before it has finished. A
//! handler returning a [`Then`] is *pipelined*: it issues its broadcast with
//! [`Ev::after_issue`] (or answers with [`Ev::fail_later`]) and the socket's next event may
//! start right away, while what the returned [`Then`] holds (the broadcast's completion, the
//! acknowledgement) runs after that of every earlier event. See the ordering argument at
//! [`Ev::after_issue`].

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use serde::Serialize;
use serde::de::DeserializeOwned;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler};
use socketioxide::socket::Socket;
use socketioxide::{BroadcastError, ParserError, SocketIo};
use socketioxide_core::Value;

use crate::session::{EventQueue, QueueFull, RateVerdict, Rest, SocketSession};
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

    /// Refuses the event as [`Ev::fail`], after every earlier event of the socket has answered
    /// (for pipelined handlers).
    pub fn fail_later(self, code: &'static str, message: impl Into<String>) -> Then {
        let message = message.into();
        Then::later(async move { self.fail(code, message) })
    }

    /// Refuses the event as [`Ev::fail_at_limit`], after every earlier event of the socket
    /// has answered (for pipelined handlers).
    pub fn fail_at_limit_later(
        self,
        limit: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Then {
        let message = message.into();
        Then::later(async move { self.fail_at_limit(limit, code, message) })
    }

    /// Issues `op` (a broadcast) now and returns what finishes it: awaiting its outcome, then
    /// `finish(self, outcome)` (which acknowledges), after every earlier event of the socket
    /// has finished.
    ///
    /// Ordering argument. `op` is polled once here, inside the socket's running job, with the
    /// draining task's context. For a broadcast through socketioxide-redis 0.4 that first poll
    /// runs synchronously down to the Redis command being queued: `BroadcastOperators::emit`
    /// serializes the packet before its future, `CustomRedisAdapter::broadcast` awaits
    /// `send_req` first, which encodes the request and awaits our `Driver::publish`, which
    /// (`publish_request`) awaits fred's `spublish`: `basic_request_response` builds the
    /// command, awaits `check_blocking_policy` (ready at once: the publishing client never
    /// blocks) and hands it to the client's router with a synchronous `try_send`, and only then
    /// waits for the reply. The router writes its commands in the order it received them, so
    /// publishes of one socket reach Redis, and every other node, in the order of its events
    /// (a multi-room publish queues one command per room, in turn, on the same first poll).
    /// socketioxide-redis delivers to local sockets after the publish completes, inside the
    /// future, so local delivery and the acknowledgement happen when the rest runs: rests run
    /// one at a time in event order (see [`crate::session`]), so both keep the client's order
    /// too. The whole-process test `room_messages_pipelined_keep_their_order` checks this.
    pub fn after_issue<F, O>(
        self,
        op: F,
        finish: impl FnOnce(Self, O) + Send + 'static,
    ) -> impl Future<Output = Then> + Send
    where
        F: Future<Output = O> + Send + 'static,
        O: Send + 'static,
    {
        async move {
            let mut op = Box::pin(op);
            let first = std::future::poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await;
            match first {
                Poll::Ready(outcome) => Then::later(async move { finish(self, outcome) }),
                Poll::Pending => Then::later(async move {
                    let outcome = op.await;
                    finish(self, outcome);
                }),
            }
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

/// What a pipelined handler leaves to run after every earlier event of the socket has
/// finished: made by [`Ev::after_issue`] and [`Ev::fail_later`] only, so every answer of a
/// pipelined handler keeps the client's order.
pub struct Then(Rest);

impl Then {
    fn later(f: impl Future<Output = ()> + Send + 'static) -> Self {
        Then(Box::pin(f))
    }
}

/// How a handler's future is queued: a handler returning `()` as a barrier, one returning a
/// [`Then`] as pipelined (see the module docs).
pub trait Queueing: Send + 'static {
    /// Queues `job` on `queue`.
    fn push<Fut: Future<Output = Self> + Send + 'static>(
        queue: &Arc<EventQueue>,
        job: Fut,
        bytes: u64,
        max_bytes: u64,
    ) -> Result<(), QueueFull>;
}

impl Queueing for () {
    fn push<Fut: Future<Output = ()> + Send + 'static>(
        queue: &Arc<EventQueue>,
        job: Fut,
        bytes: u64,
        max_bytes: u64,
    ) -> Result<(), QueueFull> {
        queue.push(job, bytes, max_bytes)
    }
}

impl Queueing for Then {
    fn push<Fut: Future<Output = Then> + Send + 'static>(
        queue: &Arc<EventQueue>,
        job: Fut,
        bytes: u64,
        max_bytes: u64,
    ) -> Result<(), QueueFull> {
        let job = async move {
            let rest: Pin<Box<dyn Future<Output = ()> + Send>> = job.await.0;
            rest
        };
        queue.push_pipelined(job, bytes, max_bytes)
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
    Fut: Future + Send + 'static,
    Fut::Output: Queueing,
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
        if let Err(full) = Fut::Output::push(
            &self.session.queue,
            (self.f)(ev, data),
            bytes,
            config.max_pending_bytes,
        ) {
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

/// Registers `f` for `event` on `socket`, run in order on the socket's queue (pipelined when
/// it returns a [`Then`]).
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
    Fut: Future + Send + 'static,
    Fut::Output: Queueing,
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
