//! Draining a node on shutdown so that its clients reconnect elsewhere and lose nothing.
//!
//! The node is first marked draining (`/readyz` 503, registry flag) so proxies stop sending it
//! handshakes. Then its Engine.IO sessions are closed in paced batches with jitter:
//! WebSocket connections are cut at the transport and pending long-polls are answered with
//! an Engine.IO close packet. Either way the official client sees a transport close and
//! reconnects at once, through the proxy, to another node, where its rooms are restored and
//! its missed notifications replayed. (A Socket.IO disconnect would instead tell the client
//! not to reconnect.) Whatever is left when the grace period is nearly over is closed at once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use rand::seq::SliceRandom;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SocketIo, TransportType};
use tokio::sync::Notify;

use crate::conn::{ConnHandle, ConnInfo};
use crate::state::NodeState;

/// The part of the shutdown that must see every Engine.IO request.
#[derive(Debug, Default)]
pub struct DrainState {
    /// Polling sessions told to close.
    closing: Mutex<HashSet<String>>,
    /// Wakes pending long-polls when sessions are added to `closing`.
    wake: Notify,
    /// WebSocket connection of each upgraded session (its handshake came over polling, on
    /// another connection).
    upgraded: Mutex<Upgraded>,
}

/// The WebSocket connections that carry upgraded sessions, by sid.
///
/// Only requests the engine accepted for an upgrade (a sid of the engine's shape, answered
/// `101`) are recorded, and entries whose connection has closed are swept out whenever the
/// map doubles: it never holds more than twice the node's open WebSocket connections (plus
/// [`MIN_SWEEP`]), whatever sids clients forge.
#[derive(Debug, Default)]
struct Upgraded {
    by_sid: HashMap<Sid, ConnHandle>,
    /// Size at which the next sweep runs.
    sweep_at: usize,
}

/// Entries below which no sweep runs.
const MIN_SWEEP: usize = 1024;

impl Upgraded {
    fn record(&mut self, sid: Sid, handle: ConnHandle) {
        if self.by_sid.len() >= self.sweep_at {
            self.by_sid.retain(|_, h| !h.is_closed());
            self.sweep_at = (self.by_sid.len() * 2).max(MIN_SWEEP);
        }
        self.by_sid.insert(sid, handle);
    }

    /// The open connection of `sid`'s WebSocket, if it has one.
    fn open(&self, sid: &str) -> Option<&ConnHandle> {
        let sid: Sid = sid.parse().ok()?;
        self.by_sid.get(&sid).filter(|h| !h.is_closed())
    }
}

/// How long a polling request of a session whose WebSocket upgrade is under way waits before
/// the engine sees it: the client may have sent the upgrade's last packet (`5`) already, and
/// a request that comes after it must get `400` (the session has left polling), not the
/// no-op the engine gives while the upgrade is pending. Official clients send no new polling
/// request once the probe is answered, so only stray requests wait.
const UPGRADE_SETTLE: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DrainState {
    /// True while a WebSocket connection of session `sid` is open.
    fn has_websocket(&self, sid: &str) -> bool {
        lock(&self.upgraded).open(sid).is_some()
    }

    /// Sessions with a recorded WebSocket connection (open or not yet swept).
    pub fn recorded_websockets(&self) -> usize {
        lock(&self.upgraded).by_sid.len()
    }

    fn is_closing(&self, sid: &str) -> bool {
        lock(&self.closing).contains(sid)
    }

    async fn closed(&self, sid: &str) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closing(sid) {
                return;
            }
            notified.await;
        }
    }

    /// Forgets a session that ended (called from disconnect handlers).
    pub fn forget(&self, sid: &str) {
        if let Ok(sid) = sid.parse::<Sid>() {
            lock(&self.upgraded).by_sid.remove(&sid);
        }
        lock(&self.closing).remove(sid);
    }
}

/// The value of `name` in a URL query string (as written: not percent-decoded).
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn engine_close() -> Response {
    // An Engine.IO v4 close packet: the client reconnects (reason "transport close").
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        "1",
    )
        .into_response()
}

fn session_unknown() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(r#"{"code":1,"message":"Session ID unknown"}"#),
    )
        .into_response()
}

