//! `loadgen bench`: subscribers on every endpoint, paced publishers, and a
//! report of throughput, latency and correctness.
//!
//! The run, in order: connect and subscribe every subscriber (spread
//! round-robin over the `--url` nodes) and wait for all of them; read the
//! CPU clocks; publish for `--duration`; wait up to `--drain` for stragglers;
//! read the clocks again; stop the subscribers and check what each received
//! against what the publishers sent to its stream.
//!
//! `--stalled` subscribers subscribe like the others and then never read
//! again (clients that stopped reading): they count for nothing but the
//! load they put on the server, whose own counters (`/api/stats`) say how
//! it dealt with them.
//!
//! With several `--url`s the nodes must form one cluster (every node
//! delivers every publish); embedded nodes that do not share a bus would
//! show the other nodes' publishes as lost.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::{self, Credential, WsRequest};
use crate::counters::ServerCounters;
use crate::jwt::{self, Claims};
use crate::messages::{bench_symbol, Rng};
use crate::pacing::{Clock, Schedule};
use crate::progress::Progress;
use crate::publisher::{self, BenchVia, Mix, PublisherPlan, PublisherReport};
use crate::report::{self, count, micros, Latency};
use crate::seqcheck::SeqCounts;
use crate::stats;
use crate::subscriber::{Role, RunClock, Subscriber, SubscriberReport};
use crate::sys::{self, Pid};
use crate::target::Target;

/// The longest run `--duration` accepts, in seconds.
const MAX_DURATION_S: f64 = 600.0;
const MAX_DRAIN_S: f64 = 60.0;
/// Time for one subscriber to connect and get its `subscribed`.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Subscribers' read buffer. tungstenite zero-fills this whole window
/// before every read from the socket, so a big one costs a memset per read
/// (32 KiB made memset 15 % of loadgen's CPU in `perf`); 4 KiB still holds
/// about 20 bench frames.
const SUBSCRIBER_READ_BUFFER: usize = 4 * 1024;
/// The kernel receive buffer of a stalled subscriber's socket: small, so
/// that the server's writes to it stall after a few frames.
const STALLED_RECV_BUFFER: u32 = 4 * 1024;
/// The largest `--pad-bytes`.
const MAX_PAD_BYTES: u32 = 100_000;

/// Where the bench's publishers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishersOn {
    All,
    First,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Server base URL; repeat it for the nodes of one cluster
    /// (subscribers and publishers are spread over them round-robin)
    #[arg(long = "url", default_value = "http://127.0.0.1:8000")]
    urls: Vec<String>,
    /// Which nodes the publishers go to: `all` (round-robin) or `first`
    /// (every publisher on the first `--url`, so that the other nodes'
    /// subscribers get everything across the cluster)
    #[arg(long, value_enum, default_value_t = PublishersOn::All)]
    publishers_on: PublishersOn,
    /// HS256 secret of the subscribers' tokens
    #[arg(long, env = "TICKWIRE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Publisher API key
    #[arg(long, env = "TICKWIRE_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Market-data subscribers, one symbol each (round-robin)
    #[arg(long, default_value_t = 1000)]
    subscribers: u32,
    /// Trading-signal subscribers (no filter: every signal)
    #[arg(long, default_value_t = 0)]
    signal_subscribers: u32,
    /// Notification subscribers, one user each
    #[arg(long, default_value_t = 0)]
    notification_subscribers: u32,
    /// Extra market-data subscribers that subscribe and then never read
    /// again (small receive buffer); left out of delivery, loss and latency
    #[arg(long, default_value_t = 0)]
    stalled: u32,
    /// Symbols, named SYM000, SYM001, ...
    #[arg(long, default_value_t = 100)]
    symbols: u32,
    /// Publisher connections
    #[arg(long, default_value_t = 2)]
    publishers: u32,
    /// Messages per second over all publishers; 0 = as fast as the server takes them
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Messages per publish (one frame or request)
    #[arg(long, default_value_t = 10)]
    batch: u32,
    /// Bytes of padding added to every message (a "pad" field)
    #[arg(long, default_value_t = 0)]
    pad_bytes: u32,
    /// Publishing time in seconds (at most 600)
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to wait for late deliveries after publishing stops (at most 60)
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// How publishers send: the ingest WebSocket or POST /api/publish
    #[arg(long, value_enum, default_value_t = BenchVia::Ws)]
    via: BenchVia,
    /// With signal subscribers, one message in N is a new_signal
    #[arg(long, default_value_t = 20)]
    signal_every: u64,
    /// With notification subscribers, one message in N is a new_notification
    #[arg(long, default_value_t = 20)]
    notification_every: u64,
    /// PID of a tickwire process to measure (CPU per delivery, RSS); repeatable
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Write a JSON summary to this file (`-` for stdout)
    #[arg(long)]
    json: Option<String>,
    /// Subscribers connecting at once
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds allowed for connecting and subscribing everyone
    #[arg(long, default_value_t = 120)]
    setup_timeout: u64,
    /// How subscribers are sent messages: json (text frames) or msgpack
    /// (binary MessagePack frames, `?format=msgpack`, protocol 1.1)
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Subscribers use the one socket of protocol 1.1 (`/ws/stream/`,
    /// carrying their one kind) instead of their kind's own endpoint
    #[arg(long)]
    multiplex: bool,
    /// Subscribers offer permessage-deflate (protocol 1.1, with
    /// client_no_context_takeover) and fail unless the server agrees
    #[arg(long)]
    deflate: bool,
}

