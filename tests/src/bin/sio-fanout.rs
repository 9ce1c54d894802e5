//! `sio-fanout`: a small WebSocket fan-out load generator for sio-cluster.
//!
//! Opens `--clients` Socket.IO clients over raw WebSocket (no client library: the generator
//! must cost less CPU than what it measures), joins them to one room, then one extra sender
//! emits `room-message` at `--rate` per second for `--duration`; the node broadcasts each to
//! the room. Prints deliveries per second, latency percentiles (send to receive), losses,
//! and, with `--rss-pid`, the resident memory that process gained per connected client.
//!
//! ```text
//! sio-fanout --url ws://127.0.0.1:4000/socket.io/ --clients 1000 --rate 300 --duration 10s
//! ```
//! Assumes nodes started with `--auth none` (the user id comes from `auth.userId`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

struct Args {
    host: String,
    path: String,
    clients: usize,
    rate: u64,
    duration: Duration,
    room: String,
    threads: usize,
    rss_pid: Option<u32>,
    hold: Duration,
    connect_concurrency: usize,
    no_join: bool,
}

fn usage() -> &'static str {
    "usage: sio-fanout --url ws://HOST:PORT/socket.io/ [--clients 1000] [--rate 200] \
     [--duration 10s] [--room bench] [--threads 1] [--rss-pid PID] [--hold 0s] \
     [--connect-concurrency 100] [--no-join]"
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return Ok(Duration::from_millis(ms.parse()?));
    }
    if let Some(secs) = s.strip_suffix('s') {
        return Ok(Duration::from_secs_f64(secs.parse()?));
    }
    Ok(Duration::from_secs_f64(s.parse()?))
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        host: "127.0.0.1:4000".into(),
        path: "/socket.io/".into(),
        clients: 1000,
        rate: 200,
        duration: Duration::from_secs(10),
        room: "bench".into(),
        threads: 1,
        rss_pid: None,
        hold: Duration::ZERO,
        connect_concurrency: 100,
        no_join: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--url" => {
                let url = value()?;
                let rest = url
                    .strip_prefix("ws://")
                    .or_else(|| url.strip_prefix("http://"))
                    .context("--url must start with ws:// or http://")?;
                let (host, path) = rest.split_once('/').unwrap_or((rest, "socket.io/"));
                args.host = host.to_owned();
                args.path = format!("/{path}");
            }
            "--clients" => args.clients = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--duration" => args.duration = parse_duration(&value()?)?,
            "--room" => args.room = value()?,
            "--threads" => args.threads = value()?.parse()?,
            "--rss-pid" => args.rss_pid = Some(value()?.parse()?),
            "--hold" => args.hold = parse_duration(&value()?)?,
            "--connect-concurrency" => args.connect_concurrency = value()?.parse()?,
            // Memory tests: connect idle clients without joining (a room of thousands makes
            // every join a broadcast to all).
            "--no-join" => args.no_join = true,
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}\n{}", usage()),
        }
    }
    Ok(args)
}

/// A minimal client-side WebSocket over a TCP stream: masked text frames out, unmasked in.
struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

enum Frame {
    /// A data frame; its payload is `Ws::payload(range)`.
    Text(std::ops::Range<usize>),
    Ping(Vec<u8>),
    Close,
}

impl Ws {
    async fn connect(host: &str, path: &str) -> anyhow::Result<Ws> {
        let mut stream = TcpStream::connect(host).await.context("connect")?;
        stream.set_nodelay(true)?;
        let sep = if path.contains('?') { '&' } else { '?' };
        let request = format!(
            "GET {path}{sep}EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        let head_end = loop {
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed during the upgrade");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                bail!("upgrade answer too long");
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            bail!(
                "upgrade refused: {}",
                String::from_utf8_lossy(&buf[..head_end.min(200)])
            );
        }
        Ok(Ws {
            stream,
            buf,
            start: head_end,
        })
    }

