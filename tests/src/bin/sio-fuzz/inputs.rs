//! Input generators: JSON values (deep, huge, odd numbers, lone surrogates), tokens, Socket.IO
//! and Engine.IO packets, request heads and API bodies, each either well-formed, subtly wrong
//! or mutated byte by byte. Everything comes from one seeded RNG, so a seed replays the inputs.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

/// Largest body a case sends (a bit above the nodes' default `--max-payload` of 1 MB).
pub const HUGE: usize = 1_200_000;

/// Room names a fuzzer may pick: ordinary, at and over the limit, control characters, unicode.
const ROOMS: &[&str] = &[
    "general",
    "fuzz-a",
    "fuzz-b",
    "",
    " ",
    "a\u{0}b",
    "\u{7f}",
    "\u{202e}rtl",
    "日本語",
    "user:alice",
    "*",
    "../../etc",
    "room\nnewline",
];

/// Event names: the node's own, reserved ones, unknown ones.
const EVENTS: &[&str] = &[
    "join-room",
    "leave-room",
    "room-message",
    "chat-message",
    "connect",
    "disconnect",
    "error",
    "notification",
    "",
    "x",
    "__proto__",
    "constructor",
];

/// Namespaces: served, unknown, malformed.
const NAMESPACES: &[&str] = &[
    "/",
    "/notifications",
    "/dashboard",
    "/admin",
    "/nope",
    "",
    "//",
    "/a,b",
    "notaslash",
];

/// The secret and claims the fuzzer signs tokens with.
#[derive(Clone, Debug)]
pub struct Keys {
    /// The nodes' HS256 secret.
    pub jwt_secret: String,
    /// The nodes' API key.
    pub api_key: String,
}

/// Unix time in seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A signed HS256 token with `claims`.
pub fn sign(keys: &Keys, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(keys.jwt_secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Random printable-or-not text of up to `max` characters.
pub fn text(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 => char::from_u32(rng.random_range(0..0x20)).unwrap_or('?'),
            1 => char::from_u32(rng.random_range(0x80..0x11_0000)).unwrap_or('\u{fffd}'),
            2 => *['"', '\\', '/', '\u{1e}', ',', '[', '{', '%', '&', '=']
                .choose(rng)
                .unwrap_or(&'"'),
            _ => char::from(rng.random_range(0x20u8..0x7f)),
        })
        .collect()
}

/// A room name from [`ROOMS`], random text, or one over the length limit.
pub fn room(rng: &mut StdRng) -> Value {
    match rng.random_range(0..10) {
        0..=4 => json!(ROOMS.choose(rng).copied().unwrap_or("general")),
        5 => json!("r".repeat(rng.random_range(120..140))),
        6 => json!("é".repeat(rng.random_range(120..140))),
        7 => json!(text(rng, 40)),
        8 => json!(format!("fuzz-{}", rng.random_range(0..10_000))),
        _ => value(rng, 2),
    }
}

/// A JSON number that parsers find awkward.
fn number(rng: &mut StdRng) -> Value {
    match rng.random_range(0..7) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1.5e308),
        5 => json!(-0.0),
        _ => json!(rng.random::<u32>()),
    }
}

/// A random JSON value nested at most `depth` levels.
pub fn value(rng: &mut StdRng, depth: u32) -> Value {
    let kinds = if depth == 0 { 4 } else { 7 };
    match rng.random_range(0..kinds) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => number(rng),
        3 => json!(text(rng, 24)),
        4 => Value::Array(
            (0..rng.random_range(0..5))
                .map(|_| value(rng, depth - 1))
                .collect(),
        ),
        5 => Value::Object(
            (0..rng.random_range(0..5))
                .map(|_| {
                    let key = if rng.random_bool(0.5) {
                        [
                            "room",
                            "text",
                            "token",
                            "userId",
                            "_placeholder",
                            "num",
                            "__proto__",
                        ]
                        .choose(rng)
                        .map_or_else(String::new, |s| (*s).to_owned())
                    } else {
                        text(rng, 8)
                    };
                    (key, value(rng, depth - 1))
                })
                .collect(),
        ),
        _ => json!({ "_placeholder": true, "num": number(rng) }),
    }
}

