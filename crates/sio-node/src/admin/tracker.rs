//! Development mode: the live view of every socket (`socket_connected`, `socket_updated`,
//! `socket_disconnected`, `room_joined`, `room_left`).
//!
//! socketioxide has no hook on connections or room changes of every namespace, so each node
//! compares a snapshot of its own sockets and their rooms with the previous one every
//! [`TICK`] and sends the differences to every admin socket of the cluster (through the
//! adapter). The cost is one pass over the node's sockets and memberships per tick, which is
//! why production mode does not run it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use socketioxide::adapter::Adapter;
use socketioxide::socket::Sid;
use socketioxide::{SocketIo, TransportType};

use super::local::describe;
use super::protocol::iso_date;

/// Period of the comparison.
pub const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Seen {
    first: u64,
    transport: TransportType,
    rooms: BTreeSet<String>,
}

/// This node's sockets as last seen.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: Mutex<HashMap<(String, Sid), Seen>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn transport_name(t: TransportType) -> &'static str {
    match t {
        TransportType::Polling => "polling",
        TransportType::Websocket => "websocket",
    }
}

impl Tracker {
    /// When socket `sid` of `ns` was first seen (unix ms).
    pub fn first_seen(&self, ns: &str, sid: Sid) -> Option<u64> {
        lock(&self.seen).get(&(ns.to_owned(), sid)).map(|s| s.first)
    }

    /// Compares the node's sockets with the last snapshot and sends the differences to the
    /// admin namespace `admin_ns`; `reasons` are the disconnect reasons noted since.
    pub async fn tick<A: Adapter>(
        &self,
        io: &SocketIo<A>,
        admin_ns: &str,
        node_id: &str,
        reasons: Vec<(String, String, &'static str)>,
    ) {
        let Some(admin) = io.of(admin_ns) else { return };
        let now = sio_redis_adapter::types::now_ms();
        let stamp = iso_date(now);
        let mut current: HashMap<(String, Sid), Seen> = HashMap::new();
        let mut events: Vec<(&'static str, serde_json::Value)> = Vec::new();
        {
            let previous = lock(&self.seen);
            for ns in io.nsps() {
                for socket in ns.local().sockets() {
                    let key = (socket.ns().to_owned(), socket.id);
                    let rooms: BTreeSet<String> =
                        socket.rooms().into_iter().map(|r| r.to_string()).collect();
                    let transport = socket.transport_type();
                    let sid = socket.id.to_string();
                    match previous.get(&key) {
                        None => {
                            let described = describe(&socket, node_id, now);
                            events
                                .push(("socket_connected", serde_json::json!([described, stamp])));
                            current.insert(
                                key,
                                Seen {
                                    first: now,
                                    transport,
                                    rooms,
                                },
                            );
                        }
                        Some(before) => {
                            if before.transport != transport {
                                events.push((
                                    "socket_updated",
                                    serde_json::json!([{
                                        "id": sid,
                                        "nsp": key.0,
                                        "transport": transport_name(transport),
                                    }]),
                                ));
                            }
                            for room in rooms.difference(&before.rooms) {
                                events.push((
                                    "room_joined",
                                    serde_json::json!([key.0, room, sid, stamp]),
                                ));
                            }
                            for room in before.rooms.difference(&rooms) {
                                events.push((
                                    "room_left",
                                    serde_json::json!([key.0, room, sid, stamp]),
                                ));
                            }
                            current.insert(
                                key,
                                Seen {
                                    first: before.first,
                                    transport,
                                    rooms,
                                },
                            );
                        }
                    }
                }
            }
            let why: HashMap<(String, String), &'static str> = reasons
                .into_iter()
                .map(|(ns, sid, reason)| ((ns, sid), reason))
                .collect();
            for (key, before) in previous.iter() {
                if current.contains_key(key) {
                    continue;
                }
                let sid = key.1.to_string();
                for room in &before.rooms {
                    events.push(("room_left", serde_json::json!([key.0, room, sid, stamp])));
                }
                let reason = why
                    .get(&(key.0.clone(), sid.clone()))
                    .copied()
                    .unwrap_or("transport close");
                events.push((
                    "socket_disconnected",
                    serde_json::json!([key.0, sid, reason, stamp]),
                ));
            }
        }
        *lock(&self.seen) = current;
        for (event, args) in events {
            let args = super::protocol::Args(match args {
                serde_json::Value::Array(a) => a,
                other => vec![other],
            });
            if let Err(e) = admin.clone().emit(event, &args).await {
                tracing::debug!(event, "admin event not sent: {e}");
            }
        }
    }
}
