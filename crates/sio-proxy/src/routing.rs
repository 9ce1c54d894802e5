//! Sticky routing without shared state: the pure part.
//!
//! A new Engine.IO session (a request without `sid`) goes to a backend chosen by balancing.
//! The handshake answer's sid is rewritten to `<tag><sid>`, where the tag is
//! [`TAG_LEN`] base64url characters of `HMAC-SHA256(secret, "sio-proxy/backend-tag/v1\n" +
//! "ip:port")`. Every replica that knows the backend and the secret computes the same tag, so
//! any replica routes the session's later requests (`sid=<tag><sid>`) to the same backend and
//! strips the tag before forwarding: the node only ever sees the sid it issued.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pingora::http::RequestHeader;

use crate::backends::{Backend, Snapshot};
use crate::config::Balance;

/// Length of the backend tag prepended to every session id, in base64url characters
/// (48 bits of the HMAC).
pub const TAG_LEN: usize = 8;

/// Domain separation of the tag HMAC, so the secret can be shared with other uses.
const TAG_CONTEXT: &[u8] = b"sio-proxy/backend-tag/v1\n";

/// Engine.IO packet separator in a polling payload.
const RECORD_SEPARATOR: u8 = 0x1e;

/// The backend tag carried at the start of a proxied session id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag([u8; TAG_LEN]);

impl Tag {
    /// Parses the first [`TAG_LEN`] characters of a proxied sid; `None` when they are not
    /// base64url.
    pub fn from_sid_prefix(sid: &str) -> Option<Tag> {
        let bytes = sid.as_bytes().get(..TAG_LEN)?;
        if !bytes.iter().all(|b| is_base64url(*b)) {
            return None;
        }
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(bytes);
        Some(Tag(tag))
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        // Only base64url bytes are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The tag as bytes.
    pub fn as_bytes(&self) -> &[u8; TAG_LEN] {
        &self.0
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.as_str())
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Computes backend tags from the shared secret.
pub struct TagKey(ring::hmac::Key);

impl TagKey {
    /// A key for `secret`.
    pub fn new(secret: &[u8]) -> Self {
        TagKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// The tag of the backend at `addr` (its identity is the canonical `ip:port` text).
    pub fn tag_for(&self, addr: SocketAddr) -> Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(TAG_CONTEXT);
        ctx.update(addr.to_string().as_bytes());
        let mac = ctx.sign();
        // 6 bytes encode to exactly 8 base64url characters.
        let mut tag = [0; TAG_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(&mac.as_ref()[..TAG_LEN / 4 * 3], &mut tag)
            .unwrap_or(0);
        debug_assert_eq!(written, TAG_LEN);
        Tag(tag)
    }
}

/// The Engine.IO transport of a request, or `Other` for every other route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTP long-polling.
    Polling,
    /// WebSocket.
    WebSocket,
    /// Not an Engine.IO request (`/api/*`, ...), or an unknown transport.
    Other,
}

impl Transport {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
            Transport::Other => "other",
        }
    }
}

/// What the query string says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum EngineRequest {
    /// No `EIO` parameter: any other HTTP route of the nodes.
    NotEngineIo,
    /// Engine.IO without `sid`: a handshake.
    Handshake(Transport),
    /// Engine.IO with a sid that carries a well-formed tag. `path` is the request target with
    /// the tag removed from the sid.
    Tagged {
        /// The transport.
        transport: Transport,
        /// The tag.
        tag: Tag,
        /// Path and query to forward.
        path: String,
    },
    /// Engine.IO with a sid that cannot be ours (too short, not base64url, repeated).
    BadSid(Transport),
}

