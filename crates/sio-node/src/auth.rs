//! Authentication on connect: who a socket belongs to and what its token allows.
//!
//! With `--auth jwt` the handshake's `auth.token` must be a JWT signed with the configured
//! key and algorithm (HS256, RS256 or ES256; pinned by the configuration, see
//! [`crate::jwt_key`]), not expired, already valid (`nbf`), from `--jwt-issuer` and for
//! `--jwt-audience` when those are set, whose `sub` is the user id. Its `rooms` and `admin`
//! claims say what the socket may do ([`crate::grants`]). With `--auth none` (development)
//! `auth.userId`, `auth.rooms` and `auth.admin` are trusted as given.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};

use crate::config::{AuthMode, Config, ConfigError, JwtAlgorithm};
use crate::grants::RoomGrants;

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

/// Who a socket is and what its token allows.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user (`sub`).
    pub user: UserId,
    /// Rooms the `rooms` claim allows.
    pub rooms: RoomGrants,
    /// The `admin` claim is `true`.
    pub admin: bool,
    /// When the token stops being accepted (`exp` plus the leeway); `None` without a token.
    pub expires_at: Option<SystemTime>,
    /// Every claim of the token, kept only when a join hook needs them.
    pub claims: Option<Arc<serde_json::Value>>,
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
    /// The token's signature, algorithm, claims or shape is wrong.
    #[error("unauthorized: invalid token ({0})")]
    Invalid(String),
    /// The token has no usable `sub`.
    #[error("unauthorized: token has no valid `sub` claim (the user id, 1 to 128 characters)")]
    BadSubject,
    /// `--auth none` without `auth.userId`.
    #[error("unauthorized: missing userId (send auth: {{ userId }} in the client options)")]
    MissingUserId,
    /// `/dashboard` without the `admin` claim.
    #[error("forbidden: admin only")]
    NotAdmin,
}

impl AuthError {
    /// Every label [`AuthError::reason`] gives, for metrics that exist before the first failure.
    pub const REASONS: [&'static str; 6] = [
        "missing_token",
        "expired_token",
        "invalid_token",
        "bad_subject",
        "missing_user_id",
        "not_admin",
    ];

    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Expired => "expired_token",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::BadSubject => "bad_subject",
            AuthError::MissingUserId => "missing_user_id",
            AuthError::NotAdmin => "not_admin",
        }
    }
}

