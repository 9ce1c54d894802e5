//! The coordinator: spawns the worker processes, drives them through the run (connect,
//! idle-memory steps, a reconnect storm, a ladder of fan-out rates), merges their histograms
//! and writes the JSON report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::client::Transport;
use crate::plan::{Answer, Command, Plan};
use crate::procfs;
use crate::report::{IdlePoint, Percentiles, Report, Step, Storm};
use crate::stats::{self, StatsUrl};
use crate::target::Target;
use crate::worker::{histogram, unix_nanos};

/// Open files one worker may use for its clients (the hard limit here is 20,000).
const FDS_PER_WORKER: usize = 15_000;

/// Options of `sio-load run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Socket.IO endpoints, comma-separated or repeated; client i uses the (i mod n)-th.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<Target>,
    /// Transport of every client (no upgrade).
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    /// Clients to connect (fan-out and storm).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Members per room (the first one sends); 0 joins no room.
    #[arg(long, default_value_t = 0)]
    pub room_size: usize,
    /// Fan-out ladder: deliveries per second to try, in order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Send window of each ladder step.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub step_duration: Duration,
    /// Longest wait for the last deliveries of a step.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// A step fails above this p99 (or on any loss); the ladder stops at the first failure.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub max_p99: Duration,
    /// Run every rate even after a failing step.
    #[arg(long)]
    pub keep_going: bool,
    /// Idle capacity: connection counts to reach one after another (clients join no room).
    #[arg(long, value_delimiter = ',')]
    pub idle_steps: Vec<usize>,
    /// Pause before reading memory (idle steps) or sending (ladder).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Processes whose RSS (with their children) counts as the system's memory.
    #[arg(long, value_delimiter = ',')]
    pub rss_pids: Vec<u32>,
    /// Processes whose CPU time (with their children) counts as the system's CPU.
    #[arg(long, value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
    /// Reconnect storm: SIGKILL the one of these holding most descriptors, then time the
    /// clients' reconnection (implies --reconnect).
    #[arg(long, value_delimiter = ',')]
    pub storm_pids: Vec<u32>,
    /// Longest wait for a storm to settle.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub storm_timeout: Duration,
    /// Reconnect lost sessions with socket.io-client's back-off.
    #[arg(long)]
    pub reconnect: bool,
    /// Worker processes (default: enough for 15,000 descriptors each, at least 2).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Tokio threads per worker.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Loopback source addresses to spread clients over (127.0.0.2 …).
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// Source address of every member of room r: the (r mod n)-th of these (comma-separated
    /// loopback IPv4 addresses), instead of --sources. A proxy that hashes the client address
    /// then keeps a room's members on one node.
    #[arg(long, value_delimiter = ',')]
    pub room_sources: Vec<Ipv4Addr>,
    /// Prometheus endpoints (loopback) read before and after every step; the report gives the
    /// differences of the samples named by --stats-prefix.
    #[arg(long = "stats-url", value_delimiter = ',')]
    pub stats_urls: Vec<StatsUrl>,
    /// Metric name prefixes kept from --stats-url (e.g. `sio_adapter_messages_`).
    #[arg(long, value_delimiter = ',')]
    pub stats_prefix: Vec<String>,
    /// Connection attempts in flight per worker.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Where to write the JSON report (also printed on stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Free text stored in the report (system, scenario).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Prefix of the user ids (default: unique per run, since sio-node remembers each user's
    /// rooms and would restore them into the next run).
    #[arg(long)]
    pub user_prefix: Option<String>,
}

/// A worker process, killed on drop.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Workers(Vec<Worker>);

impl Workers {
    fn spawn(plan: &Plan) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let plan_json = serde_json::to_string(plan)?;
        let mut workers = Vec::new();
        for index in 0..plan.workers {
            let mut child = Process::new(&exe)
                .args([
                    "worker",
                    "--index",
                    &index.to_string(),
                    "--plan",
                    &plan_json,
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawn a worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
            workers.push(Worker {
                child,
                stdin,
                stdout,
            });
        }
        Ok(Workers(workers))
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(|w| w.child.id()).collect()
    }

    /// Sends `command` to every worker, then reads every answer.
    fn all(&mut self, command: &Command) -> anyhow::Result<Vec<Answer>> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        for w in &mut self.0 {
            w.stdin.write_all(line.as_bytes())?;
            w.stdin.flush()?;
        }
        let mut answers = Vec::with_capacity(self.0.len());
        for w in &mut self.0 {
            let mut text = String::new();
            if w.stdout.read_line(&mut text)? == 0 {
                bail!("a worker exited (see its messages above)");
            }
            answers.push(serde_json::from_str(&text).context("worker answer")?);
        }
        Ok(answers)
    }
}

