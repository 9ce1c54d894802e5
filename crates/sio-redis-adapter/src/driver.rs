//! The fred-based [`Driver`] that carries socketioxide-redis's remote-adapter protocol (and
//! this crate's notification fan-out) over Redis sharded pub/sub.
//!
//! What it adds to socketioxide-redis's own fred driver:
//! - every channel is resubscribed after Redis reconnects: the client tracks its shard
//!   channels, and on each reconnect the watcher subscribes to them again, as fred's
//!   `manage_subscriptions` does, retrying with exponential back-off until it succeeds;
//! - [`SioDriver::subscribed`] is false from the moment the connection drops until every
//!   channel is subscribed again, so the node reports not ready meanwhile;
//! - every queue is bounded: the client's broadcast buffer and one `mpsc` per channel;
//!   overflow is counted in `sio_adapter_dropped_messages_total{queue}` and logged at most
//!   once per [`DROP_LOG_INTERVAL`];
//! - publishes go through a separate client, are counted and their failures reported;
//! - every moment messages may have been lost (a resubscription completed, a queue
//!   overflowed) bumps [`SioDriver::losses`], so consumers that can repair a gap (the
//!   notification catch-up) know when to look.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{broadcast, mpsc, watch};

use crate::metrics::{AdapterMetrics, channel_kind};

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
    subscribed: Arc<AtomicBool>,
    drops_since_log: AtomicU64,
    last_drop_log: Mutex<Option<Instant>>,
    losses: watch::Sender<u64>,
}

impl std::fmt::Debug for SioDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SioDriver")
            .field("subscribed", &self.inner.subscribed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SioDriver {
    /// Starts the driver on connected clients: the message dispatcher and the connection
    /// watcher run until the subscriber client is dropped.
    pub fn start(subscriber: SubscriberClient, publisher: Client, metrics: AdapterMetrics) -> Self {
        let subscribed = Arc::new(AtomicBool::new(subscriber.is_connected()));
        metrics.subscribed.set(i64::from(subscriber.is_connected()));
        let inner = Arc::new(Inner {
            subscriber,
            publisher,
            handlers: RwLock::new(HashMap::new()),
            metrics,
            subscribed,
            drops_since_log: AtomicU64::new(0),
            last_drop_log: Mutex::new(None),
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
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(chan.to_owned(), tx);
        if let Err(e) = self.inner.subscriber.ssubscribe(chan).await {
            self.inner
                .handlers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(chan);
            return Err(e.into());
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

    /// Publishes `payload` on shard channel `chan` and returns how many subscribers got it.
    pub async fn publish_counted(&self, chan: &str, payload: Vec<u8>) -> Result<u64, DriverError> {
        let kind = channel_kind(chan);
        match self
            .inner
            .publisher
            .spublish::<u64, _, _>(chan, payload)
            .await
        {
            Ok(n) => {
                self.inner
                    .metrics
                    .published
                    .with_label_values(&[kind])
                    .inc();
                Ok(n)
            }
            Err(e) => {
                self.inner.metrics.publish_errors.inc();
                Err(e.into())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    fn dropped(&self, queue: &'static str, n: u64) {
        self.metrics.dropped.with_label_values(&[queue]).inc_by(n);
        self.losses.send_modify(|l| *l += 1);
        let total = self.drops_since_log.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = lock(&self.last_drop_log);
        if last.is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL) {
            *last = Some(Instant::now());
            self.drops_since_log.store(0, Ordering::Relaxed);
            tracing::warn!(
                queue,
                dropped = total,
                "cross-node messages dropped because a queue was full (see sio_adapter_dropped_messages_total)"
            );
        }
    }

    fn deliver(&self, msg: Message) {
        let chan = msg.channel.to_string();
        let kind = channel_kind(&chan);
        self.metrics.received.with_label_values(&[kind]).inc();
        let Some(data) = msg.value.into_owned_bytes() else {
            tracing::debug!(chan, "non-binary pub/sub message ignored");
            return;
        };
        let handlers = self.handlers.read().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = handlers.get(&chan) else {
            return;
        };
        match tx.try_send((chan, data)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped(kind, 1),
            Err(mpsc::error::TrySendError::Closed((chan, _))) => {
                drop(handlers);
                self.handlers
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&chan);
            }
        }
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
            match resubscribe(&inner.subscriber).await {
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

/// Subscribes again to every shard channel the client tracks. (fred's `resubscribe_all`
/// also sends a `SUBSCRIBE` with no channel when only shard channels are tracked, which Redis
/// refuses, so the shard channels are resubscribed here one by one.)
async fn resubscribe(subscriber: &SubscriberClient) -> Result<(), fred::error::Error> {
    for chan in subscriber.tracked_shard_channels() {
        subscriber.ssubscribe(chan).await?;
    }
    Ok(())
}

impl Driver for SioDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.publish_counted(&chan, val).await.map(|_| ())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size.max(1));
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(chan.clone(), tx);
        if let Err(e) = self.inner.subscriber.ssubscribe(chan.as_str()).await {
            self.inner
                .handlers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&chan);
            return Err(e.into());
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&chan);
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