/// Middleware in front of the Engine.IO service: remembers which connection carries each
/// upgraded WebSocket, and closes polling sessions being drained.
pub async fn engine_guard(
    State(node): State<std::sync::Arc<NodeState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if !(path.starts_with("/socket.io") || path.starts_with("/engine.io")) {
        return next.run(req).await;
    }
    let query = req.uri().query().unwrap_or_default().to_owned();
    let Some(sid) = query_param(&query, "sid").map(str::to_owned) else {
        return next.run(req).await;
    };
    let drain = &node.drain;
    match query_param(&query, "transport") {
        Some("websocket") => {
            if drain.is_closing(&sid) {
                return session_unknown();
            }
            // A sid of another shape is no session: the engine answers 400, nothing to keep.
            let Ok(engine_sid) = sid.parse::<Sid>() else {
                return next.run(req).await;
            };
            let handle = req
                .extensions()
                .get::<ConnectInfo<ConnInfo>>()
                .map(|ConnectInfo(info)| info.handle.clone());
            let res = next.run(req).await;
            // Recorded only once the engine accepted the upgrade; the engine checks that the
            // session exists after the 101, and closes the connection if not: such entries
            // are swept out with their closed connections.
            if res.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(handle) = handle
            {
                lock(&drain.upgraded).record(engine_sid, handle);
            }
            res
        }
        Some("polling") => {
            if drain.is_closing(&sid) {
                return if req.method() == Method::GET {
                    engine_close()
                } else {
                    session_unknown()
                };
            }
            if drain.has_websocket(&sid) {
                tokio::time::sleep(UPGRADE_SETTLE).await;
            }
            if req.method() != Method::GET {
                return next.run(req).await;
            }
            let node = node.clone();
            tokio::select! {
                res = next.run(req) => res,
                _ = node.drain.closed(&sid) => engine_close(),
            }
        }
        _ => next.run(req).await,
    }
}

/// Every Engine.IO session of this node with its sockets (one per namespace).
fn sessions<A: Adapter>(io: &SocketIo<A>) -> HashMap<String, Vec<SocketRef<A>>> {
    let mut out: HashMap<String, Vec<SocketRef<A>>> = HashMap::new();
    for ns in io.nsps() {
        for s in ns.local().sockets() {
            out.entry(s.id.to_string()).or_default().push(s);
        }
    }
    out
}

fn connection_of<A: Adapter>(
    node: &NodeState,
    sid: &str,
    socket: &SocketRef<A>,
) -> Option<ConnHandle> {
    if let Some(h) = lock(&node.drain.upgraded).open(sid) {
        return Some(h.clone());
    }
    socket
        .req_parts()
        .extensions
        .get::<ConnectInfo<ConnInfo>>()
        .map(|ConnectInfo(info)| info.handle.clone())
}

/// Time a polling client gets to fetch its close packet before [`close_transport`] ends the
/// session on the node's side.
const POLLING_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Closes the Engine.IO session of `socket` at the transport, as the drain does, so the
/// official client reconnects by itself (used when a token expires): a WebSocket connection
/// is cut, a polling client gets the Engine.IO close packet on its next long-poll and the
/// session's sockets are disconnected on this side a moment later.
pub fn close_transport<A: Adapter>(
    node: &std::sync::Arc<NodeState>,
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
) {
    let sid = socket.id.to_string();
    let handle = (socket.transport_type() == TransportType::Websocket)
        .then(|| connection_of(node, &sid, socket))
        .flatten();
    if let Some(h) = handle {
        h.kill();
        return;
    }
    lock(&node.drain.closing).insert(sid.clone());
    node.drain.wake.notify_waiters();
    let sockets: Vec<SocketRef<A>> = io
        .nsps()
        .into_iter()
        .filter_map(|ns| ns.get_socket(socket.id))
        .collect();
    let node = node.clone();
    tokio::spawn(async move {
        tokio::time::sleep(POLLING_CLOSE_GRACE).await;
        for s in sockets {
            let _ = s.disconnect();
        }
        // A server-side disconnect does not forget the session (the drain's end does not
        // need to): forget it here, or `closing` would keep its sid for ever.
        node.drain.forget(&sid);
    });
}

