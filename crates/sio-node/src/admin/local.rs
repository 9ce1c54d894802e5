//! What one node does with its own sockets for the admin UI: describe them, and apply the
//! UI's commands to those that match a filter.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use socketioxide::SocketIo;
use socketioxide::TransportType;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use super::protocol::{Args, Handshake, SerializedSocket, iso_date};
use crate::state::NodeState;

/// Headers never shown to the UI (credentials).
const HIDDEN_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// A command of the UI, as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// `emit`: send `event` with `args` to the matching sockets.
    Emit {
        /// Namespace.
        nsp: String,
        /// Room or socket id; every socket of the namespace when absent.
        filter: Option<String>,
        /// Event name.
        event: String,
        /// Arguments.
        args: Vec<serde_json::Value>,
    },
    /// `join`: the matching sockets join `room`.
    Join {
        /// Namespace.
        nsp: String,
        /// Room to join.
        room: String,
        /// Room or socket id; every socket of the namespace when absent.
        filter: Option<String>,
    },
    /// `leave`: the matching sockets leave `room`.
    Leave {
        /// Namespace.
        nsp: String,
        /// Room to leave.
        room: String,
        /// Room or socket id; every socket of the namespace when absent.
        filter: Option<String>,
    },
    /// `_disconnect`: the matching sockets are disconnected (with `close`, from every
    /// namespace, which ends their connection).
    Disconnect {
        /// Namespace.
        nsp: String,
        /// Disconnect the whole client.
        close: bool,
        /// Room or socket id; every socket of the namespace when absent.
        filter: Option<String>,
    },
}

impl Command {
    /// The command's name in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Emit { .. } => "emit",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Disconnect { .. } => "_disconnect",
        }
    }
}

/// This node's sockets of `nsp` matching `filter`: the sockets in the room of that name, and
/// the socket whose id it is (as in Socket.IO, where every socket is in a room named by its
/// id).
fn matching<A: Adapter>(io: &SocketIo<A>, nsp: &str, filter: Option<&str>) -> Vec<SocketRef<A>> {
    let Some(ns) = io.of(nsp) else {
        return Vec::new();
    };
    let Some(filter) = filter else {
        return ns.local().sockets();
    };
    let by_id = filter
        .parse::<Sid>()
        .ok()
        .and_then(|sid| ns.get_socket(sid));
    let mut sockets = ns.local().to(filter.to_owned()).sockets();
    if let Some(s) = by_id
        && !sockets.iter().any(|x| x.id == s.id)
    {
        sockets.push(s);
    }
    sockets
}

/// Puts `s` in `room`; in the chat namespace through the session and the room's channel,
/// as the `join-room` event does (the room is not added to the user's stored rooms).
async fn join<A: Adapter>(node: &NodeState, nsp: &str, s: &SocketRef<A>, room: &str) {
    let session = (nsp == crate::chat::NAMESPACE)
        .then(|| crate::connect::session(s))
        .flatten();
    let Some(session) = session else {
        s.join(room.to_owned());
        return;
    };
    if session.in_room(room) {
        return;
    }
    if let Err(e) = node.room_channels.join(nsp, room).await {
        tracing::warn!(room, "admin join refused: {e}");
        return;
    }
    s.join(room.to_owned());
    if !session.add_room(room) {
        node.room_channels.leave(nsp, room).await;
    }
}