/// The subscribers' message format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Msgpack,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if !(self.duration > 0.0 && self.duration <= MAX_DURATION_S) {
            bail!("--duration must be more than 0 and at most {MAX_DURATION_S} seconds");
        }
        if !(0.0..=MAX_DRAIN_S).contains(&self.drain) {
            bail!("--drain must be between 0 and {MAX_DRAIN_S} seconds");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("--rate must be 0 (unpaced) or a positive number of messages per second");
        }
        if !(1..=10_000).contains(&self.batch) {
            bail!("--batch must be between 1 and 10000");
        }
        if self.pad_bytes > MAX_PAD_BYTES {
            bail!("--pad-bytes must be at most {MAX_PAD_BYTES}");
        }
        if !(1..=256).contains(&self.publishers) {
            bail!("--publishers must be between 1 and 256");
        }
        if !(1..=1_000_000).contains(&self.symbols) {
            bail!("--symbols must be between 1 and 1000000");
        }
        if self.total_subscribers() > 1_000_000 {
            bail!("at most 1000000 subscribers in all");
        }
        if !(1..=10_000).contains(&self.connect_concurrency) {
            bail!("--connect-concurrency must be between 1 and 10000");
        }
        if !(1..=3600).contains(&self.setup_timeout) {
            bail!("--setup-timeout must be between 1 and 3600 seconds");
        }
        Ok(())
    }

    fn total_subscribers(&self) -> u64 {
        u64::from(self.subscribers)
            + u64::from(self.signal_subscribers)
            + u64::from(self.notification_subscribers)
            + u64::from(self.stalled)
    }

    fn mix(&self) -> Mix {
        Mix {
            signal_every: if self.signal_subscribers > 0 {
                self.signal_every
            } else {
                0
            },
            notification_every: if self.notification_subscribers > 0 {
                self.notification_every
            } else {
                0
            },
        }
    }
}

/// Who a subscriber is, for checking its receipts after the run.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Symbol(usize),
    Signals,
    User(usize),
}

#[derive(Debug, Serialize)]
struct Config {
    urls: Vec<String>,
    subscribers: u32,
    signal_subscribers: u32,
    notification_subscribers: u32,
    /// Market-data subscribers that never read after subscribing; not in
    /// any of the delivery, loss or latency figures.
    stalled_subscribers: u32,
    symbols: u32,
    publishers: u32,
    via: BenchVia,
    rate: f64,
    batch: u32,
    pad_bytes: u32,
    duration_s: f64,
    drain_s: f64,
    format: Format,
    multiplex: bool,
    deflate: bool,
}

#[derive(Debug, Default, Serialize)]
struct StreamTotals {
    subscribers: u64,
    expected: u64,
    received: u64,
    lost: u64,
}

#[derive(Debug, Serialize)]
struct Process {
    cpu_s: f64,
    cpu_us_per_delivery: Option<f64>,
    rss_bytes_before: u64,
    rss_bytes_after: u64,
}

