//! The join hook: an application endpoint that decides joins the token's claims do not allow.
//!
//! The node POSTs `{"userId", "room", "claims"}` (JSON, `claims` being the token's claims) to
//! `--join-hook-url`. `200` allows the join; any other status refuses it. A `200` or a
//! `1xx`–`4xx` refusal is reused for `--join-hook-cache-ttl` per user and room (at most
//! `--join-hook-cache-size` answers), so a client repeating a join costs the application one
//! request per TTL. A `5xx`, no answer within `--join-hook-timeout` or a connection error
//! refuse the join too, but are not remembered: the hook is asked again next time, and rooms
//! restored on reconnect are kept in the user's set. At most [`MAX_IN_FLIGHT`] requests run
//! at once per node.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::secret::SecretUrl;

/// Hook requests one node runs at once; more wait (within the timeout) for a slot.
pub const MAX_IN_FLIGHT: usize = 256;
/// Largest hook answer body read (and ignored) before the connection is reused.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Least time between two warnings about a failing hook.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the hook said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAnswer {
    /// `200`.
    Allowed,
    /// Another status below 500 (`0`: a remembered refusal).
    Denied(u16),
    /// No answer within the timeout.
    TimedOut,
    /// A `5xx` or no answer at all (what happened, for the client's message).
    Failed(String),
}

impl HookAnswer {
    /// Metric label of an answer.
    fn outcome(&self) -> &'static str {
        match self {
            HookAnswer::Allowed => "allowed",
            HookAnswer::Denied(_) => "denied",
            HookAnswer::TimedOut => "timeout",
            HookAnswer::Failed(_) => "error",
        }
    }
}

/// Every `outcome` label of `sio_join_hook_requests_total`.
pub const OUTCOMES: [&str; 4] = ["allowed", "denied", "timeout", "error"];

/// The hook client.
pub struct JoinHook {
    url: SecretUrl,
    uri: hyper::Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    slots: Semaphore,
    cache: AnswerCache,
    metrics: Metrics,
    last_warning: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for JoinHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHook")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The hook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The URL is not a valid request target.
    #[error("--join-hook-url {0} is not a valid URL")]
    BadUrl(String),
    /// No trust roots for an https hook.
    #[error("--join-hook-url {url}: cannot load the system's TLS roots ({why})")]
    NoRoots {
        /// The redacted URL.
        url: String,
        /// Why.
        why: String,
    },
}

