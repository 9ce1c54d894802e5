//! What a token lets its holder do: the rooms of its `rooms` claim and its `admin` claim.
//!
//! `rooms` is an array of room names; an entry ending in `*` is a prefix (`"team-a*"` allows
//! `team-a`, `team-a-dev`, …; `"*"` allows every room). A token without the claim allows no
//! room.

/// Most entries a `rooms` claim may hold (a larger claim is refused at connect).
pub const MAX_ROOM_GRANTS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Grant {
    Exact(String),
    Prefix(String),
}

/// The rooms a token allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomGrants {
    grants: Vec<Grant>,
}

/// The `rooms` claim is not an array of strings, or too long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantsError {
    /// Not an array of strings.
    #[error("the `rooms` claim must be an array of room names (\"team-a*\" for a prefix)")]
    NotAnArray,
    /// More entries than [`MAX_ROOM_GRANTS`].
    #[error("the `rooms` claim has more than {MAX_ROOM_GRANTS} entries; use prefixes")]
    TooMany,
}

impl RoomGrants {
    /// No room at all (a token without the claim).
    pub fn none() -> Self {
        Self::default()
    }

    /// Every room (`["*"]`).
    pub fn any() -> Self {
        Self {
            grants: vec![Grant::Prefix(String::new())],
        }
    }

    /// Reads a `rooms` claim; `None` (no claim) allows no room.
    pub fn from_claim(claim: Option<&serde_json::Value>) -> Result<Self, GrantsError> {
        let list = match claim {
            None | Some(serde_json::Value::Null) => return Ok(Self::none()),
            Some(serde_json::Value::Array(list)) => list,
            Some(_) => return Err(GrantsError::NotAnArray),
        };
        if list.len() > MAX_ROOM_GRANTS {
            return Err(GrantsError::TooMany);
        }
        let grants = list
            .iter()
            .map(|v| match v.as_str() {
                Some(s) => Ok(match s.strip_suffix('*') {
                    Some(prefix) => Grant::Prefix(prefix.to_owned()),
                    None => Grant::Exact(s.to_owned()),
                }),
                None => Err(GrantsError::NotAnArray),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { grants })
    }

    /// True when `room` is granted.
    pub fn allows(&self, room: &str) -> bool {
        self.grants.iter().any(|g| match g {
            Grant::Exact(r) => r == room,
            Grant::Prefix(p) => room.starts_with(p.as_str()),
        })
    }

    /// True when no room is granted.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grants(v: serde_json::Value) -> RoomGrants {
        RoomGrants::from_claim(Some(&v)).unwrap()
    }

    #[test]
    fn exact_names_and_prefixes() {
        let g = grants(json!(["general", "team-a*"]));
        assert!(g.allows("general"));
        assert!(!g.allows("general2"));
        assert!(!g.allows("Gen"));
        assert!(g.allows("team-a"));
        assert!(g.allows("team-a-dev"));
        assert!(!g.allows("team-b"));
        assert!(!g.allows("team-"));
    }

    #[test]
    fn star_allows_everything_and_no_claim_nothing() {
        assert!(grants(json!(["*"])).allows("anything"));
        assert!(RoomGrants::any().allows("x"));
        let none = RoomGrants::from_claim(None).unwrap();
        assert!(none.is_empty());
        assert!(!none.allows("general"));
        assert!(!grants(json!([])).allows("general"));
        // a literal '*' inside a name is not a wildcard
        assert!(!grants(json!(["a*b"])).allows("axxb"));
    }

    #[test]
    fn malformed_claims_are_refused() {
        for bad in [json!("general"), json!([1]), json!({"a": 1}), json!(true)] {
            assert_eq!(
                RoomGrants::from_claim(Some(&bad)),
                Err(GrantsError::NotAnArray)
            );
        }
        let many: Vec<String> = (0..=MAX_ROOM_GRANTS).map(|i| format!("r{i}")).collect();
        assert_eq!(
            RoomGrants::from_claim(Some(&json!(many))),
            Err(GrantsError::TooMany)
        );
    }
}

/// Property tests: any claim gets an answer; an accepted list allows exactly its names and the
/// names under its prefixes.
#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::validate::props::any_json;

    proptest! {
        #[test]
        fn any_claim_gets_an_answer(v in any_json()) {
            let r = RoomGrants::from_claim(Some(&v));
            let strings = v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
            prop_assert_eq!(r.is_ok(), v.is_null() || strings);
        }

        #[test]
        fn a_list_allows_its_names_and_prefixes(
            names in prop::collection::vec("[a-z]{0,6}\\*?", 0..12),
            probe in "[a-z]{0,8}",
        ) {
            let claim = Value::Array(names.iter().cloned().map(Value::String).collect());
            let grants = RoomGrants::from_claim(Some(&claim)).expect("an array of strings");
            prop_assert_eq!(grants.is_empty(), names.is_empty());
            for n in &names {
                match n.strip_suffix('*') {
                    Some(prefix) => {
                        prop_assert!(grants.allows(prefix));
                        let under = format!("{prefix}{probe}");
                        prop_assert!(grants.allows(&under));
                    }
                    None => prop_assert!(grants.allows(n)),
                }
            }
            let expected = names.iter().any(|n| match n.strip_suffix('*') {
                Some(prefix) => probe.starts_with(prefix),
                None => *n == probe,
            });
            prop_assert_eq!(grants.allows(&probe), expected);
        }

        #[test]
        fn more_than_the_maximum_is_refused(extra in 1usize..50) {
            let claim = Value::Array(vec![Value::String("r".into()); MAX_ROOM_GRANTS + extra]);
            prop_assert_eq!(RoomGrants::from_claim(Some(&claim)), Err(GrantsError::TooMany));
        }
    }
}