/// JSON text that is not a serde_json `Value` we could build: deep nesting, lone surrogates,
/// huge numbers, truncation.
pub fn raw_json(rng: &mut StdRng) -> String {
    match rng.random_range(0..8) {
        0 => {
            let depth = rng.random_range(100..20_000);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
        1 => {
            let depth = rng.random_range(100..5_000);
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        }
        2 => r#"["chat-message","\ud800\udfff\ud800"]"#.to_owned(),
        3 => format!(
            "[\"room-message\",{}]",
            "9".repeat(rng.random_range(20..5_000))
        ),
        4 => r#"["join-room","general""#.to_owned(),
        5 => "[1e999999,-1e-999999,NaN,Infinity]".to_owned(),
        6 => format!(
            "[\"chat-message\",\"{}\"]",
            "x".repeat(rng.random_range(1..200_000))
        ),
        _ => serde_json::to_string(&value(rng, 4)).unwrap_or_default(),
    }
}

/// The claims of a token: mostly valid, often with odd `sub`, `rooms`, `exp`, `nbf`, `admin`.
fn claims(rng: &mut StdRng) -> Value {
    let now = now_secs();
    let mut c = serde_json::Map::new();
    let sub = match rng.random_range(0..8) {
        0 => json!(""),
        1 => json!("u".repeat(rng.random_range(120..300))),
        2 => json!("a\u{0}b"),
        3 => number(rng),
        4 => Value::Null,
        _ => json!(format!("fuzz-user-{}", rng.random_range(0..50))),
    };
    if rng.random_range(0..10) > 0 {
        c.insert("sub".into(), sub);
    }
    let exp = match rng.random_range(0..8) {
        0 => json!(now - 3600),
        1 => json!("tomorrow"),
        2 => json!(u64::MAX),
        3 => json!(1.5e300),
        4 => json!(-5),
        _ => json!(now + 3600),
    };
    if rng.random_range(0..10) > 0 {
        c.insert("exp".into(), exp);
    }
    if rng.random_bool(0.2) {
        c.insert("nbf".into(), json!(now + rng.random_range(-100..100_000)));
    }
    let rooms = match rng.random_range(0..8) {
        0 => json!(["*"]),
        1 => json!("general"),
        2 => Value::Array(
            (0..rng.random_range(990..1100))
                .map(|i| json!(format!("r{i}")))
                .collect(),
        ),
        3 => json!([1, 2, null]),
        4 => json!(["fuzz-*", "general", "日本語"]),
        _ => Value::Array((0..rng.random_range(0..5)).map(|_| room(rng)).collect()),
    };
    if rng.random_bool(0.9) {
        c.insert("rooms".into(), rooms);
    }
    if rng.random_bool(0.3) {
        c.insert(
            "admin".into(),
            if rng.random_bool(0.5) {
                json!(true)
            } else {
                value(rng, 1)
            },
        );
    }
    if rng.random_bool(0.1) {
        c.insert("aud".into(), value(rng, 1));
    }
    Value::Object(c)
}

/// A token string: signed with random claims, or broken (bad signature, `alg: none`, garbage).
pub fn token(rng: &mut StdRng, keys: &Keys) -> Value {
    let signed = sign(keys, &claims(rng));
    match rng.random_range(0..12) {
        0 => json!(format!("{signed}x")),
        1 => {
            // alg none, the classic
            let head = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
            let body = signed.split('.').nth(1).unwrap_or("");
            json!(format!("{head}.{body}."))
        }
        2 => json!(String::from_utf8_lossy(&mutate(rng, signed.as_bytes())).into_owned()),
        3 => json!("a.b.c"),
        4 => json!("."),
        5 => json!("x".repeat(rng.random_range(1..100_000))),
        6 => value(rng, 2),
        _ => json!(signed),
    }
}

/// A valid token for `user` allowed into `rooms`.
pub fn good_token(keys: &Keys, user: &str, rooms: &[&str]) -> String {
    sign(
        keys,
        &json!({ "sub": user, "rooms": rooms, "exp": now_secs() + 24 * 3600 }),
    )
}

/// The auth payload of a CONNECT packet.
pub fn auth(rng: &mut StdRng, keys: &Keys) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => value(rng, 3),
        2 => json!({ "token": token(rng, keys), "lastNotificationId": value(rng, 1) }),
        3 => {
            let last = [
                "0-0",
                "17",
                "1-x",
                "99999999999999999999-0",
                "-1",
                "+1-0",
                "1-+0",
            ]
            .choose(rng);
            json!({ "token": token(rng, keys), "lastNotificationId": last })
        }
        4 => json!({ "userId": value(rng, 1) }),
        _ => json!({ "token": token(rng, keys) }),
    }
}

