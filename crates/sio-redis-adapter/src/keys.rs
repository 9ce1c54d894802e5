//! Names of every Redis key and channel, in one place (see the crate docs for the list).

/// Key and channel names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// Makes `s` safe inside a `{hash tag}`: braces would end the tag early.
fn tag(s: &str) -> String {
    s.replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

impl Keys {
    /// Names under `prefix` (for example `sio`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Sorted set: live sockets of `user`, member `sid|node|ns`, score = lease expiry (ms).
    pub fn user_sockets(&self, user: &str) -> String {
        format!("{}:user:{{{}}}:sockets", self.prefix, tag(user))
    }

    /// Set: rooms `user` joined and did not leave.
    pub fn user_rooms(&self, user: &str) -> String {
        format!("{}:user:{{{}}}:rooms", self.prefix, tag(user))
    }

    /// Stream: `user`'s notifications, capped with `MAXLEN ~`.
    pub fn notifications(&self, user: &str) -> String {
        format!("{}:user:{{{}}}:notifications", self.prefix, tag(user))
    }

    /// Sorted set: users present in `room`, score = latest lease expiry of their sockets.
    pub fn presence_users(&self, room: &str) -> String {
        format!("{}:presence:{{{}}}:users", self.prefix, tag(room))
    }

    /// Prefix of the per-user socket sets of `room` (same hash slot as
    /// [`Keys::presence_users`], so scripts can touch both on Redis Cluster).
    pub fn presence_sockets_prefix(&self, room: &str) -> String {
        format!("{}:presence:{{{}}}:sockets:", self.prefix, tag(room))
    }

    /// Sorted set: sockets of `user` in `room`, score = lease expiry (ms).
    pub fn presence_sockets(&self, room: &str, user: &str) -> String {
        format!("{}{}", self.presence_sockets_prefix(room), user)
    }

    /// Sorted set: node ids, score = registry lease expiry (ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Hash: node id -> JSON [`crate::NodeInfo`].
    pub fn nodes_info(&self) -> String {
        format!("{}:nodes:info", self.prefix)
    }

    /// Shard channel: `user`'s notifications, to the nodes holding a socket of the user (same
    /// hash tag, so same Redis Cluster slot, as the user's keys).
    pub fn notify_channel(&self, user: &str) -> String {
        format!("{}:notify:{{{}}}", self.prefix, tag(user))
    }

    /// Shard channel: delivery counts answered to the node with server uid `uid`.
    pub fn notify_reply_channel(&self, uid: &str) -> String {
        format!("{}:notify-reply:{}", self.prefix, uid)
    }

    /// Shard channel: admin UI requests to every node (sio-node's `admin::bus`, JSON).
    pub fn admin_channel(&self) -> String {
        format!("{}:admin", self.prefix)
    }

    /// Shard channel: answers to the admin UI requests of the node with server uid `uid`.
    pub fn admin_reply_channel(&self, uid: &str) -> String {
        format!("{}:admin-reply:{}", self.prefix, uid)
    }

    /// Shard channel: socketioxide-redis's requests to every node serving namespace `ns`.
    pub fn request_channel(&self, ns: &str) -> String {
        format!("{}-request#{}#", self.prefix, ns)
    }

    /// Shard channel: broadcasts to `room` of namespace `ns`, subscribed by the nodes with
    /// local members of the room (see [`crate::routing`]).
    pub fn room_channel(&self, ns: &str, room: &str) -> String {
        format!("{}{}#{}", self.room_channel_prefix(), ns, room)
    }

    /// What every room channel starts with.
    pub fn room_channel_prefix(&self) -> String {
        format!("{}-room#", self.prefix)
    }

    /// Prefix socketioxide-redis puts before its channels
    /// (`{prefix}-request#{ns}#`, `{prefix}-request#{ns}#{uid}#`, `{prefix}-response#{ns}#{uid}#`).
    pub fn adapter_prefix(&self) -> String {
        self.prefix.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keys_share_one_hash_tag_even_with_braces() {
        let k = Keys::new("sio");
        assert_eq!(k.presence_users("a{b}"), "sio:presence:{a%7Bb%7D}:users");
        assert_eq!(
            k.presence_sockets("a{b}", "u"),
            "sio:presence:{a%7Bb%7D}:sockets:u"
        );
        assert_eq!(k.user_rooms("al}ice"), "sio:user:{al%7Dice}:rooms");
    }
}