#[derive(Debug, Serialize)]
pub struct BenchSummary {
    config: Config,
    setup_s: f64,
    publish_window_s: f64,
    published: u64,
    publish_rate: f64,
    refused_by_server: u64,
    first_refusal: Option<String>,
    publisher_max_lag_ms: f64,
    publisher_backlog_batches: u64,
    publisher_failures: Vec<String>,
    deliveries: u64,
    deliveries_in_window: u64,
    deliveries_per_s: f64,
    expected_deliveries: u64,
    lost: u64,
    loss_ratio: f64,
    /// Arrived after publishing stopped, within the drain.
    late: u64,
    seq: SeqCounts,
    without_seq: u64,
    /// Bytes the subscribers read from their sockets over the same time
    /// as `deliveries` (frames with their headers; compressed where
    /// permessage-deflate was), and that per delivery.
    wire_bytes: u64,
    wire_bytes_per_delivery: Option<f64>,
    market: StreamTotals,
    signals: StreamTotals,
    notifications: StreamTotals,
    /// `t_ns` is the intended send time (coordinated omission corrected);
    /// false when --rate 0 (unpaced), where it is the actual send time.
    latency_from_intended_time: bool,
    latency: Latency,
    subscriber_errors: u64,
    first_subscriber_error: Option<String>,
    resets: u64,
    disconnected_early: u64,
    close_reasons: BTreeMap<String, u64>,
    server: Option<Process>,
    /// The server's counters over publishing + drain; `None` when
    /// `/api/stats` did not answer.
    server_counters: Option<ServerCounters>,
    loadgen: Process,
    interrupted: bool,
}

/// A process's CPU and RSS readings at the start of the measurement.
struct ProcessMark {
    pids: Vec<Pid>,
    cpu: Duration,
    rss: u64,
}

impl ProcessMark {
    fn take(pids: Vec<Pid>) -> anyhow::Result<ProcessMark> {
        let mut cpu = Duration::ZERO;
        let mut rss = 0;
        for &pid in &pids {
            cpu += sys::cpu_time(pid)?;
            rss += sys::rss_bytes(pid)?;
        }
        Ok(ProcessMark { pids, cpu, rss })
    }

