//! `loadgen idle`: what an idle subscribed connection costs the server.
//! Opens N connections (market-data by default, one symbol each, round-robin; `--endpoint` for the others and protocol 1.1's `/ws/stream/`), spread
//! over source addresses 127.0.0.1, 127.0.0.2, ... so that each address's
//! ephemeral ports suffice; then reads the server's RSS and the kernel's TCP
//! memory against the figures from before, holds the connections idle for
//! `--hold` seconds while measuring the server's CPU, and closes them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::bench::{subscriber_request, OPEN_TIMEOUT};
use crate::client;
use crate::jwt::{self, Claims};
use crate::messages::bench_symbol;
use crate::pacing::Clock;
use crate::progress::Progress;
use crate::report::{self, bytes, count};
use crate::subscriber::{Role, RunClock, Subscriber};
use crate::sys::{self, Pid};
use crate::target::{source_address, Target};

const MAX_HOLD_S: u64 = 3600;
/// An idle connection reads almost nothing: a small buffer keeps loadgen's
/// own memory from dwarfing the server's.
const IDLE_READ_BUFFER: usize = 4 * 1024;
/// Let the server's allocator settle before reading its RSS.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Server base URL
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// HS256 secret of the subscribers' tokens
    #[arg(long, env = "TICKWIRE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Connections to open
    #[arg(long, default_value_t = 10_000)]
    connections: u32,
    /// Symbols, named SYM000, ...; one per connection, round-robin
    #[arg(long, default_value_t = 100)]
    symbols: u32,
    /// PID of the tickwire process to measure
    #[arg(long)]
    server_pid: u32,
    /// Seconds to hold the connections idle (at most 3600)
    #[arg(long, default_value_t = 30)]
    hold: u64,
    /// Connections per source address (127.0.0.1, 127.0.0.2, ...)
    #[arg(long, default_value_t = 25_000)]
    per_source: u32,
    /// Connections opening at once
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Give up connecting after this many failed connections
    #[arg(long, default_value_t = 100)]
    max_errors: u64,
    /// Seconds allowed for opening all connections
    #[arg(long, default_value_t = 600)]
    connect_timeout: u64,
    /// Write a JSON summary to this file (`-` for stdout)
    #[arg(long)]
    json: Option<String>,
    /// Which socket each connection is: `market-data` (subscribed to one
    /// symbol), `trading-signals`, `notifications`, or `stream` (protocol
    /// 1.1's one socket carrying all three, subscribed to one symbol)
    #[arg(long, value_enum, default_value_t = IdleEndpoint::MarketData)]
    endpoint: IdleEndpoint,
    /// Every connection offers permessage-deflate (and fails unless the
    /// server agrees): what an idle compressing socket costs
    #[arg(long)]
    deflate: bool,
}

/// The socket `loadgen idle` opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleEndpoint {
    MarketData,
    TradingSignals,
    Notifications,
    Stream,
}

/// How one connection's opening went.
enum Outcome {
    Open,
    Failed(String),
    /// Not tried: loadgen had given up connecting.
    Skipped,
}

#[derive(Debug, Serialize)]
pub struct IdleSummary {
    url: String,
    endpoint: IdleEndpoint,
    deflate: bool,
    requested: u32,
    connected: u64,
    failed: u64,
    first_error: Option<String>,
    source_addresses: u32,
    connect_s: f64,
    server_rss_bytes_before: u64,
    server_rss_bytes_after: u64,
    server_rss_bytes_per_connection: Option<f64>,
    /// Both ends of every loopback connection (loadgen's and the server's).
    tcp_mem_bytes_before: u64,
    tcp_mem_bytes_after: u64,
    tcp_mem_bytes_per_connection: Option<f64>,
    hold_s: f64,
    server_cpu_s_during_hold: f64,
    /// CPU milliseconds per second of holding: 10 = 1 % of one core.
    server_cpu_ms_per_s: f64,
    server_rss_bytes_end_of_hold: u64,
    closed_by_server: u64,
    loadgen_rss_bytes: u64,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    if !(1..=MAX_HOLD_S).contains(&args.hold) {
        bail!("--hold must be between 1 and {MAX_HOLD_S} seconds");
    }
    if args.connections == 0 || args.symbols == 0 || args.per_source == 0 {
        bail!("--connections, --symbols and --per-source must be at least 1");
    }
    if !(1..=10_000).contains(&args.connect_concurrency) {
        bail!("--connect-concurrency must be between 1 and 10000");
    }
    if !(1..=3600).contains(&args.connect_timeout) {
        bail!("--connect-timeout must be between 1 and 3600 seconds");
    }
    let target = Target::parse(&args.url, 8000)?;
    let sources = args.connections.div_ceil(args.per_source);
    if target.addr.is_ipv6() && sources > 1 {
        bail!(
            "::1 is a single source address, good for about {} connections; \
             use an IPv4 loopback --url for more",
            args.per_source
        );
    }
    let fd_limit = sys::raise_nofile_limit()?;
    sys::check_fd_budget(u64::from(args.connections), fd_limit)?;
    let server = Pid::Other(args.server_pid);
    let rss_before = sys::rss_bytes(server).context("--server-pid")?;
    let tcp_before = sys::tcp_mem_bytes()?;
    client::check_reachable(&client::http_client()?, &target).await?;

