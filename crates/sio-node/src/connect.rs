//! What every namespace does when a socket connects and disconnects: authenticate, open the
//! session, count, and clean up.

use std::sync::Arc;
use std::time::Duration;

use sio_redis_adapter::log_throttle::LogThrottle;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::DisconnectReason;

use crate::auth::AuthError;
use crate::session::SocketSession;
use crate::state::NodeState;

/// Why a namespace connect was refused; the text reaches the client as `connect_error`'s
/// `err.message`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectRefused {
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The handshake carried an unusable value.
    #[error("bad handshake: {0}")]
    BadInput(String),
    /// The shared state could not be read; the client should retry.
    #[error("service unavailable: {0}; retry shortly")]
    Unavailable(String),
}

/// Authenticates a connecting socket and opens its session (not yet in its extensions).
pub fn admit<A: Adapter>(
    node: &NodeState,
    socket: &SocketRef<A>,
    auth: Option<&serde_json::Value>,
) -> Result<Arc<SocketSession>, ConnectRefused> {
    match node.auth.authenticate(auth) {
        Ok(identity) => Ok(SocketSession::new(identity)),
        Err(e) => Err(refuse(node, socket, e)),
    }
}

/// Counts and logs a refused connect; the error is what the client reads.
pub fn refuse<A: Adapter>(node: &NodeState, socket: &SocketRef<A>, e: AuthError) -> ConnectRefused {
    node.metrics
        .auth_failures
        .with_label_values(&[socket.ns(), e.reason()])
        .inc();
    // Refusals are the client's doing and may come as fast as it can connect: one line a
    // second at INFO (with how many there were since the last such line), the rest at DEBUG;
    // all are counted above.
    match REFUSAL_LOG.admit(1) {
        Some(refused_since_last_line) => tracing::info!(
            ns = socket.ns(),
            reason = e.reason(),
            refused_since_last_line,
            "connect refused: {e}"
        ),
        None => tracing::debug!(
            ns = socket.ns(),
            reason = e.reason(),
            "connect refused: {e}"
        ),
    }
    e.into()
}

static REFUSAL_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

/// The session a middleware stored on the socket.
pub fn session<A: Adapter>(socket: &SocketRef<A>) -> Option<Arc<SocketSession>> {
    socket.extensions.get::<Arc<SocketSession>>()
}

/// Counts the connect, starts the token's expiry timer, queues `first` before the events the
/// client sent meanwhile, and starts the socket's event queue (connect handler of every
/// namespace). Work that needs the connected socket is queued here, not by the middleware: a
/// socket whose connect never completes then holds no job or timer that references it.
pub fn connected<A, F, Fut>(
    node: &Arc<NodeState>,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    first: F,
) where
    A: Adapter,
    F: FnOnce(Arc<SocketSession>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    node.metrics
        .connects
        .with_label_values(&[socket.ns()])
        .inc();
    if let Some(s) = session(socket) {
        crate::expiry::watch(node, io, socket, &s);
        s.queue.push_front(first(s.clone()));
        s.queue.start();
    }
}

/// A stable label for a disconnect reason.
pub fn reason_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "packet_parsing_error",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
    }
}

/// Counts the disconnect; the namespace queues its own clean-up after it.
pub fn disconnected<A: Adapter>(node: &NodeState, socket: &SocketRef<A>, reason: DisconnectReason) {
    let session_ended = !matches!(
        reason,
        DisconnectReason::ClientNSDisconnect | DisconnectReason::ServerNSDisconnect
    );
    if session_ended {
        node.drain.forget(&socket.id.to_string());
    }
    if let Some(s) = session(socket) {
        crate::expiry::unwatch(node, &s);
    }
    node.metrics
        .disconnects
        .with_label_values(&[socket.ns(), reason_label(reason)])
        .inc();
    node.admin_disconnects.record(
        socket.ns(),
        socket.id,
        crate::admin::stats::ui_reason(reason),
    );
}

/// Retries a store call a few times with a short back-off (Redis failing over, say).
pub async fn with_retries<T, F, Fut>(mut f: F) -> Result<T, sio_redis_adapter::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sio_redis_adapter::StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= 3 => return Err(e),
            Err(e) => {
                tracing::debug!("store call failed, retrying in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay *= 3;
                attempt += 1;
            }
        }
    }
}