    fn since(&self, deliveries: u64) -> anyhow::Result<Process> {
        let now = ProcessMark::take(self.pids.clone())?;
        let cpu = now.cpu.saturating_sub(self.cpu);
        Ok(Process {
            cpu_s: cpu.as_secs_f64(),
            cpu_us_per_delivery: (deliveries > 0).then(|| cpu.as_secs_f64() * 1e6 / deliveries as f64),
            rss_bytes_before: self.rss,
            rss_bytes_after: now.rss,
        })
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let targets = args
        .urls
        .iter()
        .map(|u| Target::parse(u, 8000))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fd_limit = sys::raise_nofile_limit()?;
    sys::check_fd_budget(args.total_subscribers() + u64::from(args.publishers), fd_limit)?;
    let server_pids: Vec<Pid> = args.server_pids.iter().map(|&p| Pid::Other(p)).collect();
    ProcessMark::take(server_pids.clone()).context("--server-pid")?;
    let http = client::http_client()?;
    for target in &targets {
        client::check_reachable(&http, target).await?;
    }

    let clock = Clock::new();
    let run = Arc::new(RunClock {
        clock,
        run_start_epoch_ns: clock.epoch_ns(0),
        publish_end_epoch_ns: AtomicU64::new(u64::MAX),
    });
    let run_tag = format!("{:08x}", Rng::from_entropy().next_u64() as u32);
    let symbols: Arc<Vec<String>> =
        Arc::new((0..args.symbols).map(|i| bench_symbol(i, args.symbols)).collect());
    let users: Arc<Vec<String>> = Arc::new(
        (0..args.notification_subscribers)
            .map(|i| format!("bench-{run_tag}-u{i}"))
            .collect(),
    );

    // Subscribers.
    let setup_started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut streams = Vec::with_capacity(args.total_subscribers() as usize);
    let mut roles = Vec::with_capacity(streams.capacity());
    for i in 0..args.subscribers as usize {
        let s = i % symbols.len();
        streams.push(Stream::Symbol(s));
        roles.push((
            Role::Market {
                symbol: symbols[s].clone(),
            },
            format!("bench-{run_tag}-m{i}"),
        ));
    }
    for i in 0..args.signal_subscribers {
        streams.push(Stream::Signals);
        roles.push((Role::Signals, format!("bench-{run_tag}-s{i}")));
    }
    for (i, user) in users.iter().enumerate() {
        streams.push(Stream::User(i));
        roles.push((Role::Notifications, user.clone()));
    }
    // After every reader, so that the first `streams.len()` handles are
    // the readers'.
    for i in 0..args.stalled as usize {
        roles.push((
            Role::Market {
                symbol: symbols[i % symbols.len()].clone(),
            },
            format!("bench-{run_tag}-x{i}"),
        ));
    }
    let token_exp = jwt::unix_now_s() + args.setup_timeout + args.duration as u64 + 3600;
    let subscribers = open_subscribers(
        roles,
        streams.len(),
        &targets,
        args.jwt_secret.as_bytes(),
        token_exp,
        &run,
        &stop_rx,
        args.connect_concurrency,
        Duration::from_secs(args.setup_timeout),
        (args.multiplex, args.format == Format::Msgpack, args.deflate),
    )
    .await;
    let mut subscribers = match subscribers {
        Ok(handles) => handles,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    };
    let setup_s = setup_started.elapsed().as_secs_f64();
    eprintln!(
        "{} subscribers ready in {setup_s:.1} s; publishing for {} s",
        count(args.total_subscribers()),
        args.duration
    );

    // Publishers.
    // Relaxed everywhere: a lone flag that guards no other data.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = Arc::clone(&interrupted);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::Relaxed);
            }
        });
    }
    let counters_before = ServerCounters::read(&http, &targets).await;
    let server_mark = ProcessMark::take(server_pids.clone())?;
    let self_mark = ProcessMark::take(vec![Pid::Myself])?;
    let publish_clock = run.clock.later(run.clock.elapsed_ns() + 20_000_000);
    let duration_ns = (args.duration * 1e9) as u64;
    let sent_total = Arc::new(AtomicU64::new(0));
    let api_key: Arc<str> = Arc::from(args.api_key.as_str());
    let pad: Arc<str> = Arc::from("x".repeat(args.pad_bytes as usize));
    let (sent_last_tx, mut sent_last_rx) = mpsc::unbounded_channel();
    let publishers: Vec<JoinHandle<PublisherReport>> = (0..args.publishers)
        .map(|index| {
            tokio::spawn(publisher::run(PublisherPlan {
                index,
                publishers: args.publishers,
                target: match args.publishers_on {
                    PublishersOn::All => targets[index as usize % targets.len()].clone(),
                    PublishersOn::First => targets[0].clone(),
                },
                via: args.via,
                api_key: Arc::clone(&api_key),
                http: http.clone(),
                schedule: Schedule::new(args.rate, args.batch, args.publishers, index),
                batch: args.batch,
                duration_ns,
                symbols: Arc::clone(&symbols),
                users: Arc::clone(&users),
                mix: args.mix(),
                pad: Arc::clone(&pad),
                run_tag: format!("{run_tag}_{index}"),
                clock: publish_clock,
                interrupted: Arc::clone(&interrupted),
                sent_total: Arc::clone(&sent_total),
                sent_last: sent_last_tx.clone(),
            }))
        })
        .collect();

    let progress = Arc::new(Progress::new("bench", (args.duration * 1000.0) as u64));
    let deliveries_before = stats::deliveries();
    let wire_bytes_before = stats::wire_bytes();
    let ticker = tokio::spawn(show_rates(
        publish_clock,
        Arc::clone(&sent_total),
        deliveries_before,
        Arc::clone(&progress),
    ));
    drop(sent_last_tx);
    // Each publisher stops by itself within the duration, a grace period
    // for its backlog, and one send timeout.
    let publishers_stop_by = publish_clock.instant(duration_ns)
        + publisher::CATCH_UP_GRACE
        + publisher::SEND_TIMEOUT
        + Duration::from_secs(5);
    let mut publishing = publishers.len();
    while publishing > 0 {
        match tokio::time::timeout_at(publishers_stop_by.into(), sent_last_rx.recv()).await {
            Ok(Some(())) => publishing -= 1,
            _ => break,
        }
    }
    let publish_window_s = publish_clock.elapsed_ns() as f64 / 1e9;
    run.publish_end_epoch_ns
        .store(run.clock.now_epoch_ns(), Ordering::Relaxed);
    let deliveries_in_window = stats::deliveries() - deliveries_before;
    ticker.abort();
    progress.finish();
    let mut publisher_reports = Vec::with_capacity(publishers.len());
    for handle in publishers {
        let report = match tokio::time::timeout(Duration::from_secs(10), handle).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => PublisherReport {
                failed: Some(format!("publisher task ended: {e}")),
                ..Default::default()
            },
            Err(_) => PublisherReport {
                failed: Some("publisher did not stop".to_owned()),
                ..Default::default()
            },
        };
        publisher_reports.push(report);
    }

    // What each subscriber should have received.
    let mut per_symbol = vec![0u64; symbols.len()];
    let mut per_user = vec![0u64; users.len()];
    let mut signals_sent = 0;
    for r in &publisher_reports {
        for (total, n) in per_symbol.iter_mut().zip(&r.per_symbol) {
            *total += n;
        }
        for (total, n) in per_user.iter_mut().zip(&r.per_user) {
            *total += n;
        }
        signals_sent += r.signals;
    }
    let expected_of = |stream: Stream| match stream {
        Stream::Symbol(s) => per_symbol[s],
        Stream::Signals => signals_sent,
        Stream::User(u) => per_user[u],
    };
    let expected_total: u64 = streams.iter().map(|&s| expected_of(s)).sum();

    // Drain: until everything expected arrived, or --drain is over.
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while Instant::now() < drain_until
        && stats::deliveries() - deliveries_before < expected_total
        && !interrupted.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliveries = stats::deliveries() - deliveries_before;
    let wire_bytes = stats::wire_bytes() - wire_bytes_before;
    let server = if server_pids.is_empty() {
        None
    } else {
        Some(server_mark.since(deliveries)?)
    };
    let loadgen = self_mark.since(deliveries)?;
    let server_counters = match (counters_before, ServerCounters::read(&http, &targets).await) {
        (Some(before), Some(after)) => Some(after.since(&before)),
        _ => None,
    };

    // Stop the subscribers and gather their receipts; the stalled ones
    // have none.
    let _ = stop_tx.send(true);
    for stalled in subscribers.split_off(streams.len()) {
        stalled.abort();
    }
    let mut reports = Vec::with_capacity(subscribers.len());
    for handle in subscribers {
        let report = match tokio::time::timeout(Duration::from_secs(5), handle).await {
            Ok(Ok(Some(report))) => report,
            _ => SubscriberReport {
                closed: Some("did not stop within 5 s".to_owned()),
                ..Default::default()
            },
        };
        reports.push(report);
    }

    let summary = summarize(
        &args,
        Summarized {
            setup_s,
            publish_window_s,
            publishers: &publisher_reports,
            subscribers: &reports,
            streams: &streams,
            expected_of: &expected_of,
            deliveries_in_window,
            wire_bytes,
            server,
            server_counters,
            loadgen,
            interrupted: interrupted.load(Ordering::Relaxed),
        },
    );
    print_summary(&mut *report::human_out(args.json.as_deref()), &summary)?;
    if let Some(path) = &args.json {
        report::write_json(path, &summary)?;
    }
    match summary.publisher_failures.first() {
        Some(first) => bail!(
            "{} of {} publishers failed; the first: {first}",
            summary.publisher_failures.len(),
            args.publishers
        ),
        None => Ok(()),
    }
}

