//! Admin requests to every node of the cluster, and their answers.
//!
//! ```text
//!  node A (admin socket)             Redis                       every node N (A included)
//!  SPUBLISH {p}:admin {A, r, req} ─▶ returns k subscribers ──▶ list its sockets / apply the command
//!  wait for k answers (2 s) ◀────── {p}:admin-reply:A ◀────── SPUBLISH {r, node, affected, sockets}
//! ```
//! Without Redis the node answers alone. socketioxide's remote operators would do for room
//! filters, but the UI also filters by socket id (a Socket.IO socket is in a room named by its
//! id; a socketioxide socket is not), and `all_sockets` needs each socket's rooms, transport
//! and handshake, which `fetch_sockets` does not carry: one request per command or listing
//! does both, whatever the number of sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sio_redis_adapter::{Keys, SioDriver};
use socketioxide_redis::drivers::Driver;
use tokio::sync::{Semaphore, mpsc};

use super::local::Command;
use super::protocol::SerializedSocket;

/// How long a request waits for the other nodes.
pub const BUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Admin requests one node may have in flight.
pub const MAX_IN_FLIGHT: usize = 16;
/// Queue of incoming requests and answers, per channel.
const QUEUE: usize = 256;

/// What is asked of every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Describe up to `limit` sockets.
    Sockets {
        /// Most sockets a node describes.
        limit: usize,
    },
    /// Apply a command to the matching sockets.
    Command {
        /// The command.
        command: Command,
    },
}

/// One node's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    /// Node id.
    pub node: String,
    /// Sockets the command touched.
    pub affected: u64,
    /// Sockets described.
    pub sockets: Vec<SerializedSocket>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: String,
    req: u64,
    request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    req: u64,
    answer: Answer,
}

/// What every node answered.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The answers.
    pub answers: Vec<Answer>,
    /// Nodes that did not answer in time (or could not be asked).
    pub missing: u64,
}

/// Answers a request on this node.
pub type LocalHandler = Arc<dyn Fn(Request) -> BoxFuture<'static, Answer> + Send + Sync>;

/// Why an admin request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Too many admin requests at once.
    #[error("too many admin requests in flight on this node; retry")]
    Busy,
}

struct Remote {
    driver: SioDriver,
    channel: String,
    keys: Keys,
}

/// The admin request bus of one node.
pub struct Bus {
    uid: String,
    remote: Option<Remote>,
    local: LocalHandler,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<Answer>>>,
    in_flight: Semaphore,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("uid", &self.uid)
            .field("clustered", &self.remote.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Bus {
    /// A bus that only asks this node (no Redis).
    pub fn standalone(uid: String, local: LocalHandler) -> Arc<Self> {
        Arc::new(Self {
            uid,
            remote: None,
            local,
            pending: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    /// Subscribes to the admin channels and answers other nodes' requests with `local`.
    pub async fn clustered(
        driver: SioDriver,
        keys: Keys,
        uid: String,
        local: LocalHandler,
    ) -> Result<Arc<Self>, String> {
        let channel = keys.admin_channel();
        let mut requests = driver
            .subscribe(channel.clone(), QUEUE)
            .await
            .map_err(|e| e.to_string())?;
        let mut replies = driver
            .subscribe(keys.admin_reply_channel(&uid), QUEUE)
            .await
            .map_err(|e| e.to_string())?;
        let bus = Arc::new(Self {
            uid,
            remote: Some(Remote {
                driver,
                channel,
                keys,
            }),
            local,
            pending: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        });
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            while let Some((_, data)) = requests.next().await {
                let Some(bus) = weak.upgrade() else { return };
                let Ok(env) = serde_json::from_slice::<Envelope>(&data) else {
                    tracing::warn!("malformed admin request ignored");
                    continue;
                };
                tokio::spawn(async move {
                    let answer = (bus.local)(env.request).await;
                    let Some(remote) = &bus.remote else { return };
                    let reply = serde_json::to_vec(&Reply {
                        req: env.req,
                        answer,
                    })
                    .unwrap_or_default();
                    let chan = remote.keys.admin_reply_channel(&env.origin);
                    if let Err(e) = remote.driver.publish_counted(&chan, reply).await {
                        tracing::warn!("admin answer not sent: {e}");
                    }
                });
            }
        });
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move {
            while let Some((_, data)) = replies.next().await {
                let Some(bus) = weak.upgrade() else { return };
                let Ok(reply) = serde_json::from_slice::<Reply>(&data) else {
                    continue;
                };
                if let Some(tx) = lock(&bus.pending).get(&reply.req) {
                    let _ = tx.send(reply.answer);
                }
            }
        });
        Ok(bus)
    }

    /// Asks every node (this one included) and gathers their answers.
    pub async fn ask(&self, request: Request) -> Result<Gathered, BusError> {
        let _permit = self.in_flight.try_acquire().map_err(|_| BusError::Busy)?;
        let Some(remote) = &self.remote else {
            return Ok(Gathered {
                answers: vec![(self.local)(request).await],
                missing: 0,
            });
        };
        let req = rand::random::<u64>();
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(req, tx);
        let _guard = RemoveOnDrop { bus: self, req };
        let payload = serde_json::to_vec(&Envelope {
            origin: self.uid.clone(),
            req,
            request: request.clone(),
        })
        .unwrap_or_default();
        let nodes = match remote
            .driver
            .publish_counted(&remote.channel, payload)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("admin request not published ({e}); answering for this node only");
                return Ok(Gathered {
                    answers: vec![(self.local)(request).await],
                    missing: 1,
                });
            }
        };
        let mut gathered = Gathered::default();
        let deadline = tokio::time::Instant::now() + BUS_TIMEOUT;
        while (gathered.answers.len() as u64) < nodes {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(answer)) => gathered.answers.push(answer),
                Ok(None) | Err(_) => break,
            }
        }
        gathered.missing = nodes.saturating_sub(gathered.answers.len() as u64);
        if gathered.missing > 0 {
            tracing::warn!(
                missing = gathered.missing,
                "admin request: some nodes did not answer in time"
            );
        }
        Ok(gathered)
    }
}

struct RemoveOnDrop<'a> {
    bus: &'a Bus,
    req: u64,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        lock(&self.bus.pending).remove(&self.req);
    }
}
