//! The fred-based [`Driver`] that carries socketioxide-redis's remote-adapter protocol (and
//! this crate's notification fan-out) over Redis sharded pub/sub, with room broadcasts routed
//! by interest (see [`crate::routing`]).
//!
//! What it adds to socketioxide-redis's own fred driver:
//! - room broadcasts of routed namespaces go to the rooms' channels (`--adapter-routing
//!   rooms`), and the node subscribes to a room's channel while it has local members
//!   ([`SioDriver::join_room`], [`SioDriver::leave_room`]);
//! - every channel is resubscribed after Redis reconnects: the watcher subscribes again to
//!   every channel the node wants (adapter channels and rooms with local members), retrying
//!   with exponential back-off until it succeeds, then drops any subscription beyond them;
//! - [`SioDriver::subscribed`] is false from the moment the connection drops until every
//!   channel is subscribed again, so the node reports not ready meanwhile;
//! - every queue is bounded: the client's broadcast buffer and one `mpsc` per channel;
//!   overflow is counted in `sio_adapter_dropped_messages_total{queue}` and logged at most
//!   once per [`DROP_LOG_INTERVAL`];
//! - every adapter message received is counted as useful or wasted
//!   (`sio_adapter_messages_handled_total`), and the subscriptions held are a gauge;
//! - publishes go through a separate client, are counted and their failures reported;
//! - every moment messages may have been lost (a resubscription completed, a queue
//!   overflowed) bumps [`SioDriver::losses`], so consumers that can repair a gap (the
//!   notification catch-up) know when to look.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use socketioxide_core::Uid;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{broadcast, mpsc, watch};

use crate::keys::Keys;
use crate::log_throttle::LogThrottle;
use crate::metrics::{AdapterMetrics, HANDLED_KINDS, LabelCounters, RECEIVED_KINDS, channel_kind};
use crate::routing::{
    BROADCAST, Interest, RequestHead, RoomInterest, RoomRouting, Routing, SEEN_CAPACITY, Seen,
    request_sender,
};

/// Drops are logged at most once per this interval (they are always counted).
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the watcher checks the subscriber connection.
const WATCH_PERIOD: Duration = Duration::from_millis(200);
/// Longest pause between two resubscription attempts.
const MAX_RESUBSCRIBE_BACKOFF: Duration = Duration::from_secs(5);

/// A Redis error seen by the driver.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis: {0}")]
pub struct DriverError(pub String);

impl From<fred::error::Error> for DriverError {
    fn from(e: fred::error::Error) -> Self {
        DriverError(e.to_string())
    }
}

/// Cross-node pub/sub over Redis; cheap to clone (every clone shares the connections).
#[derive(Clone)]
pub struct SioDriver {
    inner: Arc<Inner>,
}

struct Inner {
    subscriber: SubscriberClient,
    publisher: Client,
    handlers: RwLock<HashMap<String, mpsc::Sender<ChanItem>>>,
    metrics: AdapterMetrics,
    /// The receive path's counters, resolved once (see [`LabelCounters`]).
    received: LabelCounters,
    handled_useful: LabelCounters,
    handled_wasted: LabelCounters,
    subscribed: Arc<AtomicBool>,
    drop_log: LogThrottle,
    keys: Keys,
    routing: RoomRouting,
    /// `{p}-room#`: every room channel starts with it.
    room_prefix: String,
    /// Request channel -> namespace, for the routed namespaces.
    routed: HashMap<String, String>,
    /// Room channels this node wants, with their members.
    interest: RwLock<Interest>,
    /// Multi-room requests already delivered.
    seen: Mutex<Seen>,
    /// This node's adapter uid, learnt from its response channel.
    uid: OnceLock<Uid>,
    losses: watch::Sender<u64>,
}

impl std::fmt::Debug for SioDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SioDriver")
            .field("subscribed", &self.inner.subscribed.load(Ordering::Relaxed))
            .field("routing", &self.inner.routing)
            .finish_non_exhaustive()
    }
}