/// Classifies a request target (`/socket.io/?EIO=4&transport=polling&sid=...`).
pub fn classify(path_and_query: &str) -> EngineRequest {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return EngineRequest::NotEngineIo;
    };
    let mut is_engine_io = false;
    let mut transport = Transport::Other;
    let mut sid: Option<(usize, &str)> = None;
    let mut repeated_sid = false;
    let query_start = path.len() + 1;
    let mut offset = query_start;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "EIO" => is_engine_io = true,
            "transport" => {
                transport = match value {
                    "polling" => Transport::Polling,
                    "websocket" => Transport::WebSocket,
                    _ => Transport::Other,
                }
            }
            "sid" => {
                repeated_sid |= sid.is_some();
                sid = Some((offset + key.len() + 1, value));
            }
            _ => {}
        }
        offset += pair.len() + 1;
    }
    if !is_engine_io {
        return EngineRequest::NotEngineIo;
    }
    let Some((value_start, sid)) = sid else {
        return EngineRequest::Handshake(transport);
    };
    if repeated_sid || sid.len() <= TAG_LEN || !sid.bytes().all(is_base64url) {
        return EngineRequest::BadSid(transport);
    }
    let Some(tag) = Tag::from_sid_prefix(sid) else {
        return EngineRequest::BadSid(transport);
    };
    let mut forwarded = String::with_capacity(path_and_query.len() - TAG_LEN);
    forwarded.push_str(&path_and_query[..value_start]);
    forwarded.push_str(&path_and_query[value_start + TAG_LEN..]);
    EngineRequest::Tagged {
        transport,
        tag,
        path: forwarded,
    }
}

/// Where a request goes.
#[derive(Debug)]
pub enum Route {
    /// A new session, or a request outside Engine.IO: a backend chosen by balancing.
    Balanced {
        /// The chosen backend.
        backend: Arc<Backend>,
        /// The transport.
        transport: Transport,
        /// Whether this is an Engine.IO handshake (its answer carries a sid to tag).
        handshake: bool,
    },
    /// A request of a live session, to the backend its tag names.
    Session {
        /// The backend that owns the session.
        backend: Arc<Backend>,
        /// The transport.
        transport: Transport,
        /// The request target with the tag stripped from the sid.
        path: String,
    },
    /// A sid whose tag names no backend known to this replica: Engine.IO `Session ID unknown`.
    UnknownSession(Transport),
    /// No healthy, non-draining backend for a new session.
    NoHealthyBackend(Transport),
}

impl Route {
    /// The transport of the request.
    pub fn transport(&self) -> Transport {
        match self {
            Route::Balanced { transport, .. } | Route::Session { transport, .. } => *transport,
            Route::UnknownSession(t) | Route::NoHealthyBackend(t) => *t,
        }
    }
}

/// The hash key of a client for consistent hashing.
pub fn client_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Routes one request. `exclude` lists backends that already failed to connect for this
/// request (a handshake is retried elsewhere).
pub fn route(
    req: &RequestHeader,
    client: IpAddr,
    backends: &Snapshot,
    balance: Balance,
    exclude: &[SocketAddr],
) -> Route {
    let target = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path(), |pq| pq.as_str());
    route_target(target, client, backends, balance, exclude)
}

/// [`route`] on a raw request target.
pub fn route_target(
    target: &str,
    client: IpAddr,
    backends: &Snapshot,
    balance: Balance,
    exclude: &[SocketAddr],
) -> Route {
    let (transport, handshake) = match classify(target) {
        EngineRequest::NotEngineIo => (Transport::Other, false),
        EngineRequest::Handshake(transport) => (transport, true),
        EngineRequest::BadSid(transport) => return Route::UnknownSession(transport),
        EngineRequest::Tagged {
            transport,
            tag,
            path,
        } => {
            return match backends.by_tag(&tag) {
                Some(backend) => Route::Session {
                    backend: backend.clone(),
                    transport,
                    path,
                },
                None => Route::UnknownSession(transport),
            };
        }
    };
    match backends.pick(balance, &client_key(client), exclude) {
        Some(backend) => Route::Balanced {
            backend,
            transport,
            handshake,
        },
        None => Route::NoHealthyBackend(transport),
    }
}

