//! `sio-fuzz`: a time-bounded fuzzer of a running sio-cluster (`make fuzz`, and a short run in
//! `make test` through `tests/tests/fuzz.rs`).
//!
//! Workers send random and mutated Engine.IO / Socket.IO packets over WebSocket (frames written
//! by hand: fragmented, unmasked, reserved opcodes, lying lengths) and long-polling (bodies with
//! binary attachments, huge bodies, bad UTF-8, deep JSON, wrong namespaces, acks with huge
//! ids, forged sids, concurrent polls), malformed request heads (huge headers, bad query
//! strings, half-sent heads) and `/api/emit` / `/api/notify` bodies, at a node directly and
//! through sio-proxy. Meanwhile well-behaved clients in one room (WebSocket at the node,
//! polling and WebSocket through the proxy) exchange numbered messages.
//!
//! Verdict (exit 1 when a check fails, the JSON report says which): every watched process is
//! alive at the end, its RSS grew by less than `--rss-growth-mib` over the run and by less than
//! `--rss-late-growth-mib` after the first third (a leak keeps growing), and every well-behaved
//! client received every acknowledged message exactly once and stayed connected.
//!
//! Inputs come from one RNG per case, seeded from the run's seed, the worker and the case
//! number: the seed is printed, and `--seed` (`FUZZ_SEED`) sends every case again with the same
//! inputs (case n of worker w in the report's `last_cases` included), whatever the servers
//! answered before it; only the interleaving of the workers may differ.
//!
//! ```text
//! sio-fuzz --node 127.0.0.1:3001 --proxy 127.0.0.1:4000 --seconds 60 \
//!     --watch node-1=1234 --watch proxy=1240 --report fuzz.json
//! ```
//!
//! Modules: `inputs` (inputs), `cases` (one hostile conversation), `bystander` (the well-behaved
//! clients); `client`, `polling`, `ws` and `target` are sio-load's (the same files).

mod bystander;
mod cases;
#[allow(dead_code)]
#[path = "../sio-load/client.rs"]
mod client;
mod inputs;
#[allow(dead_code)]
#[path = "../sio-load/polling.rs"]
mod polling;
#[allow(dead_code)]
#[path = "../sio-load/procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "../sio-load/target.rs"]
mod target;
#[allow(dead_code)]
#[path = "../sio-load/ws.rs"]
mod ws;

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::watch;

use crate::bystander::{Member, Seen, Sent, lock};
use crate::cases::{Ctx, Kind, Trace, Via};
use crate::client::Transport;
use crate::inputs::Keys;
use crate::target::Target;

/// Default run length of `make fuzz`.
const DEFAULT_SECONDS: u64 = 120;
/// Longest a single case may take.
const CASE_TIMEOUT: Duration = Duration::from_secs(8);
/// Cases remembered for the report (the last ones before the end or a failure).
const LAST_CASES: usize = 300;

/// Fuzzes a running node (and proxy) for a bounded time; see the crate docs.
#[derive(Parser, Debug)]
#[command(name = "sio-fuzz", version)]
struct Args {
    /// A node's address (cases go to it directly).
    #[arg(long)]
    node: SocketAddr,
    /// sio-proxy's client address (cases go through it too).
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// How long to fuzz.
    #[arg(long, env = "FUZZ_SECONDS", default_value_t = DEFAULT_SECONDS)]
    seconds: u64,
    /// Seed of the inputs (random when not given; printed either way).
    #[arg(long, env = "FUZZ_SEED")]
    seed: Option<u64>,
    /// Concurrent fuzz workers.
    #[arg(long, env = "FUZZ_WORKERS", default_value_t = 8)]
    workers: usize,
    /// Source addresses of the fuzz traffic: 127.0.0.2 … 127.0.0.(1+N) (the well-behaved
    /// clients use 127.0.0.1).
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// The nodes' HS256 secret (the well-behaved clients need valid tokens).
    #[arg(long, env = "SIO_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The nodes' API key.
    #[arg(long, env = "SIO_API_KEY", hide_env_values = true)]
    api_key: String,
    /// A process to watch, `name=pid` (repeatable): it must stay alive with bounded RSS.
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
    /// Largest RSS growth of a watched process from before the run to its end, MiB.
    #[arg(long, default_value_t = 64)]
    rss_growth_mib: u64,
    /// Largest RSS growth of a watched process from the end of the first third of the run to
    /// its end, MiB (allocators keep what a burst took; a leak keeps growing).
    #[arg(long, default_value_t = 32)]
    rss_late_growth_mib: u64,
    /// Where to write the JSON report (stdout gets it too).
    #[arg(long)]
    report: Option<PathBuf>,
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("give name=pid")?;
    Ok((
        name.to_owned(),
        pid.parse().map_err(|e| format!("{pid}: {e}"))?,
    ))
}

