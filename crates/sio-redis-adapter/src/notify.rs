//! Live notification fan-out across nodes, routed by user, with a cluster-wide delivery count.
//!
//! ```text
//!  API node A                          Redis                     nodes with u's sockets
//!  ──────────                          ─────                     ──────────────────────
//!  script: XADD {p}:user:{u}:notifications, returns (id, previous id)
//!  SPUBLISH {p}:notify:{u} {u,n,A,r} ─▶ returns k subscribers ──▶ deliver to u's local sockets
//!  wait for k replies  ◀────────────── {p}:notify-reply:A ◀────── SPUBLISH {r, delivered}
//!  answer {id, delivered = Σ}
//! ```
//! A reply missing after the timeout is counted in `sio_adapter_request_timeouts_total`; the
//! notification is stored either way and a reconnecting client replays it.
//!
//! # Routing by user
//! Each user has a shard channel, `{p}:notify:{<user>}` (the hash tag of the user's keys, so
//! it lives on the shard of the user's stream). A node subscribes to it when the first local
//! `/notifications` socket of the user connects, *before* the connect completes
//! ([`NotifyBus::subscribe_user`]; the socket's catch-up then starts from the stream, so
//! nothing published around the connect is missed), and unsubscribes when the user's last
//! local socket leaves (the [`UserSubscription`] guard is dropped). A notification therefore
//! reaches only the nodes holding a socket of its user, and `SPUBLISH` answers how many
//! replies to wait for; a user with no socket anywhere costs one publish and no delivery.
//! Subscriptions held are in `sio_adapter_notify_subscriptions`, and messages received in
//! `sio_adapter_notify_messages_total{outcome=useful|wasted}`.
//!
//! Why per-user channels and not hashed partitions: with `P` partitions a node subscribes to
//! every partition that holds one of its users. At 100,000 users per node and `P` = 4,096, a
//! partition holds ~24 of a node's users on average and the chance that it holds none is
//! e^-24: every node subscribes to every partition and receives every notification of the
//! cluster, as with one channel. Partitions only route when users per node are far fewer than
//! `P`. Per-user channels route exactly at any scale; their cost is one subscription per
//! (node, user) pair: 100,000 `SSUBSCRIBE`d channels for a node with 100,000 users, which
//! Redis keeps in its shard-channel dictionary and the client's (roughly 200 bytes each, about
//! 20 MB per such node, spread over the shards of a cluster), plus one map entry per user on
//! the node (the user id, a count and a lock) and fred's list of tracked channels. Churn costs
//! one `SSUBSCRIBE` when a user's first socket arrives on a node and one `SUNSUBSCRIBE` when
//! the last leaves (a user's further sockets on the same node cost nothing). After a Redis
//! reconnect the driver resubscribes every tracked channel, one command each.
//!
//! Upgrading from the single `{p}:notify` channel: nodes of the two versions do not hear each
//! other's live notifications (the message format changed too), but nothing is lost: every
//! notification is in the stream, and a socket on a new node catches up at the next
//! notification it receives (its `previous` reveals the gap) or at its next connect.
//!
//! # No gap goes unnoticed
//! Each message carries `previous`, the id of the entry before it in the user's stream
//! (returned by the same script that appended it). A node hands it to a socket live only when
//! that socket's last delivered id is `previous`; otherwise the socket missed something and
//! reads the stream first (sio-node's catch-up). A message that never arrives (published while
//! this node's subscription was down, or dropped by a full queue) is noticed without a later
//! one: the driver's [`SioDriver::losses`] counter moves, and the bus calls `resync` so every
//! local socket checks its user's stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use socketioxide_redis::drivers::{ChanItem, Driver};
use tokio::sync::mpsc;

use crate::driver::SioDriver;
use crate::error::{StoreError, StoreResult};
use crate::keys::Keys;
use crate::types::Appended;

/// Hands a notification to the user's sockets on this node; returns how many got it (or will
/// get it from the stream).
pub type LocalDelivery = Arc<dyn Fn(&str, &Appended) -> u64 + Send + Sync>;

