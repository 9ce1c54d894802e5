//! Values that must never reach a log, an error message, `--help` or `Debug` output: secrets
//! (`--jwt-secret`, `--api-key`) and URLs that may carry credentials (`--redis-url`,
//! `--join-hook-url`).
//!
//! Both types parse from any string, so clap never echoes a rejected value in its error;
//! [`crate::config::Config::validate`] checks them and names only their redacted form.

use std::fmt;
use std::str::FromStr;

/// A secret string: `Debug` prints `***`, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it (a key, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in bytes (for start-up checks that must not print it).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// A URL that may hold a password (in its user info or its query): `Debug` and `Display`
/// print it redacted (see [`redact`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its credentials, for the client that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL parsed, if it parses.
    pub fn parsed(&self) -> Option<url::Url> {
        url::Url::parse(&self.0).ok()
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

/// `url` without its secrets (the password of the user info, query values): one definition
/// for Redis URLs and the join hook's.
pub fn redact(url: &str) -> String {
    sio_redis_adapter::cluster::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show() {
        let s: Secret = "hunter2-hunter2".parse().unwrap();
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2-hunter2");
    }

    #[test]
    fn urls_lose_passwords_in_user_info_and_query() {
        let u: SecretUrl =
            "redis-sentinel://user:pw1@h1:26379/0?node=h2:26379&sentinelServiceName=m&sentinelPassword=pw2&x=pw3"
                .parse()
                .unwrap();
        for shown in [format!("{u}"), format!("{u:?}")] {
            for secret in ["pw1", "pw2", "pw3"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("node=h2%3A26379") || shown.contains("node=h2:26379"));
            assert!(shown.contains("sentinelServiceName=m"), "{shown}");
            assert!(shown.contains("user:***@h1"), "{shown}");
        }
        assert_eq!(redact("redis://:p@ss word@[::1"), "<unparseable URL>");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact("http://h/hook?token=abc#frag"),
            "http://h/hook?token=***"
        );
    }
}
