//! One bench publisher: it sends batches of messages on its paced schedule
//! (see `pacing`) over the ingest WebSocket or `POST /api/publish`, until
//! the run's duration is over, and counts what it sent per stream so that
//! the subscribers' receipts can be checked against it.
//!
//! A publisher that falls behind its schedule keeps sending (each late batch
//! stamped with its due time), but stops [`CATCH_UP_GRACE`] after the end of
//! the run; the batches it never sent are reported as its backlog.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect_ws, Credential, Ws, WsRequest};
use crate::messages::{add_pad, write_market, write_notification, write_signal};
use crate::pacing::{step, Clock, Schedule, Step};
use crate::scan::{self, Raw};
use crate::target::Target;

/// How long a publisher may go on sending its backlog after the run's end.
pub const CATCH_UP_GRACE: Duration = Duration::from_secs(1);
/// One send (or one HTTP request) may take this long before the publisher
/// gives up.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How the bench publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchVia {
    /// The `/ws/ingest` WebSocket, one frame per batch.
    Ws,
    /// `POST /api/publish`, one request per batch.
    Http,
}

/// Which message a slot of the publishing sequence carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Market,
    Signal,
    Notification,
}

/// The message mix: message `n` of a publisher is a signal once every
/// `signal_every` messages, else a notification once every
/// `notification_every` messages (half a period out of step, so that equal
/// settings interleave), else a market update. 0 turns a kind off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub signal_every: u64,
    pub notification_every: u64,
}

impl Mix {
    pub fn slot(&self, n: u64) -> Slot {
        let (se, ne) = (self.signal_every, self.notification_every);
        if se > 0 && (n + 1) % se == 0 {
            Slot::Signal
        } else if ne > 0 && (n + 1 + ne / 2) % ne == 0 {
            Slot::Notification
        } else {
            Slot::Market
        }
    }
}

