//! Limits on what a client (hostile or just buggy) can make a node hold or do: each test hits
//! one limit, checks the refusal and the metric that counts it, and, where the limit guards
//! shared work, that a bystander client on the same node keeps its latency and messages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sio_tests::{Node, Redis, hook_server, random_prefix, run_js, wait_until};

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

/// One WebSocket upgrade request for session `sid` on its own connection; returns the status
/// line's code (0 when the node closed without answering).
fn websocket_request(addr: SocketAddr, sid: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!(
        "GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\nHost: {addr}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn random_sid(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..len)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}

/// Sends `count` WebSocket requests with random sids of `len` characters from 8 threads;
/// returns how many got each status.
fn forged_websocket_requests(
    addr: SocketAddr,
    count: usize,
    len: usize,
) -> std::collections::BTreeMap<u16, usize> {
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeMap::new();
                for _ in (t..count).step_by(threads) {
                    *seen
                        .entry(websocket_request(addr, &random_sid(len)))
                        .or_insert(0) += 1;
                }
                seen
            })
        })
        .collect();
    let mut all = std::collections::BTreeMap::new();
    for h in handles {
        for (status, n) in h.join().expect("sender thread") {
            *all.entry(status).or_insert(0) += n;
        }
    }
    all
}

/// Forged sids on WebSocket requests (no token needed) must not grow a node's memory:
/// 20,000 requests with 800-byte sids, then 20,000 with sids of the real shape (16
/// characters, as sio-proxy forwards them once a tag is known), grow its RSS by < 5 MB each.
#[test]
fn forged_websocket_sids_do_not_grow_a_node() {
    let node = Node::start("limits-forged-sids", "node", &[]);
    let pid = node.proc.pid();
    // Warm up: the allocator's arenas, hyper's and the engine's first allocations.
    forged_websocket_requests(node.addr, 2_000, 800);
    forged_websocket_requests(node.addr, 2_000, 16);
    for (len, label) in [(800, "800-byte"), (16, "16-character")] {
        let before = rss_kib(pid);
        let seen = forged_websocket_requests(node.addr, 20_000, len);
        // the node still answers, and answered every forged request
        assert!(
            sio_tests::wait_until(Duration::from_secs(5), || matches!(
                sio_tests::http_get(node.addr, "/readyz"),
                Ok((200, _))
            )),
            "node not ready after the forged requests"
        );
        let after = rss_kib(pid);
        let grown = after.saturating_sub(before);
        eprintln!(
            "20,000 WebSocket requests with {label} forged sids: RSS {before} -> {after} KiB (+{grown} KiB), answers {seen:?}"
        );
        assert!(
            !seen.contains_key(&0) || seen[&0] < 100,
            "requests left unanswered: {seen:?}"
        );
        assert!(
            grown < 5 * 1024,
            "RSS grew by {grown} KiB with {label} forged sids (limit 5 MiB)"
        );
    }
}

/// Runs scenario `name` of tests/js/limits.mjs against `node` and prints what it measured.
fn scenario(node: &Node, name: &str) {
    let out = run_js(
        "limits.mjs",
        &[("SCENARIO", name.to_owned()), ("URL", node.url())],
    );
    eprintln!("{name}: {out}");
}

/// Rate limits out of the way, for the tests of other limits.
const NO_RATE: [&str; 4] = ["--event-rate", "100000", "--event-burst", "100000"];

/// Two nodes on one Redis: the first allows 20 rooms per socket, the second 100; both 30
/// per user. A user joins on the first, then on the second, then reconnects to the first.
#[test]
fn joins_beyond_the_room_limits_get_too_many_rooms_and_change_nothing() {
    let test = "limits-rooms";
    let redis = Redis::start(test);
    let (url, prefix) = (redis.url(), random_prefix());
    let start = |id: &str, per_socket: &str| {
        let mut args = vec![
            "--redis-url",
            &url,
            "--redis-prefix",
            &prefix,
            "--max-rooms-per-socket",
            per_socket,
            "--max-rooms-per-user",
            "30",
        ];
        args.extend(NO_RATE);
        Node::start(test, id, &args)
    };
    let (a, b) = (start("node-a", "20"), start("node-b", "100"));
    let out = run_js(
        "limits.mjs",
        &[
            ("SCENARIO", "rooms".to_owned()),
            ("URL", a.url()),
            ("URL2", b.url()),
        ],
    );
    eprintln!("rooms: {out}");
}