/// Applies `command` to this node's matching sockets; returns how many it touched.
pub async fn apply<A: Adapter>(io: &SocketIo<A>, node: &NodeState, command: &Command) -> u64 {
    match command {
        Command::Emit {
            nsp,
            filter,
            event,
            args,
        } => {
            let sockets = matching(io, nsp, filter.as_deref());
            let args = Args(args.clone());
            let mut sent = 0;
            for s in &sockets {
                if s.emit(event.as_str(), &args).is_ok() {
                    sent += 1;
                }
            }
            sent
        }
        Command::Join { nsp, room, filter } => {
            let sockets = matching(io, nsp, filter.as_deref());
            for s in &sockets {
                join(node, nsp, s, room).await;
            }
            sockets.len() as u64
        }
        Command::Leave { nsp, room, filter } => {
            let sockets = matching(io, nsp, filter.as_deref());
            for s in &sockets {
                s.leave(room.clone());
                if nsp == crate::chat::NAMESPACE
                    && crate::connect::session(s).is_some_and(|session| session.remove_room(room))
                {
                    node.room_channels.leave(nsp, room).await;
                }
            }
            sockets.len() as u64
        }
        Command::Disconnect { nsp, close, filter } => {
            let sockets = matching(io, nsp, filter.as_deref());
            let count = sockets.len() as u64;
            let mut targets: Vec<SocketRef<A>> = Vec::new();
            if *close {
                // every namespace socket of these clients: the last one ends the connection
                let ids: HashSet<Sid> = sockets.iter().map(|s| s.id).collect();
                for ns in io.nsps() {
                    targets.extend(ids.iter().filter_map(|id| ns.get_socket(*id)));
                }
            } else {
                targets = sockets;
            }
            for s in targets {
                let _ = s.disconnect();
            }
            count
        }
    }
}

fn transport_name(t: TransportType) -> &'static str {
    match t {
        TransportType::Polling => "polling",
        TransportType::Websocket => "websocket",
    }
}

fn query_map(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

/// Describes one local socket for the UI; `issued` is when it was first seen (unix ms).
pub fn describe<A: Adapter>(socket: &SocketRef<A>, node_id: &str, issued: u64) -> SerializedSocket {
    let parts = socket.req_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<crate::conn::ConnInfo>>()
        .map(|c| c.0.peer.ip().to_string());
    let address = header("x-forwarded-for")
        .and_then(|v| v.split(',').next().map(|s| s.trim().to_owned()))
        .or(peer)
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| !HIDDEN_HEADERS.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let sid = socket.id.to_string();
    let user = crate::connect::session(socket).map(|s| s.user.as_str().to_owned());
    let mut rooms: Vec<String> = socket.rooms().into_iter().map(|r| r.to_string()).collect();
    rooms.sort();
    SerializedSocket {
        client_id: sid.chars().take(12).collect(),
        id: sid,
        transport: transport_name(socket.transport_type()).to_owned(),
        nsp: socket.ns().to_owned(),
        data: serde_json::json!({ "userId": user, "node": node_id }),
        handshake: Handshake {
            address,
            headers,
            query: query_map(parts.uri.query().unwrap_or("")),
            issued,
            secure: false,
            time: iso_date(issued),
            url: parts.uri.to_string(),
            xdomain: header("origin").is_some(),
        },
        rooms,
    }
}

/// Up to `limit` of this node's sockets, every namespace; `issued` gives each one's first
/// sighting (unix ms) when known.
pub fn describe_all<A: Adapter>(
    io: &SocketIo<A>,
    node_id: &str,
    limit: usize,
    issued: impl Fn(&str, Sid) -> Option<u64>,
) -> Vec<SerializedSocket> {
    let now = sio_redis_adapter::types::now_ms();
    let mut out = Vec::new();
    for ns in io.nsps() {
        for s in ns.local().sockets() {
            if out.len() >= limit {
                return out;
            }
            let at = issued(s.ns(), s.id).unwrap_or(now);
            out.push(describe(&s, node_id, at));
        }
    }
    out
}

/// This node's Engine.IO sessions, how many of them use long-polling, and its sockets per
/// namespace (one pass over the sockets).
pub fn clients<A: Adapter>(io: &SocketIo<A>) -> (u64, u64, BTreeMap<String, u64>) {
    let mut seen: HashSet<Sid> = HashSet::new();
    let mut polling = 0;
    let mut namespaces = BTreeMap::new();
    for ns in io.nsps() {
        let path = ns.ns_path().to_owned();
        let sockets = ns.local().sockets();
        namespaces.insert(path, sockets.len() as u64);
        for s in sockets {
            if seen.insert(s.id) && s.transport_type() == TransportType::Polling {
                polling += 1;
            }
        }
    }
    (seen.len() as u64, polling, namespaces)
}