    async fn send_text(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x81);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // A zero masking key leaves the payload as is.
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    async fn send_pong(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Next complete frame from the buffer, if any.
    fn parse(&mut self) -> Option<(u8, std::ops::Range<usize>)> {
        let data = &self.buf[self.start..];
        if data.len() < 2 {
            return None;
        }
        let opcode = data[0] & 0x0f;
        let masked = data[1] & 0x80 != 0;
        let (len, mut at) = match data[1] & 0x7f {
            126 if data.len() >= 4 => (u16::from_be_bytes([data[2], data[3]]) as usize, 4),
            127 if data.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&data[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if masked {
            at += 4;
        }
        if data.len() < at + len {
            return None;
        }
        let range = self.start + at..self.start + at + len;
        self.start += at + len;
        Some((opcode, range))
    }

    async fn next(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some((opcode, range)) = self.parse() {
                match opcode {
                    0x0..=0x2 => return Ok(Frame::Text(range)),
                    0x9 => return Ok(Frame::Ping(self.buf[range].to_vec())),
                    0x8 => return Ok(Frame::Close),
                    _ => continue,
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // `read_buf` only appends what was read, so a cancelled `next` loses nothing.
            self.buf.reserve(16 * 1024);
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(Frame::Close);
            }
        }
    }

    fn payload(&self, range: &std::ops::Range<usize>) -> &[u8] {
        &self.buf[range.clone()]
    }

    /// Waits for an Engine.IO/Socket.IO packet starting with `prefix`, answering pings.
    async fn expect(&mut self, prefix: &[u8]) -> anyhow::Result<Vec<u8>> {
        loop {
            match self.next().await? {
                Frame::Text(r) if self.payload(&r).starts_with(prefix) => {
                    return Ok(self.payload(&r).to_vec());
                }
                Frame::Text(r) if self.payload(&r) == b"2" => self.send_text(b"3").await?,
                Frame::Text(_) => {}
                Frame::Ping(p) => self.send_pong(&p).await?,
                Frame::Close => bail!(
                    "closed while waiting for {}",
                    String::from_utf8_lossy(prefix)
                ),
            }
        }
    }
}

/// Connects one client, authenticates and joins the room.
async fn join(args: &Args, user: &str) -> anyhow::Result<Ws> {
    let mut ws = Ws::connect(&args.host, &args.path).await?;
    ws.expect(b"0{").await?;
    ws.send_text(format!("40{{\"userId\":\"{user}\"}}").as_bytes())
        .await?;
    ws.expect(b"40").await?;
    if args.no_join {
        return Ok(ws);
    }
    ws.send_text(format!("421[\"join-room\",\"{}\"]", args.room).as_bytes())
        .await?;
    ws.expect(b"431").await?;
    Ok(ws)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Finds the send time (`"text":"<nanos>"`) in a `room-message` packet.
fn sent_at(packet: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"text\":\"";
    let at = packet.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = packet[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&packet[at..at + end])
        .ok()?
        .parse()
        .ok()
}

struct Stats {
    received: AtomicU64,
    latencies: std::sync::Mutex<Vec<u32>>,
    failed: AtomicUsize,
}

async fn receive(
    mut ws: Ws,
    epoch: Instant,
    stats: Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut latencies = Vec::with_capacity(4096);
    let result = loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = stop.changed() => break Ok(()),
        };
        match frame {
            Ok(Frame::Text(r)) if ws.payload(&r).starts_with(b"42[\"room-message\"") => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = sent_at(ws.payload(&r)) {
                    let now = epoch.elapsed().as_nanos() as u64;
                    latencies.push((now.saturating_sub(sent) / 1000) as u32);
                }
            }
            Ok(Frame::Text(r)) if ws.payload(&r) == b"2" => {
                if let Err(e) = ws.send_text(b"3").await {
                    break Err(e);
                }
            }
            Ok(Frame::Text(_)) => {}
            Ok(Frame::Ping(p)) => {
                if let Err(e) = ws.send_pong(&p).await {
                    break Err(e);
                }
            }
            Ok(Frame::Close) => break Err(anyhow::anyhow!("closed by the server")),
            Err(e) => break Err(e),
        }
    };
    if let Ok(mut all) = stats.latencies.lock() {
        all.extend_from_slice(&latencies);
    }
    result
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let rss_before = args.rss_pid.and_then(rss_bytes);
    let connect_started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let mut joins = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let args = args.clone();
        let gate = gate.clone();
        joins.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            join(&args, &format!("fanout-{i}")).await
        }));
    }
    let mut clients = Vec::with_capacity(args.clients);
    for j in joins {
        clients.push(j.await??);
    }
    let connect_time = connect_started.elapsed();
    println!(
        "connected {} clients in {:.2}s",
        clients.len(),
        connect_time.as_secs_f64()
    );
    // Let the join events settle before measuring memory or throughput.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let (Some(pid), Some(before)) = (args.rss_pid, rss_before)
        && let Some(after) = rss_bytes(pid)
    {
        println!(
            "rss of pid {pid}: {:.1} MiB before, {:.1} MiB with {} sessions: {:.0} bytes per session",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            clients.len(),
            (after as f64 - before as f64) / clients.len() as f64
        );
    }
    if !args.hold.is_zero() {
        println!(
            "holding {} idle sessions for {:?}",
            clients.len(),
            args.hold
        );
        tokio::time::sleep(args.hold).await;
    }
    if args.rate == 0 {
        return Ok(());
    }

    let epoch = Instant::now();
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        latencies: std::sync::Mutex::new(Vec::new()),
        failed: AtomicUsize::new(0),
    });
    // A watch, not a Notify: a receiver busy with a frame when the stop comes still sees it.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(Barrier::new(clients.len() + 1));
    let mut receivers = Vec::with_capacity(clients.len());
    for ws in clients {
        let stats = stats.clone();
        let stop = stop_rx.clone();
        let ready = ready.clone();
        receivers.push(tokio::spawn(async move {
            ready.wait().await;
            let r = receive(ws, epoch, stats.clone(), stop).await;
            if r.is_err() {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            r
        }));
    }
    ready.wait().await;

    let mut sender = join(&args, "fanout-sender").await?;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let sender_stop = started + args.duration;
    // The sender drains its own copies and acks in the background of its own loop.
    while Instant::now() < sender_stop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = epoch.elapsed().as_nanos();
                let packet = format!("42[\"room-message\",{{\"room\":\"{}\",\"text\":\"{now}\"}}]", args.room);
                sender.send_text(packet.as_bytes()).await?;
                sent += 1;
            }
            frame = sender.next() => match frame? {
                Frame::Text(r) if sender.payload(&r) == b"2" => sender.send_text(b"3").await?,
                Frame::Ping(p) => sender.send_pong(&p).await?,
                Frame::Close => bail!("sender closed"),
                Frame::Text(_) => {}
            }
        }
    }
    let send_time = started.elapsed();
    // Wait for stragglers: until nothing new arrives for 500 ms (at most 10 s).
    let expected = sent * receivers.len() as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received_so_far(&stats);
        if now == last || Instant::now() > drain_deadline {
            break;
        }
        last = now;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    for r in receivers {
        let _ = r.await;
    }
    let received = stats.received.load(Ordering::Relaxed);
    let mut latencies = stats
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    println!(
        "sent {sent} broadcasts in {:.2}s ({:.0}/s) to {} clients",
        send_time.as_secs_f64(),
        sent as f64 / send_time.as_secs_f64(),
        args.clients
    );
    println!(
        "delivered {received} of {expected} ({:.3}% lost), {:.0} deliveries/s over the send window",
        100.0 * (expected.saturating_sub(received)) as f64 / expected.max(1) as f64,
        received as f64 / send_time.as_secs_f64(),
    );
    println!(
        "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} (total {:.2}s incl. drain)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        elapsed.as_secs_f64()
    );
    let failed = stats.failed.load(Ordering::Relaxed);
    if failed > 0 {
        println!("{failed} clients failed before the end");
    }
    Ok(())
}

fn received_so_far(stats: &Stats) -> u64 {
    stats.received.load(Ordering::Relaxed)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}
