//! The `sio-proxy` binary against fake Engine.IO backends: sid tagging and stripping, sticky
//! routing from two replicas, Engine.IO errors, WebSocket tunnels, metrics.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fake node: answers `/readyz`, polling handshakes with a fixed 16-character sid, records
/// the sid of every later request, and echoes bytes after a WebSocket 101.
struct FakeNode {
    addr: SocketAddr,
    seen_sids: Arc<Mutex<Vec<String>>>,
}

async fn fake_node(sid: &'static str) -> FakeNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen_sids = Arc::new(Mutex::new(Vec::new()));
    let seen = seen_sids.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, sid, seen.clone()));
        }
    });
    FakeNode { addr, seen_sids }
}

async fn serve(mut stream: TcpStream, sid: &'static str, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + length);
        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let request_sid = target
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("sid="))
            .map(str::to_owned);
        if let Some(s) = &request_sid {
            seen.lock().expect("lock").push(s.clone());
        }
        let upgrade = head.to_ascii_lowercase().contains("upgrade: websocket");
        if upgrade {
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello")
                .await;
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        let body = if target == "/readyz" {
            "ready".to_owned()
        } else if target.contains("EIO=4") && request_sid.is_none() {
            format!(
                "0{{\"sid\":\"{sid}\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}}\u{1e}2"
            )
        } else {
            format!("seen:{}", request_sid.unwrap_or_default())
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=UTF-8\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `sio-proxy`, killed on drop.
struct Proxy {
    child: Child,
    port: u16,
    metrics_port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_proxy(backends: &[SocketAddr]) -> Proxy {
    let port = free_port();
    let metrics_port = free_port();
    let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_sio-proxy"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--backend", &list.join(",")])
        .args(["--sid-secret", "test-secret", "--threads", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sio-proxy");
    let proxy = Proxy {
        child,
        port,
        metrics_port,
    };
    for _ in 0..100 {
        if let Ok((status, _)) = get(port, "/healthz").await
            && status == 200
        {
            return proxy;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sio-proxy did not start");
}

async fn request(
    port: u16,
    method: &str,
    target: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn get(port: u16, target: &str) -> std::io::Result<(u16, String)> {
    request(port, "GET", target, "").await
}

fn sid_of(open: &str) -> String {
    let start = open.find("\"sid\":\"").expect("sid") + 7;
    let end = open[start..].find('"').expect("end") + start;
    open[start..end].to_owned()
}

#[tokio::test]
async fn sessions_stick_to_their_node_through_any_replica() {
    let a = fake_node("AAAAAAAAAAAAAAAA").await;
    let b = fake_node("BBBBBBBBBBBBBBBB").await;
    let replica_1 = start_proxy(&[a.addr, b.addr]).await;
    let replica_2 = start_proxy(&[b.addr, a.addr]).await;

    let (status, open) = get(replica_1.port, "/socket.io/?EIO=4&transport=polling")
        .await
        .expect("handshake");
    assert_eq!(status, 200);
    assert!(
        open.ends_with("\u{1e}2"),
        "packets after the open packet are kept: {open:?}"
    );
    let sid = sid_of(&open);
    assert_eq!(sid.len(), 16 + sio_proxy::routing::TAG_LEN);
    let node_sid = &sid[sio_proxy::routing::TAG_LEN..];
    let owner = if node_sid.starts_with('A') { &a } else { &b };

    for replica in [&replica_1, &replica_2] {
        let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        let (status, body) = request(replica.port, "POST", &target, "40")
            .await
            .expect("post");
        assert_eq!(
            (status, body.as_str()),
            (200, format!("seen:{node_sid}").as_str())
        );
        let (status, body) = get(replica.port, &target).await.expect("get");
        assert_eq!(
            (status, body.as_str()),
            (200, format!("seen:{node_sid}").as_str())
        );
    }
    let seen = owner.seen_sids.lock().expect("lock").clone();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter().all(|s| s == node_sid),
        "the node only sees its own sid: {seen:?}"
    );

    // Through a restarted replica too.
    drop(replica_1);
    let replica_1 = start_proxy(&[a.addr, b.addr]).await;
    let (status, _) = get(
        replica_1.port,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .await
    .expect("get");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unknown_forged_and_malformed_sids_get_session_id_unknown() {
    let a = fake_node("AAAAAAAAAAAAAAAA").await;
    let proxy = start_proxy(&[a.addr]).await;
    for sid in [
        "AAAAAAAAAAAAAAAA",
        "ZZZZZZZZAAAAAAAAAAAAAAAA",
        "%00%01",
        "short",
    ] {
        let (status, body) = get(
            proxy.port,
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        )
        .await
        .expect("get");
        assert_eq!(status, 400, "sid {sid}");
        assert_eq!(body, r#"{"code":1,"message":"Session ID unknown"}"#);
    }
    assert!(a.seen_sids.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn websocket_upgrades_become_tunnels_and_are_counted() {
    let a = fake_node("AAAAAAAAAAAAAAAA").await;
    let proxy = start_proxy(&[a.addr]).await;
    let (_, open) = get(proxy.port, "/socket.io/?EIO=4&transport=polling")
        .await
        .expect("handshake");
    let sid = sid_of(&open);
    let mut ws = TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .expect("connect");
    let upgrade = format!(
        "GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    ws.write_all(upgrade.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    while !got.ends_with(b"hello") {
        let mut chunk = [0u8; 1024];
        let n = ws.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    ws.write_all(b"ping-through-tunnel").await.expect("write");
    let mut echo = [0u8; 19];
    ws.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping-through-tunnel");
    let node_sid = &sid[sio_proxy::routing::TAG_LEN..];
    assert_eq!(
        a.seen_sids.lock().expect("lock").last().map(String::as_str),
        Some(node_sid)
    );

    let metrics = |port| async move { get(port, "/metrics").await.expect("metrics").1 };
    let open_line = format!("sio_proxy_websocket_tunnels{{backend=\"{}\"}} 1", a.addr);
    assert!(metrics(proxy.metrics_port).await.contains(&open_line));
    drop(ws);
    let closed_line = format!("sio_proxy_websocket_tunnels{{backend=\"{}\"}} 0", a.addr);
    for _ in 0..50 {
        if metrics(proxy.metrics_port).await.contains(&closed_line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tunnel gauge did not return to 0");
}

#[tokio::test]
async fn no_healthy_backend_is_a_503() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = start_proxy(&[dead]).await;
    let (status, body) = get(proxy.port, "/socket.io/?EIO=4&transport=polling")
        .await
        .expect("get");
    assert_eq!(status, 503);
    assert!(body.contains("No healthy backend"));
}
