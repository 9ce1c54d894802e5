//! In-process state store: what a standalone node (no `--redis-url`) uses.
//!
//! It implements the same semantics as the Redis store for one node: users' sockets,
//! users' rooms, presence, capped per-user notification logs and a one-entry registry.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::types::{Appended, NodeInfo, Notification, SocketEntry, now_ms, parse_stream_id};

/// State of one standalone node, kept in memory.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    notification_maxlen: usize,
}

#[derive(Debug, Default)]
struct Inner {
    user_sockets: HashMap<String, HashSet<SocketEntry>>,
    user_rooms: HashMap<String, BTreeSet<String>>,
    /// room -> user -> sids of that user in the room
    presence: HashMap<String, HashMap<String, HashSet<String>>>,
    notifications: HashMap<String, VecDeque<Notification>>,
    last_id: (u64, u64),
    nodes: HashMap<String, (NodeInfo, u64)>,
}

impl MemoryStore {
    /// An empty store keeping at most `notification_maxlen` notifications per user.
    pub fn new(notification_maxlen: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            notification_maxlen: notification_maxlen.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing the node, so recover the data instead of propagating.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add_socket(&self, user: &str, entry: SocketEntry) {
        self.lock()
            .user_sockets
            .entry(user.to_owned())
            .or_default()
            .insert(entry);
    }

    pub(crate) fn remove_socket(&self, user: &str, entry: &SocketEntry) {
        let mut inner = self.lock();
        if let Some(set) = inner.user_sockets.get_mut(user) {
            set.remove(entry);
            if set.is_empty() {
                inner.user_sockets.remove(user);
            }
        }
    }

    pub(crate) fn user_sockets(&self, user: &str) -> Vec<SocketEntry> {
        self.lock()
            .user_sockets
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn user_rooms(&self, user: &str) -> Vec<String> {
        self.lock()
            .user_rooms
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn add_user_room(&self, user: &str, room: &str) {
        self.lock()
            .user_rooms
            .entry(user.to_owned())
            .or_default()
            .insert(room.to_owned());
    }

    pub(crate) fn remove_user_room(&self, user: &str, room: &str) {
        let mut inner = self.lock();
        if let Some(set) = inner.user_rooms.get_mut(user) {
            set.remove(room);
            if set.is_empty() {
                inner.user_rooms.remove(user);
            }
        }
    }

    pub(crate) fn presence_join(&self, room: &str, user: &str, sid: &str) -> bool {
        let mut inner = self.lock();
        let sids = inner
            .presence
            .entry(room.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default();
        let first = sids.is_empty();
        sids.insert(sid.to_owned());
        first
    }

    pub(crate) fn presence_leave(&self, room: &str, user: &str, sid: &str) -> bool {
        let mut inner = self.lock();
        let Some(users) = inner.presence.get_mut(room) else {
            return false;
        };
        let Some(sids) = users.get_mut(user) else {
            return false;
        };
        let removed = sids.remove(sid);
        let last = removed && sids.is_empty();
        if sids.is_empty() {
            users.remove(user);
        }
        if users.is_empty() {
            inner.presence.remove(room);
        }
        last
    }

    pub(crate) fn presence(&self, room: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .lock()
            .presence
            .get(room)
            .map(|u| u.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    pub(crate) fn append_notification(
        &self,
        user: &str,
        message: &str,
        timestamp: &str,
    ) -> Appended {
        let mut inner = self.lock();
        let now = now_ms();
        let id = if now > inner.last_id.0 {
            (now, 0)
        } else {
            (inner.last_id.0, inner.last_id.1 + 1)
        };
        inner.last_id = id;
        let notification = Notification {
            id: format!("{}-{}", id.0, id.1),
            message: message.to_owned(),
            timestamp: timestamp.to_owned(),
        };
        let log = inner.notifications.entry(user.to_owned()).or_default();
        let previous = log
            .back()
            .map_or_else(|| "0-0".to_owned(), |n| n.id.clone());
        log.push_back(notification.clone());
        while log.len() > self.notification_maxlen {
            log.pop_front();
        }
        Appended {
            notification,
            previous,
        }
    }

    pub(crate) fn last_notification_id(&self, user: &str) -> Option<String> {
        self.lock()
            .notifications
            .get(user)
            .and_then(|log| log.back())
            .map(|n| n.id.clone())
    }

    pub(crate) fn notifications_after(
        &self,
        user: &str,
        after: &str,
        limit: Option<usize>,
    ) -> Vec<Notification> {
        let Some(after) = parse_stream_id(after) else {
            return Vec::new();
        };
        self.lock()
            .notifications
            .get(user)
            .map(|log| {
                log.iter()
                    .filter(|n| parse_stream_id(&n.id).is_some_and(|id| id > after))
                    .take(limit.unwrap_or(usize::MAX))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn heartbeat(&self, info: &NodeInfo, expires_at_ms: u64) {
        self.lock()
            .nodes
            .insert(info.id.clone(), (info.clone(), expires_at_ms));
    }

    pub(crate) fn deregister(&self, id: &str) {
        self.lock().nodes.remove(id);
    }

    pub(crate) fn nodes(&self) -> Vec<NodeInfo> {
        let now = now_ms();
        let mut nodes: Vec<NodeInfo> = self
            .lock()
            .nodes
            .values()
            .filter(|(_, exp)| *exp > now)
            .map(|(n, _)| n.clone())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_first_and_last() {
        let s = MemoryStore::new(10);
        assert!(s.presence_join("r", "u", "s1"));
        assert!(!s.presence_join("r", "u", "s2"));
        assert_eq!(s.presence("r"), vec!["u".to_owned()]);
        assert!(!s.presence_leave("r", "u", "s1"));
        assert!(s.presence_leave("r", "u", "s2"));
        assert!(s.presence("r").is_empty());
        assert!(!s.presence_leave("r", "u", "s2"));
    }

    #[test]
    fn notifications_are_capped_and_replayed_after_an_id() {
        let s = MemoryStore::new(3);
        let appended: Vec<Appended> = (0..5)
            .map(|i| s.append_notification("u", &format!("m{i}"), "t"))
            .collect();
        // each names the entry before it
        assert_eq!(appended[0].previous, "0-0");
        for w in appended.windows(2) {
            assert_eq!(w[1].previous, w[0].notification.id);
        }
        let ids: Vec<String> = appended.into_iter().map(|a| a.notification.id).collect();
        let after = s.notifications_after("u", &ids[2], None);
        assert_eq!(
            after.iter().map(|n| n.message.as_str()).collect::<Vec<_>>(),
            ["m3", "m4"]
        );
        let page = s.notifications_after("u", &ids[2], Some(1));
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, ids[3]);
        // only the last three are kept
        assert_eq!(s.notifications_after("u", "0-0", None).len(), 3);
        assert!(s.notifications_after("u", "garbage", None).is_empty());
    }

    #[test]
    fn ids_are_strictly_increasing() {
        let s = MemoryStore::new(100);
        let mut last = (0, 0);
        for _ in 0..50 {
            let id =
                parse_stream_id(&s.append_notification("u", "m", "t").notification.id).unwrap();
            assert!(id > last);
            last = id;
        }
    }
}
