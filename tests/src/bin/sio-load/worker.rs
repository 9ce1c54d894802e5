//! A worker process: holds its share of the clients, sends on the coordinator's schedule and
//! records the latency of every delivery it receives.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior};

use crate::client::Conn;
use crate::plan::{Answer, Command, Plan};

/// Highest latency recorded (µs); anything slower is clamped to it.
const MAX_LATENCY_US: u64 = 120_000_000;
/// First-connection attempts before a client counts as failed.
const CONNECT_ATTEMPTS: u32 = 3;
/// Longest wait for one attempt to open a session, connect and join (a server that never
/// answers must fail the attempt, not hang the run).
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Wall-clock time in nanoseconds since the Unix epoch (shared by every process).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// A new latency histogram (1 µs to 120 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant, valid bounds")
}

/// The send window every sender follows.
#[derive(Clone, Copy, Debug)]
struct Phase {
    step: u64,
    start: Instant,
    /// `start` on the wall clock.
    start_unix_ns: u64,
    end: Instant,
    /// Time between two messages of one room.
    period: Duration,
    rooms: usize,
}

struct Shared {
    plan: Plan,
    step: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    stale: AtomicU64,
    send_errors: AtomicU64,
    connected: AtomicI64,
    disconnects: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// `[same target as the sender, another target]`.
    latency: Mutex<[Histogram<u64>; 2]>,
    phase: watch::Sender<Option<Phase>>,
    gate: Semaphore,
}

/// Runs worker `index` of `plan` until the coordinator says quit or closes stdin.
pub fn main(plan: Plan, index: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(serve(plan, index))
}

async fn serve(plan: Plan, index: usize) -> anyhow::Result<()> {
    let (phase, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        gate: Semaphore::new(plan.connect_concurrency.max(1)),
        plan,
        step: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
        connected: AtomicI64::new(0),
        disconnects: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
        latency: Mutex::new([histogram(), histogram()]),
        phase,
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut launched = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        let command: Command = serde_json::from_str(&line).context("bad command")?;
        let mut answer = Answer::default();
        match command {
            Command::Grow { total } => {
                let (done_tx, mut done_rx) = mpsc::unbounded_channel();
                let mut started = 0;
                for i in launched..total {
                    if i % shared.plan.workers != index {
                        continue;
                    }
                    started += 1;
                    tasks.spawn(client(shared.clone(), i, done_tx.clone()));
                }
                launched = launched.max(total);
                drop(done_tx);
                for _ in 0..started {
                    if done_rx.recv().await.is_none() {
                        break;
                    }
                }
            }
            Command::Step {
                id,
                per_room_rate,
                start_unix_ns,
                duration_ms,
                rooms,
            } => {
                shared.step.store(id, Ordering::SeqCst);
                for counter in [
                    &shared.sent,
                    &shared.received,
                    &shared.stale,
                    &shared.send_errors,
                ] {
                    counter.store(0, Ordering::SeqCst);
                }
                let delay = Duration::from_nanos(start_unix_ns.saturating_sub(unix_nanos()));
                let start = Instant::now() + delay;
                let period = Duration::from_secs_f64(1.0 / per_room_rate.max(1e-6));
                shared.phase.send_replace(Some(Phase {
                    step: id,
                    start,
                    start_unix_ns,
                    end: start + Duration::from_millis(duration_ms),
                    period,
                    rooms: rooms.max(1),
                }));
            }
            Command::Count => {}
            Command::Collect => {
                if let Ok(mut latency) = shared.latency.lock() {
                    answer.local = pairs(&latency[0]);
                    answer.remote = pairs(&latency[1]);
                    latency[0].reset();
                    latency[1].reset();
                }
            }
            Command::Quit => break,
        }
        answer.connected = shared.connected.load(Ordering::SeqCst);
        answer.failed = shared.failed.load(Ordering::SeqCst);
        answer.disconnects = shared.disconnects.load(Ordering::SeqCst);
        answer.sent = shared.sent.load(Ordering::SeqCst);
        answer.received = shared.received.load(Ordering::SeqCst);
        answer.stale = shared.stale.load(Ordering::SeqCst);
        answer.send_errors = shared.send_errors.load(Ordering::SeqCst);
        answer.error = shared.first_error.lock().ok().and_then(|e| e.clone());
        let mut text = serde_json::to_string(&answer)?;
        text.push('\n');
        stdout.write_all(text.as_bytes()).await?;
        stdout.flush().await?;
    }
    tasks.abort_all();
    Ok(())
}

fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// socket.io-client's reconnection delay: 1 s doubling to 5 s, ±50 % jitter.
fn backoff(attempt: u32) -> Duration {
    let base = (1000u64 << attempt.min(3)).min(5000) as f64;
    let jitter = 1.0 + (rand::random::<f64>() - 0.5);
    Duration::from_millis((base * jitter) as u64)
}