    let clock = Clock::new();
    let run = Arc::new(RunClock {
        clock,
        run_start_epoch_ns: clock.epoch_ns(0),
        publish_end_epoch_ns: AtomicU64::new(u64::MAX),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency));
    // Relaxed everywhere: a lone flag and a counter, guarding no other data.
    let give_up = Arc::new(AtomicBool::new(false));
    let closed_by_server = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = mpsc::channel::<Outcome>(4096);
    let exp = jwt::unix_now_s() + args.connect_timeout + args.hold + 3600;
    let secret: Arc<[u8]> = Arc::from(args.jwt_secret.as_bytes());
    let started = Instant::now();
    let mut handles = Vec::with_capacity(args.connections as usize);
    for i in 0..args.connections {
        let bind = if target.addr.is_ipv4() {
            Some(source_address(i / args.per_source).context("ran out of 127.x.y.z source addresses")?)
        } else {
            None
        };
        let symbol = bench_symbol(i % args.symbols, args.symbols);
        let (target, secret, permits, give_up, done_tx, run, mut stop_rx, closed_by_server) = (
            target.clone(),
            Arc::clone(&secret),
            Arc::clone(&permits),
            Arc::clone(&give_up),
            done_tx.clone(),
            Arc::clone(&run),
            stop_rx.clone(),
            Arc::clone(&closed_by_server),
        );
        let (endpoint, deflate) = (args.endpoint, args.deflate);
        handles.push(tokio::spawn(async move {
            let opened = {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = permits.acquire_owned().await.ok();
                if give_up.load(Ordering::Relaxed) || *stop_rx.borrow_and_update() {
                    let _ = done_tx.send(Outcome::Skipped).await;
                    return;
                }
                let sub = format!("idle-{i}");
                let token = jwt::mint(
                    &secret,
                    &Claims {
                        sub: &sub,
                        exp,
                        symbols: None,
                    },
                );
                let role = match endpoint {
                    IdleEndpoint::MarketData => Role::Market { symbol },
                    IdleEndpoint::TradingSignals => Role::Signals,
                    IdleEndpoint::Notifications => Role::Notifications,
                    IdleEndpoint::Stream => Role::Stream { symbol },
                };
                let path = format!("{}?token={token}", role.path());
                Subscriber::open(
                    &subscriber_request(&target, &path, bind, IDLE_READ_BUFFER, deflate),
                    &role,
                    &run,
                    OPEN_TIMEOUT,
                )
                .await
            };
            match opened {
                Ok(sub) => {
                    let _ = done_tx.send(Outcome::Open).await;
                    if sub.run(run, stop_rx).await.closed.is_some() {
                        closed_by_server.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    let _ = done_tx.send(Outcome::Failed(format!("{e:#}"))).await;
                }
            }
        }));
    }
    drop(done_tx);

    // Connect phase.
    let progress = Progress::new("connect", u64::from(args.connections));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.connect_timeout);
    let (mut connected, mut failed, mut skipped) = (0u64, 0u64, 0u64);
    let mut first_error = None::<String>;
    while connected + failed + skipped < u64::from(args.connections) {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(Outcome::Open)) => connected += 1,
            Ok(Some(Outcome::Skipped)) => skipped += 1,
            Ok(Some(Outcome::Failed(e))) => {
                failed += 1;
                if first_error.is_none() {
                    progress.println(format!("connection failed: {e}"));
                    first_error = Some(e);
                }
                if failed >= args.max_errors && !give_up.swap(true, Ordering::Relaxed) {
                    progress.println(format!(
                        "{failed} connections failed: not opening more (--max-errors)"
                    ));
                }
            }
            Ok(None) => break,
            Err(_) => {
                progress.println(format!(
                    "--connect-timeout of {} s is over: holding what is open",
                    args.connect_timeout
                ));
                give_up.store(true, Ordering::Relaxed);
                break;
            }
        }
        progress.update(
            connected + failed,
            format!(
                "{} open, {} failed, {}/s",
                count(connected),
                count(failed),
                count((connected as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64),
            ),
        );
    }
    progress.finish();
    let connect_s = started.elapsed().as_secs_f64();

    tokio::time::sleep(SETTLE).await;
    let rss_after = sys::rss_bytes(server)?;
    let tcp_after = sys::tcp_mem_bytes()?;

    // Hold.
    let hold = Duration::from_secs(args.hold);
    let cpu_before = sys::cpu_time(server)?;
    let hold_started = Instant::now();
    let hold_progress = Progress::new("hold", args.hold);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while hold_started.elapsed() < hold {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = &mut interrupted => break,
        }
        hold_progress.update(
            hold_started.elapsed().as_secs().min(args.hold),
            format!(
                "s  {} closed by the server",
                count(closed_by_server.load(Ordering::Relaxed))
            ),
        );
    }
    hold_progress.finish();
    let hold_s = hold_started.elapsed().as_secs_f64();
    let cpu_during_hold = sys::cpu_time(server)?.saturating_sub(cpu_before);
    let rss_end = sys::rss_bytes(server)?;
    let loadgen_rss = sys::rss_bytes(Pid::Myself)?;

    let _ = stop_tx.send(true);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }

    let per_conn =
        |before: u64, after: u64| (connected > 0).then(|| (after as f64 - before as f64) / connected as f64);
    let summary = IdleSummary {
        url: args.url.clone(),
        endpoint: args.endpoint,
        deflate: args.deflate,
        requested: args.connections,
        connected,
        failed,
        first_error,
        source_addresses: sources,
        connect_s,
        server_rss_bytes_before: rss_before,
        server_rss_bytes_after: rss_after,
        server_rss_bytes_per_connection: per_conn(rss_before, rss_after),
        tcp_mem_bytes_before: tcp_before,
        tcp_mem_bytes_after: tcp_after,
        tcp_mem_bytes_per_connection: per_conn(tcp_before, tcp_after),
        hold_s,
        server_cpu_s_during_hold: cpu_during_hold.as_secs_f64(),
        server_cpu_ms_per_s: cpu_during_hold.as_secs_f64() * 1000.0 / hold_s.max(1e-9),
        server_rss_bytes_end_of_hold: rss_end,
        closed_by_server: closed_by_server.load(Ordering::Relaxed),
        loadgen_rss_bytes: loadgen_rss,
    };
    print_summary(&mut *report::human_out(args.json.as_deref()), &summary)?;
    if let Some(path) = &args.json {
        report::write_json(path, &summary)?;
    }
    Ok(())
}

