//! Values that must never reach a log, an error message, `--help` or `Debug` output: the
//! sid secret and the registry's Redis URL (which may hold passwords).
//!
//! Both parse from any string, so clap never echoes a rejected value in its error; the
//! configuration checks them and names only their redacted form.

use std::fmt;
use std::str::FromStr;

/// A secret string: `Debug` prints `***`, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A URL that may hold passwords: `Debug` and `Display` print it redacted ([`redact`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its credentials, for the client that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", redact(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Query parameters whose values are safe to show (fred's Redis URL options naming hosts and
/// services); every other query value may be a password (`sentinelPassword`).
const SAFE_QUERY_KEYS: [&str; 3] = ["node", "sentinelServiceName", "sentinelUsername"];

/// `url` without its secrets: the user-info password and every query value not known to be
/// harmless become `***`. (The nodes' twin lives in sio-redis-adapter, which the proxy does
/// not depend on.) A string that does not parse as a URL is replaced whole.
pub fn redact(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "<unparseable URL>".to_owned();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if SAFE_QUERY_KEYS.contains(&k.as_ref()) {
                    v.into_owned()
                } else {
                    "***".to_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_secret_shows() {
        let s: Secret = "sid-secret-value".parse().expect("infallible");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let u: SecretUrl = "redis-sentinel://u:pw1@h:26379?node=h2:26379&sentinelPassword=pw2"
            .parse()
            .expect("infallible");
        for shown in [format!("{u}"), format!("{u:?}")] {
            assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
            assert!(shown.contains("u:***@h"), "{shown}");
        }
        assert_eq!(redact("redis://:pw@[x"), "<unparseable URL>");
    }
}