/// Opens every subscriber, at most `concurrency` at a time, and returns
/// their running tasks once all have subscribed. The first `readers` read
/// and report; the others stall (see [`Subscriber::stall`]) and report
/// nothing. Fails on the first subscriber that cannot, with its reason.
#[allow(clippy::too_many_arguments)]
async fn open_subscribers(
    roles: Vec<(Role, String)>,
    readers: usize,
    targets: &[Target],
    secret: &[u8],
    token_exp: u64,
    run: &Arc<RunClock>,
    stop_rx: &watch::Receiver<bool>,
    concurrency: usize,
    setup_timeout: Duration,
    (multiplex, msgpack, deflate): (bool, bool, bool),
) -> anyhow::Result<Vec<JoinHandle<Option<SubscriberReport>>>> {
    let total = roles.len() as u64;
    let progress = Progress::new("subscribe", total);
    let permits = Arc::new(Semaphore::new(concurrency));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(1024);
    let mut handles = Vec::with_capacity(roles.len());
    for (i, (role, sub)) in roles.into_iter().enumerate() {
        let token = jwt::mint(
            secret,
            &Claims {
                sub: &sub,
                exp: token_exp,
                symbols: None,
            },
        );
        let target = targets[i % targets.len()].clone();
        let permits = Arc::clone(&permits);
        let ready_tx = ready_tx.clone();
        let run = Arc::clone(run);
        let stop_rx = stop_rx.clone();
        let stalls = i >= readers;
        handles.push(tokio::spawn(async move {
            let path = role.url_path(&token, multiplex, msgpack);
            let mut request = subscriber_request(&target, &path, None, SUBSCRIBER_READ_BUFFER, deflate);
            if stalls {
                request.recv_buffer_bytes = Some(STALLED_RECV_BUFFER);
            }
            let opened = {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = permits.acquire_owned().await.ok();
                Subscriber::open(&request, &role, &run, OPEN_TIMEOUT).await
            };
            match opened {
                Ok(sub) if stalls => {
                    let _ = ready_tx.send(Ok(())).await;
                    sub.stall(stop_rx).await;
                    None
                }
                Ok(sub) => {
                    let _ = ready_tx.send(Ok(())).await;
                    Some(sub.run(run, stop_rx).await)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}"))).await;
                    None
                }
            }
        }));
    }
    drop(ready_tx);

    let deadline = tokio::time::Instant::now() + setup_timeout;
    let mut ready = 0u64;
    let outcome = loop {
        if ready == total {
            break Ok(());
        }
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {
                ready += 1;
                progress.update(ready, String::new());
            }
            Ok(Some(Err(e))) => break Err(anyhow::anyhow!("subscriber {}: {e}", ready + 1)),
            Ok(None) => break Err(anyhow::anyhow!("subscriber tasks ended early")),
            Err(_) => {
                break Err(anyhow::anyhow!(
                    "only {ready} of {total} subscribers were subscribed after {setup_timeout:?} \
                     (raise --setup-timeout, or lower --subscribers)"
                ))
            }
        }
    };
    progress.finish();
    match outcome {
        Ok(()) => Ok(handles),
        Err(e) => {
            for h in &handles {
                h.abort();
            }
            Err(e)
        }
    }
}