impl SioDriver {
    /// Starts the driver on connected clients: the message dispatcher and the connection
    /// watcher run until the subscriber client is dropped.
    pub fn start(
        subscriber: SubscriberClient,
        publisher: Client,
        metrics: AdapterMetrics,
        keys: Keys,
        routing: RoomRouting,
    ) -> Self {
        let subscribed = Arc::new(AtomicBool::new(subscriber.is_connected()));
        metrics.subscribed.set(i64::from(subscriber.is_connected()));
        let routed = routing
            .namespaces
            .iter()
            .map(|ns| (keys.request_channel(ns), ns.clone()))
            .collect();
        let inner = Arc::new(Inner {
            subscriber,
            publisher,
            handlers: RwLock::new(HashMap::new()),
            received: LabelCounters::new(&metrics.received, &RECEIVED_KINDS, &[]),
            handled_useful: LabelCounters::new(&metrics.handled, &HANDLED_KINDS, &["useful"]),
            handled_wasted: LabelCounters::new(&metrics.handled, &HANDLED_KINDS, &["wasted"]),
            metrics,
            subscribed,
            drop_log: LogThrottle::new(DROP_LOG_INTERVAL),
            room_prefix: keys.room_channel_prefix(),
            keys,
            routing,
            routed,
            interest: RwLock::new(Interest::new()),
            seen: Mutex::new(Seen::new(SEEN_CAPACITY)),
            uid: OnceLock::new(),
            losses: watch::Sender::new(0),
        });
        tokio::spawn(dispatch(
            Arc::downgrade(&inner),
            inner.subscriber.message_rx(),
        ));
        tokio::spawn(watch(
            Arc::downgrade(&inner),
            inner.subscriber.reconnect_rx(),
        ));
        Self { inner }
    }

    /// Shared flag: true while every channel is subscribed.
    pub fn subscribed(&self) -> Arc<AtomicBool> {
        self.inner.subscribed.clone()
    }

    /// A counter bumped whenever messages may have been lost: the subscription came back
    /// after being down (what was published meanwhile is gone) or a queue overflowed.
    pub fn losses(&self) -> watch::Receiver<u64> {
        self.inner.losses.subscribe()
    }

    /// Subscribes to shard channel `chan`, its messages going to `tx` (which many channels
    /// may share, unlike [`Driver::subscribe`]'s one queue per channel).
    pub async fn subscribe_into(
        &self,
        chan: &str,
        tx: mpsc::Sender<ChanItem>,
    ) -> Result<(), DriverError> {
        let new = write(&self.inner.handlers)
            .insert(chan.to_owned(), tx)
            .is_none();
        if let Err(e) = self.inner.subscriber.ssubscribe(chan).await {
            write(&self.inner.handlers).remove(chan);
            return Err(e.into());
        }
        if new {
            // counted like every other channel; `Driver::unsubscribe` takes it off again
            self.inner.metrics.subscriptions.inc();
        }
        Ok(())
    }

    /// The publishing client (also used for commands).
    pub fn client(&self) -> &Client {
        &self.inner.publisher
    }

    /// The driver's metrics.
    pub fn metrics(&self) -> &AdapterMetrics {
        &self.inner.metrics
    }

    /// The routing this driver publishes with.
    pub fn routing(&self) -> &RoomRouting {
        &self.inner.routing
    }

    /// Room channels subscribed (or being subscribed) because of local members.
    pub fn room_subscriptions(&self) -> usize {
        read(&self.inner.interest).len()
    }

    /// Publishes `payload` on shard channel `chan` and returns how many subscribers got it.
    pub async fn publish_counted(&self, chan: &str, payload: Vec<u8>) -> Result<u64, DriverError> {
        self.inner
            .publish_bytes(chan, bytes::Bytes::from(payload))
            .await
    }

    /// A local socket of namespace `ns` is about to join `room`: when it is the room's first
    /// local member, subscribes to the room's channel and returns once Redis confirmed it
    /// (so a message published after the join is acknowledged reaches this node). Call
    /// [`SioDriver::leave_room`] exactly once for every successful call, when the socket left
    /// the room or disconnected. On error nothing is held and the join should be refused.
    /// No-op for namespaces that are not routed.
    pub async fn join_room(&self, ns: &str, room: &str) -> Result<(), DriverError> {
        let Some(request_channel) = self.inner.request_channel_of(ns) else {
            return Ok(());
        };
        let chan = self.inner.keys.room_channel(ns, room);
        let gate = {
            let mut interest = write(&self.inner.interest);
            let entry = interest
                .entry(chan.clone())
                .or_insert_with(|| RoomInterest {
                    members: 0,
                    request_channel: request_channel.into(),
                    gate: Arc::new(tokio::sync::Mutex::new(false)),
                });
            entry.members += 1;
            entry.gate.clone()
        };
        let mut subscribed = gate.lock().await;
        if *subscribed {
            return Ok(());
        }
        match self.inner.subscriber.ssubscribe(chan.as_str()).await {
            Ok(()) => {
                *subscribed = true;
                self.inner.metrics.subscriptions.inc();
                Ok(())
            }
            Err(e) => {
                drop(subscribed);
                self.inner.release(&chan).await;
                Err(e.into())
            }
        }
    }

