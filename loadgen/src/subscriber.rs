//! One subscriber socket of `bench` or `idle`: it connects, subscribes and
//! waits for the server's answer ([`Subscriber::open`]), then reads until
//! told to stop ([`Subscriber::run`]), checking the `seq` order of its one
//! stream and recording the latency of every live message. It reads only
//! `type`, `seq` and `t_ns` of each frame (see `scan`). A stalled
//! subscriber ([`Subscriber::stall`]) never reads again after subscribing.
//!
//! A message is live when it carries a `t_ns` from this run; anything else
//! with a `seq` (the latest-price snapshot sent after `subscribed`, unread
//! notifications of an earlier run) only tells the checker where the stream
//! stood.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect_ws, Credential, Ws, WsRequest};
use crate::mpscan;
use crate::pacing::Clock;
use crate::scan::{self, Raw};
use crate::seqcheck::{SeqChecker, SeqCounts};
use crate::stats;

/// What a subscriber listens to: one stream each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `/ws/market-data/`, subscribed to one symbol.
    Market { symbol: String },
    /// `/ws/trading-signals/`, with no filter: every signal.
    Signals,
    /// `/ws/notifications/` of one user (the token's `sub`).
    Notifications,
    /// `/ws/stream/` carrying all three kinds (protocol 1.1), subscribed
    /// to one symbol: what one multiplexed page socket holds.
    Stream { symbol: String },
}