/// An event's arguments as JSON text (an array, or not).
fn event_args(rng: &mut StdRng) -> String {
    let event = if rng.random_bool(0.8) {
        json!(EVENTS.choose(rng).copied().unwrap_or("x"))
    } else {
        value(rng, 1)
    };
    let args = match event.as_str() {
        Some("join-room" | "leave-room") => json!([event, room(rng)]),
        Some("room-message") => {
            let mut body = serde_json::Map::new();
            body.insert("room".into(), room(rng));
            let t = match rng.random_range(0..4) {
                0 => json!("t".repeat(rng.random_range(9_990..10_010))),
                1 => value(rng, 2),
                _ => json!(text(rng, 50)),
            };
            body.insert("text".into(), t);
            json!([event, body])
        }
        _ => {
            let mut list = vec![event];
            list.extend((0..rng.random_range(0..4)).map(|_| value(rng, 3)));
            Value::Array(list)
        }
    };
    match rng.random_range(0..12) {
        0 => raw_json(rng),
        1 => serde_json::to_string(&value(rng, 3)).unwrap_or_default(),
        _ => serde_json::to_string(&args).unwrap_or_default(),
    }
}

/// An ack id: ordinary, huge, negative, not a number.
fn ack_id(rng: &mut StdRng) -> String {
    match rng.random_range(0..8) {
        0 => String::new(),
        1 => "18446744073709551616".to_owned(),
        2 => "9".repeat(rng.random_range(20..400)),
        3 => "-1".to_owned(),
        4 => "9223372036854775807".to_owned(),
        5 => "1e5".to_owned(),
        _ => rng.random_range(0..1000).to_string(),
    }
}

fn namespace(rng: &mut StdRng) -> String {
    if rng.random_bool(0.1) {
        format!("/{}", "n".repeat(rng.random_range(1..5_000)))
    } else {
        NAMESPACES.choose(rng).copied().unwrap_or("/").to_owned()
    }
}

