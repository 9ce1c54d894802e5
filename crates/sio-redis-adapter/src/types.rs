//! Plain data types shared by the node and the stores.

use serde::{Deserialize, Serialize};

/// A notification as stored in a user's stream and delivered to the client.
///
/// `id` is the stream entry id (`<unix ms>-<seq>`), totally ordered per user, and is what the
/// client passes back as `handshake.auth.lastNotificationId` to get what it missed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Stream entry id, `<unix ms>-<seq>`.
    pub id: String,
    /// The text of the notification.
    pub message: String,
    /// RFC 3339 time at which the notification was accepted.
    pub timestamp: String,
}

/// A notification just appended to its user's stream, with the id of the entry before it.
///
/// `previous` (`"0-0"` for the first) is what lets a node see a gap: a socket whose last
/// delivered id is not `previous` missed something (a failed emit, a message lost while the
/// subscription was down) and must read the stream before it takes `notification` live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The stored notification.
    pub notification: Notification,
    /// Id of the user's newest entry before this one (`"0-0"` when there was none).
    pub previous: String,
}

/// What a node publishes about itself in the node registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Operator-facing node id (`--node-id`).
    pub id: String,
    /// Address at which proxies reach the node (`host:port`).
    pub addr: String,
    /// True once the node has started to drain: it must get no new handshakes.
    #[serde(default)]
    pub draining: bool,
    /// Live Socket.IO connections (all namespaces) on the node.
    #[serde(default)]
    pub connections: u64,
    /// Version of the node binary.
    #[serde(default)]
    pub version: String,
    /// Socket.IO server uid used by the cross-node adapter.
    #[serde(default)]
    pub server_uid: String,
    /// Start time of the node, unix milliseconds.
    #[serde(default)]
    pub started_at_ms: u64,
    /// Live connections per namespace.
    #[serde(default)]
    pub namespaces: std::collections::BTreeMap<String, u64>,
    /// Events received from clients per second, recently.
    #[serde(default)]
    pub events_received_per_second: f64,
    /// Events emitted per second, recently.
    #[serde(default)]
    pub events_sent_per_second: f64,
}

/// One live socket of a user, as kept in the user -> sockets store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketEntry {
    /// Socket id (changes on every reconnect).
    pub sid: String,
    /// Node id holding the socket.
    pub node: String,
    /// Namespace of the socket.
    pub ns: String,
}

impl SocketEntry {
    /// The compact member form used in Redis: `sid|node|ns`.
    pub fn member(&self) -> String {
        format!("{}|{}|{}", self.sid, self.node, self.ns)
    }

    /// Parses the member form written by [`SocketEntry::member`].
    pub fn from_member(member: &str) -> Option<Self> {
        let mut parts = member.splitn(3, '|');
        let sid = parts.next()?.to_owned();
        let node = parts.next()?.to_owned();
        let ns = parts.next()?.to_owned();
        Some(Self { sid, node, ns })
    }
}

/// Stream ids are `<ms>-<seq>`; they compare numerically, not as strings.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = match id.split_once('-') {
        Some((ms, seq)) => (ms, seq),
        None => (id, "0"),
    };
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Current unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_round_trip() {
        let e = SocketEntry {
            sid: "abc".into(),
            node: "node-1".into(),
            ns: "/notifications".into(),
        };
        assert_eq!(SocketEntry::from_member(&e.member()), Some(e));
    }

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(parse_stream_id("10-0") > parse_stream_id("9-5"));
        assert!(parse_stream_id("10-10") > parse_stream_id("10-9"));
        assert_eq!(parse_stream_id("12"), Some((12, 0)));
        assert_eq!(parse_stream_id("x-1"), None);
    }
}

/// Property tests of stream ids as clients send them back.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_text_gets_an_answer(s in "\\PC{0,60}") {
            let _ = parse_stream_id(&s);
        }

        #[test]
        fn ids_round_trip_and_order_like_redis(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), d in any::<u64>()) {
            prop_assert_eq!(parse_stream_id(&format!("{a}-{b}")), Some((a, b)));
            prop_assert_eq!(parse_stream_id(&a.to_string()), Some((a, 0)));
            let (x, y) = (format!("{a}-{b}"), format!("{c}-{d}"));
            prop_assert_eq!(parse_stream_id(&x).cmp(&parse_stream_id(&y)), (a, b).cmp(&(c, d)));
        }

        #[test]
        fn out_of_range_parts_are_refused(a in any::<u64>()) {
            prop_assert_eq!(parse_stream_id(&format!("{a}0000000000000000000000-0")), None);
            prop_assert_eq!(parse_stream_id(&format!("{a}-x")), None);
            prop_assert_eq!(parse_stream_id(&format!("-{a}")), None);
        }
    }
}
