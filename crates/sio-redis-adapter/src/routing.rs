//! Interest routing of room broadcasts: which channel a broadcast goes to, which rooms this
//! node listens for, and the request headers the driver reads to decide.
//!
//! # Why one channel per room, not hashed partitions
//!
//! A node subscribes to `{p}-room#{ns}#{room}` while it has at least one local member of
//! `room`, so a room message reaches exactly the nodes with members. The alternative, hashing
//! rooms onto P partition channels, bounds subscriptions at P but delivers a message to every
//! node holding *any* room of its partition: with R rooms per node the chance that a node is
//! subscribed to a given partition is `1 - (1 - 1/P)^R`, so at 100,000 rooms per node and
//! P = 4,096 every node is subscribed to every partition (the chance rounds to 1) and
//! partitions degenerate into the broadcast routing they were meant to replace, exactly at
//! the scale where routing matters. Per-room channels stay exact at any size; their price is
//! one subscription per (node, room with local members):
//!
//! - Redis: a shard channel with one subscriber costs the server about 200 bytes (the
//!   channel name, its entry in the server's and in the client's shard-channel dictionaries
//!   and the subscriber list), so 100,000 rooms on one node hold ~20 MB of Redis memory,
//!   spread over the shards of a Redis Cluster by the channels' slots;
//! - the node: one entry in the [`Interest`] table (channel name, member count, a gate)
//!   and fred's own list of tracked channels, ~250 bytes per room, ~25 MB at 100,000 rooms;
//! - time: one `SSUBSCRIBE` round trip when a room gets its first local member and one
//!   `SUNSUBSCRIBE` after its last leaves; every other join and leave costs nothing in Redis.
//!
//! # Life cycle and races
//!
//! The node calls [`SioDriver::join_room`](crate::SioDriver::join_room) *before* it puts a
//! socket in a room and acknowledges the join, and
//! [`SioDriver::leave_room`](crate::SioDriver::leave_room) after the socket left it (or
//! disconnected). The table counts members per channel; each channel has a gate (an async
//! mutex) so that the subscribe of a join and the unsubscribe of a leave never interleave:
//! whoever holds the gate compares the subscription with the member count *now* and fixes it.
//! A join that arrives while the last leave is unsubscribing waits at the gate and subscribes
//! again; a leave that finds new members at the gate leaves the subscription alone. The join
//! returns only once Redis has confirmed the `SSUBSCRIBE`, so any message published after the
//! client saw its join acknowledged reaches the node. After a Redis reconnect the driver
//! subscribes to the channels the table wants (not to what it happened to be subscribed to),
//! then unsubscribes whatever it holds beyond them. fred sends `SUNSUBSCRIBE` without waiting
//! for Redis's answer, so a message may still arrive just after the last leave: it finds no
//! entry in the table and is counted as wasted. A node that restarts starts with a new
//! connection and an empty table; the subscriptions of its old connection ended with it.
//!
//! Limit: socketioxide's own ways of putting a socket in a room from outside its handlers
//! (`io.to(a).join(b)`, `fetch_sockets()` then `join`) update the local adapter without the
//! driver knowing, so in a routed namespace they would not subscribe the room's channel.
//! sio-node never uses them in `/`: its joins (the `join-room` event, rooms restored on
//! connect, the admin UI's join command) all go through
//! [`SioDriver::join_room`](crate::SioDriver::join_room).
//!
//! # What is routed
//!
//! Only plain broadcasts (`Broadcast`, no acks) to one or more rooms of a routed namespace,
//! not aimed at one server. The same request, byte for byte, goes to each target room's
//! channel; the receiving driver hands it to socketioxide-redis as if it came from the
//! namespace's request channel, so the local broadcast applies the full room set, `except`
//! and the sender exclusion exactly as before. A node subscribed to two target rooms gets two
//! copies and delivers the first (request ids are remembered in [`Seen`]), so a socket in
//! two targeted rooms still gets one copy. Everything else (namespace-wide broadcasts,
//! broadcasts with acks, `fetch_sockets`, remote join/leave/disconnect, room listing, server
//! count) stays on socketioxide-redis's request channel. Ordering: messages to one room keep
//! their order (one channel); a room message and a namespace-wide message from one sender
//! travel on different channels and may be seen in either order by a third node.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions};
use socketioxide_core::{Sid, Uid};

/// How room broadcasts are published (`--adapter-routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// Every broadcast on the namespace's request channel: every node decodes every message
    /// (socketioxide-redis's own behaviour).
    Broadcast,
    /// Broadcasts to rooms on the rooms' channels, received only by nodes with members.
    #[default]
    Rooms,
}

impl Routing {
    /// The name used by the flag.
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Broadcast => "broadcast",
            Routing::Rooms => "rooms",
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A routing name that is neither `broadcast` nor `rooms`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown adapter routing {0:?}: use \"broadcast\" or \"rooms\"")]
pub struct UnknownRouting(pub String);

