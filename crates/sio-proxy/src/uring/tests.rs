//! The ring against real loopback sockets: a test client and a test node on either side of
//! a tunnel, as the proxy splices them after an upgrade.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::*;

/// A connected pair: (the test's end, the proxy's end).
fn pair() -> (TcpStream, OwnedFd) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let outer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (inner, _) = listener.accept().expect("accept");
    (outer, OwnedFd::from(inner))
}

struct Spliced {
    client: TcpStream,
    node: TcpStream,
    ended: oneshot::Receiver<io::Result<()>>,
}

fn splice(engine: &Engine, idle: Duration) -> Spliced {
    let (client, proxy_client) = pair();
    let (node, proxy_node) = pair();
    let ended = engine
        .splice(proxy_client, proxy_node, idle)
        .expect("splice");
    Spliced {
        client,
        node,
        ended,
    }
}

fn wait_end(ended: oneshot::Receiver<io::Result<()>>, within: Duration) -> io::Result<()> {
    let deadline = Instant::now() + within;
    let mut ended = ended;
    loop {
        match ended.try_recv() {
            Ok(result) => return result,
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("tunnel did not end in {within:?}: {e}"),
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn large_and_small_frames_cross_both_ways_and_half_closes_pass_on() {
    let engine = Engine::start().expect("io_uring here");
    let Spliced {
        mut client,
        mut node,
        ended,
    } = splice(&engine, Duration::from_secs(10));
    // Small frames one at a time, answered each: the latency path.
    for i in 0..100u8 {
        node.write_all(&[0x81, 1, i]).expect("node write");
        let mut got = [0u8; 3];
        client.read_exact(&mut got).expect("client read");
        assert_eq!(got, [0x81, 1, i]);
        client.write_all(&[i, i]).expect("client write");
        let mut back = [0u8; 2];
        node.read_exact(&mut back).expect("node read");
        assert_eq!(back, [i, i]);
    }
    // Several MiB each way at once: many buffers, partial sends.
    let down = pattern(5 << 20, 1);
    let up = pattern(3 << 20, 2);
    let mut node_w = node.try_clone().expect("clone");
    let mut client_w = client.try_clone().expect("clone");
    let down_sent = down.clone();
    let up_sent = up.clone();
    let writers = std::thread::spawn(move || {
        let a = std::thread::spawn(move || {
            node_w.write_all(&down_sent).expect("node write");
            // The node half-closes: the client must see its end after every byte.
            node_w.shutdown(Shutdown::Write).expect("shutdown");
        });
        client_w.write_all(&up_sent).expect("client write");
        a.join().expect("node writer");
    });
    let mut got_up = vec![0u8; up.len()];
    let reader = std::thread::spawn(move || {
        node.read_exact(&mut got_up).expect("node read");
        (node, got_up)
    });
    let mut got_down = Vec::new();
    client.read_to_end(&mut got_down).expect("client read");
    assert!(got_down == down, "node to client bytes differ");
    let (mut node, got_up) = reader.join().expect("reader");
    assert!(got_up == up, "client to node bytes differ");
    writers.join().expect("writers");
    // The other direction still works after the node's half-close.
    client
        .write_all(b"still open")
        .expect("write after half-close");
    let mut back = [0u8; 10];
    node.read_exact(&mut back).expect("read after half-close");
    assert_eq!(&back, b"still open");
    client.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    node.read_to_end(&mut rest)
        .expect("node sees the client's end");
    assert!(rest.is_empty());
    wait_end(ended, Duration::from_secs(5)).expect("clean end");
}

#[test]
fn idle_tunnels_end_and_busy_ones_do_not() {
    let engine = Engine::start().expect("io_uring here");
    let idle = splice(&engine, Duration::from_millis(200));
    let mut busy = splice(&engine, Duration::from_millis(200));
    let started = Instant::now();
    let mut ended_busy = busy.ended;
    // Traffic every 50 ms for 1 s: five idle periods.
    while started.elapsed() < Duration::from_secs(1) {
        busy.client.write_all(b"2").expect("write");
        let mut b = [0u8; 1];
        busy.node.read_exact(&mut b).expect("read");
        assert!(ended_busy.try_recv().is_err(), "busy tunnel ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = wait_end(idle.ended, Duration::from_secs(2)).expect_err("idle timeout");
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    // Its sockets are closed: both peers see the end.
    let mut idle_client = idle.client;
    let mut buf = [0u8; 1];
    assert!(matches!(idle_client.read(&mut buf), Ok(0) | Err(_)));
    let err = wait_end(ended_busy, Duration::from_secs(2)).expect_err("idle once quiet");
    assert_eq!(err.kind(), ErrorKind::TimedOut);
}

#[test]
fn a_slow_client_stops_the_node_instead_of_filling_the_proxy() {
    let engine = Engine::start().expect("io_uring here");
    let Spliced {
        mut client,
        mut node,
        ended,
    } = splice(&engine, Duration::from_secs(30));
    node.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![9u8; 64 * 1024];
    let mut written = 0usize;
    let mut last_progress = Instant::now();
    // The client reads nothing: the node's writes must stall once the socket buffers on the
    // way are full, far below what it tries (256 MiB).
    while written < 256 << 20 && last_progress.elapsed() < Duration::from_millis(500) {
        match node.write(&chunk) {
            Ok(n) => {
                written += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("node write: {e}"),
        }
    }
    // Kernel buffers on loopback hold a few MiB per socket; the ring adds one buffer.
    assert!(
        written < 48 << 20,
        "the node wrote {written} bytes to a client that reads nothing"
    );
    node.set_nonblocking(false).expect("blocking");
    node.shutdown(Shutdown::Write).expect("shutdown");
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = client.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == 9));
        got += n;
    }
    assert_eq!(
        got, written,
        "every byte written arrives once the client reads"
    );
    client.shutdown(Shutdown::Write).expect("shutdown");
    wait_end(ended, Duration::from_secs(5)).expect("clean end");
}

#[test]
fn many_tunnels_share_few_buffers() {
    // More tunnels than buffers in the test build (BUFFER_COUNT), all busy at once: some
    // reads find no buffer and wait for one.
    let engine = Engine::start().expect("io_uring here");
    let tunnels: Vec<Spliced> = (0..64)
        .map(|_| splice(&engine, Duration::from_secs(30)))
        .collect();
    let payload = pattern(40_000, 3);
    for t in &tunnels {
        let mut node = t.node.try_clone().expect("clone");
        let payload = payload.clone();
        std::thread::spawn(move || node.write_all(&payload).expect("write"));
    }
    for t in &tunnels {
        let mut got = vec![0u8; payload.len()];
        (&t.client).read_exact(&mut got).expect("read");
        assert!(got == payload);
    }
    for t in tunnels {
        t.client.shutdown(Shutdown::Write).expect("shutdown");
        t.node.shutdown(Shutdown::Write).expect("shutdown");
        wait_end(t.ended, Duration::from_secs(5)).expect("clean end");
    }
}

#[test]
fn a_peer_that_vanishes_ends_the_tunnel_and_closes_the_other_side() {
    let engine = Engine::start().expect("io_uring here");
    let Spliced {
        mut client,
        node,
        ended,
    } = splice(&engine, Duration::from_secs(30));
    drop(node);
    let mut buf = [0u8; 16];
    // The node's end reaches the client as an end of stream.
    assert_eq!(client.read(&mut buf).expect("read"), 0);
    drop(client);
    wait_end(ended, Duration::from_secs(5)).expect("ended");
}
