//! Live notification fan-out across nodes, with a cluster-wide delivery count.
//!
//! ```text
//!  API node A                        Redis                       every node N (A included)
//!  ──────────                        ─────                       ─────────────────────────
//!  XADD {p}:user:{u}:notifications ─▶ stream (capped)
//!  SPUBLISH {p}:notify {u, n, A, r} ─▶ returns k subscribers ──▶ deliver to u's local sockets
//!  wait for k replies  ◀──────────── {p}:notify-reply:A ◀──────── SPUBLISH {r, delivered}
//!  answer {id, delivered = Σ}
//! ```
//! A reply missing after the timeout is counted in `sio_adapter_request_timeouts_total`; the
//! notification is stored either way and a reconnecting client replays it.
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
use socketioxide_redis::drivers::Driver;
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
}

impl std::fmt::Debug for NotifyBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyBus")
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

impl NotifyBus {
    /// Subscribes to the notification channels; `deliver` hands notifications to local sockets.
    pub async fn start(
        driver: SioDriver,
        keys: Keys,
        uid: String,
        timeout: Duration,
        deliver: LocalDelivery,
        resync: Resync,
    ) -> StoreResult<Arc<Self>> {
        let bus = Arc::new(Self {
            driver: driver.clone(),
            keys: keys.clone(),
            uid: uid.clone(),
            timeout,
            pending: Mutex::new(HashMap::new()),
        });
        let unavailable = |e: crate::driver::DriverError| StoreError::Unavailable(e.to_string());
        let mut notes = driver
            .subscribe(keys.notify_channel(), QUEUE)
            .await
            .map_err(unavailable)?;
        let mut replies = driver
            .subscribe(keys.notify_reply_channel(&uid), QUEUE)
            .await
            .map_err(unavailable)?;
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            while let Some((_, data)) = notes.next().await {
                let Some(bus) = weak.upgrade() else { return };
                let Ok(msg) = serde_json::from_slice::<Publish>(&data) else {
                    tracing::warn!("malformed notification message ignored");
                    continue;
                };
                let delivered = deliver(&msg.user, &msg.notification);
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
            .publish_counted(&self.keys.notify_channel(), payload)
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