fn sum(answers: &[Answer], f: impl Fn(&Answer) -> u64) -> u64 {
    answers.iter().map(f).sum()
}

/// Runs the whole measurement and returns the report.
pub fn run(args: &RunArgs) -> anyhow::Result<Report> {
    ensure!(!args.urls.is_empty(), "give at least one --url");
    let joins = args.room_size > 0;
    if joins {
        ensure!(
            args.clients.is_multiple_of(args.room_size),
            "--clients ({}) must be a multiple of --room-size ({})",
            args.clients,
            args.room_size
        );
    }
    ensure!(
        args.room_sources.iter().all(|a| a.is_loopback()),
        "--room-sources: loopback addresses only (127.x.y.z)"
    );
    ensure!(
        args.idle_steps.is_empty() || !joins,
        "idle steps connect clients that join no room: use --room-size 0"
    );
    let most = args
        .idle_steps
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(args.clients);
    let fds = match args.transport {
        Transport::Websocket => 1,
        Transport::Polling => 2,
    };
    let workers = args
        .workers
        .unwrap_or_else(|| (most * fds).div_ceil(FDS_PER_WORKER).max(2));
    let plan = Plan {
        targets: args.urls.clone(),
        transport: args.transport,
        room_size: args.room_size,
        sources: args.sources,
        room_sources: args.room_sources.clone(),
        connect_concurrency: args.connect_concurrency,
        reconnect: args.reconnect || !args.storm_pids.is_empty(),
        workers,
        threads: args.threads,
        user_prefix: args.user_prefix.clone().unwrap_or_else(|| {
            format!("u{}-{}-", std::process::id(), unix_nanos() % 1_000_000_000)
        }),
    };
    let ticks = procfs::clock_ticks();
    let mut workers = Workers::spawn(&plan)?;
    let mut report = Report {
        label: args.label.clone(),
        transport: args.transport.name(),
        targets: args
            .urls
            .iter()
            .map(|t| format!("http://{}{}", t.addr, t.path))
            .collect(),
        clients: args.clients,
        room_size: args.room_size,
        workers: plan.workers,
        connected: 0,
        connect_failed: 0,
        connect_secs: 0.0,
        first_error: None,
        idle: Vec::new(),
        storm: None,
        steps: Vec::new(),
        max_passing_deliveries_per_sec: 0.0,
    };

    if !args.idle_steps.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
        let base_by_pid = rss_by_pid(&args.rss_pids);
        let base: u64 = base_by_pid.values().sum();
        for &n in &args.idle_steps {
            let started = Instant::now();
            let answers = workers.all(&Command::Grow { total: n })?;
            report.connect_secs += started.elapsed().as_secs_f64();
            std::thread::sleep(args.settle);
            let answers = workers.all(&Command::Count).unwrap_or(answers);
            let connected: i64 = answers.iter().map(|a| a.connected).sum();
            let by_pid = rss_by_pid(&args.rss_pids);
            let rss: u64 = by_pid.values().sum();
            eprintln!(
                "idle {n}: {connected} connected, rss {:.1} MiB",
                rss as f64 / 1048576.0
            );
            report.connect_failed = sum(&answers, |a| a.failed);
            report.first_error = answers.iter().find_map(|a| a.error.clone());
            report.connected = connected;
            report.idle.push(IdlePoint {
                connections: n,
                connected,
                rss_bytes: rss,
                base_rss_bytes: base,
                rss_per_connection_bytes: rss as f64 / connected.max(1) as f64,
                delta_rss_per_connection_bytes: (rss as f64 - base as f64)
                    / connected.max(1) as f64,
                rss_by_pid: by_pid,
                base_rss_by_pid: base_by_pid.clone(),
            });
        }
        report.clients = args.idle_steps.iter().copied().max().unwrap_or(0);
    }

    if args.clients > 0 && (!args.rates.is_empty() || !args.storm_pids.is_empty()) {
        let started = Instant::now();
        let answers = workers.all(&Command::Grow {
            total: args.clients,
        })?;
        report.connect_secs = started.elapsed().as_secs_f64();
        report.connected = answers.iter().map(|a| a.connected).sum();
        report.connect_failed = sum(&answers, |a| a.failed);
        report.first_error = answers.iter().find_map(|a| a.error.clone());
        eprintln!(
            "{}: {} of {} clients connected in {:.1}s{}",
            args.label,
            report.connected,
            args.clients,
            report.connect_secs,
            report
                .first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
        std::thread::sleep(args.settle);
    }

    if !args.storm_pids.is_empty() {
        report.storm = Some(storm(args, &mut workers)?);
    }

    let rooms = args.clients.checked_div(args.room_size).unwrap_or(0);
    for (k, &rate) in args.rates.iter().enumerate() {
        ensure!(joins, "a fan-out ladder needs --room-size");
        let step = run_step(args, &mut workers, k as u64 + 1, rate, rooms, ticks)?;
        eprintln!(
            "{}: target {:.0}/s -> {:.0} deliveries/s, p50 {:.2} p99 {:.2} p999 {:.2} ms, lost {}{}",
            args.label,
            rate,
            step.deliveries_per_sec,
            step.latency.p50_ms,
            step.latency.p99_ms,
            step.latency.p999_ms,
            step.lost,
            step.fail_reason
                .as_deref()
                .map(|r| format!(" FAIL: {r}"))
                .unwrap_or_default()
        );
        let pass = step.pass;
        if pass {
            report.max_passing_deliveries_per_sec = report
                .max_passing_deliveries_per_sec
                .max(step.deliveries_per_sec);
        }
        report.steps.push(step);
        if !pass && !args.keep_going {
            break;
        }
    }
    let _ = workers.all(&Command::Quit);
    Ok(report)
}