/// The WebSocket request of one subscriber; `deflate` offers
/// permessage-deflate. What it reads counts in the run's wire bytes.
pub fn subscriber_request<'a>(
    target: &'a Target,
    path: &'a str,
    bind: Option<IpAddr>,
    read_buffer_bytes: usize,
    deflate: bool,
) -> WsRequest<'a> {
    WsRequest {
        target,
        path,
        bearer: None,
        credential: Credential::Token,
        bind,
        recv_buffer_bytes: None,
        config: WebSocketConfig::default()
            .read_buffer_size(read_buffer_bytes)
            .write_buffer_size(0),
        deflate,
        count_wire: true,
        timeout: OPEN_TIMEOUT,
    }
}

/// Updates the progress bar with the publish and delivery rates of the last
/// half second, until aborted.
async fn show_rates(
    clock: Clock,
    sent_total: Arc<AtomicU64>,
    deliveries_before: u64,
    progress: Arc<Progress>,
) {
    const EVERY: Duration = Duration::from_millis(500);
    let duration_ms = progress.len();
    let mut last = (Instant::now(), 0u64, 0u64);
    loop {
        tokio::time::sleep(EVERY).await;
        let now = Instant::now();
        let sent = sent_total.load(Ordering::Relaxed);
        let delivered = stats::deliveries() - deliveries_before;
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
        progress.update(
            (clock.elapsed_ns() / 1_000_000).min(duration_ms),
            format!(
                "ms  publishing {}/s  delivering {}/s",
                count(((sent - last.1) as f64 / secs) as u64),
                count(((delivered - last.2) as f64 / secs) as u64),
            ),
        );
        last = (now, sent, delivered);
    }
}

struct Summarized<'a> {
    setup_s: f64,
    publish_window_s: f64,
    publishers: &'a [PublisherReport],
    subscribers: &'a [SubscriberReport],
    streams: &'a [Stream],
    expected_of: &'a dyn Fn(Stream) -> u64,
    deliveries_in_window: u64,
    wire_bytes: u64,
    server: Option<Process>,
    server_counters: Option<ServerCounters>,
    loadgen: Process,
    interrupted: bool,
}

