//! sio-proxy's admission limits, each hit by a real client against a real proxy and node:
//! the refusal, the metric that counts it, and a bystander from another address that keeps
//! being served.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sio_tests::{Cluster, Proxy, http, metric, open_packet_sid, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HANDSHAKE: &str = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: t\r\n";

fn proxy(test: &str, c: &Cluster, extra: &[&str]) -> Proxy {
    let url = c.redis.url();
    let mut args = vec![
        "--backends-redis",
        url.as_str(),
        "--redis-prefix",
        c.prefix.as_str(),
    ];
    args.extend_from_slice(extra);
    let p = Proxy::start(test, "proxy", &args);
    p.wait_healthy_backends(c.nodes.len(), Duration::from_secs(20));
    p
}

/// A polling handshake from the loopback address `source` (another client address than the
/// 127.0.0.1 of the other connections): `(status, body)`.
fn handshake_from(source: &str, proxy: SocketAddr) -> std::io::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse().expect("addr"))?;
        let mut stream = socket.connect(proxy).await?;
        stream
            .write_all(format!("{HANDSHAKE}Connection: close\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .map_err(|_| std::io::Error::from(ErrorKind::TimedOut))??;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    })
}

/// Whether the proxy closed `stream` (end of stream or reset) rather than keeping it open.
fn closed(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let result = match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    stream.set_nonblocking(false).expect("blocking");
    result
}

/// Reads one answer (head and `Content-Length` body) from a keep-alive connection.
fn read_answer(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = s.read(&mut chunk).expect("answer");
        assert!(n > 0, "closed mid-answer: {text}");
        got.extend_from_slice(&chunk[..n]);
    }
}

fn refused(p: &Proxy, reason: &str) -> f64 {
    metric(
        &p.metrics(),
        "sio_proxy_refused_total",
        &[("reason", reason)],
    )
}

fn bystander_is_served(p: &Proxy) {
    let (status, body) = handshake_from("127.0.0.2", p.addr).expect("bystander");
    assert_eq!(status, 200, "bystander: {body}");
    assert!(open_packet_sid(&body).len() > 16, "{body}");
}

/// Slow-loris: heads sent in part, or a byte at a time, are closed after `--header-timeout`;
/// beyond `--max-pending-heads-per-address` more are closed at once.
#[test]
fn late_and_piled_up_request_heads_are_closed() {
    let test = "limits-heads";
    let c = Cluster::start(test, 1, &[]);
    let p = proxy(
        test,
        &c,
        &[
            "--header-timeout",
            "4s",
            "--max-pending-heads-per-address",
            "50",
        ],
    );
    let mut held: Vec<TcpStream> = (0..80)
        .map(|_| {
            let mut s = TcpStream::connect(p.addr).expect("connect");
            s.write_all(HANDSHAKE.as_bytes()).expect("half a head");
            s
        })
        .collect();
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || refused(
            &p,
            "pending_heads_per_address"
        ) >= 30.0),
        "{}",
        p.metrics()
    );
    let closed_at_once = held.iter_mut().map(closed).filter(|c| *c).count();
    assert_eq!(
        closed_at_once, 30,
        "beyond 50 pending heads, closed at once"
    );
    assert_eq!(metric(&p.metrics(), "sio_proxy_pending_heads", &[]), 50.0);
    bystander_is_served(&p);
    assert!(
        wait_until(Duration::from_secs(10), || refused(&p, "header_timeout")
            >= 50.0),
        "{}",
        p.metrics()
    );
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert!(held.iter_mut().all(closed), "every late head is closed");
    assert_eq!(metric(&p.metrics(), "sio_proxy_pending_heads", &[]), 0.0);
    bystander_is_served(&p);
}

