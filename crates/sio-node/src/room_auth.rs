//! Who may join which room (`--room-auth`).
//!
//! With `claims` (the default) a room is allowed when the token's `rooms` claim grants it
//! ([`crate::grants`]); when it does not and `--join-hook-url` is set, the join hook decides
//! ([`crate::join_hook`]). With `open` (development) every room is allowed. The same rule
//! applies to a `join-room` and to each room restored on connect.

use crate::auth::Identity;
use crate::config::{Config, RoomAuth};
use crate::join_hook::{HookAnswer, HookError, JoinHook};
use crate::metrics::Metrics;

/// Whether a room is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allowed,
    /// Refused: the claims do not grant it and nothing else did.
    Denied(String),
    /// The hook could not be asked; refused for now, not known to be forbidden.
    Unknown(String),
}

/// The room rule of a node.
#[derive(Debug)]
pub struct RoomAuthorizer {
    mode: RoomAuth,
    hook: Option<JoinHook>,
}

impl RoomAuthorizer {
    /// The rule of the configuration.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<Self, HookError> {
        Ok(Self {
            mode: config.room_auth,
            hook: JoinHook::from_config(config, metrics)?,
        })
    }

    /// May `identity` be in `room`?
    pub async fn decide(&self, identity: &Identity, room: &str) -> Decision {
        if self.mode == RoomAuth::Open || identity.rooms.allows(room) {
            return Decision::Allowed;
        }
        let Some(hook) = &self.hook else {
            return Decision::Denied(format!(
                "your token does not allow room {room:?} (its `rooms` claim lists the rooms you may join)"
            ));
        };
        let null = serde_json::Value::Null;
        let claims = identity.claims.as_deref().unwrap_or(&null);
        match hook.ask(identity.user.as_str(), room, claims).await {
            HookAnswer::Allowed => Decision::Allowed,
            HookAnswer::Denied(_) => Decision::Denied(format!("you may not join room {room:?}")),
            HookAnswer::TimedOut => Decision::Unknown(format!(
                "room {room:?} could not be authorized (the join hook timed out); try again later"
            )),
            HookAnswer::Failed(why) => Decision::Unknown(format!(
                "room {room:?} could not be authorized (the join hook {why}); try again later"
            )),
        }
    }
}