/// Asks every local socket to read its user's stream: notifications may have been lost on
/// their way to this node.
pub type Resync = Arc<dyn Fn() + Send + Sync>;

/// Queue size of the notification channels.
const QUEUE: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
struct Publish {
    user: String,
    notification: Appended,
    origin: String,
    req: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    req: u64,
    delivered: u64,
}

/// The cross-node notification bus of one node.
pub struct NotifyBus {
    driver: SioDriver,
    keys: Keys,
    uid: String,
    timeout: Duration,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<u64>>>,
    /// Where every per-user channel's messages go (one queue for all of them).
    notes: mpsc::Sender<ChanItem>,
    /// Users with local sockets: how many, and the lock that orders their (un)subscribes.
    users: Mutex<HashMap<String, UserEntry>>,
}

#[derive(Default)]
struct UserEntry {
    /// Local sockets of the user (guards alive).
    sockets: usize,
    /// Held while the user's channel is (un)subscribed; true while subscribed.
    subscribed: Arc<tokio::sync::Mutex<bool>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for NotifyBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyBus")
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

impl NotifyBus {
    /// Subscribes to this node's reply channel; `deliver` hands notifications to local
    /// sockets, `resync` is called when messages may have been lost. Users' channels are
    /// subscribed by [`NotifyBus::subscribe_user`].
    pub async fn start(
        driver: SioDriver,
        keys: Keys,
        uid: String,
        timeout: Duration,
        deliver: LocalDelivery,
        resync: Resync,
    ) -> StoreResult<Arc<Self>> {
        let (notes_tx, mut notes) = mpsc::channel::<ChanItem>(QUEUE);
        let bus = Arc::new(Self {
            driver: driver.clone(),
            keys: keys.clone(),
            uid: uid.clone(),
            timeout,
            pending: Mutex::new(HashMap::new()),
            notes: notes_tx,
            users: Mutex::new(HashMap::new()),
        });
        let unavailable = |e: crate::driver::DriverError| StoreError::Unavailable(e.to_string());
        let mut replies = driver
            .subscribe(keys.notify_reply_channel(&uid), QUEUE)
            .await
            .map_err(unavailable)?;
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            while let Some((_, data)) = notes.recv().await {
                let Some(bus) = weak.upgrade() else { return };
                let Ok(msg) = serde_json::from_slice::<Publish>(&data) else {
                    tracing::warn!("malformed notification message ignored");
                    continue;
                };
                let delivered = deliver(&msg.user, &msg.notification);
                let outcome = if delivered > 0 { "useful" } else { "wasted" };
                bus.driver
                    .metrics()
                    .notify_messages
                    .with_label_values(&[outcome])
                    .inc();
                let reply = serde_json::to_vec(&Reply {
                    req: msg.req,
                    delivered,
                })
                .unwrap_or_default();
                let chan = bus.keys.notify_reply_channel(&msg.origin);
                if let Err(e) = bus.driver.publish_counted(&chan, reply).await {
                    tracing::warn!("notification delivery count not sent: {e}");
                }
            }
        });
        let mut losses = driver.losses();
        losses.mark_unchanged();
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            while losses.changed().await.is_ok() {
                if weak.strong_count() == 0 {
                    return;
                }
                tracing::info!(
                    "notifications may have been lost on their way here; checking every local socket's stream"
                );
                resync();
            }
        });
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            while let Some((_, data)) = replies.next().await {
                let Some(bus) = weak.upgrade() else { return };
                let Ok(reply) = serde_json::from_slice::<Reply>(&data) else {
                    continue;
                };
                let pending = bus.pending.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = pending.get(&reply.req) {
                    let _ = tx.send(reply.delivered);
                }
            }
        });
        Ok(bus)
    }

    /// Delivers `notification` live to `user`'s sockets on every node and returns how many
    /// sockets got it.
    pub async fn publish(&self, user: &str, notification: &Appended) -> StoreResult<u64> {
        let req = rand::random::<u64>();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req, tx);
        let _guard = RemoveOnDrop { bus: self, req };
        let payload = serde_json::to_vec(&Publish {
            user: user.to_owned(),
            notification: notification.clone(),
            origin: self.uid.clone(),
            req,
        })
        .map_err(|e| StoreError::Malformed(e.to_string()))?;
        let start = Instant::now();
        let nodes = self
            .driver
            .publish_counted(&self.keys.notify_channel(user), payload)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let metrics = self.driver.metrics();
        let mut delivered = 0;
        let mut answered = 0;
        let deadline = tokio::time::Instant::now() + self.timeout;
        while answered < nodes {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(n)) => {
                    delivered += n;
                    answered += 1;
                }
                Ok(None) | Err(_) => {
                    metrics
                        .request_timeouts
                        .with_label_values(&["notify"])
                        .inc();
                    tracing::warn!(
                        answered,
                        nodes,
                        "notification: some nodes did not report their deliveries in time"
                    );
                    break;
                }
            }
        }
        metrics
            .request_duration
            .with_label_values(&["notify"])
            .observe(start.elapsed().as_secs_f64());
        Ok(delivered)
    }
}