    /// A local socket of namespace `ns` left `room` (or disconnected): after the room's last
    /// local member, unsubscribes from its channel. No-op for namespaces that are not routed.
    pub async fn leave_room(&self, ns: &str, room: &str) {
        if self.inner.request_channel_of(ns).is_none() {
            return;
        }
        let chan = self.inner.keys.room_channel(ns, room);
        self.inner.release(&chan).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn set_subscribed(&self, up: bool) {
        let was = self.subscribed.swap(up, Ordering::SeqCst);
        self.metrics.subscribed.set(i64::from(up));
        if was != up {
            if up {
                self.losses.send_modify(|n| *n += 1);
                tracing::info!("redis: every channel subscribed");
            } else {
                tracing::warn!(
                    "redis: subscriber connection lost; node not ready until resubscribed"
                );
            }
        }
    }

    /// The request channel of `ns` if its rooms are routed.
    fn request_channel_of(&self, ns: &str) -> Option<String> {
        let chan = self.keys.request_channel(ns);
        self.routed.contains_key(&chan).then_some(chan)
    }

    fn kind_of(&self, chan: &str) -> &'static str {
        if chan.starts_with(&self.room_prefix) {
            "room"
        } else {
            channel_kind(chan)
        }
    }

    /// One member fewer on `chan`; the last one out unsubscribes (under the channel's gate,
    /// re-checking the count there: a join may have come in meanwhile).
    async fn release(&self, chan: &str) {
        let gate = {
            let mut interest = write(&self.interest);
            let Some(entry) = interest.get_mut(chan) else {
                return;
            };
            entry.members = entry.members.saturating_sub(1);
            if entry.members > 0 {
                return;
            }
            entry.gate.clone()
        };
        let gate = &gate;
        let mut subscribed = gate.lock().await;
        let still_wanted = read(&self.interest)
            .get(chan)
            .is_some_and(|e| e.members > 0);
        if still_wanted {
            return;
        }
        if *subscribed {
            *subscribed = false;
            self.metrics.subscriptions.dec();
            // A failure (Redis away) leaves a subscription the resubscription pass removes.
            if let Err(e) = self.subscriber.sunsubscribe(chan).await {
                tracing::debug!(chan, "room channel not unsubscribed now: {e}");
            }
        }
        let mut interest = write(&self.interest);
        if interest
            .get(chan)
            .is_some_and(|e| e.members == 0 && Arc::ptr_eq(&e.gate, gate))
        {
            interest.remove(chan);
        }
    }

    async fn publish_bytes(&self, chan: &str, payload: bytes::Bytes) -> Result<u64, DriverError> {
        let kind = self.kind_of(chan);
        match self.publisher.spublish::<u64, _, _>(chan, payload).await {
            Ok(n) => {
                self.metrics.published.with_label_values(&[kind]).inc();
                Ok(n)
            }
            Err(e) => {
                self.metrics.publish_errors.inc();
                Err(e.into())
            }
        }
    }

    /// Publishes a request: a routable room broadcast of a routed namespace goes to its
    /// rooms' channels (with `rooms` routing), everything else to `chan`.
    async fn publish_request(&self, chan: String, val: Vec<u8>) -> Result<(), DriverError> {
        let payload = bytes::Bytes::from(val);
        if self.routing.mode == Routing::Rooms
            && let Some(ns) = self.routed.get(&chan)
            && let Some(head) = RequestHead::decode(&payload)
            && let Some(rooms) = head.routable_rooms()
        {
            let sends = rooms.iter().map(|room| {
                let room_chan = self.keys.room_channel(ns, room);
                let payload = payload.clone();
                async move { self.publish_bytes(&room_chan, payload).await }
            });
            futures::future::try_join_all(sends).await?;
            return Ok(());
        }
        self.publish_bytes(&chan, payload).await.map(|_| ())
    }