/// One client for its whole life: connect (retrying), run the session, reconnect if asked.
async fn client(shared: Arc<Shared>, i: usize, done: mpsc::UnboundedSender<bool>) {
    let plan = &shared.plan;
    let target = &plan.targets[plan.target_of(i)];
    let source = plan.source_of(i);
    let user = format!("{}{i}", plan.user_prefix);
    let room = plan.room_of(i).map(|r| format!("r{r}"));
    let mut first = Some(done);
    let mut attempt = 0u32;
    loop {
        let opened = {
            let _permit = shared.gate.acquire().await;
            let opening = async {
                let mut conn = Conn::open(plan.transport, target, source).await?;
                conn.establish(&user, room.as_deref()).await?;
                anyhow::Ok(conn)
            };
            match tokio::time::timeout(ESTABLISH_TIMEOUT, opening).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!(
                    "no session, CONNECT or join acknowledgement within {ESTABLISH_TIMEOUT:?}"
                )),
            }
        };
        match opened {
            Ok(conn) => {
                attempt = 0;
                shared.connected.fetch_add(1, Ordering::SeqCst);
                if let Some(done) = first.take() {
                    let _ = done.send(true);
                }
                let _ = session(&shared, i, conn).await;
                shared.connected.fetch_sub(1, Ordering::SeqCst);
                shared.disconnects.fetch_add(1, Ordering::SeqCst);
                if !plan.reconnect {
                    return;
                }
            }
            Err(e) => {
                if let Ok(mut first_error) = shared.first_error.lock()
                    && first_error.is_none()
                {
                    *first_error = Some(format!("client {i}: {e:#}"));
                }
                if first.is_some() && attempt + 1 >= CONNECT_ATTEMPTS {
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                    if let Some(done) = first.take() {
                        let _ = done.send(false);
                    }
                    if !plan.reconnect {
                        return;
                    }
                }
                if first.is_some() {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// Answers pings, records deliveries and, for a room's first member, sends on schedule.
async fn session(shared: &Shared, i: usize, mut conn: Conn) -> anyhow::Result<()> {
    let plan = &shared.plan;
    let room = plan.room_of(i);
    let sender = room.is_some() && i.is_multiple_of(plan.room_size);
    // Is this client on the same node as its room's sender (cross-node latency apart)?
    let local = room.is_none_or(|r| plan.target_of(r * plan.room_size) == plan.target_of(i));
    if sender {
        conn.keep_send_connection();
    }
    let mut phase_rx = shared.phase.subscribe();
    let mut phase: Option<Phase> = None;
    let mut ticker: Option<Interval> = None;
    let mut packet = String::with_capacity(128);
    loop {
        tokio::select! {
            p = conn.recv() => {
                let Some(p) = p? else { return Ok(()) };
                if p.starts_with(b"42[\"room-message\"") {
                    record(shared, &p, local);
                } else if p.as_ref() == b"2" {
                    conn.send(&[b"3"]).await?;
                } else if p.as_ref() == b"1" {
                    return Ok(());
                }
            }
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                phase = *phase_rx.borrow_and_update();
                ticker = match (phase, room) {
                    (Some(ph), Some(r)) if sender => {
                        // Spread the rooms' sends evenly over one period.
                        let offset = ph.period.mul_f64((r % ph.rooms) as f64 / ph.rooms as f64);
                        let mut t = tokio::time::interval_at((ph.start + offset).into(), ph.period);
                        t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                        Some(t)
                    }
                    _ => None,
                };
            }
            due = async {
                match ticker.as_mut() {
                    Some(t) => t.tick().await.into_std(),
                    None => std::future::pending().await,
                }
            }, if ticker.is_some() => {
                let Some(ph) = phase else { continue };
                if due >= ph.end {
                    ticker = None;
                    continue;
                }
                // The message carries the time it was due, not the time it left: a sender held
                // up by a slow server still measures the whole delay (no coordinated omission).
                let due_unix = ph.start_unix_ns + due.saturating_duration_since(ph.start).as_nanos() as u64;
                packet.clear();
                let r = room.unwrap_or_default();
                use std::fmt::Write as _;
                let _ = write!(packet, "42[\"room-message\",{{\"room\":\"r{r}\",\"text\":\"{}:{due_unix}\"}}]", ph.step);
                // Counted before it leaves: a polling POST answers after the server handled
                // the message, so its deliveries may be counted before the POST returns.
                shared.sent.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = conn.send(&[packet.as_bytes()]).await {
                    shared.send_errors.fetch_add(1, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
    }
}

/// Counts a `room-message` delivery and records its latency (`"text":"<step>:<unix ns>"`).
fn record(shared: &Shared, p: &Bytes, local: bool) {
    let now = unix_nanos();
    let Some((step, sent)) = parse_text(p) else {
        return;
    };
    if step != shared.step.load(Ordering::Relaxed) {
        shared.stale.fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared.received.fetch_add(1, Ordering::Relaxed);
    let micros = (now.saturating_sub(sent) / 1000).clamp(1, MAX_LATENCY_US);
    if let Ok(mut latency) = shared.latency.lock() {
        let _ = latency[usize::from(!local)].record(micros);
    }
}

/// `(step, send time)` from the `text` field of a `room-message`.
fn parse_text(p: &[u8]) -> Option<(u64, u64)> {
    const KEY: &[u8] = b"\"text\":\"";
    let at = p.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = p[at..].iter().position(|b| *b == b'"')?;
    let text = std::str::from_utf8(&p[at..at + end]).ok()?;
    let (step, sent) = text.split_once(':')?;
    Some((step.parse().ok()?, sent.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_of_a_delivery() {
        let p = br#"42["room-message",{"id":"x","room":"r0","sender":"u","text":"7:1764117000123456789","timestamp":"t"}]"#;
        assert_eq!(parse_text(p), Some((7, 1_764_117_000_123_456_789)));
        assert_eq!(parse_text(b"42[\"room-message\",{}]"), None);
    }

    #[test]
    fn backoff_follows_the_official_client() {
        for attempt in 0..6 {
            let d = backoff(attempt).as_millis();
            let base = (1000u128 << attempt.min(3)).min(5000);
            assert!(d >= base / 2 && d <= base * 3 / 2, "{attempt}: {d}");
        }
    }
}