#[test]
fn events_beyond_the_pending_bytes_get_overloaded() {
    let test = "limits-pending-bytes";
    let (_hook, hook) = hook_server(test);
    let hook = format!("{hook}/join");
    let mut args = vec![
        "--max-payload",
        "100000",
        "--max-pending-bytes",
        "250000",
        "--join-hook-url",
        &hook,
        "--join-hook-timeout",
        "5s",
    ];
    args.extend(NO_RATE);
    let node = Node::start(test, "node", &args);
    scenario(&node, "pending_bytes");
    scenario(&node, "attachments");
}

#[test]
fn events_over_the_rate_get_rate_limited_and_a_socket_that_stays_over_is_disconnected() {
    let node = Node::start(
        "limits-event-rate",
        "node",
        &["--event-rate", "40", "--event-burst", "20"],
    );
    scenario(&node, "event_rate");
}

#[test]
fn chat_messages_beyond_max_chat_bytes_get_payload_too_large() {
    let node = Node::start("limits-chat-bytes", "node", &NO_RATE);
    scenario(&node, "chat_bytes");
}

/// A node's presence sweep walks its own rooms only: with 300 rooms in the cluster, all on
/// another node, a node without sockets runs no sweep at all.
#[test]
fn presence_work_follows_the_nodes_own_rooms() {
    let test = "limits-own-rooms";
    let redis = Redis::start(test);
    let (url, prefix) = (redis.url(), random_prefix());
    let start = |id: &str| {
        Node::start(
            test,
            id,
            &[
                "--redis-url",
                &url,
                "--redis-prefix",
                &prefix,
                "--lease-ttl",
                "3s",
                "--max-rooms-per-socket",
                "300",
                "--max-rooms-per-user",
                "300",
                "--event-rate",
                "100000",
                "--event-burst",
                "100000",
            ],
        )
    };
    let (busy, _idle) = (start("node-busy"), start("node-idle"));
    let out = run_js(
        "limits.mjs",
        &[
            ("SCENARIO", "own_rooms".to_owned()),
            ("URL", busy.url()),
            ("REDIS_PORT", redis.port.to_string()),
            ("NODE_PID", busy.proc.pid().to_string()),
        ],
    );
    eprintln!("own_rooms: {out}");
}

/// A heartbeat round longer than a third of `--lease-ttl` (here Redis stalls for 2.5 s with a
/// 3 s lease) is logged as a warning and counted in `sio_heartbeat_slow_total`.
#[test]
fn a_slow_heartbeat_is_logged_and_counted() {
    let test = "limits-slow-heartbeat";
    let redis = Redis::start(test);
    let prefix = random_prefix();
    let url = redis.url();
    let node = Node::start(
        test,
        "node",
        &[
            "--redis-url",
            &url,
            "--redis-prefix",
            &prefix,
            "--lease-ttl",
            "3s",
        ],
    );
    let slow = |n: &Node| sio_tests::metric(&n.metrics(), "sio_heartbeat_slow_total", &[]);
    assert_eq!(slow(&node), 0.0);
    // the first round runs a heartbeat interval after start-up, not before the node is ready
    assert!(
        wait_until(Duration::from_secs(10), || {
            sio_tests::metric(&node.metrics(), "sio_heartbeat_duration_seconds_count", &[]) >= 1.0
        }),
        "heartbeat rounds are timed"
    );
    redis.proc.signal("STOP");
    std::thread::sleep(Duration::from_millis(2500));
    redis.proc.signal("CONT");
    assert!(
        wait_until(Duration::from_secs(10), || slow(&node) >= 1.0),
        "no slow heartbeat counted:\n{}",
        node.metrics()
    );
    assert!(
        node.proc
            .log_text()
            .contains("heartbeat round took longer than a third of --lease-ttl"),
        "no warning logged"
    );
}