impl FromStr for Routing {
    type Err = UnknownRouting;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "broadcast" => Ok(Routing::Broadcast),
            "rooms" => Ok(Routing::Rooms),
            other => Err(UnknownRouting(other.to_owned())),
        }
    }
}

/// The routing of a node: how it publishes, and which namespaces' rooms are interest-routed.
///
/// Whatever the mode, a node subscribes to the rooms it has members of in the routed
/// namespaces, so nodes of both modes can share a cluster (during a rolling change of the
/// flag) without losing messages: a `broadcast` node publishes on the request channel, which
/// every node reads, and receives what `rooms` nodes publish on room channels.
///
/// Every node of a cluster must list the same namespaces, and route only namespaces whose
/// every join goes through [`SioDriver::join_room`](crate::SioDriver::join_room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRouting {
    /// How this node publishes room broadcasts.
    pub mode: Routing,
    /// Namespaces whose rooms have channels (sio-node: `/`).
    pub namespaces: Vec<String>,
}

impl RoomRouting {
    /// `mode` for the rooms of `namespaces`.
    pub fn new(mode: Routing, namespaces: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            mode,
            namespaces: namespaces.into_iter().map(Into::into).collect(),
        }
    }
}

impl Default for RoomRouting {
    /// `rooms` for namespace `/`.
    fn default() -> Self {
        Self::new(Routing::default(), ["/"])
    }
}

/// The fields of a socketioxide remote-adapter request the driver needs, decoded without the
/// packet (msgpack array `[node_id, id, type, packet, rooms, opts, ack_timeout_ms?]`, see
/// socketioxide-core's `remote_packet`).
#[derive(Debug, Deserialize)]
pub struct RequestHead {
    /// Node that sent the request.
    pub node_id: Uid,
    /// Request id (random per request).
    pub id: Sid,
    /// Request type: 0 broadcast, 1 broadcast with acks, 2 disconnect, 3 rooms, 4 join,
    /// 5 leave, 6 fetch sockets.
    pub r#type: u8,
    _packet: IgnoredAny,
    _rooms: IgnoredAny,
    /// Broadcast options (rooms, except, flags, target server).
    pub opts: Option<BroadcastOptions>,
    #[serde(default)]
    _ack_timeout_ms: Option<IgnoredAny>,
}

