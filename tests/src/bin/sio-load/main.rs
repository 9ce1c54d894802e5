//! `sio-load`: the load generator of `make bench`.
//!
//! Speaks Engine.IO v4 / Socket.IO v5 itself over WebSocket or HTTP long-polling (no client
//! library, so it costs less than the servers it measures), spreads its clients over several
//! `127.0.0.x` source addresses and several worker processes (each process may hold at most
//! 20,000 descriptors here), joins them to rooms, sends `room-message`s at a fixed open-loop
//! rate with the send time in the payload, records every delivery's latency in an HDR
//! histogram and writes a JSON report. Servers must accept `auth.userId` (sio-node with
//! `--auth none --room-auth open`, or the Node baseline under `bench/baselines/node`).
//!
//! ```text
//! sio-load run --url http://127.0.0.1:3000/socket.io/ --clients 1000 --room-size 1000 \
//!     --rates 50000,100000,200000 --json fanout.json
//! sio-load run --url http://127.0.0.1:3000/ --idle-steps 1000,5000,9000 --rss-pids 1234
//! ```
//!
//! Modules: `coordinator` (the run), `worker` (one process's clients), `plan` (what the two
//! share and say to each other), `client` (a Socket.IO session), `ws` and `polling` (the
//! transports), `target` (addresses), `procfs` (RSS, CPU, descriptors), `report` (the JSON report).

mod client;
mod coordinator;
mod plan;
mod polling;
mod procfs;
mod report;
mod target;
mod worker;
mod ws;

use clap::{Parser, Subcommand};

/// Engine.IO / Socket.IO load generator (see the crate docs).
#[derive(Parser, Debug)]
#[command(name = "sio-load", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Run a measurement and print its JSON report.
    Run(Box<coordinator::RunArgs>),
    /// A worker process (started by `run`).
    #[command(hide = true)]
    Worker {
        /// This worker's index.
        #[arg(long)]
        index: usize,
        /// The run's plan, as JSON.
        #[arg(long)]
        plan: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Run(args) => {
            let report = coordinator::run(&args)?;
            let text = serde_json::to_string_pretty(&report)?;
            if let Some(path) = &args.json {
                std::fs::write(path, &text)?;
            }
            println!("{text}");
            Ok(())
        }
        Mode::Worker { index, plan } => worker::main(serde_json::from_str(&plan)?, index),
    }
}