/// Closes every session of the node in batches of `--drain-batch`, `--drain-interval` apart
/// (plus up to half of it in jitter), and the rest at once one second before `deadline`.
pub async fn drain<A: Adapter>(node: &NodeState, io: &SocketIo<A>, deadline: Instant) {
    let batch = node.config.drain_batch.max(1);
    let interval = node.config.drain_interval;
    let started = Instant::now();
    let total = sessions(io).len();
    tracing::info!(
        sessions = total,
        batch,
        ?interval,
        "draining: closing sessions in batches"
    );
    let hard_stop = deadline
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(deadline);
    let mut handled: HashSet<String> = HashSet::new();
    let mut polling_closed: Vec<SocketRef<A>> = Vec::new();
    // New sessions may still arrive until every proxy has seen this node draining: keep
    // sweeping until none is left.
    while Instant::now() < hard_stop {
        let all = sessions(io);
        if all.is_empty() {
            break;
        }
        let mut open: Vec<(String, Vec<SocketRef<A>>)> = all
            .into_iter()
            .filter(|(sid, _)| !handled.contains(sid))
            .collect();
        if open.is_empty() {
            // every session was told to close: end the polling ones on this side too, then
            // wait for the teardown to finish
            for s in polling_closed.drain(..) {
                let _ = s.disconnect();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        open.shuffle(&mut rand::rng());
        for chunk in open.chunks(batch) {
            // Server-side clean-up of polling sessions told to close in the previous batch.
            for s in polling_closed.drain(..) {
                let _ = s.disconnect();
            }
            for (sid, sockets) in chunk {
                let first = &sockets[0];
                let handle = (first.transport_type() == TransportType::Websocket)
                    .then(|| connection_of(node, sid, first))
                    .flatten();
                match handle {
                    Some(h) => h.kill(),
                    None => {
                        lock(&node.drain.closing).insert(sid.clone());
                        polling_closed.extend(sockets.iter().cloned());
                    }
                }
                handled.insert(sid.clone());
            }
            node.drain.wake.notify_waiters();
            node.metrics.drained_sessions.inc_by(chunk.len() as u64);
            let jitter = interval.mul_f64(rand::rng().random_range(0.0..0.5));
            let pause =
                (interval + jitter).min(hard_stop.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            if Instant::now() >= hard_stop {
                break;
            }
        }
    }
    let closed = handled.len();
    for s in polling_closed.drain(..) {
        let _ = s.disconnect();
    }
    let left = sessions(io).len();
    tracing::info!(
        closed,
        left,
        elapsed = ?started.elapsed(),
        "drain done; closing what is left"
    );
    // The disconnect clean-ups of the closed sessions broadcast presence on the namespaces
    // that `close` removes: let them finish first.
    node.cleanups.close();
    let rest = hard_stop.saturating_duration_since(Instant::now());
    if tokio::time::timeout(rest, node.cleanups.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            pending = node.cleanups.len(),
            "disconnect clean-ups still running; their presence updates are left to the leases"
        );
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(rest, io.close()).await.is_err() {
        tracing::warn!("connections still closing at the end of the grace period");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        let q = "EIO=4&transport=polling&t=abc&sid=AAAABBBBCCCCDDDD";
        assert_eq!(query_param(q, "sid"), Some("AAAABBBBCCCCDDDD"));
        assert_eq!(query_param(q, "transport"), Some("polling"));
        assert_eq!(query_param(q, "nope"), None);
    }

    #[test]
    fn upgraded_connections_are_swept_once_closed() {
        let mut u = Upgraded::default();
        let live: Vec<(Sid, ConnHandle)> = (0..100)
            .map(|_| (Sid::new(), ConnHandle::default()))
            .collect();
        for (sid, h) in &live {
            u.record(*sid, h.clone());
        }
        // forged sessions: the engine closes their connections right after the 101
        for _ in 0..100_000 {
            let h = ConnHandle::default();
            u.record(Sid::new(), h.clone());
            h.mark_closed();
        }
        assert!(u.by_sid.len() <= MIN_SWEEP, "{} entries", u.by_sid.len());
        for (sid, _) in &live {
            assert!(u.open(&sid.to_string()).is_some());
        }
        let (sid, h) = &live[0];
        h.mark_closed();
        assert!(u.open(&sid.to_string()).is_none());
        assert!(u.open("not a sid").is_none());
    }
}

/// Property tests of the query parsing in front of Engine.IO.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_query_gets_an_answer(q in "\\PC{0,300}", name in "[a-z]{1,9}") {
            if let Some(v) = query_param(&q, &name) {
                let pair = format!("{name}={v}");
                prop_assert!(q.contains(&pair));
            }
        }

        #[test]
        fn the_first_value_of_a_parameter_is_found(
            pairs in prop::collection::vec(("[a-zA-Z]{1,6}", "[^&=]{0,20}"), 0..8),
            sid in "[A-Za-z0-9_-]{0,40}",
            at in 0usize..8,
        ) {
            let mut pairs: Vec<(String, String)> =
                pairs.into_iter().filter(|(k, _)| k != "sid").collect();
            pairs.insert(at.min(pairs.len()), ("sid".into(), sid.clone()));
            let q = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
            prop_assert_eq!(query_param(&q, "sid"), Some(sid.as_str()));
        }
    }
}