/// One Socket.IO packet inside an Engine.IO message packet (`4…`), or another Engine.IO packet.
/// The second value is how many binary attachments it announces.
pub fn packet(rng: &mut StdRng, keys: &Keys) -> (Vec<u8>, usize) {
    let mut attachments = 0;
    let p = match rng.random_range(0..20) {
        // Engine.IO control packets
        0 => [
            "2", "3", "5", "6", "1", "4", "", "7", "0{}", "2probe", "3probe",
        ]
        .choose(rng)
        .copied()
        .unwrap_or("6")
        .to_owned(),
        1 => format!("b{}", text(rng, 40)),
        2 => {
            let ns = namespace(rng);
            let sep = if ns == "/" || ns.is_empty() { "" } else { "," };
            let ns = if ns == "/" { String::new() } else { ns };
            format!(
                "40{ns}{sep}{}",
                serde_json::to_string(&auth(rng, keys)).unwrap_or_default()
            )
        }
        3 => format!(
            "41{}",
            if rng.random_bool(0.5) {
                "/notifications,"
            } else {
                ""
            }
        ),
        4 | 5 => {
            // binary event or ack with announced attachments
            attachments = match rng.random_range(0..5) {
                0 => 0,
                1 => rng.random_range(100..100_000),
                _ => rng.random_range(1..4),
            };
            let kind = if rng.random_bool(0.7) { 5 } else { 6 };
            format!(
                "4{kind}{attachments}-{}{}",
                ack_id(rng),
                r#"["chat-message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":7}]"#
            )
        }
        6 => format!("4{}{}", rng.random_range(7..10), event_args(rng)),
        7 => format!("43{}{}", ack_id(rng), event_args(rng)),
        8 => {
            let ns = namespace(rng);
            format!("42{ns},{}{}", ack_id(rng), event_args(rng))
        }
        _ => format!("42{}{}", ack_id(rng), event_args(rng)),
    };
    let mut bytes = p.into_bytes();
    if rng.random_bool(0.25) {
        bytes = mutate(rng, &bytes);
    }
    (bytes, attachments.min(8))
}

/// A byte-level mutation of `input`: flips, inserts, deletes, duplicates, truncations, bytes
/// that are not UTF-8.
pub fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..5) {
        let at = if out.is_empty() {
            0
        } else {
            rng.random_range(0..out.len())
        };
        match rng.random_range(0..7) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.random_range(0..8),
            1 => out.insert(at, rng.random()),
            2 if !out.is_empty() => {
                out.remove(at);
            }
            3 => {
                let end = (at + rng.random_range(1..32)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            4 => out.truncate(at),
            5 => {
                let bad: &[u8] = [
                    &b"\xff"[..],
                    b"\xc3\x28",
                    b"\xed\xa0\x80",
                    b"\xf4\x90\x80\x80",
                    b"\0",
                    b"\x1e",
                ]
                .choose(rng)
                .copied()
                .unwrap_or(b"\xff");
                out.splice(at..at, bad.iter().copied());
            }
            _ => {
                let v = b"\"[]{},:0-/\\";
                out.insert(at, v[rng.random_range(0..v.len())]);
            }
        }
    }
    out
}

/// A binary attachment: empty, small, or big.
pub fn attachment(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1 => rng.random_range(100_000..HUGE),
        _ => rng.random_range(1..256),
    };
    (0..len).map(|_| rng.random()).collect()
}

/// The query of an Engine.IO request; `sid` when the session has one.
pub fn engine_query(rng: &mut StdRng, transport: &str, sid: Option<&str>) -> String {
    let mut q = match rng.random_range(0..40) {
        0 => format!("EIO=3&transport={transport}"),
        1 => format!("EIO=5&transport={transport}"),
        2 => format!("transport={transport}"),
        3 => format!("EIO=4&transport={transport}&transport=polling"),
        4 => {
            let t = ["xhr", "", "websocket%00", "POLLING"]
                .choose(rng)
                .copied()
                .unwrap_or("");
            format!("EIO=4&transport={t}")
        }
        5 => format!("EIO=4&transport={transport}&t=%zz%&&&=&b64=1"),
        _ => format!("EIO=4&transport={transport}"),
    };
    let forged = match rng.random_range(0..50) {
        0 => Some("A".repeat(16)),
        1 => Some("s".repeat(rng.random_range(17..2_000))),
        2 => Some(text(rng, 30)),
        3 => Some(String::new()),
        4 if sid.is_some() => sid.map(|s| format!("{s}x")),
        _ => None,
    };
    match (sid, forged) {
        (_, Some(f)) => {
            q.push_str("&sid=");
            q.push_str(&f);
        }
        (Some(s), None) => {
            q.push_str("&sid=");
            q.push_str(s);
            if rng.random_bool(0.05) {
                q.push_str("&sid=");
                q.push_str(s);
            }
        }
        (None, None) => {}
    }
    q
}