    fn dropped(&self, queue: &'static str, n: u64) {
        self.metrics.dropped.with_label_values(&[queue]).inc_by(n);
        self.losses.send_modify(|l| *l += 1);
        if let Some(total) = self.drop_log.admit(n) {
            tracing::warn!(
                queue,
                dropped = total,
                "cross-node messages dropped because a queue was full (see sio_adapter_dropped_messages_total)"
            );
        }
    }

    fn handled(&self, kind: &'static str, useful: bool) {
        if useful {
            self.handled_useful.inc(kind);
        } else {
            self.handled_wasted.inc(kind);
        }
    }

    /// True if this node has a local member of one of `rooms` of the namespace whose
    /// request channel is `request_channel` (false when its rooms are not tracked).
    fn has_members(
        &self,
        request_channel: &str,
        rooms: &[socketioxide_core::adapter::Room],
    ) -> bool {
        let Some(ns) = self.routed.get(request_channel) else {
            return true;
        };
        let interest = read(&self.interest);
        rooms.iter().any(|room| {
            interest
                .get(&self.keys.room_channel(ns, room))
                .is_some_and(|e| e.members > 0)
        })
    }

    /// Accounts for an adapter request received on `request_channel`, directly (`room` is
    /// `None`) or through a room channel (`room`: the local members of that channel's room),
    /// and says whether to hand it to the adapter.
    fn account_request(&self, request_channel: &str, room: Option<usize>, data: &[u8]) -> bool {
        if room.is_some() && self.is_own(data) {
            // every node with members of a room gets its own messages back from the room's
            // channel: told apart by the first field, without decoding the head
            self.handled("room", false);
            return false;
        }
        let Some(head) = RequestHead::decode(data) else {
            self.handled("other", false);
            return true;
        };
        let own = self.uid.get().is_some_and(|uid| *uid == head.node_id);
        let rooms = head.rooms();
        let kind = match (head.r#type, rooms.is_empty()) {
            (BROADCAST, true) => "broadcast",
            (BROADCAST, false) => "room",
            _ => "request",
        };
        if own {
            // the adapter ignores its own requests coming back
            self.handled(kind, false);
            return false;
        }
        if room.is_some() && rooms.len() > 1 && !lock(&self.seen).first(head.id) {
            self.handled(kind, false);
            return false;
        }
        let targeted = head.opts.as_ref().and_then(|o| o.server_id).is_some();
        let useful = targeted
            || rooms.is_empty()
            || match room {
                // a one-room message on a room channel is for that channel's room, whose
                // members were just read: no second look-up (nor channel name to build)
                Some(members) if rooms.len() == 1 => members > 0,
                _ => self.has_members(request_channel, rooms),
            };
        self.handled(kind, useful);
        true
    }

    /// True if this node sent request `data`.
    fn is_own(&self, data: &[u8]) -> bool {
        self.uid
            .get()
            .is_some_and(|uid| request_sender(data) == Some(uid.as_str()))
    }

    fn deliver(&self, msg: Message) {
        let chan: &str = &msg.channel;
        let kind = self.kind_of(chan);
        self.received.inc(kind);
        let Some(data) = msg.value.into_owned_bytes() else {
            tracing::debug!(chan, "non-binary pub/sub message ignored");
            return;
        };
        // the channel the adapter reads it from, allocated once and handed over
        let target = match kind {
            "room" => {
                let room = read(&self.interest)
                    .get(chan)
                    .map(|e| (e.request_channel.clone(), e.members));
                let Some((request_channel, members)) = room else {
                    // arrived after the last member left
                    self.handled("room", false);
                    return;
                };
                if !self.account_request(&request_channel, Some(members), &data) {
                    return;
                }
                String::from(&*request_channel)
            }
            "request" => {
                if !self.account_request(chan, None, &data) {
                    return;
                }
                chan.to_owned()
            }
            "response" => {
                self.handled("other", true);
                chan.to_owned()
            }
            _ => chan.to_owned(),
        };
        let handlers = read(&self.handlers);
        let Some(tx) = handlers.get(&target) else {
            return;
        };
        match tx.try_send((target, data)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped(kind, 1),
            Err(mpsc::error::TrySendError::Closed((chan, _))) => {
                drop(handlers);
                if write(&self.handlers).remove(&chan).is_some() {
                    self.metrics.subscriptions.dec();
                }
            }
        }
    }