impl JoinHook {
    /// The hook of the configuration, if one is set.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<Option<Self>, HookError> {
        let Some(url) = config.join_hook_url.clone() else {
            return Ok(None);
        };
        let uri: hyper::Uri = url
            .expose()
            .parse()
            .map_err(|_| HookError::BadUrl(url.to_string()))?;
        let no_roots = |why: String| HookError::NoRoots {
            url: url.to_string(),
            why,
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if uri.scheme_str() == Some("https") {
            builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| no_roots(e.to_string()))?
        } else {
            // Plain http: TLS is never used, so no trust roots are needed.
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| no_roots(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(tls)
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Some(Self {
            url,
            uri,
            client,
            timeout: config.join_hook_timeout,
            slots: Semaphore::new(MAX_IN_FLIGHT),
            cache: AnswerCache::new(config.join_hook_cache_ttl, config.join_hook_cache_size),
            metrics: metrics.clone(),
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// Asks whether `user` may join `room` (a remembered answer if there is one).
    pub async fn ask(&self, user: &str, room: &str, claims: &serde_json::Value) -> HookAnswer {
        if let Some(allowed) = self.cache.get(user, room) {
            let outcome = if allowed { "allowed" } else { "denied" };
            self.metrics
                .join_hook_cache_hits
                .with_label_values(&[outcome])
                .inc();
            return if allowed {
                HookAnswer::Allowed
            } else {
                HookAnswer::Denied(0)
            };
        }
        let start = Instant::now();
        let answer =
            match tokio::time::timeout(self.timeout, self.request(user, room, claims)).await {
                Ok(answer) => answer,
                Err(_) => HookAnswer::TimedOut,
            };
        self.metrics
            .join_hook_duration
            .observe(start.elapsed().as_secs_f64());
        self.metrics
            .join_hook_requests
            .with_label_values(&[answer.outcome()])
            .inc();
        match &answer {
            HookAnswer::Allowed => self.cache.put(user, room, true),
            HookAnswer::Denied(_) => self.cache.put(user, room, false),
            HookAnswer::TimedOut => self.warn("did not answer in time"),
            HookAnswer::Failed(why) => self.warn(why),
        }
        answer
    }

    async fn request(&self, user: &str, room: &str, claims: &serde_json::Value) -> HookAnswer {
        let Ok(_slot) = self.slots.acquire().await else {
            return HookAnswer::Failed("is shutting down".into());
        };
        let body = serde_json::json!({ "userId": user, "room": room, "claims": claims });
        let req = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("sio-node/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body.to_string())));
        let Ok(req) = req else {
            return HookAnswer::Failed("request could not be built".into());
        };
        let res = match self.client.request(req).await {
            Ok(res) => res,
            Err(e) => {
                tracing::debug!(url = %self.url, "join hook unreachable: {e}");
                return HookAnswer::Failed("is unreachable".into());
            }
        };
        let status = res.status().as_u16();
        // Read the (ignored) answer so the connection can be reused.
        let _ = Limited::new(res.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        match status {
            200 => HookAnswer::Allowed,
            500.. => HookAnswer::Failed(format!("answered {status}")),
            _ => HookAnswer::Denied(status),
        }
    }

    fn warn(&self, why: &str) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_warning.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64)
            && self
                .last_warning
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(url = %self.url, "join hook {why}: joins it would decide are refused");
        }
    }
}

type CacheKey = (String, String);

/// Answers remembered for a fixed time, evicted oldest first beyond a size.
struct AnswerCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    answers: HashMap<CacheKey, (Instant, bool)>,
    // Insertion order; with one TTL for every entry it is also expiry order.
    order: VecDeque<(CacheKey, Instant)>,
}

impl AnswerCache {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, user: &str, room: &str) -> Option<bool> {
        if self.ttl.is_zero() {
            return None;
        }
        let inner = self.lock();
        let (at, allowed) = inner.answers.get(&(user.to_owned(), room.to_owned()))?;
        (at.elapsed() < self.ttl).then_some(*allowed)
    }

    fn put(&self, user: &str, room: &str, allowed: bool) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let key = (user.to_owned(), room.to_owned());
        let mut inner = self.lock();
        inner.answers.insert(key.clone(), (now, allowed));
        inner.order.push_back((key, now));
        while let Some((_, at)) = inner.order.front() {
            let expired = at.elapsed() >= self.ttl;
            if !expired && inner.order.len() <= self.capacity {
                break;
            }
            let Some((key, at)) = inner.order.pop_front() else {
                break;
            };
            // An answer stored again later has a newer entry further back: keep it.
            if inner.answers.get(&key).is_some_and(|(t, _)| *t == at) {
                inner.answers.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().answers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_forgets_after_its_ttl_and_beyond_its_size() {
        let c = AnswerCache::new(Duration::from_millis(100), 3);
        c.put("u", "a", true);
        c.put("u", "b", false);
        assert_eq!(c.get("u", "a"), Some(true));
        assert_eq!(c.get("u", "b"), Some(false));
        assert_eq!(c.get("v", "a"), None);
        c.put("u", "c", true);
        c.put("u", "d", true);
        assert_eq!(c.len(), 3, "bounded");
        assert_eq!(c.get("u", "a"), None, "the oldest went first");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(c.get("u", "d"), None, "expired");
        c.put("u", "e", true);
        assert_eq!(c.len(), 1, "expired answers are dropped on the next insert");
        // an answer stored twice survives the eviction of its first entry
        let c = AnswerCache::new(Duration::from_secs(60), 2);
        c.put("u", "a", true);
        c.put("u", "b", true);
        c.put("u", "a", false);
        assert_eq!(c.get("u", "a"), Some(false));
        assert_eq!(c.get("u", "b"), Some(true));
        let off = AnswerCache::new(Duration::ZERO, 10);
        off.put("u", "a", true);
        assert_eq!(off.get("u", "a"), None);
    }
}