/// A whole HTTP request, possibly malformed from the request line to the body.
pub fn request(rng: &mut StdRng, keys: &Keys, host: &str) -> Vec<u8> {
    let method = match rng.random_range(0..12) {
        0 => "PUT".to_owned(),
        1 => "OPTIONS".to_owned(),
        2 => "get".to_owned(),
        3 => "DELETE".to_owned(),
        4 => "M".repeat(rng.random_range(1..10_000)),
        5 => "PRI".to_owned(),
        6 | 7 => "POST".to_owned(),
        _ => "GET".to_owned(),
    };
    let target = match rng.random_range(0..16) {
        0 => format!("/socket.io/?{}", engine_query(rng, "polling", None)),
        1 => format!("/socket.io/?{}", engine_query(rng, "websocket", None)),
        2 => format!(
            "/socket.io/?EIO=4&sid={}",
            "x".repeat(rng.random_range(1..70_000))
        ),
        3 => "/api/emit".to_owned(),
        4 => "/api/notify".to_owned(),
        5 => format!(
            "/api/presence/{}",
            text(rng, 200).replace([' ', '\r', '\n'], "%20")
        ),
        6 => [
            "/metrics",
            "/readyz",
            "/healthz",
            "/api/stats",
            "/admin/",
            "/dashboard",
        ]
        .choose(rng)
        .copied()
        .unwrap_or("/")
        .to_owned(),
        7 => "*".to_owned(),
        8 => "http://evil.example/socket.io/?EIO=4&transport=polling".to_owned(),
        9 => format!("/{}", "%".repeat(rng.random_range(1..3_000))),
        10 => "/socket.io/../../../etc/passwd?EIO=4".to_owned(),
        11 => String::new(),
        _ => format!(
            "/socket.io/?EIO=4&transport=polling&{}",
            text(rng, 100).replace([' ', '\r', '\n'], "")
        ),
    };
    let version = match rng.random_range(0..12) {
        0 => "HTTP/1.0",
        1 => "HTTP/2.0",
        2 => "HTTP/9.9",
        3 => "HTTP/1.1 extra",
        4 => "",
        _ => "HTTP/1.1",
    };
    let eol = if rng.random_bool(0.9) { "\r\n" } else { "\n" };
    let mut head = format!("{method} {target} {version}{eol}").into_bytes();
    let header = |head: &mut Vec<u8>, name: &str, value: &[u8]| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(eol.as_bytes());
    };
    if rng.random_bool(0.9) {
        header(&mut head, "Host", host.as_bytes());
    }
    let body = api_body(rng);
    let mut declared = body.len().to_string();
    for _ in 0..rng.random_range(0..6) {
        match rng.random_range(0..14) {
            0 => header(
                &mut head,
                "X-Big",
                "b".repeat(rng.random_range(1_000..80_000)).as_bytes(),
            ),
            1 => {
                for i in 0..rng.random_range(50..300) {
                    header(&mut head, &format!("X-H{i}"), b"v");
                }
            }
            2 => header(
                &mut head,
                "X-Forwarded-For",
                text(rng, 200).replace(['\r', '\n'], "").as_bytes(),
            ),
            3 => header(
                &mut head,
                "X-Forwarded-For",
                b"1.2.3.4, ::1, 999.1.1.1, , unknown",
            ),
            4 => header(&mut head, "Upgrade", b"websocket"),
            5 => header(&mut head, "Connection", b"Upgrade"),
            6 => header(&mut head, "Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            7 => header(&mut head, "Transfer-Encoding", b"chunked"),
            8 => {
                declared = ["-1", "99999999999999999999", "1, 2", "0x10", ""]
                    .choose(rng)
                    .copied()
                    .unwrap_or("-1")
                    .to_owned()
            }
            9 => header(&mut head, "Content-Type", b"application/json"),
            10 => header(
                &mut head,
                "Authorization",
                format!("Bearer {}", keys.api_key).as_bytes(),
            ),
            11 => header(&mut head, "Bad Header\x01", b"\xff\xfe"),
            12 => head.extend_from_slice(b" folded continuation\r\n"),
            _ => header(
                &mut head,
                "Cookie",
                "c=".repeat(rng.random_range(1..2_000)).as_bytes(),
            ),
        }
    }
    if method == "POST" || rng.random_bool(0.1) {
        header(&mut head, "Content-Length", declared.as_bytes());
    }
    head.extend_from_slice(eol.as_bytes());
    if method == "POST" {
        head.extend_from_slice(&body);
    }
    if rng.random_bool(0.15) {
        head = mutate(rng, &head);
    }
    head
}

