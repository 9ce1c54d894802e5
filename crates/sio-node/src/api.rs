//! The HTTP API backends call: `POST /api/notify`, `POST /api/emit`, `GET /api/stats`,
//! `GET /api/presence/{room}`, guarded by `Authorization: Bearer <api key>`.
//!
//! Every error is JSON, `{"error": {"code": "...", "message": "..."}}`, with the status that
//! fits: 400 bad body, 401 missing or wrong key, 404 unknown namespace, 413 body too large,
//! 415 not JSON, 503 shared state unavailable or API disabled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;

use crate::state::NodeState;
use crate::{chat, stats, validate};

/// State of the API routes.
pub struct Api<A: Adapter> {
    /// The node.
    pub node: Arc<NodeState>,
    /// The Socket.IO server.
    pub io: SocketIo<A>,
}

impl<A: Adapter> Clone for Api<A> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            io: self.io.clone(),
        }
    }
}

/// An API error: status, stable code and an explanation.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is larger than --max-payload",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send a JSON body with Content-Type: application/json",
            ),
            _ => ApiError::bad_request("invalid_json", r.body_text()),
        }
    }
}

fn object(
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match body?.0 {
        serde_json::Value::Object(o) => Ok(o),
        _ => Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        )),
    }
}

fn field_error(e: validate::InputError) -> ApiError {
    ApiError::bad_request(e.code(), e.to_string())
}

/// The API's routes, as axum matches them (and labels their metrics).
pub const ROUTES: [&str; 4] = [NOTIFY, EMIT, STATS, PRESENCE];
const NOTIFY: &str = "/api/notify";
const EMIT: &str = "/api/emit";
const STATS: &str = "/api/stats";
const PRESENCE: &str = "/api/presence/{room}";

/// The API routes with their key check, body limit and metrics.
pub fn routes<A: Adapter>(api: Api<A>) -> Router {
    let node = api.node.clone();
    Router::new()
        .route(NOTIFY, post(notify::<A>))
        .route(EMIT, post(emit::<A>))
        .route(STATS, get(stats_route::<A>))
        .route(PRESENCE, get(presence::<A>))
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            require_api_key,
        ))
        .route_layer(middleware::from_fn_with_state(node.clone(), record))
        .layer(DefaultBodyLimit::max(node.config.max_payload as usize))
        .with_state(api)
}

async fn record(State(node): State<Arc<NodeState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    node.metrics
        .api_requests
        .with_label_values(&[route.as_str(), method.as_str(), res.status().as_str()])
        .inc();
    node.metrics
        .api_duration
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    res
}

async fn require_api_key(
    State(node): State<Arc<NodeState>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let Some(key) = node
        .config
        .api_key
        .as_ref()
        .map(|k| k.expose())
        .filter(|k| !k.is_empty())
    else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_disabled",
            "the HTTP API is disabled: start the node with --api-key or SIO_API_KEY",
        )
        .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "send the API key as Authorization: Bearer <key>",
        )
        .into_response(),
        Some(given) if !constant_time_eq(given.trim().as_bytes(), key.as_bytes()) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "the API key is wrong",
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answer of `POST /api/notify`.
#[derive(Debug, Serialize)]
pub struct NotifyResponse {
    /// The notification id (stream id), what clients pass as `lastNotificationId`.
    pub id: String,
    /// Sockets of the user that received it, on every node.
    pub delivered: u64,
}

