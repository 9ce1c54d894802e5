//! Validation of what clients and API callers send: names, texts and ids.

/// Longest room name, in characters.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest room-message text, in characters.
pub const MAX_TEXT_LEN: usize = 10_000;
/// Longest event name accepted by `POST /api/emit`.
pub const MAX_EVENT_LEN: usize = 128;
/// Longest notification message, in characters.
pub const MAX_NOTIFICATION_LEN: usize = 10_000;

/// Events the Socket.IO client reserves; emitting them from the server breaks clients.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Why a client or API input was refused; `code()` is stable, `Display` is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The value has the wrong JSON type.
    #[error("{field} must be {expected}")]
    Type {
        /// Field name.
        field: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// Empty or too long.
    #[error("{field} must be 1 to {max} characters long (got {len})")]
    Length {
        /// Field name.
        field: &'static str,
        /// Maximum length.
        max: usize,
        /// Actual length.
        len: usize,
    },
    /// Contains control characters.
    #[error("{field} must not contain control characters")]
    Control {
        /// Field name.
        field: &'static str,
    },
    /// A reserved event name.
    #[error("event {0:?} is reserved by Socket.IO clients")]
    ReservedEvent(String),
}

impl InputError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Type { .. } => "invalid_type",
            InputError::Length { .. } => "invalid_length",
            InputError::Control { .. } => "invalid_characters",
            InputError::ReservedEvent(_) => "reserved_event",
        }
    }
}

fn bounded(
    field: &'static str,
    s: &str,
    max: usize,
    allow_control: bool,
) -> Result<(), InputError> {
    let len = s.chars().count();
    if len == 0 || len > max {
        return Err(InputError::Length { field, max, len });
    }
    if !allow_control && s.chars().any(char::is_control) {
        return Err(InputError::Control { field });
    }
    Ok(())
}

/// A room name: a string of 1 to [`MAX_ROOM_LEN`] characters without control characters.
pub fn room(v: &serde_json::Value) -> Result<String, InputError> {
    let s = v.as_str().ok_or(InputError::Type {
        field: "room",
        expected: "a string",
    })?;
    bounded("room", s, MAX_ROOM_LEN, false)?;
    Ok(s.to_owned())
}

/// A message text: a string of 1 to [`MAX_TEXT_LEN`] characters (new lines allowed).
pub fn text(v: &serde_json::Value) -> Result<String, InputError> {
    let s = v.as_str().ok_or(InputError::Type {
        field: "text",
        expected: "a string",
    })?;
    bounded("text", s, MAX_TEXT_LEN, true)?;
    Ok(s.to_owned())
}

/// An event name for `POST /api/emit`.
pub fn event(s: &str) -> Result<(), InputError> {
    bounded("event", s, MAX_EVENT_LEN, false)?;
    if RESERVED_EVENTS.contains(&s) {
        return Err(InputError::ReservedEvent(s.to_owned()));
    }
    Ok(())
}

/// A notification message.
pub fn notification_message(v: &serde_json::Value) -> Result<String, InputError> {
    let s = v.as_str().ok_or(InputError::Type {
        field: "message",
        expected: "a string",
    })?;
    bounded("message", s, MAX_NOTIFICATION_LEN, true)?;
    Ok(s.to_owned())
}

/// A user id given by an API caller: a string (or an integer, as the article's clients send).
pub fn user_id(v: &serde_json::Value) -> Result<String, InputError> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => {
            return Err(InputError::Type {
                field: "userId",
                expected: "a string",
            });
        }
    };
    bounded("userId", &s, crate::auth::MAX_USER_ID_LEN, false)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rooms() {
        assert_eq!(room(&json!("general")).unwrap(), "general");
        assert_eq!(room(&json!(3)).unwrap_err().code(), "invalid_type");
        assert_eq!(room(&json!("")).unwrap_err().code(), "invalid_length");
        assert_eq!(
            room(&json!("a".repeat(129))).unwrap_err().code(),
            "invalid_length"
        );
        assert_eq!(
            room(&json!("a\u{0}b")).unwrap_err().code(),
            "invalid_characters"
        );
        assert!(room(&json!("é".repeat(128))).is_ok());
    }

    #[test]
    fn texts_and_events() {
        assert!(text(&json!("hello\nworld")).is_ok());
        assert!(text(&json!(null)).is_err());
        assert!(event("news").is_ok());
        assert_eq!(event("connect").unwrap_err().code(), "reserved_event");
        assert_eq!(user_id(&json!(42)).unwrap(), "42");
        assert!(user_id(&json!(1.5)).is_err());
    }
}

/// Property tests: any JSON gets an answer (never a panic), and what is accepted is exactly the
/// input, within its bounds.
#[cfg(test)]
pub(crate) mod props {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// Any JSON value: odd numbers, any unicode string, nested arrays and objects.
    pub(crate) fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
            "[a-z*-]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-zA-Z]{0,8}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_gets_an_answer(v in any_json()) {
            for (field, r) in [("room", room(&v)), ("text", text(&v)), ("message", notification_message(&v))] {
                match (&v, r) {
                    (Value::String(s), Ok(out)) => prop_assert_eq!(&out, s, "{}", field),
                    (Value::String(_), Err(e)) => prop_assert_ne!(e.code(), "invalid_type"),
                    (_, r) => prop_assert_eq!(r.map_err(|e| e.code()), Err("invalid_type")),
                }
            }
            if let Ok(id) = user_id(&v) {
                let n = id.chars().count();
                prop_assert!((1..=crate::auth::MAX_USER_ID_LEN).contains(&n));
                prop_assert!(!id.chars().any(char::is_control));
            }
        }

        #[test]
        fn rooms_are_accepted_exactly_within_their_bounds(s in "\\PC{0,140}|[\\x00-\\x1f\\x7f-\\u{9f}a]{1,4}") {
            let n = s.chars().count();
            let expected = (1..=MAX_ROOM_LEN).contains(&n) && !s.chars().any(char::is_control);
            let got = room(&Value::String(s.clone()));
            prop_assert_eq!(got.is_ok(), expected, "{:?}: {:?}", s, got);
            if let Err(e) = got {
                let code = if n == 0 || n > MAX_ROOM_LEN { "invalid_length" } else { "invalid_characters" };
                prop_assert_eq!(e.code(), code);
            }
        }

        #[test]
        fn events_are_refused_when_reserved_or_unbounded(s in "\\PC{0,140}", pick in 0usize..8) {
            let name = RESERVED_EVENTS.get(pick).map_or(s, |r| (*r).to_owned());
            let r = event(&name);
            if RESERVED_EVENTS.contains(&name.as_str()) {
                prop_assert_eq!(r.map_err(|e| e.code()), Err("reserved_event"));
            } else {
                let n = name.chars().count();
                prop_assert_eq!(r.is_ok(), (1..=MAX_EVENT_LEN).contains(&n) && !name.chars().any(char::is_control));
            }
        }

        #[test]
        fn integer_user_ids_read_as_their_decimal_text(n in any::<i64>(), u in any::<u64>()) {
            prop_assert_eq!(user_id(&json!(n)), Ok(n.to_string()));
            prop_assert_eq!(user_id(&json!(u)), Ok(u.to_string()));
        }
    }
}