pub struct PublisherPlan {
    pub index: u32,
    pub publishers: u32,
    pub target: Target,
    pub via: BenchVia,
    pub api_key: Arc<str>,
    pub http: reqwest::Client,
    pub schedule: Option<Schedule>,
    pub batch: u32,
    /// Run length, from the clock's start.
    pub duration_ns: u64,
    pub symbols: Arc<Vec<String>>,
    pub users: Arc<Vec<String>>,
    pub mix: Mix,
    /// Added to every message as its `pad` field (empty: none).
    pub pad: Arc<str>,
    /// Makes this publisher's signal and notification ids unique.
    pub run_tag: String,
    pub clock: Clock,
    /// Set on Ctrl-C: stop at the next batch. Relaxed: a lone flag that
    /// guards no other data.
    pub interrupted: Arc<AtomicBool>,
    /// Messages sent by all publishers, for the progress display. Relaxed:
    /// a statistic; exact counts come from the reports.
    pub sent_total: Arc<AtomicU64>,
    /// Told when this publisher has sent its last batch (before it waits
    /// for the server's last errors and closes), so that the publishing
    /// window ends there.
    pub sent_last: mpsc::UnboundedSender<()>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PublisherReport {
    pub messages: u64,
    pub batches: u64,
    /// Market updates sent per symbol (index as in the plan's symbols).
    #[serde(skip)]
    pub per_symbol: Vec<u64>,
    pub signals: u64,
    /// Notifications sent per user (index as in the plan's users).
    #[serde(skip)]
    pub per_user: Vec<u64>,
    /// Messages the server refused (error frames, or HTTP 400/429 entries).
    pub refused: u64,
    pub first_refusal: Option<String>,
    /// How far the publisher fell behind its schedule, at worst.
    pub max_lag_ms: f64,
    /// Batches due before the end that were never sent.
    pub backlog_batches: u64,
    /// Why the publisher stopped early, if it did.
    pub failed: Option<String>,
}

pub async fn run(plan: PublisherPlan) -> PublisherReport {
    let mut report = PublisherReport {
        per_symbol: vec![0; plan.symbols.len()],
        per_user: vec![0; plan.users.len()],
        ..Default::default()
    };
    let mut sink = match Sink::open(&plan).await {
        Ok(sink) => sink,
        Err(e) => {
            report.failed = Some(format!("{e:#}"));
            let _ = plan.sent_last.send(());
            return report;
        }
    };
    if let Err(e) = publish_loop(&plan, &mut sink, &mut report).await {
        report.failed = Some(format!("{e:#}"));
    }
    let _ = plan.sent_last.send(());
    sink.finish(&mut report).await;
    report
}

async fn publish_loop(
    plan: &PublisherPlan,
    sink: &mut Sink,
    report: &mut PublisherReport,
) -> anyhow::Result<()> {
    let grace_end_ns = plan.duration_ns + CATCH_UP_GRACE.as_nanos() as u64;
    let symbols = plan.symbols.len().max(1);
    let mut symbol_cursor = plan.index as usize * symbols / plan.publishers.max(1) as usize;
    let mut user_cursor = plan.index as usize;
    let mut payload = String::with_capacity((256 + plan.pad.len()) * plan.batch as usize);
    let mut n: u64 = 0;
    let mut k: u64 = 0;
    let mut max_lag_ns = 0u64;
    loop {
        if plan.interrupted.load(Ordering::Relaxed) {
            break;
        }
        let now = plan.clock.elapsed_ns();
        let stamp = match plan.schedule {
            Some(schedule) => {
                let due = schedule.due_ns(k);
                if due >= plan.duration_ns {
                    break;
                }
                if now >= grace_end_ns {
                    report.backlog_batches = schedule.batches_before(plan.duration_ns) - k;
                    break;
                }
                match step(due, now) {
                    Step::WaitUntil(at) => {
                        tokio::time::sleep_until(plan.clock.instant(at).into()).await;
                        continue;
                    }
                    Step::Send { stamp_ns } => {
                        max_lag_ns = max_lag_ns.max(now.saturating_sub(due));
                        stamp_ns
                    }
                }
            }
            None if now >= plan.duration_ns => break,
            None => now,
        };
        let t_ns = plan.clock.epoch_ns(stamp);

        payload.clear();
        if plan.batch > 1 {
            payload.push('[');
        }
        for i in 0..plan.batch {
            if i > 0 {
                payload.push(',');
            }
            match plan.mix.slot(n) {
                Slot::Signal => {
                    let symbol = &plan.symbols[symbol_cursor % symbols];
                    write_signal(&mut payload, &plan.run_tag, n, symbol, t_ns);
                    report.signals += 1;
                }
                Slot::Notification if !plan.users.is_empty() => {
                    let u = user_cursor % plan.users.len();
                    user_cursor += 1;
                    write_notification(&mut payload, &plan.run_tag, n, &plan.users[u], t_ns);
                    report.per_user[u] += 1;
                }
                Slot::Market | Slot::Notification => {
                    let s = symbol_cursor % symbols;
                    symbol_cursor += 1;
                    write_market(&mut payload, &plan.symbols[s], n, t_ns);
                    report.per_symbol[s] += 1;
                }
            }
            add_pad(&mut payload, &plan.pad);
            n += 1;
        }
        if plan.batch > 1 {
            payload.push(']');
        }

        sink.send(&payload, plan.batch, report).await?;
        report.batches += 1;
        report.messages += u64::from(plan.batch);
        plan.sent_total
            .fetch_add(u64::from(plan.batch), Ordering::Relaxed);
        k += 1;
    }
    report.max_lag_ms = max_lag_ns as f64 / 1e6;
    Ok(())
}

/// Error frames the ingest socket's reader has seen.
#[derive(Debug, Default)]
struct Refusals {
    /// Relaxed: read after the reader task is stopped; a count, nothing more.
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

enum Sink {
    Ws {
        write: SplitSink<Ws, Message>,
        reader: JoinHandle<()>,
        refusals: Arc<Refusals>,
    },
    Http {
        client: reqwest::Client,
        url: String,
        api_key: Arc<str>,
    },
}

impl Sink {
    async fn open(plan: &PublisherPlan) -> anyhow::Result<Sink> {
        match plan.via {
            BenchVia::Ws => {
                let ws = connect_ws(&WsRequest {
                    target: &plan.target,
                    path: "/ws/ingest",
                    bearer: Some(&plan.api_key),
                    credential: Credential::ApiKey,
                    bind: None,
                    recv_buffer_bytes: None,
                    // Only error frames come back; a small read window keeps
                    // tungstenite's per-read zero-fill cheap.
                    config: WebSocketConfig::default().read_buffer_size(4096),
                    deflate: false,
                    count_wire: false,
                    timeout: Duration::from_secs(10),
                })
                .await?;
                let (write, read) = ws.split();
                let refusals = Arc::new(Refusals::default());
                let reader = tokio::spawn(read_refusals(read, Arc::clone(&refusals)));
                Ok(Sink::Ws {
                    write,
                    reader,
                    refusals,
                })
            }
            BenchVia::Http => Ok(Sink::Http {
                client: plan.http.clone(),
                url: plan.target.http_url("/api/publish"),
                api_key: Arc::clone(&plan.api_key),
            }),
        }
    }

