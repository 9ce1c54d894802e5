//! Answers the proxy gives itself: Engine.IO's `Session ID unknown`, the gateway errors, and
//! the 429 of an admission limit, each a small JSON body.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::metrics::Refusal;

/// Engine.IO's answer for a sid the server does not know: the client reconnects at once.
pub const SESSION_UNKNOWN_BODY: &[u8] = br#"{"code":1,"message":"Session ID unknown"}"#;
pub(super) const NO_BACKEND_BODY: &[u8] =
    br#"{"code":503,"message":"No healthy backend available"}"#;
pub(super) const BAD_GATEWAY_BODY: &[u8] = br#"{"code":502,"message":"Backend unavailable"}"#;
pub(super) const TIMEOUT_BODY: &[u8] =
    br#"{"code":504,"message":"Backend did not answer in time"}"#;
pub(super) const BAD_REQUEST_BODY: &[u8] = br#"{"code":400,"message":"Bad request"}"#;
pub(super) const INTERNAL_BODY: &[u8] = br#"{"code":500,"message":"Proxy error"}"#;

pub(super) async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::copy_from_slice(body)), true)
        .await
}

pub(super) async fn respond_json(session: &mut Session, status: u16, body: &[u8]) -> Result<()> {
    respond(session, status, "application/json", body).await
}

/// The 429 of an admission limit: a JSON body naming it, and the connection closed after it.
pub(super) async fn respond_refused(session: &mut Session, refusal: Refusal) -> Result<()> {
    let message = match refusal {
        Refusal::HandshakeRate => "Too many new sessions from this address; retry later",
        _ => "Too many connections from this address",
    };
    let body =
        serde_json::json!({"code": 429, "message": message, "limit": refusal.as_str()}).to_string();
    let mut header = ResponseHeader::build(429, Some(5))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header("retry-after", "1")?;
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// Whether `e` only says that the client went away.
pub(super) fn client_left(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_client_going_away_counts_as_one() {
        assert!(client_left(&Error::new_down(ErrorType::ConnectionClosed)));
        assert!(client_left(&Error::new_down(ErrorType::WriteError)));
        assert!(!client_left(&Error::new_up(ErrorType::ConnectionClosed)));
        assert!(!client_left(&Error::new_down(ErrorType::InvalidHTTPHeader)));
    }
}