    /// Every shard channel the node wants: its adapter and bus channels, and the rooms with
    /// local members.
    fn wanted(&self) -> HashSet<String> {
        let mut wanted: HashSet<String> = read(&self.handlers).keys().cloned().collect();
        wanted.extend(
            read(&self.interest)
                .iter()
                .filter(|(_, e)| e.members > 0)
                .map(|(c, _)| c.clone()),
        );
        wanted
    }

    /// Subscribes again to every channel the node wants, then drops any subscription beyond
    /// them (a room left while Redis was away). (fred's `resubscribe_all` also sends a
    /// `SUBSCRIBE` with no channel when only shard channels are tracked, which Redis refuses,
    /// so the shard channels are subscribed here one by one.)
    async fn resubscribe(&self) -> Result<(), fred::error::Error> {
        for chan in self.wanted() {
            self.subscriber.ssubscribe(chan).await?;
        }
        let wanted = self.wanted();
        for chan in self.subscriber.tracked_shard_channels() {
            if !wanted.contains(&*chan) {
                self.subscriber.sunsubscribe(chan).await?;
            }
        }
        Ok(())
    }
}

async fn dispatch(inner: std::sync::Weak<Inner>, mut rx: broadcast::Receiver<Message>) {
    loop {
        let msg = rx.recv().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match msg {
            Ok(msg) => inner.deliver(msg),
            Err(broadcast::error::RecvError::Lagged(n)) => inner.dropped("subscriber", n),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn watch(
    inner: std::sync::Weak<Inner>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
) {
    let mut need_resubscribe = false;
    let mut backoff = Duration::from_millis(50);
    let mut next_attempt = Instant::now();
    loop {
        let reconnected = tokio::select! {
            r = reconnects.recv() => !matches!(r, Err(broadcast::error::RecvError::Closed)),
            _ = tokio::time::sleep(WATCH_PERIOD) => false,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if reconnected {
            inner.metrics.reconnects.inc();
            need_resubscribe = true;
            backoff = Duration::from_millis(50);
            next_attempt = Instant::now();
        }
        if !inner.subscriber.is_connected() {
            inner.set_subscribed(false);
            need_resubscribe = true;
            continue;
        }
        if need_resubscribe && Instant::now() >= next_attempt {
            inner.set_subscribed(false);
            match inner.resubscribe().await {
                Ok(()) => {
                    need_resubscribe = false;
                    inner.set_subscribed(true);
                }
                Err(e) => {
                    tracing::warn!("redis: resubscribe failed, retrying in {backoff:?}: {e}");
                    next_attempt = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_RESUBSCRIBE_BACKOFF);
                }
            }
        }
    }
}

/// The uid in a response channel `{p}-response#{ns}#{uid}#`.
fn response_channel_uid(chan: &str) -> Option<Uid> {
    let rest = chan.strip_suffix('#')?;
    let (_, uid) = rest.rsplit_once('#')?;
    uid.parse().ok()
}

impl Driver for SioDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.inner.publish_request(chan, val).await
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        if channel_kind(&chan) == "response"
            && let Some(uid) = response_channel_uid(&chan)
        {
            let _ = self.inner.uid.set(uid);
        }
        let (tx, rx) = mpsc::channel(size.max(1));
        let new = write(&self.inner.handlers)
            .insert(chan.clone(), tx)
            .is_none();
        if let Err(e) = self.inner.subscriber.ssubscribe(chan.as_str()).await {
            write(&self.inner.handlers).remove(&chan);
            return Err(e.into());
        }
        if new {
            self.inner.metrics.subscriptions.inc();
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        if write(&self.inner.handlers).remove(&chan).is_some() {
            self.inner.metrics.subscriptions.dec();
        }
        self.inner.subscriber.sunsubscribe(chan).await?;
        Ok(())
    }

    /// Subscribers of the request channel: `PUBSUB SHARDNUMSUB` is routed to the shard that
    /// owns the channel's slot, so it is exact on Redis Cluster too.
    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, n): (String, u16) = self.inner.publisher.pubsub_shardnumsub(chan).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uid_of_a_response_channel() {
        let uid = Uid::new();
        assert_eq!(
            response_channel_uid(&format!("sio-response#/#{uid}#")),
            Some(uid)
        );
        assert_eq!(response_channel_uid("sio-response#/#"), None);
    }
}