fn print_summary(out: &mut dyn std::io::Write, s: &IdleSummary) -> anyhow::Result<()> {
    let per = |v: Option<f64>| v.map(|b| bytes(b.max(0.0) as u64)).unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "tickwire idle: {} of {} connections open ({} failed) from {} source address(es) in {:.1} s",
        count(s.connected),
        count(u64::from(s.requested)),
        count(s.failed),
        s.source_addresses,
        s.connect_s,
    )?;
    if let Some(e) = &s.first_error {
        writeln!(out, "  first failure: {e}")?;
    }
    writeln!(
        out,
        "  server RSS     {} -> {} = {} per connection ({} at the end of the hold)",
        bytes(s.server_rss_bytes_before),
        bytes(s.server_rss_bytes_after),
        per(s.server_rss_bytes_per_connection),
        bytes(s.server_rss_bytes_end_of_hold),
    )?;
    writeln!(
        out,
        "  kernel TCP mem {} -> {} = {} per connection (both ends)",
        bytes(s.tcp_mem_bytes_before),
        bytes(s.tcp_mem_bytes_after),
        per(s.tcp_mem_bytes_per_connection),
    )?;
    writeln!(
        out,
        "  server CPU     {:.3} s in {:.1} s idle = {:.2} ms/s ({:.2} % of a core); {} closed by the server",
        s.server_cpu_s_during_hold,
        s.hold_s,
        s.server_cpu_ms_per_s,
        s.server_cpu_ms_per_s / 10.0,
        count(s.closed_by_server),
    )?;
    writeln!(out, "  loadgen RSS    {}", bytes(s.loadgen_rss_bytes))?;
    Ok(())
}
