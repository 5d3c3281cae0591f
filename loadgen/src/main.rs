//! loadgen: the publish tool and load generator of tickwire.
//!
//! - `publish`: a few realistic messages, one line each, to watch arrive.
//! - `bench`: subscribers and paced publishers; throughput, latency
//!   (corrected for coordinated omission), loss, order, CPU per delivery.
//! - `idle`: many idle subscribed connections; memory and CPU they cost.
//!
//! It only ever talks to loopback addresses (see `target`), and every run is
//! bounded in count and time.

mod bench;
mod client;
mod counters;
mod idle;
mod jwt;
mod messages;
mod mpscan;
mod pacing;
mod progress;
mod publish;
mod publisher;
mod report;
mod resp;
mod scan;
mod seqcheck;
mod stats;
mod subscriber;
mod sys;
mod target;
mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Publish tool and load generator for tickwire (loopback only)"
)]
struct Cli {
    /// Runtime worker threads (default: one per core)
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish realistic test messages, one line per message
    Publish(publish::PublishArgs),
    /// Measure throughput, latency and correctness under load
    Bench(bench::BenchArgs),
    /// Hold many idle subscribed connections and measure what they cost
    Idle(idle::IdleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Publish(args) => publish::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Idle(args) => idle::run(args).await,
        }
    });
    // Subscriber tasks may still be closing; do not wait on them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