fn summarize(args: &BenchArgs, s: Summarized<'_>) -> BenchSummary {
    let published: u64 = s.publishers.iter().map(|p| p.messages).sum();
    let mut seq = SeqCounts::default();
    let mut market = StreamTotals::default();
    let mut signals = StreamTotals::default();
    let mut notifications = StreamTotals::default();
    let mut late = 0;
    let mut live = 0;
    let mut without_seq = 0;
    let mut subscriber_errors = 0;
    let mut first_subscriber_error = None;
    let mut resets = 0;
    let mut close_reasons = BTreeMap::new();
    for (report, &stream) in s.subscribers.iter().zip(s.streams) {
        seq.add(&report.seq);
        late += report.late;
        live += report.live;
        without_seq += report.without_seq;
        subscriber_errors += report.errors;
        resets += report.resets;
        if first_subscriber_error.is_none() {
            first_subscriber_error.clone_from(&report.first_error);
        }
        if let Some(reason) = &report.closed {
            *close_reasons.entry(reason.clone()).or_insert(0) += 1;
        }
        let totals: &mut StreamTotals = match stream {
            Stream::Symbol(_) => &mut market,
            Stream::Signals => &mut signals,
            Stream::User(_) => &mut notifications,
        };
        let expected = (s.expected_of)(stream);
        // Without seqs, count what arrived.
        let received = report.seq.unique + report.without_seq;
        totals.subscribers += 1;
        totals.expected += expected;
        totals.received += received;
        totals.lost += expected.saturating_sub(received);
    }
    let expected_deliveries = market.expected + signals.expected + notifications.expected;
    let lost = market.lost + signals.lost + notifications.lost;
    BenchSummary {
        config: Config {
            urls: args.urls.clone(),
            subscribers: args.subscribers,
            signal_subscribers: args.signal_subscribers,
            notification_subscribers: args.notification_subscribers,
            stalled_subscribers: args.stalled,
            symbols: args.symbols,
            publishers: args.publishers,
            via: args.via,
            rate: args.rate,
            batch: args.batch,
            pad_bytes: args.pad_bytes,
            duration_s: args.duration,
            drain_s: args.drain,
            format: args.format,
            multiplex: args.multiplex,
            deflate: args.deflate,
        },
        setup_s: s.setup_s,
        publish_window_s: s.publish_window_s,
        published,
        publish_rate: published as f64 / s.publish_window_s.max(1e-9),
        refused_by_server: s.publishers.iter().map(|p| p.refused).sum(),
        first_refusal: s.publishers.iter().find_map(|p| p.first_refusal.clone()),
        publisher_max_lag_ms: s.publishers.iter().map(|p| p.max_lag_ms).fold(0.0, f64::max),
        publisher_backlog_batches: s.publishers.iter().map(|p| p.backlog_batches).sum(),
        publisher_failures: s.publishers.iter().filter_map(|p| p.failed.clone()).collect(),
        deliveries: live,
        deliveries_in_window: s.deliveries_in_window,
        deliveries_per_s: s.deliveries_in_window as f64 / s.publish_window_s.max(1e-9),
        expected_deliveries,
        lost,
        loss_ratio: if expected_deliveries > 0 {
            lost as f64 / expected_deliveries as f64
        } else {
            0.0
        },
        late,
        seq,
        without_seq,
        wire_bytes: s.wire_bytes,
        wire_bytes_per_delivery: (live > 0).then(|| s.wire_bytes as f64 / live as f64),
        market,
        signals,
        notifications,
        latency_from_intended_time: args.rate > 0.0,
        latency: Latency::from_histogram(&stats::merged_latency()),
        subscriber_errors,
        first_subscriber_error,
        resets,
        disconnected_early: close_reasons.values().sum(),
        close_reasons,
        server: s.server,
        server_counters: s.server_counters,
        loadgen: s.loadgen,
        interrupted: s.interrupted,
    }
}