impl NotifyBus {
    /// Makes sure this node receives `user`'s notifications for as long as the returned guard
    /// lives: the first guard of a user subscribes to the user's channel (awaited, so a
    /// notification published after this returns reaches this node), dropping the last one
    /// unsubscribes.
    pub async fn subscribe_user(self: &Arc<Self>, user: &str) -> StoreResult<UserSubscription> {
        let subscribed = {
            let mut users = lock(&self.users);
            let entry = users.entry(user.to_owned()).or_default();
            entry.sockets += 1;
            entry.subscribed.clone()
        };
        // From here on, an early return (an error) gives the socket back through the guard.
        let guard = UserSubscription {
            bus: self.clone(),
            user: user.to_owned(),
        };
        let mut subscribed = subscribed.lock().await;
        if !*subscribed {
            let chan = self.keys.notify_channel(user);
            self.driver
                .subscribe_into(&chan, self.notes.clone())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            *subscribed = true;
            self.driver.metrics().notify_subscriptions.inc();
        }
        Ok(guard)
    }

    /// Users whose channel this node holds (or is subscribing to).
    pub fn subscribed_users(&self) -> usize {
        lock(&self.users).len()
    }

    async fn release(self: Arc<Self>, user: String) {
        let subscribed = {
            let mut users = lock(&self.users);
            let Some(entry) = users.get_mut(&user) else {
                return;
            };
            entry.sockets = entry.sockets.saturating_sub(1);
            if entry.sockets > 0 {
                return;
            }
            entry.subscribed.clone()
        };
        let mut held = subscribed.lock().await;
        // A socket of the user may have arrived meanwhile: it keeps the channel.
        if lock(&self.users).get(&user).is_some_and(|e| e.sockets > 0) {
            return;
        }
        if *held {
            let chan = self.keys.notify_channel(&user);
            if let Err(e) = self.driver.unsubscribe(chan).await {
                tracing::warn!("notification channel not unsubscribed: {e}");
            }
            *held = false;
            self.driver.metrics().notify_subscriptions.dec();
        }
        let mut users = lock(&self.users);
        if users
            .get(&user)
            .is_some_and(|e| e.sockets == 0 && Arc::ptr_eq(&e.subscribed, &subscribed))
        {
            users.remove(&user);
        }
    }
}

/// Keeps this node subscribed to one user's notifications (see [`NotifyBus::subscribe_user`]);
/// the user's channel is left when the last guard of the user is dropped.
pub struct UserSubscription {
    bus: Arc<NotifyBus>,
    user: String,
}

impl std::fmt::Debug for UserSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSubscription")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Drop for UserSubscription {
    fn drop(&mut self) {
        let (bus, user) = (self.bus.clone(), std::mem::take(&mut self.user));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(bus.release(user));
        }
    }
}

struct RemoveOnDrop<'a> {
    bus: &'a NotifyBus,
    req: u64,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        self.bus
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.req);
    }
}