/// A head that trickles in a byte at a time (each read well inside pingora's own 60 s read
/// timeout) is still closed at `--header-timeout`.
#[test]
fn a_trickling_head_is_closed_at_the_deadline() {
    let test = "limits-trickle";
    let c = Cluster::start(test, 1, &[]);
    let p = proxy(test, &c, &["--header-timeout", "2s"]);
    let mut s = TcpStream::connect(p.addr).expect("connect");
    let started = Instant::now();
    let mut cut = None;
    for byte in HANDSHAKE.bytes().chain(std::iter::repeat(b'x')).take(200) {
        if s.write_all(&[byte]).is_err() || closed(&mut s) {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut = cut.expect("the trickling head was never closed");
    assert!(cut >= Duration::from_secs(2), "closed after {cut:?}");
    assert!(cut < Duration::from_secs(8), "closed after {cut:?}");
    assert_eq!(refused(&p, "header_timeout"), 1.0);
    // a keep-alive connection gets the same deadline for its next head, not for idling
    let mut keep = TcpStream::connect(p.addr).expect("connect");
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert!(read_answer(&mut keep).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !closed(&mut keep),
        "idle between requests is not a late head"
    );
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert!(read_answer(&mut keep).starts_with("HTTP/1.1 200"));
    bystander_is_served(&p);
}

/// `--max-connections-per-address`: the connection over the cap is closed at once, the
/// others and another address keep working, and a freed slot is usable again.
#[test]
fn connections_per_address_are_capped() {
    let test = "limits-connections";
    let c = Cluster::start(test, 1, &[]);
    let p = proxy(test, &c, &["--max-connections-per-address", "20"]);
    let mut open: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(p.addr).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("write");
            assert!(read_answer(&mut s).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let mut over = TcpStream::connect(p.addr).expect("the kernel accepts");
    over.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = over.write_all(format!("{HANDSHAKE}\r\n").as_bytes());
    let mut answer = Vec::new();
    let _ = over.read_to_end(&mut answer);
    assert!(answer.is_empty(), "closed without an answer: {answer:?}");
    assert_eq!(refused(&p, "connections_per_address"), 1.0);
    bystander_is_served(&p);
    // the held connections still carry requests
    let s = &mut open[0];
    s.write_all(format!("{HANDSHAKE}\r\n").as_bytes())
        .expect("write");
    let text = read_answer(s);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    drop(open);
    assert!(wait_until(Duration::from_secs(5), || {
        matches!(
            http(
                p.addr,
                "GET",
                "/socket.io/?EIO=4&transport=polling",
                &[],
                None
            ),
            Ok((200, _))
        )
    }));
}

/// Behind a trusted balancer the client comes from `X-Forwarded-For`: its WebSocket tunnels
/// count as its connections, and one over the cap gets a 429 naming the limit.
#[test]
fn clients_behind_a_trusted_peer_are_capped_by_forwarded_address() {
    let test = "limits-forwarded";
    let c = Cluster::start(test, 1, &[]);
    let p = proxy(
        test,
        &c,
        &[
            "--trust-forwarded",
            "127.0.0.1",
            "--max-connections-per-address",
            "3",
        ],
    );
    let upgrade = |client: &str| {
        let mut s = TcpStream::connect(p.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(
            format!(
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: t\r\n\
                 Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: {client}\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write");
        let answer = read_answer(&mut s);
        (s, answer)
    };
    let tunnels: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (s, answer) = upgrade("198.51.100.7");
            assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
            s
        })
        .collect();
    let (_, answer) = upgrade("198.51.100.7");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains(r#""limit":"connections_per_address""#),
        "{answer}"
    );
    assert_eq!(refused(&p, "connections_per_address"), 1.0);
    let (_, answer) = upgrade("198.51.100.8");
    assert!(
        answer.starts_with("HTTP/1.1 101"),
        "another client: {answer}"
    );
    drop(tunnels);
    assert!(wait_until(Duration::from_secs(5), || {
        upgrade("198.51.100.7").1.starts_with("HTTP/1.1 101")
    }));
}

/// `--handshake-rate` / `--handshake-burst`: a burst of handshakes from one address gets 429
/// beyond the bucket, with a JSON body naming the limit; requests of live sessions and other
/// addresses are not limited, and the bucket refills.
#[test]
fn handshakes_over_the_rate_get_429() {
    let test = "limits-handshakes";
    let c = Cluster::start(test, 1, &[]);
    let p = proxy(
        test,
        &c,
        &[
            "--trust-forwarded",
            "127.0.0.1",
            "--handshake-rate",
            "1",
            "--handshake-burst",
            "5",
        ],
    );
    let from = |client: &str| {
        http(
            p.addr,
            "GET",
            "/socket.io/?EIO=4&transport=polling",
            &[("X-Forwarded-For", client)],
            None,
        )
        .expect("handshake")
    };
    let answers: Vec<(u16, String)> = (0..12).map(|_| from("203.0.113.5")).collect();
    // 5 at once, then about one a second (more on a slow machine)
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert!((5..=9).contains(&ok), "{answers:?}");
    let (status, body) = answers
        .iter()
        .find(|(s, _)| *s != 200)
        .expect("a refused handshake");
    assert_eq!(*status, 429, "{body}");
    let json: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(json["limit"], "handshake_rate");
    assert_eq!(json["code"], 429);
    assert_eq!(
        refused(&p, "handshake_rate"),
        (12 - ok) as f64,
        "{}",
        p.metrics()
    );
    // a live session of that address is not a handshake
    let sid = open_packet_sid(&answers[0].1);
    let (status, _) = http(
        p.addr,
        "POST",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        &[
            ("X-Forwarded-For", "203.0.113.5"),
            ("Content-Type", "text/plain"),
        ],
        Some("3"),
    )
    .expect("post");
    assert_eq!(status, 200);
    // another address has its own bucket; the limited one refills
    assert_eq!(from("203.0.113.6").0, 200);
    assert!(wait_until(Duration::from_secs(5), || from("203.0.113.5").0 == 200));
}