fn print_summary(out: &mut dyn std::io::Write, s: &BenchSummary) -> anyhow::Result<()> {
    let c = &s.config;
    writeln!(
        out,
        "tickwire bench: {} market{} + {} signal + {} notification subscribers, {} symbols, {} node(s); \
         {} publisher(s) via {:?}, {} in batches of {}{}, {} s",
        count(u64::from(c.subscribers)),
        if c.stalled_subscribers > 0 {
            format!(
                " (+ {} stalled, never reading)",
                count(u64::from(c.stalled_subscribers))
            )
        } else {
            String::new()
        },
        count(u64::from(c.signal_subscribers)),
        count(u64::from(c.notification_subscribers)),
        count(u64::from(c.symbols)),
        c.urls.len(),
        c.publishers,
        c.via,
        if c.rate > 0.0 {
            format!("{} msg/s", count(c.rate as u64))
        } else {
            "unpaced".to_owned()
        },
        c.batch,
        if c.pad_bytes > 0 {
            format!(" (padded by {} B)", count(u64::from(c.pad_bytes)))
        } else {
            String::new()
        },
        c.duration_s,
    )?;
    let (format, deflate) = (
        format!("{:?}", c.format).to_lowercase(),
        if c.deflate { " + deflate" } else { "" },
    );
    writeln!(
        out,
        "  wire        {format}{deflate}{}",
        if c.multiplex { ", on /ws/stream/" } else { "" }
    )?;
    if s.interrupted {
        writeln!(out, "  (interrupted: the figures cover the run so far)")?;
    }
    writeln!(
        out,
        "  published   {} messages in {:.2} s ({}/s); refused by the server {}; \
         publisher lag max {:.1} ms, backlog {} batches",
        count(s.published),
        s.publish_window_s,
        count(s.publish_rate as u64),
        count(s.refused_by_server),
        s.publisher_max_lag_ms,
        count(s.publisher_backlog_batches),
    )?;
    if let Some(r) = &s.first_refusal {
        writeln!(out, "              first refusal: {r}")?;
    }
    for f in &s.publisher_failures {
        writeln!(out, "  publisher failed: {f}")?;
    }
    writeln!(
        out,
        "  delivered   {} of {} expected: lost {} ({:.4} %), {} duplicates, {} reorders, \
         {} gaps, {} late (after publishing stopped)",
        count(s.deliveries),
        count(s.expected_deliveries),
        count(s.lost),
        s.loss_ratio * 100.0,
        count(s.seq.duplicates),
        count(s.seq.reorders),
        count(s.seq.gaps),
        count(s.late),
    )?;
    for (name, t) in [
        ("market", &s.market),
        ("signals", &s.signals),
        ("notifications", &s.notifications),
    ] {
        if t.subscribers > 0 {
            writeln!(
                out,
                "              {name}: {} subscribers, {} of {} received, {} lost",
                count(t.subscribers),
                count(t.received),
                count(t.expected),
                count(t.lost),
            )?;
        }
    }
    if s.without_seq > 0 {
        writeln!(
            out,
            "  WARNING     {} live messages had no seq",
            count(s.without_seq)
        )?;
    }
    writeln!(
        out,
        "  throughput  {} deliveries/s during publishing",
        count(s.deliveries_per_s as u64)
    )?;
    writeln!(
        out,
        "  latency     {}  (n={}, mean {}; {})",
        s.latency.line(),
        count(s.latency.count),
        micros(s.latency.mean_us as u64),
        if s.latency_from_intended_time {
            "from intended send time"
        } else {
            "unpaced: from actual send time"
        },
    )?;
    if let Some(per) = s.wire_bytes_per_delivery {
        write!(
            out,
            "  bytes       {per:.1} B per delivery read by the subscribers ({} in all)",
            report::bytes(s.wire_bytes)
        )?;
        match &s.server_counters {
            Some(c) if c.bytes_out_uncompressed > 0 && s.deliveries > 0 => writeln!(
                out,
                "; server payloads {:.1} B written, {:.1} B before compression, {} frames compressed",
                c.bytes_out as f64 / s.deliveries as f64,
                c.bytes_out_uncompressed as f64 / s.deliveries as f64,
                count(c.frames_compressed),
            )?,
            _ => writeln!(out)?,
        }
    }
    if let Some(c) = &s.server_counters {
        writeln!(
            out,
            "  lagging     back-pressure pauses {}, conflated frames {}, slow-consumer cuts {} (server's /api/stats)",
            count(c.backpressure_pauses),
            count(c.conflated_frames),
            count(c.slow_consumer_cuts),
        )?;
        if c.write_turns > 0 {
            writeln!(
                out,
                "  writes      {:.2} frames per write turn ({} frames in {} turns)",
                c.messages_out as f64 / c.write_turns as f64,
                count(c.messages_out),
                count(c.write_turns),
            )?;
        }
    }
    for (name, p) in [("server", s.server.as_ref()), ("loadgen", Some(&s.loadgen))] {
        let Some(p) = p else { continue };
        writeln!(
            out,
            "  {name:<11} CPU {:.2} s{}, RSS {} -> {}",
            p.cpu_s,
            p.cpu_us_per_delivery
                .map(|us| format!(" = {us:.2} µs per delivery"))
                .unwrap_or_default(),
            report::bytes(p.rss_bytes_before),
            report::bytes(p.rss_bytes_after),
        )?;
    }
    if s.subscriber_errors > 0 || s.resets > 0 {
        writeln!(
            out,
            "  subscribers got {} errors and {} resets; first: {}",
            count(s.subscriber_errors),
            count(s.resets),
            s.first_subscriber_error.as_deref().unwrap_or("-"),
        )?;
    }
    if s.disconnected_early > 0 {
        writeln!(
            out,
            "  {} subscribers were disconnected early:",
            count(s.disconnected_early)
        )?;
        for (reason, n) in &s.close_reasons {
            writeln!(out, "    {n:>8}  {reason}")?;
        }
    }
    Ok(())
}