    async fn send(&mut self, payload: &str, batch: u32, report: &mut PublisherReport) -> anyhow::Result<()> {
        match self {
            Sink::Ws { write, .. } => timeout(SEND_TIMEOUT, write.send(Message::text(payload)))
                .await
                .context("the server took no data for 10 s on /ws/ingest")?
                .context("sending on /ws/ingest"),
            Sink::Http { client, url, api_key } => {
                let response = client
                    .post(url.as_str())
                    .bearer_auth(&**api_key)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(payload.to_owned())
                    .send()
                    .await
                    .context("POST /api/publish")?;
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                match status {
                    200..=299 => Ok(()),
                    400 | 429 => {
                        let accepted = scan::top_level(&body, [b"accepted"])[0]
                            .and_then(Raw::as_u64)
                            .unwrap_or(0);
                        report.refused += u64::from(batch).saturating_sub(accepted);
                        if report.first_refusal.is_none() {
                            report.first_refusal = Some(format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            ));
                        }
                        Ok(())
                    }
                    401 => bail!("{}", Credential::ApiKey.rejected_hint()),
                    413 => {
                        bail!("the server refused a batch of {batch} as too large (HTTP 413): lower --batch")
                    }
                    _ => Err(anyhow!(
                        "POST /api/publish answered HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )),
                }
            }
        }
    }

    /// Gives the server a moment to report errors about the last batches,
    /// then closes.
    async fn finish(self, report: &mut PublisherReport) {
        if let Sink::Ws {
            mut write,
            reader,
            refusals,
        } = self
        {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = timeout(Duration::from_secs(2), write.close()).await;
            reader.abort();
            report.refused += refusals.count.load(Ordering::Relaxed);
            if report.first_refusal.is_none() {
                report.first_refusal = refusals
                    .first
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
            }
        }
    }
}

/// The ingest socket answers only with errors: count them.
async fn read_refusals(mut read: SplitStream<Ws>, refusals: Arc<Refusals>) {
    while let Some(Ok(msg)) = read.next().await {
        if let Message::Text(text) = msg {
            refusals.count.fetch_add(1, Ordering::Relaxed);
            let mut first = refusals
                .first
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if first.is_none() {
                *first = Some(text.as_str().chars().take(300).collect());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_interleaves_kinds() {
        use Slot::*;
        let slots = |signal_every, notification_every| -> Vec<Slot> {
            let mix = Mix {
                signal_every,
                notification_every,
            };
            (0..8).map(|n| mix.slot(n)).collect()
        };
        assert_eq!(
            slots(4, 4),
            vec![
                Market,
                Notification,
                Market,
                Signal,
                Market,
                Notification,
                Market,
                Signal
            ]
        );
        assert_eq!(
            slots(2, 3),
            vec![
                Market,
                Signal,
                Market,
                Signal,
                Notification,
                Signal,
                Market,
                Signal
            ]
        );
        assert_eq!(
            slots(0, 2),
            vec![
                Notification,
                Market,
                Notification,
                Market,
                Notification,
                Market,
                Notification,
                Market
            ]
        );
        assert!(slots(0, 0).iter().all(|s| *s == Market));
        let mix = Mix {
            signal_every: 20,
            notification_every: 20,
        };
        let count = |kind| (0..1000).filter(|&n| mix.slot(n) == kind).count();
        assert_eq!((count(Signal), count(Notification)), (50, 50));
    }
}