/// Checks handshake auth payloads.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    algorithm: JwtAlgorithm,
    key: Option<DecodingKey>,
    validation: Validation,
    leeway: Duration,
    keep_claims: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The authenticator the configuration describes; fails as [`Config::validate`] does.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let (algorithm, key) = if config.auth == AuthMode::Jwt && !config.conformance {
            let k = crate::jwt_key::load(config)?;
            (k.algorithm, Some(k.key))
        } else {
            (JwtAlgorithm::Hs256, None)
        };
        let mut validation = Validation::new(algorithm.jsonwebtoken());
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // jsonwebtoken refuses any token with `aud` unless told which to expect; without
            // a configured audience, `aud` is simply not checked.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            mode: config.auth,
            algorithm,
            key,
            validation,
            leeway: Duration::from_secs(config.jwt_leeway.as_secs()),
            keep_claims: config.join_hook_url.is_some(),
        })
    }

    /// The user a handshake `auth` payload proves and what it may do, or why it proves nothing.
    pub fn authenticate(&self, auth: Option<&serde_json::Value>) -> Result<Identity, AuthError> {
        match self.mode {
            AuthMode::None => self.trusted(auth),
            AuthMode::Jwt => self.verify(auth),
        }
    }

    fn trusted(&self, auth: Option<&serde_json::Value>) -> Result<Identity, AuthError> {
        let id = auth
            .and_then(|a| a.get("userId"))
            .and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .ok_or(AuthError::MissingUserId)?;
        let user = valid_user_id(&id).ok_or(AuthError::MissingUserId)?;
        let rooms_claim = auth.and_then(|a| a.get("rooms"));
        let rooms = RoomGrants::from_claim(rooms_claim)
            .map_err(|e| AuthError::Invalid(format!("auth.rooms: {e}")))?;
        let admin = auth.and_then(|a| a.get("admin")) == Some(&serde_json::Value::Bool(true));
        let claims = self.keep_claims.then(|| {
            Arc::new(serde_json::json!({
                "sub": id,
                "rooms": rooms_claim.cloned().unwrap_or(serde_json::Value::Null),
                "admin": admin,
            }))
        });
        Ok(Identity {
            user,
            rooms,
            admin,
            expires_at: None,
            claims,
        })
    }

    fn verify(&self, auth: Option<&serde_json::Value>) -> Result<Identity, AuthError> {
        let token = auth
            .and_then(|a| a.get("token"))
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingToken)?;
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("no key configured".into()))?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &self.validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::MissingRequiredClaim(c) if c == "sub" => AuthError::BadSubject,
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
            ErrorKind::InvalidAlgorithm => {
                AuthError::Invalid(format!("algorithm must be {}", self.algorithm.name()))
            }
            ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)".into()),
            ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (iss)".into()),
            ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (aud)".into()),
            ErrorKind::MissingRequiredClaim(c) => {
                AuthError::Invalid(format!("missing `{c}` claim"))
            }
            _ => AuthError::Invalid("malformed token".into()),
        })?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .ok_or(AuthError::BadSubject)?;
        let user = valid_user_id(sub).ok_or(AuthError::BadSubject)?;
        let rooms = RoomGrants::from_claim(claims.get("rooms"))
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let admin = claims.get("admin") == Some(&serde_json::Value::Bool(true));
        // `exp` passed validation, so it is a number; beyond it plus the leeway the token
        // would be refused at connect, so that is when the socket must go.
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
            .ok_or_else(|| AuthError::Invalid("missing `exp` claim".into()))?;
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(exp))
            .and_then(|t| t.checked_add(self.leeway + Duration::from_secs(1)));
        let claims = self
            .keep_claims
            .then(|| Arc::new(serde_json::Value::Object(claims)));
        Ok(Identity {
            user,
            rooms,
            admin,
            expires_at,
            claims,
        })
    }
}