/// An API body: valid or not, JSON or not, small or over `--max-payload`.
pub fn api_body(rng: &mut StdRng) -> Vec<u8> {
    let pick_ns = |rng: &mut StdRng| -> Value {
        if rng.random_bool(0.8) {
            json!(NAMESPACES.choose(rng).copied().unwrap_or("/"))
        } else {
            value(rng, 1)
        }
    };
    let v = match rng.random_range(0..12) {
        0 => return raw_json(rng).into_bytes(),
        1 => return vec![b'{'; rng.random_range(1..HUGE)],
        2 => {
            let big = "m".repeat(rng.random_range(900_000..HUGE));
            json!({ "userId": "fuzz-user-1", "message": big })
        }
        3 => value(rng, 3),
        4..=6 => {
            let mut body = serde_json::Map::new();
            let mut maybe = |rng: &mut StdRng, k: &str, v: Value| {
                if rng.random_bool(0.85) {
                    body.insert(k.to_owned(), v);
                }
            };
            let ns = pick_ns(rng);
            maybe(rng, "namespace", ns);
            let r = room(rng);
            maybe(rng, "room", r);
            let event = if rng.random_bool(0.8) {
                json!(EVENTS.choose(rng).copied().unwrap_or("x"))
            } else {
                value(rng, 1)
            };
            maybe(rng, "event", event);
            let data = value(rng, 3);
            maybe(rng, "data", data);
            if rng.random_bool(0.3) {
                let timeout = [
                    json!(0),
                    json!(1),
                    json!(30_001),
                    json!(-1),
                    json!(1.5),
                    json!("5"),
                    json!(u64::MAX),
                    json!(50),
                ]
                .choose(rng)
                .cloned()
                .unwrap_or(Value::Null);
                body.insert("ackTimeoutMs".into(), timeout);
            }
            Value::Object(body)
        }
        _ => {
            let user = match rng.random_range(0..6) {
                0 => value(rng, 1),
                1 => json!("u".repeat(rng.random_range(120..200))),
                2 => json!(rng.random::<u32>()),
                _ => json!(format!("fuzz-user-{}", rng.random_range(0..50))),
            };
            let message = match rng.random_range(0..5) {
                0 => value(rng, 2),
                1 => json!("m".repeat(rng.random_range(9_990..10_010))),
                _ => json!(text(rng, 80)),
            };
            json!({ "userId": user, "message": message })
        }
    };
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    if rng.random_bool(0.15) {
        mutate(rng, &bytes)
    } else {
        bytes
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn keys() -> Keys {
        Keys {
            jwt_secret: "s".repeat(32),
            api_key: "k".into(),
        }
    }

    #[test]
    fn a_seed_gives_the_same_inputs() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let (packet, _) = packet(&mut rng, &keys());
            let head = request(&mut rng, &keys(), "h");
            let body = api_body(&mut rng);
            (packet, head, body)
        };
        // Tokens carry `exp`, from the clock: two of three draws fall in the same second.
        let (a, b, c) = (draw(7), draw(7), draw(7));
        assert!(a == b || b == c);
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn mutations_stay_near_their_input() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let out = mutate(&mut rng, b"42[\"join-room\",\"general\"]");
            assert!(out.len() <= 26 + 4 * 32);
        }
    }
}