/// Counters of the run.
#[derive(Default)]
struct Tally {
    cases: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
    last: VecDeque<String>,
}

/// RSS of one watched process at the three points of the run.
#[derive(Debug, Serialize)]
struct Memory {
    name: String,
    pid: u32,
    alive: bool,
    baseline_mib: f64,
    warm_mib: f64,
    end_mib: f64,
    peak_mib: f64,
}

/// One check of the verdict.
#[derive(Debug, Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Report {
    seed: u64,
    seconds: u64,
    cases_total: u64,
    cases: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
    sent: Sent,
    clients: Vec<Seen>,
    memory: Vec<Memory>,
    checks: Vec<Check>,
    ok: bool,
    last_cases: Vec<String>,
}

/// SplitMix64's finaliser: well-spread seeds from consecutive numbers.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|st| st != "Z")
        })
        .unwrap_or(false)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &text).with_context(|| format!("write {}", path.display()))?;
    }
    println!("{text}");
    for c in report.checks.iter().filter(|c| !c.ok) {
        eprintln!("sio-fuzz: FAILED {}: {}", c.name, c.detail);
    }
    eprintln!(
        "sio-fuzz: seed {} ({} cases): {} (reproduce with FUZZ_SEED={})",
        report.seed,
        report.cases_total,
        if report.ok { "ok" } else { "FAILED" },
        report.seed
    );
    std::process::exit(if report.ok { 0 } else { 1 });
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!(
        "sio-fuzz: seed {seed} (FUZZ_SEED={seed} replays these inputs), {} s",
        args.seconds
    );
    let keys = Keys {
        jwt_secret: args.jwt_secret.clone(),
        api_key: args.api_key.clone(),
    };
    let ctx = Ctx {
        keys: keys.clone(),
        node: args.node,
        proxy: args.proxy,
    };

    // The well-behaved clients, in a room no fuzz input names.
    let room = format!("bystander-{seed:016x}");
    let token = inputs::good_token(&keys, "bystander", &[room.as_str()]);
    let node = Target {
        addr: args.node,
        path: "/socket.io/".into(),
    };
    let front = Target {
        addr: args.proxy.unwrap_or(args.node),
        path: "/socket.io/".into(),
    };
    let sender = Member::join(
        "sender-ws-front",
        Transport::Websocket,
        &front,
        &token,
        &room,
    )
    .await
    .context("the sender could not join")?;
    let mut receivers = Vec::new();
    for (name, transport, target) in [
        ("ws-node", Transport::Websocket, &node),
        ("polling-node", Transport::Polling, &node),
        ("polling-front", Transport::Polling, &front),
    ] {
        let m = Member::join(name, transport, target, &token, &room)
            .await
            .with_context(|| format!("{name} could not join"))?;
        receivers.push(m);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_send_tx, stop_send_rx) = watch::channel(false);
    let sent = Arc::new(Mutex::new(Sent::default()));
    let mut seens = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for m in receivers {
        let seen = Arc::new(Mutex::new(Seen::default()));
        seens.push(seen.clone());
        tasks.spawn(m.receive(seen, stop_rx.clone()));
    }
    let sender_seen = Arc::new(Mutex::new(Seen::default()));
    seens.push(sender_seen.clone());
    tasks.spawn(sender.send(sender_seen, sent.clone(), stop_send_rx, stop_rx.clone()));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = |pid| procfs::rss_bytes(pid);
    let baseline: Vec<u64> = args.watch.iter().map(|(_, p)| rss(*p)).collect();
    let mut peak = baseline.clone();

    // The fuzz workers.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..args.workers {
        let ctx = ctx.clone();
        let tally = tally.clone();
        let source = SocketAddr::from((
            Ipv4Addr::new(127, 0, 0, 2 + (w % usize::from(args.sources.max(1))) as u8),
            0,
        ));
        let worker_seed = seed
            .wrapping_add(w as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        workers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                // One RNG per case: case n of worker w gets the same inputs on a replay,
                // whatever the servers answered to the cases before it.
                let mut rng = StdRng::seed_from_u64(splitmix(worker_seed ^ n));
                let via = if ctx.proxy.is_some() && rng.random_bool(0.5) {
                    Via::Proxy
                } else {
                    Via::Node
                };
                let kind = Kind::pick(&mut rng);
                let mut trace = Trace::default();
                let outcome = tokio::time::timeout(
                    CASE_TIMEOUT,
                    cases::run(&ctx, &mut rng, via, kind, source, &mut trace),
                )
                .await
                .unwrap_or_else(|_| "case timed out".into());
                let mut t = lock(&tally);
                *t.cases.entry(format!("{kind:?} via {via:?}")).or_default() += 1;
                *t.outcomes.entry(outcome.clone()).or_default() += 1;
                if t.last.len() == LAST_CASES {
                    t.last.pop_front();
                }
                t.last.push_back(format!(
                    "worker {w} case {n} {kind:?} via {via:?} -> {outcome}\n    {}",
                    trace.lines.join("\n    ")
                ));
            }
        });
    }

    // Memory while it runs: the first third is the warm-up.
    let warm_at = start + Duration::from_secs(args.seconds) / 3;
    let mut warm = None;
    let mut last_progress = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, (_, pid)) in args.watch.iter().enumerate() {
            peak[i] = peak[i].max(rss(*pid));
        }
        if warm.is_none() && Instant::now() >= warm_at {
            warm = Some(args.watch.iter().map(|(_, p)| rss(*p)).collect::<Vec<_>>());
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            let cases: u64 = lock(&tally).cases.values().sum();
            let (attempted, acked) = {
                let s = lock(&sent);
                (s.attempted, s.acked_count)
            };
            eprintln!(
                "sio-fuzz: {:.0} s, {cases} cases, {attempted} messages sent, {acked} acknowledged",
                start.elapsed().as_secs_f64(),
            );
        }
    }
    while workers.join_next().await.is_some() {}

    // Let the last messages arrive, then stop the clients.
    let _ = stop_send_tx.send(true);
    let settle = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let acked = lock(&sent).acked.clone();
        let done = seens.iter().all(|s| {
            let s = lock(s);
            s.ended.is_some() || acked.iter().all(|n| s.received.contains(n))
        });
        if done && Instant::now() > deadline + Duration::from_secs(2) || Instant::now() > settle {
            break;
        }
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The verdict.
    let warm = warm.unwrap_or_else(|| baseline.clone());
    let mut memory = Vec::new();
    let mut checks = Vec::new();
    for (i, (name, pid)) in args.watch.iter().enumerate() {
        let end = rss(*pid);
        let m = Memory {
            name: name.clone(),
            pid: *pid,
            alive: alive(*pid),
            baseline_mib: mib(baseline[i]),
            warm_mib: mib(warm[i]),
            end_mib: mib(end),
            peak_mib: mib(peak[i].max(end)),
        };
        checks.push(Check {
            name: format!("{name} alive"),
            ok: m.alive,
            detail: format!("pid {pid}"),
        });
        let growth = end.saturating_sub(baseline[i]);
        checks.push(Check {
            name: format!("{name} RSS growth"),
            ok: m.alive && growth <= args.rss_growth_mib << 20,
            detail: format!(
                "{:.1} MiB -> {:.1} MiB (+{:.1}, bound {} MiB)",
                m.baseline_mib,
                m.end_mib,
                mib(growth),
                args.rss_growth_mib
            ),
        });
        let late = end.saturating_sub(warm[i]);
        checks.push(Check {
            name: format!("{name} RSS late growth"),
            ok: m.alive && late <= args.rss_late_growth_mib << 20,
            detail: format!(
                "{:.1} MiB after the first third -> {:.1} MiB (+{:.1}, bound {} MiB)",
                m.warm_mib,
                m.end_mib,
                mib(late),
                args.rss_late_growth_mib
            ),
        });
        memory.push(m);
    }
    let sent = lock(&sent).clone();
    checks.push(Check {
        name: "messages acknowledged".into(),
        ok: sent.acked_count > 0 && sent.refused.is_empty(),
        detail: format!(
            "{} sent, {} acknowledged, refused: {:?}",
            sent.attempted, sent.acked_count, sent.refused
        ),
    });
    let clients: Vec<Seen> = seens.iter().map(|s| lock(s).clone()).collect();
    for c in &clients {
        let problem = bystander::missing(c, &sent.acked);
        checks.push(Check {
            name: format!("{} received everything", c.name),
            ok: problem.is_none(),
            detail: problem.unwrap_or_else(|| {
                format!("{} of {} received", c.received_count, sent.acked_count)
            }),
        });
    }
    let t = lock(&tally);
    let cases_total = t.cases.values().sum();
    checks.push(Check {
        name: "every kind of case ran".into(),
        ok: Kind::ALL
            .iter()
            .all(|k| t.cases.keys().any(|c| c.starts_with(&format!("{k:?} ")))),
        detail: format!("{cases_total} cases"),
    });
    let ok = checks.iter().all(|c| c.ok);
    Ok(Report {
        seed,
        seconds: args.seconds,
        cases_total,
        cases: t.cases.clone(),
        outcomes: t.outcomes.clone(),
        sent,
        clients,
        memory,
        checks,
        ok,
        last_cases: t.last.iter().cloned().collect(),
    })
}