async fn notify<A: Adapter>(
    State(api): State<Api<A>>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<NotifyResponse>, ApiError> {
    let body = object(body)?;
    let null = serde_json::Value::Null;
    let user = validate::user_id(body.get("userId").unwrap_or(&null)).map_err(field_error)?;
    let message = validate::notification_message(body.get("message").unwrap_or(&null))
        .map_err(field_error)?;
    let node = &api.node;
    let stored = node
        .store
        .append_notification(&user, &message, &chat::timestamp())
        .await;
    let n = match stored {
        Ok(n) => n,
        Err(e) => {
            node.metrics
                .notifications
                .with_label_values(&["failed"])
                .inc();
            return Err(ApiError::unavailable(format!(
                "notification not stored: {e}"
            )));
        }
    };
    node.metrics
        .notifications
        .with_label_values(&["stored"])
        .inc();
    let Some(fanout) = node.fanout.get() else {
        return Err(ApiError::unavailable("node is starting"));
    };
    let id = n.notification.id.clone();
    match fanout(user, n).await {
        Ok(delivered) => Ok(Json(NotifyResponse { id, delivered })),
        Err(e) => Err(ApiError::unavailable(format!(
            "notification {id} stored for replay but not delivered live: {e}"
        ))),
    }
}

async fn emit<A: Adapter>(
    State(api): State<Api<A>>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut body = object(body)?;
    let namespace = match body.get("namespace") {
        None | Some(serde_json::Value::Null) => "/".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_type",
                "namespace must be a string like \"/\"",
            ));
        }
    };
    let room = match body.get("room") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(validate::room(v).map_err(field_error)?),
    };
    let event = match body.get("event") {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_type",
                "event must be a string",
            ));
        }
    };
    validate::event(&event).map_err(field_error)?;
    let data = body.remove("data").unwrap_or(serde_json::Value::Null);
    let Some(mut op) = api.io.of(namespace.as_str()) else {
        if crate::NAMESPACES.contains(&namespace.as_str()) {
            // closed by the shutdown a moment before the process exits
            return Err(ApiError::unavailable(
                "this node is shutting down; send it to another node",
            ));
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_namespace",
            format!("no namespace {namespace:?}; use \"/\", \"/notifications\" or \"/dashboard\""),
        ));
    };
    if let Some(room) = &room {
        op = op.to(room.clone());
    }
    let ack_timeout = match body.get("ackTimeoutMs") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(ms) if (1..=MAX_ACK_TIMEOUT_MS).contains(&ms) => Some(Duration::from_millis(ms)),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_ack_timeout",
                    format!("ackTimeoutMs must be an integer from 1 to {MAX_ACK_TIMEOUT_MS}"),
                ));
            }
        },
    };
    let Some(timeout) = ack_timeout else {
        let res = op.emit(&event, &data).await;
        crate::events::delivered(&api.node, &namespace, res)
            .map_err(|e| ApiError::unavailable(format!("event not delivered: {e}")))?;
        return Ok(Json(
            serde_json::json!({ "ok": true, "namespace": namespace, "room": room, "event": event }),
        ));
    };
    // Emit with an acknowledgement from every recipient, on every node, within `timeout`.
    let stream = op
        .timeout(timeout)
        .emit_with_ack::<_, serde_json::Value>(&event, &data)
        .await
        .map_err(|e| ApiError::unavailable(format!("event not delivered: {e}")))?;
    api.node
        .metrics
        .events_sent
        .with_label_values(&[namespace.as_str()])
        .inc();
    let results: Vec<_> = stream.collect().await;
    let mut acks = Vec::new();
    let mut timeouts = 0;
    let mut errors = 0;
    for (_, r) in results {
        match r {
            Ok(v) => acks.push(v),
            Err(socketioxide::AckError::Timeout) => timeouts += 1,
            Err(_) => errors += 1,
        }
    }
    Ok(Json(serde_json::json!({
        "ok": true,
        "namespace": namespace,
        "room": room,
        "event": event,
        "acks": acks,
        "timeouts": timeouts,
        "errors": errors,
    })))
}

/// Longest `ackTimeoutMs` accepted by `POST /api/emit`.
pub const MAX_ACK_TIMEOUT_MS: u64 = 30_000;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatsResponse {
    #[serde(flatten)]
    cluster: stats::ClusterStats,
    version: &'static str,
    uptime_seconds: u64,
    ready: bool,
    draining: bool,
}

async fn stats_route<A: Adapter>(State(api): State<Api<A>>) -> Json<serde_json::Value> {
    let cluster = stats::cluster_stats(&api.node, &api.io).await;
    let body = StatsResponse {
        cluster,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: api.node.started.elapsed().as_secs(),
        ready: api.node.readiness.is_ready(),
        draining: api.node.readiness.is_draining(),
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}

async fn presence<A: Adapter>(
    State(api): State<Api<A>>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let room = validate::room(&serde_json::Value::String(room)).map_err(field_error)?;
    let users = api
        .node
        .store
        .presence(&room)
        .await
        .map_err(|e| ApiError::unavailable(format!("presence unavailable: {e}")))?;
    Ok(Json(
        serde_json::json!({ "room": room, "count": users.len(), "users": users }),
    ))
}

/// Property tests of the API key comparison.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn constant_time_eq_is_equality(
            a in prop::collection::vec(any::<u8>(), 0..64),
            b in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
            prop_assert!(constant_time_eq(&a, &a.clone()));
        }
    }
}