fn rss_by_pid(pids: &[u32]) -> BTreeMap<u32, u64> {
    pids.iter()
        .map(|p| (*p, procfs::rss_of_trees(&[*p])))
        .collect()
}

fn cpu_by_pid(pids: &[u32], ticks: f64) -> BTreeMap<u32, f64> {
    pids.iter()
        .map(|p| (*p, procfs::cpu_of_trees(&[*p], ticks)))
        .collect()
}

/// Every `--stats-url`, read now.
fn scrape_all(args: &RunArgs) -> anyhow::Result<Vec<BTreeMap<String, f64>>> {
    args.stats_urls
        .iter()
        .map(|u| stats::scrape(u, &args.stats_prefix))
        .collect()
}

fn run_step(
    args: &RunArgs,
    workers: &mut Workers,
    id: u64,
    rate: f64,
    rooms: usize,
    ticks: f64,
) -> anyhow::Result<Step> {
    let broadcasts = rate / args.room_size as f64;
    let per_room_rate = broadcasts / rooms.max(1) as f64;
    let generator = workers.pids();
    let stats_before = scrape_all(args)?;
    let cpu_by_pid_before = cpu_by_pid(&args.cpu_pids, ticks);
    let cpu_before = procfs::cpu_of_trees(&args.cpu_pids, ticks);
    let gen_before = procfs::cpu_of_trees(&generator, ticks);
    let start = unix_nanos() + 200_000_000;
    let duration_ms = args.step_duration.as_millis() as u64;
    workers.all(&Command::Step {
        id,
        per_room_rate,
        start_unix_ns: start,
        duration_ms,
        rooms,
    })?;
    std::thread::sleep(Duration::from_millis(200) + args.step_duration);
    // Drain: until every expected delivery arrived, or nothing new came for 500 ms.
    let drain_end = Instant::now() + args.drain_timeout;
    let mut last = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let answers = workers.all(&Command::Count)?;
        let sent = sum(&answers, |a| a.sent);
        let received = sum(&answers, |a| a.received);
        if received >= sent * args.room_size as u64 || Instant::now() > drain_end {
            break;
        }
        if received != last.0 {
            last = (received, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
    }
    let answers = workers.all(&Command::Collect)?;
    let cpu = procfs::cpu_of_trees(&args.cpu_pids, ticks) - cpu_before;
    let cpu_by_pid = cpu_by_pid(&args.cpu_pids, ticks)
        .into_iter()
        .map(|(pid, secs)| {
            (
                pid,
                secs - cpu_by_pid_before.get(&pid).copied().unwrap_or(0.0),
            )
        })
        .collect();
    let stats_after = scrape_all(args)?;
    let stats = stats_before
        .iter()
        .zip(&stats_after)
        .zip(&args.stats_urls)
        .map(|((before, after), url)| (url.to_string(), stats::delta(before, after)))
        .collect();
    let stats_after = args
        .stats_urls
        .iter()
        .map(ToString::to_string)
        .zip(stats_after)
        .collect();
    let gen_cpu = procfs::cpu_of_trees(&generator, ticks) - gen_before;
    let mut all = histogram();
    let mut same = histogram();
    let mut other = histogram();
    for a in &answers {
        for &(v, c) in &a.local {
            let _ = same.record_n(v, c);
            let _ = all.record_n(v, c);
        }
        for &(v, c) in &a.remote {
            let _ = other.record_n(v, c);
            let _ = all.record_n(v, c);
        }
    }
    let sent = sum(&answers, |a| a.sent);
    let received = sum(&answers, |a| a.received);
    let expected = sent * args.room_size as u64;
    let lost = expected.saturating_sub(received);
    let send_errors = sum(&answers, |a| a.send_errors);
    let connected: i64 = answers.iter().map(|a| a.connected).sum();
    let window = args.step_duration.as_secs_f64();
    let planned = broadcasts * window;
    let latency = Percentiles::of(&all);
    let fail_reason = if connected < args.clients as i64 {
        Some(format!(
            "{} clients disconnected",
            args.clients as i64 - connected
        ))
    } else if send_errors > 0 {
        Some(format!("{send_errors} sends failed"))
    } else if received > expected {
        Some(format!(
            "{} deliveries more than sent x room size (a client in a room it did not join?)",
            received - expected
        ))
    } else if lost > 0 {
        Some(format!("{lost} of {expected} deliveries lost"))
    } else if (sent as f64) < planned * 0.9 {
        Some(format!("only {sent} of {planned:.0} messages sent on time"))
    } else if latency.p99_ms > args.max_p99.as_secs_f64() * 1000.0 {
        Some(format!(
            "p99 {:.1} ms > {:.0} ms",
            latency.p99_ms,
            args.max_p99.as_secs_f64() * 1000.0
        ))
    } else {
        None
    };
    let several = args.urls.len() > 1;
    Ok(Step {
        target_deliveries_per_sec: rate,
        broadcasts_per_sec: broadcasts,
        send_window_secs: window,
        sent,
        expected,
        received,
        lost,
        stale: sum(&answers, |a| a.stale),
        send_errors,
        connected,
        deliveries_per_sec: received as f64 / window,
        latency,
        same_node: several.then(|| Percentiles::of(&same)),
        other_node: several.then(|| Percentiles::of(&other)),
        system_cpu_secs: cpu,
        cpu_secs_by_pid: cpu_by_pid,
        stats,
        stats_after,
        generator_cpu_secs: gen_cpu,
        cpu_secs_per_1000_deliveries: if received > 0 {
            cpu * 1000.0 / received as f64
        } else {
            0.0
        },
        pass: fail_reason.is_none(),
        fail_reason,
    })
}

fn storm(args: &RunArgs, workers: &mut Workers) -> anyhow::Result<Storm> {
    let Some((victim, victim_fds)) = args
        .storm_pids
        .iter()
        .map(|p| (*p, procfs::open_fds(*p)))
        .max_by_key(|(_, fds)| *fds)
    else {
        bail!("no --storm-pids");
    };
    let before = workers.all(&Command::Count)?;
    let disconnects_before = sum(&before, |a| a.disconnects);
    let n = args.clients as f64;
    let status = Process::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()?;
    ensure!(status.success(), "could not kill {victim}");
    let killed = Instant::now();
    let mut min_connected = i64::MAX;
    let mut to_99 = None;
    let mut to_100 = None;
    let mut dipped = false;
    let mut disconnected = 0;
    while killed.elapsed() < args.storm_timeout {
        std::thread::sleep(Duration::from_millis(20));
        let answers = workers.all(&Command::Count)?;
        let connected: i64 = answers.iter().map(|a| a.connected).sum();
        disconnected = sum(&answers, |a| a.disconnects) - disconnects_before;
        min_connected = min_connected.min(connected);
        dipped |= (connected as f64) < 0.99 * n;
        if dipped && to_99.is_none() && connected as f64 >= 0.99 * n {
            to_99 = Some(killed.elapsed().as_secs_f64());
        }
        if dipped && connected as f64 >= n {
            to_100 = Some(killed.elapsed().as_secs_f64());
            break;
        }
        if !dipped && killed.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    eprintln!(
        "{}: storm killed pid {victim} ({victim_fds} fds): {disconnected} sessions lost, 99 % back after {:?} s, all after {:?} s",
        args.label, to_99, to_100
    );
    Ok(Storm {
        clients: args.clients,
        victim_pid: victim,
        victim_fds,
        disconnected,
        min_connected,
        secs_to_99_percent: to_99,
        secs_to_100_percent: to_100,
    })
}