fn valid_user_id(id: &str) -> Option<UserId> {
    let ok = !id.is_empty() && id.len() <= MAX_USER_ID_LEN && !id.chars().any(char::is_control);
    ok.then(|| UserId(id.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    const SECRET: &str = "test-secret-test-secret-test-secret";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(alg: Algorithm, key: &jsonwebtoken::EncodingKey, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap()
    }

    fn hs(claims: serde_json::Value) -> String {
        sign(
            Algorithm::HS256,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            claims,
        )
    }

    fn authenticator(args: &[&str]) -> Authenticator {
        let mut all = vec!["sio-node"];
        all.extend_from_slice(args);
        Authenticator::from_config(&Config::try_parse_from(all).unwrap()).unwrap()
    }

    fn jwt() -> Authenticator {
        authenticator(&["--jwt-secret", SECRET])
    }

    fn check(a: &Authenticator, token: &str) -> Result<Identity, AuthError> {
        a.authenticate(Some(&json!({ "token": token })))
    }

    #[test]
    fn every_reason_is_listed() {
        for e in [
            AuthError::MissingToken,
            AuthError::Expired,
            AuthError::Invalid(String::new()),
            AuthError::BadSubject,
            AuthError::MissingUserId,
            AuthError::NotAdmin,
        ] {
            assert!(AuthError::REASONS.contains(&e.reason()), "{e}");
        }
    }

    #[test]
    fn valid_token_gives_the_subject_and_its_grants() {
        let exp = now() + 60;
        let token = hs(json!({"sub": "alice", "exp": exp, "rooms": ["team-a*"], "admin": true}));
        let id = check(&jwt(), &token).unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert!(id.rooms.allows("team-a-dev") && !id.rooms.allows("team-b"));
        assert!(id.admin);
        // refused from exp + leeway + 1 s on, when the connect check refuses it too
        assert_eq!(
            id.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(exp + 5 + 1))
        );
        assert!(id.claims.is_none(), "claims are only kept for a join hook");
        let plain = check(&jwt(), &hs(json!({"sub": "bob", "exp": exp}))).unwrap();
        assert!(plain.rooms.is_empty() && !plain.admin);
        let not_bool = check(
            &jwt(),
            &hs(json!({"sub": "c", "exp": exp, "admin": "true"})),
        )
        .unwrap();
        assert!(!not_bool.admin, "only the boolean true makes an admin");
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(
            jwt().authenticate(None).unwrap_err(),
            AuthError::MissingToken
        );
        assert_eq!(
            jwt().authenticate(Some(&json!({}))).unwrap_err(),
            AuthError::MissingToken
        );
        assert!(matches!(check(&jwt(), "abc"), Err(AuthError::Invalid(_))));
        let other = sign(
            Algorithm::HS256,
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-xx"),
            json!({"sub": "alice", "exp": now() + 60}),
        );
        assert_eq!(
            check(&jwt(), &other).unwrap_err(),
            AuthError::Invalid("bad signature".into())
        );
        let bad_rooms = hs(json!({"sub": "a", "exp": now() + 60, "rooms": "general"}));
        assert!(
            matches!(check(&jwt(), &bad_rooms), Err(AuthError::Invalid(m)) if m.contains("rooms"))
        );
        let no_sub = hs(json!({"exp": now() + 60}));
        assert_eq!(check(&jwt(), &no_sub).unwrap_err(), AuthError::BadSubject);
        let no_exp = hs(json!({"sub": "a"}));
        assert!(matches!(check(&jwt(), &no_exp), Err(AuthError::Invalid(m)) if m.contains("exp")));
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused() {
        let token = hs(json!({"sub": "bob", "exp": 1_000_000}));
        assert_eq!(check(&jwt(), &token).unwrap_err(), AuthError::Expired);
        let early = hs(json!({"sub": "bob", "exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(
            check(&jwt(), &early).unwrap_err(),
            AuthError::Invalid("not valid yet (nbf)".into())
        );
        let within_leeway = hs(json!({"sub": "bob", "exp": now() + 600, "nbf": now() + 2}));
        check(&jwt(), &within_leeway).unwrap();
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let exp = now() + 60;
        let with_aud = hs(json!({"sub": "a", "exp": exp, "aud": "chat", "iss": "https://idp"}));
        // no audience configured: a token carrying one is accepted
        check(&jwt(), &with_aud).unwrap();
        let strict = authenticator(&[
            "--jwt-secret",
            SECRET,
            "--jwt-issuer",
            "https://idp",
            "--jwt-audience",
            "chat",
        ]);
        check(&strict, &with_aud).unwrap();
        let other_aud = hs(json!({"sub": "a", "exp": exp, "aud": "billing", "iss": "https://idp"}));
        assert_eq!(
            check(&strict, &other_aud).unwrap_err(),
            AuthError::Invalid("wrong audience (aud)".into())
        );
        let other_iss = hs(json!({"sub": "a", "exp": exp, "aud": "chat", "iss": "https://evil"}));
        assert_eq!(
            check(&strict, &other_iss).unwrap_err(),
            AuthError::Invalid("wrong issuer (iss)".into())
        );
        let none = hs(json!({"sub": "a", "exp": exp}));
        assert!(
            matches!(check(&strict, &none), Err(AuthError::Invalid(m)) if m.contains("missing"))
        );
    }

    #[test]
    fn the_algorithm_is_never_taken_from_the_token() {
        let exp = now() + 60;
        // alg none: an unsigned token
        let b64 = |v: serde_json::Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let unsigned = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "mallory", "exp": exp}))
        );
        assert!(matches!(
            check(&jwt(), &unsigned),
            Err(AuthError::Invalid(_))
        ));
        // HS384 with the right secret is still another algorithm
        let hs384 = sign(
            Algorithm::HS384,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            json!({"sub": "a", "exp": exp}),
        );
        assert_eq!(
            check(&jwt(), &hs384).unwrap_err(),
            AuthError::Invalid("algorithm must be HS256".into())
        );
    }

    #[test]
    fn claims_are_kept_for_the_join_hook() {
        let a = authenticator(&[
            "--jwt-secret",
            SECRET,
            "--join-hook-url",
            "http://127.0.0.1:9/",
        ]);
        let id = check(
            &a,
            &hs(json!({"sub": "a", "exp": now() + 60, "org": "acme"})),
        )
        .unwrap();
        assert_eq!(id.claims.unwrap()["org"], "acme");
    }

    #[test]
    fn none_mode_trusts_user_id_rooms_and_admin() {
        let a = authenticator(&["--auth", "none"]);
        let id = a
            .authenticate(Some(
                &json!({"userId": "u1", "rooms": ["general"], "admin": true}),
            ))
            .unwrap();
        assert_eq!(id.user.as_str(), "u1");
        assert!(id.rooms.allows("general") && !id.rooms.allows("other"));
        assert!(id.admin);
        assert_eq!(id.expires_at, None);
        let plain = a.authenticate(Some(&json!({"userId": 42}))).unwrap();
        assert_eq!(plain.user.as_str(), "42");
        assert!(plain.rooms.is_empty() && !plain.admin);
        assert_eq!(
            a.authenticate(Some(&json!({"userId": ""}))).unwrap_err(),
            AuthError::MissingUserId
        );
        assert_eq!(a.authenticate(None).unwrap_err(), AuthError::MissingUserId);
    }
}