/// The sender of a request (its `node_id`), read from the first field without decoding the
/// rest: a MessagePack fixarray whose first element is a fixstr, as socketioxide-core writes
/// every request. `None` for anything else (the caller then decodes the head).
pub fn request_sender(data: &[u8]) -> Option<&str> {
    let (&array, rest) = data.split_first()?;
    if array & 0xf0 != 0x90 {
        return None;
    }
    let (&str_head, rest) = rest.split_first()?;
    if str_head & 0xe0 != 0xa0 {
        return None;
    }
    let len = usize::from(str_head & 0x1f);
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// Request type of a plain broadcast.
pub const BROADCAST: u8 = 0;

impl RequestHead {
    /// Decodes the head of a request; `None` if `data` is not one.
    pub fn decode(data: &[u8]) -> Option<Self> {
        rmp_serde::from_slice(data).ok()
    }

    /// The rooms of a broadcast that may be routed by room: a plain broadcast to rooms, not
    /// local-only and not aimed at one server.
    pub fn routable_rooms(&self) -> Option<&[socketioxide_core::adapter::Room]> {
        let opts = self.opts.as_ref()?;
        (self.r#type == BROADCAST
            && !opts.rooms.is_empty()
            && opts.server_id.is_none()
            && !opts.has_flag(BroadcastFlags::Local))
        .then_some(&opts.rooms[..])
    }

    /// The rooms the request targets (empty for the whole namespace or no options).
    pub fn rooms(&self) -> &[socketioxide_core::adapter::Room] {
        self.opts.as_ref().map(|o| &o.rooms[..]).unwrap_or(&[])
    }
}

/// Request ids of multi-room messages already handed to the adapter, so the copies that
/// arrive on the other rooms' channels are dropped. Bounded: the oldest id is forgotten
/// first. The copies of one message are published back to back, so they arrive within
/// far fewer messages than the capacity (a copy arriving after its id was forgotten would
/// be delivered twice).
#[derive(Debug)]
pub struct Seen {
    ids: HashSet<Sid>,
    order: VecDeque<Sid>,
    capacity: usize,
}

/// Multi-room request ids remembered per node.
pub const SEEN_CAPACITY: usize = 65_536;

impl Seen {
    /// An empty set remembering at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True the first time `id` is seen (and remembers it), false for a copy.
    pub fn first(&mut self, id: Sid) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// One room channel this node wants: how many local memberships, which request channel its
/// messages are handed to, and the gate that orders its subscribe and unsubscribe.
#[derive(Debug)]
pub struct RoomInterest {
    /// Local memberships (socket, room) in the room.
    pub members: usize,
    /// The namespace's request channel (`{p}-request#{ns}#`), where the adapter reads.
    pub request_channel: Arc<str>,
    /// Held while subscribing or unsubscribing; the value is "subscribed in Redis".
    pub gate: Arc<tokio::sync::Mutex<bool>>,
}

/// Room channel -> interest.
pub type Interest = HashMap<String, RoomInterest>;

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::adapter::remote_packet::{RequestOut, RequestTypeOut};
    use socketioxide_core::packet::Packet;
    use socketioxide_core::{Str, Value};

    fn packet() -> Packet {
        Packet::event(Str::from("/"), Value::Str(Str::from("[\"ev\",1]"), None))
    }

    #[test]
    fn routing_names_round_trip() {
        for r in [Routing::Broadcast, Routing::Rooms] {
            assert_eq!(r.as_str().parse::<Routing>().unwrap(), r);
        }
        assert!("room".parse::<Routing>().is_err());
        assert_eq!(Routing::default(), Routing::Rooms);
    }

    #[test]
    fn the_head_of_a_room_broadcast_names_its_rooms() {
        let p = packet();
        let mut opts = BroadcastOptions::default();
        opts.rooms = ["a".into(), "b".into()].into_iter().collect();
        opts.except = ["c".into()].into_iter().collect();
        let uid = Uid::new();
        let req = RequestOut::new(uid, RequestTypeOut::Broadcast(&p), &opts);
        let bytes = rmp_serde::to_vec(&req).unwrap();
        let head = RequestHead::decode(&bytes).unwrap();
        assert_eq!(head.node_id, uid);
        assert_eq!(head.id, req.id);
        let rooms: Vec<&str> = head
            .routable_rooms()
            .unwrap()
            .iter()
            .map(|r| &**r)
            .collect();
        assert_eq!(rooms, ["a", "b"]);

        // with an ack timeout (7 fields) the head still decodes, and acks are not routed
        let acks = RequestOut::new(uid, RequestTypeOut::BroadcastWithAck(&p), &opts)
            .with_ack_timeout(Some(std::time::Duration::from_secs(1)));
        let head = RequestHead::decode(&rmp_serde::to_vec(&acks).unwrap()).unwrap();
        assert_eq!(head.r#type, 1);
        assert!(head.routable_rooms().is_none());

        // namespace-wide, local-only and single-server broadcasts are not routed
        let all = BroadcastOptions::default();
        let req = RequestOut::new(uid, RequestTypeOut::Broadcast(&p), &all);
        let head = RequestHead::decode(&rmp_serde::to_vec(&req).unwrap()).unwrap();
        assert!(head.routable_rooms().is_none());
        let mut one = opts.clone();
        one.server_id = Some(Uid::new());
        let req = RequestOut::new(uid, RequestTypeOut::Broadcast(&p), &one);
        let head = RequestHead::decode(&rmp_serde::to_vec(&req).unwrap()).unwrap();
        assert!(head.routable_rooms().is_none());
        let rooms_list = vec!["x".into()];
        let join = RequestOut::new(uid, RequestTypeOut::AddSockets(&rooms_list), &opts);
        let head = RequestHead::decode(&rmp_serde::to_vec(&join).unwrap()).unwrap();
        assert_eq!(head.r#type, 4);
        assert!(head.routable_rooms().is_none());
        assert!(RequestHead::decode(b"not msgpack").is_none());
    }

    #[test]
    fn the_sender_of_a_request_is_read_without_decoding_it() {
        let p = packet();
        let mut opts = BroadcastOptions::default();
        opts.rooms = ["a".into()].into_iter().collect();
        let uid = Uid::new();
        let req = RequestOut::new(uid, RequestTypeOut::Broadcast(&p), &opts);
        let bytes = rmp_serde::to_vec(&req).unwrap();
        assert_eq!(request_sender(&bytes), Some(uid.as_str()));
        let acks = RequestOut::new(uid, RequestTypeOut::BroadcastWithAck(&p), &opts)
            .with_ack_timeout(Some(std::time::Duration::from_secs(1)));
        let bytes = rmp_serde::to_vec(&acks).unwrap();
        assert_eq!(request_sender(&bytes), Some(uid.as_str()));
        assert_eq!(request_sender(b""), None);
        assert_eq!(request_sender(b"not msgpack"), None);
        assert_eq!(request_sender(&[0x96, 0xb0, b'a']), None, "cut short");
        assert_eq!(request_sender(&[0x96, 0x01]), None, "not a string");
    }

    #[test]
    fn seen_drops_copies_and_forgets_the_oldest() {
        let mut seen = Seen::new(2);
        let (a, b, c) = (Sid::new(), Sid::new(), Sid::new());
        assert!(seen.first(a));
        assert!(!seen.first(a));
        assert!(seen.first(b));
        assert!(seen.first(c));
        assert_eq!(seen.len(), 2);
        assert!(seen.first(a), "a was forgotten first");
        assert!(!seen.first(c));
    }
}