impl Role {
    pub fn path(&self) -> &'static str {
        match self {
            Role::Market { .. } => "/ws/market-data/",
            Role::Signals => "/ws/trading-signals/",
            Role::Notifications => "/ws/notifications/",
            Role::Stream { .. } => "/ws/stream/",
        }
    }

    /// Path and query of this role's socket: its own endpoint, or (with
    /// `multiplex`) `/ws/stream/` carrying its one kind, in `msgpack` or
    /// JSON (protocol 1.1).
    pub fn url_path(&self, token: &str, multiplex: bool, msgpack: bool) -> String {
        let format = if msgpack { "&format=msgpack" } else { "" };
        if !multiplex {
            return format!("{}?token={token}{format}", self.path());
        }
        let kind = &self.path()["/ws/".len()..self.path().len() - 1];
        format!("/ws/stream/?streams={kind}&token={token}{format}")
    }

    /// The command sent after connecting, and the answer that means the
    /// subscription is in place. Notifications need no command; a ping's
    /// pong shows that the server has registered the connection.
    fn handshake(&self) -> (String, &'static [u8]) {
        match self {
            Role::Market { symbol } | Role::Stream { symbol } => (
                format!(r#"{{"type":"subscribe","symbols":["{symbol}"],"id":1}}"#),
                b"subscribed",
            ),
            Role::Signals => (
                r#"{"type":"filter","symbol":null,"signal_type":null,"id":1}"#.to_owned(),
                b"filtered",
            ),
            Role::Notifications => (r#"{"type":"ping","id":1}"#.to_owned(), b"pong"),
        }
    }
}

/// What all subscribers of a run share.
#[derive(Debug)]
pub struct RunClock {
    pub clock: Clock,
    /// Messages stamped before this (wall-clock ns) are not from this run.
    pub run_start_epoch_ns: u64,
    /// When the publishers stopped (wall-clock ns); `u64::MAX` until then.
    /// Messages that arrive later are counted as late. Relaxed: a lone
    /// timestamp; a subscriber that sees it a moment late misfiles at most
    /// a message or two.
    pub publish_end_epoch_ns: AtomicU64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SubscriberReport {
    pub seq: SeqCounts,
    /// Live messages received (including duplicates).
    pub live: u64,
    /// Live messages that arrived after the publishers stopped.
    pub late: u64,
    /// Messages from before this run (snapshots, backlog).
    pub stale: u64,
    /// Live messages without a `seq`.
    pub without_seq: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub resets: u64,
    /// Why the connection ended before it was told to stop, if it did.
    pub closed: Option<String>,
}

pub struct Subscriber {
    ws: Ws,
    checker: SeqChecker,
    report: SubscriberReport,
}

/// What a text frame was, as far as opening a subscription cares.
enum Heard {
    Answer,
    Error,
    Other,
}

/// Frames of an error kept in a report are cut to this length.
const ERROR_TEXT_BYTES: usize = 300;

impl Subscriber {
    /// Connects and subscribes; returns once the server has answered.
    pub async fn open(
        request: &WsRequest<'_>,
        role: &Role,
        run: &RunClock,
        answer_timeout: Duration,
    ) -> anyhow::Result<Subscriber> {
        debug_assert_eq!(request.credential, Credential::Token);
        let ws = connect_ws(request).await?;
        let mut sub = Subscriber {
            ws,
            checker: SeqChecker::default(),
            report: SubscriberReport::default(),
        };
        let (command, answer) = role.handshake();
        timeout(answer_timeout, sub.ws.send(Message::text(command)))
            .await
            .context("timed out sending the subscribe command")?
            .context("sending the subscribe command")?;
        let waiting = async {
            loop {
                match sub.ws.next().await {
                    Some(Ok(Message::Text(text))) => match sub.on_text(text.as_bytes(), run, answer) {
                        Heard::Answer => return Ok(()),
                        Heard::Error => {
                            bail!("the server refused to subscribe: {}", text.as_str())
                        }
                        Heard::Other => {}
                    },
                    Some(Ok(Message::Binary(bytes))) => match sub.on_msgpack(&bytes, run, answer) {
                        Heard::Answer => return Ok(()),
                        Heard::Error => bail!("the server refused to subscribe (a MessagePack error)"),
                        Heard::Other => {}
                    },
                    Some(Ok(Message::Close(frame))) => {
                        bail!("the server closed the connection: {}", close_reason(frame))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow!(e).context("reading the subscribe answer")),
                    None => bail!("the server closed the connection before answering"),
                }
            }
        };
        timeout(answer_timeout, waiting).await.with_context(|| {
            format!(
                "no {:?} from the server within {answer_timeout:?}",
                String::from_utf8_lossy(answer)
            )
        })??;
        Ok(sub)
    }

    /// Reads until `stop` turns true or the connection ends.
    pub async fn run(mut self, run: Arc<RunClock>, mut stop: watch::Receiver<bool>) -> SubscriberReport {
        // One wait for the whole run, not a new one per message: that
        // registration showed up in `perf`. A dropped sender ends the run too.
        let stopped = stop.wait_for(|stop| *stop);
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                biased;
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        self.on_text(text.as_bytes(), &run, b"");
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        self.on_msgpack(&bytes, &run, b"");
                    }
                    // Pings are answered by tungstenite; nothing else is expected.
                    Some(Ok(Message::Close(frame))) => {
                        self.report.closed = Some(close_reason(frame));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        self.report.closed = Some(e.to_string());
                        break;
                    }
                    None => {
                        self.report.closed = Some("the connection ended".to_owned());
                        break;
                    }
                },
                _ = &mut stopped => break,
            }
        }
        if self.report.closed.is_none() {
            let _ = timeout(Duration::from_secs(2), self.ws.close(None)).await;
        }
        self.report.seq = self.checker.counts();
        self.report
    }

    /// Holds the socket open without ever reading from it until `stop`
    /// turns true, then drops it: a client that stopped reading. Nothing
    /// it was sent is counted anywhere.
    pub async fn stall(self, mut stop: watch::Receiver<bool>) {
        // A dropped sender ends the wait too.
        let _ = stop.wait_for(|stop| *stop).await;
        drop(self.ws);
    }

    /// Handles one text frame; `answer` is the `type` awaited, if any.
    fn on_text(&mut self, text: &[u8], run: &RunClock, answer: &[u8]) -> Heard {
        let [ty, seq, t_ns] = scan::top_level(text, [b"type", b"seq", b"t_ns"]);
        let fields = mpscan::Fields {
            ty: ty.and_then(Raw::as_str),
            seq: seq.and_then(Raw::as_u64),
            t_ns: t_ns.and_then(Raw::as_u64),
        };
        self.on_fields(fields, text, run, answer)
    }

    /// Handles one binary frame (a MessagePack map, `--format msgpack`).
    fn on_msgpack(&mut self, bytes: &[u8], run: &RunClock, answer: &[u8]) -> Heard {
        self.on_fields(mpscan::fields(bytes), b"(MessagePack)", run, answer)
    }

    fn on_fields(&mut self, f: mpscan::Fields<'_>, text: &[u8], run: &RunClock, answer: &[u8]) -> Heard {
        let (seq, t_ns) = (f.seq, f.t_ns);
        let Some(ty) = f.ty else {
            return Heard::Other;
        };
        if ty == answer {
            return Heard::Answer;
        }
        match ty {
            b"market_update" | b"new_signal" | b"signal_update" | b"new_notification" => {
                self.on_update(seq, t_ns, run);
            }
            b"error" => {
                self.report.errors += 1;
                if self.report.first_error.is_none() {
                    let cut = &text[..text.len().min(ERROR_TEXT_BYTES)];
                    self.report.first_error = Some(String::from_utf8_lossy(cut).into_owned());
                }
                return Heard::Error;
            }
            b"reset" => self.report.resets += 1,
            _ => {}
        }
        Heard::Other
    }

    fn on_update(&mut self, seq: Option<u64>, t_ns: Option<u64>, run: &RunClock) {
        match t_ns {
            Some(t_ns) if t_ns >= run.run_start_epoch_ns => {
                let now = run.clock.now_epoch_ns();
                stats::record_delivery(now.saturating_sub(t_ns) / 1000);
                self.report.live += 1;
                if now > run.publish_end_epoch_ns.load(Ordering::Relaxed) {
                    self.report.late += 1;
                }
                match seq {
                    Some(seq) => {
                        self.checker.observe(seq);
                    }
                    None => self.report.without_seq += 1,
                }
            }
            _ => {
                self.report.stale += 1;
                if let Some(seq) = seq {
                    self.checker.baseline(seq);
                }
            }
        }
    }
}

fn close_reason(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!("close {}", u16::from(f.code)),
        Some(f) => format!("close {} ({})", u16::from(f.code), f.reason),
        None => "close without a code".to_owned(),
    }
}