/// Property tests: any handshake payload gets an answer (a refusal with a reason, never a
/// panic), and a token signed with the key proves exactly its `sub` when that is a valid id.
#[cfg(test)]
mod props {
    use std::sync::LazyLock;

    use clap::Parser;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::validate::props::any_json;

    const SECRET: &str = "props-secret-props-secret-props-secret";

    fn authenticator(args: &[&str]) -> Authenticator {
        let mut all = vec!["sio-node"];
        all.extend_from_slice(args);
        Authenticator::from_config(&Config::try_parse_from(all).expect("flags")).expect("config")
    }

    static JWT: LazyLock<Authenticator> =
        LazyLock::new(|| authenticator(&["--jwt-secret", SECRET]));
    static NONE: LazyLock<Authenticator> = LazyLock::new(|| authenticator(&["--auth", "none"]));

    fn sign(claims: &Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    fn later() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600
    }

    proptest! {
        #[test]
        fn any_payload_gets_an_answer(v in any_json(), token in "\\PC{0,200}") {
            let _ = JWT.authenticate(Some(&v));
            let _ = NONE.authenticate(Some(&v));
            let r = JWT.authenticate(Some(&json!({ "token": token })));
            prop_assert!(r.is_err(), "a random string passed as a token: {:?}", token);
        }

        #[test]
        fn odd_claims_get_an_answer(claims in any_json(), sub in any_json(), exp in any_json()) {
            let mut c = claims.as_object().cloned().unwrap_or_default();
            c.insert("sub".into(), sub);
            c.insert("exp".into(), exp);
            let r = JWT.authenticate(Some(&json!({ "token": sign(&Value::Object(c)) })));
            if let Err(e) = r {
                prop_assert!(AuthError::REASONS.contains(&e.reason()));
            }
        }

        #[test]
        fn a_signed_token_proves_its_subject(sub in "\\PC{0,140}") {
            let token = sign(&json!({ "sub": sub, "exp": later() }));
            match JWT.authenticate(Some(&json!({ "token": token }))) {
                Ok(id) => {
                    prop_assert_eq!(id.user.as_str(), sub.as_str());
                    prop_assert!(valid_user_id(&sub).is_some());
                }
                Err(e) => {
                    prop_assert_eq!(e, AuthError::BadSubject);
                    prop_assert!(valid_user_id(&sub).is_none());
                }
            }
        }

        #[test]
        fn a_tampered_token_is_refused(sub in "[a-z]{1,12}", at in any::<prop::sample::Index>(), bit in 0u8..6) {
            let token = sign(&json!({ "sub": sub, "exp": later() }));
            let mut bytes = token.into_bytes();
            let i = at.index(bytes.len());
            // Flip a low bit within the base64url alphabet's range, so the text stays ASCII.
            bytes[i] ^= 1 << bit;
            let tampered = String::from_utf8_lossy(&bytes).into_owned();
            let r = JWT.authenticate(Some(&json!({ "token": tampered })));
            // A flip in the last base64 character may only touch padding bits.
            if let Ok(id) = r {
                prop_assert_eq!(id.user.as_str(), sub.as_str());
            }
        }
    }
}