/// Rewrites the sid of an Engine.IO polling handshake payload
/// (`0{"sid":"...",...}` then possibly `\x1e` and more packets) to `<tag><sid>`.
/// Returns `None` when the first packet is not an open packet with a sid.
pub fn rewrite_handshake(body: &[u8], tag: &Tag) -> Option<Vec<u8>> {
    const SID_KEY: &[u8] = b"\"sid\":\"";
    let first_end = body
        .iter()
        .position(|b| *b == RECORD_SEPARATOR)
        .unwrap_or(body.len());
    let open = &body[..first_end];
    if open.first() != Some(&b'0') {
        return None;
    }
    let at = open.windows(SID_KEY.len()).position(|w| w == SID_KEY)? + SID_KEY.len();
    let sid_len = open[at..].iter().position(|b| *b == b'"')?;
    if sid_len == 0 || !open[at..at + sid_len].iter().all(|b| is_base64url(*b)) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + TAG_LEN);
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&body[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::backends::{BackendSet, Discovered};
    use crate::metrics::Metrics;

    const OPEN: &[u8] = br#"0{"sid":"AbCdEfGhIjKlMnOp","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn set(addrs: &[&str]) -> BackendSet {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let set = BackendSet::new(TagKey::new(b"secret"), Duration::from_secs(300), metrics);
        let discovered: Vec<Discovered> = addrs
            .iter()
            .map(|a| Discovered {
                addr: addr(a),
                draining: false,
            })
            .collect();
        set.apply_discovery(&discovered);
        for backend in set.snapshot().members() {
            backend.set_ready(true);
        }
        set
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn tag_is_fixed_length_base64url_and_keyed() {
        let a = TagKey::new(b"one").tag_for(addr("10.0.0.1:3000"));
        let b = TagKey::new(b"one").tag_for(addr("10.0.0.1:3000"));
        let c = TagKey::new(b"two").tag_for(addr("10.0.0.1:3000"));
        let d = TagKey::new(b"one").tag_for(addr("10.0.0.1:3001"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a.as_str().len(), TAG_LEN);
        assert!(a.as_str().bytes().all(is_base64url));
    }

    #[test]
    fn classifies_engine_io_requests() {
        assert_eq!(classify("/api/stats"), EngineRequest::NotEngineIo);
        assert_eq!(classify("/api/notify?x=1"), EngineRequest::NotEngineIo);
        assert_eq!(
            classify("/socket.io/?EIO=4&transport=polling&t=abc"),
            EngineRequest::Handshake(Transport::Polling)
        );
        assert_eq!(
            classify("/socket.io/?EIO=4&transport=websocket"),
            EngineRequest::Handshake(Transport::WebSocket)
        );
        assert_eq!(
            classify("/socket.io/?EIO=4&transport=polling&sid=short"),
            EngineRequest::BadSid(Transport::Polling)
        );
        assert_eq!(
            classify("/socket.io/?EIO=4&transport=polling&sid=abcdefgh%2Fxxxxxxxxxxxxxxxx"),
            EngineRequest::BadSid(Transport::Polling)
        );
        assert_eq!(
            classify("/socket.io/?EIO=4&sid=TTTTTTTTaaaaaaaaaaaaaaaa&sid=TTTTTTTTbbbbbbbbbbbbbbbb"),
            EngineRequest::BadSid(Transport::Other)
        );
        match classify("/socket.io/?EIO=4&transport=websocket&sid=TAGTAG_-0123456789abcdef&t=1") {
            EngineRequest::Tagged {
                transport,
                tag,
                path,
            } => {
                assert_eq!(transport, Transport::WebSocket);
                assert_eq!(tag.as_str(), "TAGTAG_-");
                assert_eq!(
                    path,
                    "/socket.io/?EIO=4&transport=websocket&sid=0123456789abcdef&t=1"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rewrites_the_open_packet_only() {
        let tag = TagKey::new(b"k").tag_for(addr("127.0.0.1:3001"));
        let mut body = OPEN.to_vec();
        body.push(RECORD_SEPARATOR);
        body.extend_from_slice(b"2");
        let out = rewrite_handshake(&body, &tag).expect("rewritten");
        assert_eq!(out.len(), body.len() + TAG_LEN);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with(&format!("0{{\"sid\":\"{tag}AbCdEfGhIjKlMnOp\"")));
        assert!(text.ends_with("\u{1e}2"));
        assert_eq!(rewrite_handshake(b"4hello", &tag), None);
        assert_eq!(rewrite_handshake(b"0{\"upgrades\":[]}", &tag), None);
        assert_eq!(rewrite_handshake(b"", &tag), None);
    }

    #[test]
    fn routes_handshake_then_session_to_the_same_backend_from_any_replica() {
        let replica_a = set(&["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"]);
        // Replica B learned the backends in another order.
        let replica_b = set(&["127.0.0.1:3003", "127.0.0.1:3001", "127.0.0.1:3002"]);
        for n in 0..50u8 {
            let client = IpAddr::from([10, 0, 1, n]);
            let Route::Balanced {
                backend,
                handshake: true,
                ..
            } = route_target(
                "/socket.io/?EIO=4&transport=polling",
                client,
                &replica_a.snapshot(),
                Balance::IpHash,
                &[],
            )
            else {
                panic!("handshake not balanced");
            };
            let body = rewrite_handshake(OPEN, &backend.tag).expect("rewrite");
            let sid = &std::str::from_utf8(&body).expect("utf8")[9..9 + TAG_LEN + 16];
            let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
            let Route::Session {
                backend: b, path, ..
            } = route_target(
                &target,
                ip("192.0.2.1"),
                &replica_b.snapshot(),
                Balance::IpHash,
                &[],
            )
            else {
                panic!("session not routed");
            };
            assert_eq!(b.addr, backend.addr);
            assert_eq!(
                path,
                "/socket.io/?EIO=4&transport=polling&sid=AbCdEfGhIjKlMnOp"
            );
        }
    }

    #[test]
    fn unknown_and_forged_tags_are_unknown_sessions() {
        let replica = set(&["127.0.0.1:3001"]);
        let forged = "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAbCdEfGhIjKlMnOp";
        assert!(matches!(
            route_target(
                forged,
                ip("10.0.0.1"),
                &replica.snapshot(),
                Balance::IpHash,
                &[]
            ),
            Route::UnknownSession(Transport::Polling)
        ));
        let untagged = "/socket.io/?EIO=4&transport=polling&sid=AbCdEfGhIjKlMnOp";
        assert!(matches!(
            route_target(
                untagged,
                ip("10.0.0.1"),
                &replica.snapshot(),
                Balance::IpHash,
                &[]
            ),
            Route::UnknownSession(_)
        ));
    }

    #[test]
    fn draining_and_unready_backends_get_no_handshakes_but_keep_sessions() {
        let replica = set(&["127.0.0.1:3001", "127.0.0.1:3002"]);
        let snapshot = replica.snapshot();
        let first = snapshot.members()[0].clone();
        let second = snapshot.members()[1].clone();
        first.set_draining(true);
        second.set_ready(false);
        assert!(matches!(
            route_target(
                "/socket.io/?EIO=4",
                ip("10.0.0.1"),
                &snapshot,
                Balance::IpHash,
                &[]
            ),
            Route::NoHealthyBackend(_)
        ));
        let target = format!(
            "/socket.io/?EIO=4&transport=polling&sid={}AbCdEfGhIjKlMnOp",
            first.tag
        );
        assert!(matches!(
            route_target(&target, ip("10.0.0.1"), &snapshot, Balance::IpHash, &[]),
            Route::Session { .. }
        ));
        second.set_ready(true);
        for n in 0..20u8 {
            let Route::Balanced { backend, .. } = route_target(
                "/api/stats",
                IpAddr::from([10, 0, 0, n]),
                &snapshot,
                Balance::LeastConn,
                &[],
            ) else {
                panic!("not balanced");
            };
            assert_eq!(backend.addr, second.addr);
        }
    }

    #[test]
    fn removed_backends_stay_routable_for_sessions_during_retention() {
        let replica = set(&["127.0.0.1:3001", "127.0.0.1:3002"]);
        let gone = replica.snapshot().members()[0].clone();
        replica.apply_discovery(&[Discovered {
            addr: replica.snapshot().members()[1].addr,
            draining: false,
        }]);
        let snapshot = replica.snapshot();
        assert_eq!(snapshot.members().len(), 1);
        let target = format!(
            "/socket.io/?EIO=4&transport=websocket&sid={}AbCdEfGhIjKlMnOp",
            gone.tag
        );
        assert!(matches!(
            route_target(&target, ip("10.0.0.1"), &snapshot, Balance::IpHash, &[]),
            Route::Session { backend, .. } if backend.addr == gone.addr
        ));
        for n in 0..20u8 {
            let Route::Balanced { backend, .. } = route_target(
                "/socket.io/?EIO=4",
                IpAddr::from([10, 0, 0, n]),
                &snapshot,
                Balance::IpHash,
                &[],
            ) else {
                panic!("not balanced");
            };
            assert_ne!(backend.addr, gone.addr);
        }
    }

    #[test]
    fn excluded_backends_are_skipped_on_retry() {
        let replica = set(&["127.0.0.1:3001", "127.0.0.1:3002"]);
        let snapshot = replica.snapshot();
        let Route::Balanced { backend: first, .. } = route_target(
            "/socket.io/?EIO=4",
            ip("10.9.9.9"),
            &snapshot,
            Balance::IpHash,
            &[],
        ) else {
            panic!("not balanced");
        };
        let Route::Balanced {
            backend: second, ..
        } = route_target(
            "/socket.io/?EIO=4",
            ip("10.9.9.9"),
            &snapshot,
            Balance::IpHash,
            &[first.addr],
        )
        else {
            panic!("not balanced");
        };
        assert_ne!(first.addr, second.addr);
    }

    proptest! {
        #[test]
        fn tag_round_trips_through_any_sid(
            port in 1u16..,
            a in any::<[u8; 4]>(),
            sid in "[A-Za-z0-9_-]{16}",
            secret in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let backend = SocketAddr::from((a, port));
            let tag = TagKey::new(&secret).tag_for(backend);
            let target = format!("/socket.io/?EIO=4&transport=polling&sid={tag}{sid}&t=x");
            match classify(&target) {
                EngineRequest::Tagged { tag: parsed, path, .. } => {
                    prop_assert_eq!(parsed, tag);
                    prop_assert_eq!(path, format!("/socket.io/?EIO=4&transport=polling&sid={sid}&t=x"));
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn handshake_rewrite_inserts_exactly_the_tag(
            sid in "[A-Za-z0-9_-]{16}",
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let tag = TagKey::new(b"s").tag_for(SocketAddr::from(([127, 0, 0, 1], 3000)));
            let mut body = format!("0{{\"sid\":\"{sid}\",\"upgrades\":[\"websocket\"]}}").into_bytes();
            body.push(RECORD_SEPARATOR);
            body.extend_from_slice(&tail);
            let out = rewrite_handshake(&body, &tag).expect("rewritten");
            prop_assert_eq!(out.len(), body.len() + TAG_LEN);
            let expected = format!("0{{\"sid\":\"{tag}{sid}\"");
            prop_assert!(out.starts_with(expected.as_bytes()));
            prop_assert!(out.ends_with(&tail));
        }

        #[test]
        fn classify_never_panics_and_never_forwards_a_tag(target in "\\PC{0,200}") {
            if let EngineRequest::Tagged { path, .. } = classify(&target) {
                prop_assert_eq!(path.len() + TAG_LEN, target.len());
            }
        }

        #[test]
        fn ip_hash_is_stable_when_another_backend_joins(n in any::<[u8; 4]>()) {
            let before = set(&["10.0.0.1:3000", "10.0.0.2:3000", "10.0.0.3:3000"]);
            let after = set(&["10.0.0.1:3000", "10.0.0.2:3000", "10.0.0.3:3000", "10.0.0.4:3000"]);
            let client = IpAddr::from(n);
            let pick = |s: &BackendSet| match route_target("/socket.io/?EIO=4", client, &s.snapshot(), Balance::IpHash, &[]) {
                Route::Balanced { backend, .. } => backend.addr,
                _ => unreachable!(),
            };
            let (old, new) = (pick(&before), pick(&after));
            // A client either keeps its backend or moves to the new one, never to another old one.
            prop_assert!(old == new || new == addr("10.0.0.4:3000"));
        }
    }
}

/// Property tests of the handshake rewrite and tag parsing on arbitrary bytes.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_body_gets_an_answer(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let tag = TagKey::new(b"s").tag_for(SocketAddr::from(([127, 0, 0, 1], 3000)));
            if let Some(out) = rewrite_handshake(&body, &tag) {
                prop_assert_eq!(out.len(), body.len() + TAG_LEN);
                prop_assert_eq!(out[0], b'0');
                // Removing the tag gives the body back.
                let at = out.windows(TAG_LEN).position(|w| w == tag.as_bytes()).expect("tag");
                let mut back = out[..at].to_vec();
                back.extend_from_slice(&out[at + TAG_LEN..]);
                prop_assert_eq!(back, body);
            }
        }

        #[test]
        fn tags_parse_only_from_base64url(sid in "\\PC{0,20}") {
            match Tag::from_sid_prefix(&sid) {
                Some(tag) => {
                    prop_assert!(sid.starts_with(tag.as_str()));
                    prop_assert!(tag.as_str().bytes().all(is_base64url));
                }
                None => prop_assert!(
                    sid.len() < TAG_LEN || !sid.as_bytes()[..TAG_LEN].iter().all(|b| is_base64url(*b))
                ),
            }
        }
    }
}
