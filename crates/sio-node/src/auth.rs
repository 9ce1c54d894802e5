//! Authentication on connect: who a socket belongs to.
//!
//! With `--auth jwt` the handshake's `auth.token` must be an HS256 JWT signed with the
//! node's secret, not expired, whose `sub` is the user id. With `--auth none` (development)
//! `auth.userId` is trusted as given.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use crate::config::AuthMode;

/// Longest user id accepted.
pub const MAX_USER_ID_LEN: usize = 128;

/// The authenticated user of a socket, kept in the socket's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(pub std::sync::Arc<str>);

impl UserId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a connect was refused; the `Display` text is what the client reads in
/// `connect_error`'s `err.message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `auth.token` in the handshake.
    #[error("unauthorized: missing token (send it as auth: {{ token }} in the client options)")]
    MissingToken,
    /// The token is expired.
    #[error("unauthorized: token expired")]
    Expired,
    /// The token's signature, algorithm or shape is wrong.
    #[error("unauthorized: invalid token ({0})")]
    Invalid(String),
    /// The token has no usable `sub`.
    #[error("unauthorized: token has no valid `sub` claim (the user id, 1 to 128 characters)")]
    BadSubject,
    /// `--auth none` without `auth.userId`.
    #[error("unauthorized: missing userId (send auth: {{ userId }} in the client options)")]
    MissingUserId,
}

impl AuthError {
    /// Every label [`AuthError::reason`] gives, for metrics that exist before the first failure.
    pub const REASONS: [&'static str; 5] = [
        "missing_token",
        "expired_token",
        "invalid_token",
        "bad_subject",
        "missing_user_id",
    ];

    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Expired => "expired_token",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::BadSubject => "bad_subject",
            AuthError::MissingUserId => "missing_user_id",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
}

/// Checks handshake auth payloads.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    key: Option<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `mode`; `secret` is required for [`AuthMode::Jwt`] (checked by
    /// [`crate::config::Config::validate`]).
    pub fn new(mode: AuthMode, secret: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            mode,
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    /// The user a handshake `auth` payload proves, or why it proves nothing.
    pub fn authenticate(&self, auth: Option<&serde_json::Value>) -> Result<UserId, AuthError> {
        match self.mode {
            AuthMode::None => {
                let id = auth
                    .and_then(|a| a.get("userId"))
                    .and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .ok_or(AuthError::MissingUserId)?;
                valid_user_id(&id).ok_or(AuthError::MissingUserId)
            }
            AuthMode::Jwt => {
                let token = auth
                    .and_then(|a| a.get("token"))
                    .and_then(|v| v.as_str())
                    .filter(|t| !t.is_empty())
                    .ok_or(AuthError::MissingToken)?;
                let key = self
                    .key
                    .as_ref()
                    .ok_or_else(|| AuthError::Invalid("no secret configured".into()))?;
                let data =
                    jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                        match e.kind() {
                            ErrorKind::ExpiredSignature => AuthError::Expired,
                            ErrorKind::MissingRequiredClaim(c) if c == "sub" => {
                                AuthError::BadSubject
                            }
                            ErrorKind::InvalidSignature => {
                                AuthError::Invalid("bad signature".into())
                            }
                            ErrorKind::InvalidAlgorithm => {
                                AuthError::Invalid("algorithm must be HS256".into())
                            }
                            ErrorKind::MissingRequiredClaim(c) => {
                                AuthError::Invalid(format!("missing `{c}` claim"))
                            }
                            _ => AuthError::Invalid("malformed token".into()),
                        }
                    })?;
                let sub = data.claims.sub.ok_or(AuthError::BadSubject)?;
                valid_user_id(&sub).ok_or(AuthError::BadSubject)
            }
        }
    }
}

fn valid_user_id(id: &str) -> Option<UserId> {
    let ok = !id.is_empty() && id.len() <= MAX_USER_ID_LEN && !id.chars().any(char::is_control);
    ok.then(|| UserId(id.into()))
}

/// Mints an HS256 token for `user` valid for `ttl` (development and tests).
pub fn mint_token(
    secret: &str,
    user: &str,
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        sub: &'a str,
        exp: u64,
        iat: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &Out {
            sub: user,
            exp: now + ttl.as_secs(),
            iat: now,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &str = "test-secret-test-secret-test-secret";

    fn jwt() -> Authenticator {
        Authenticator::new(AuthMode::Jwt, Some(SECRET))
    }

    #[test]
    fn every_reason_is_listed() {
        for e in [
            AuthError::MissingToken,
            AuthError::Expired,
            AuthError::Invalid(String::new()),
            AuthError::BadSubject,
            AuthError::MissingUserId,
        ] {
            assert!(AuthError::REASONS.contains(&e.reason()), "{e}");
        }
    }

    #[test]
    fn valid_token_gives_the_subject() {
        let token = mint_token(SECRET, "alice", Duration::from_secs(60)).unwrap();
        let user = jwt()
            .authenticate(Some(&json!({ "token": token })))
            .unwrap();
        assert_eq!(user.as_str(), "alice");
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(jwt().authenticate(None), Err(AuthError::MissingToken));
        assert_eq!(
            jwt().authenticate(Some(&json!({}))),
            Err(AuthError::MissingToken)
        );
        assert!(matches!(
            jwt().authenticate(Some(&json!({"token": "abc"}))),
            Err(AuthError::Invalid(_))
        ));
        let other = mint_token("another-secret", "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(
            jwt().authenticate(Some(&json!({ "token": other }))),
            Err(AuthError::Invalid("bad signature".into()))
        );
    }

    #[test]
    fn expired_token_is_refused() {
        #[derive(serde::Serialize)]
        struct C {
            sub: &'static str,
            exp: u64,
        }
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &C {
                sub: "bob",
                exp: 1_000_000,
            },
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            jwt().authenticate(Some(&json!({ "token": token }))),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn none_mode_takes_user_id() {
        let a = Authenticator::new(AuthMode::None, None);
        assert_eq!(
            a.authenticate(Some(&json!({"userId": "u1"})))
                .unwrap()
                .as_str(),
            "u1"
        );
        assert_eq!(
            a.authenticate(Some(&json!({"userId": 42})))
                .unwrap()
                .as_str(),
            "42"
        );
        assert_eq!(
            a.authenticate(Some(&json!({"userId": ""}))),
            Err(AuthError::MissingUserId)
        );
        assert_eq!(a.authenticate(None), Err(AuthError::MissingUserId));
    }
}
