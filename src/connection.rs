//! One WebSocket connection, after its handshake: a reader task that
//! decodes commands and acts on them (subscriber endpoints) or publishes
//! what it reads (`/ws/ingest`), and a writer task that drains the
//! connection's outbox, writing many frames per system call. The reader
//! owns the session's state (its subscriptions, its rate-limit bucket);
//! subscription changes go to the fanout shard that owns each stream.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::auth::Identity;
use crate::fanout::Control;
use crate::limit::TokenBucket;
use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Outbox, Outgoing, Overflow};
use crate::protocol::command::{self, Command};
use crate::protocol::encode::{self, Frame};
use crate::protocol::{Endpoint, ErrorCode, ProtocolError, StreamKey};
use crate::registry::{SignalFilter, Subscriber, SubscriberId};
use crate::server::Node;

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// How long a writer may be stuck on one socket write before the client
/// is dropped as a slow consumer (it reads nothing, or too little).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Queue entries a writer keeps allocated between batches.
const KEPT_BATCH_CAPACITY: usize = 64;

/// The command rate limit of one connection.
struct RateLimit {
    bucket: TokenBucket,
    /// Refused commands since the last accepted one.
    strikes: u32,
}

impl RateLimit {
    fn new(rate: f64, burst: u32) -> RateLimit {
        RateLimit {
            bucket: TokenBucket::new(rate, burst),
            strikes: 0,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.bucket.take(1, now) {
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

/// The state of one subscriber connection, driven by its commands.
struct Session {
    node: Arc<Node>,
    endpoint: Endpoint,
    identity: Identity,
    sub: Arc<Subscriber>,
    symbols: HashSet<Arc<str>>,
    limit: RateLimit,
}

impl Session {
    fn reply(&self, frame: Frame) {
        self.sub.outbox.push(frame, None);
    }

    fn error(&self, err: &ProtocolError, id: Option<&serde_json::Value>) {
        self.reply(encode::error(err, id));
    }

    /// Acts on one text frame. Returns a close reason when the client
    /// must be cut off.
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        // Decoded first, so that even a refusal echoes the command's `id`.
        let envelope = command::decode(text.as_bytes(), self.endpoint);
        let id = envelope.id.as_ref();
        if !self.limit.take(Instant::now()) {
            self.node.metrics.rate_limited();
            if self.limit.strikes >= self.node.config.rate_limit_strikes {
                self.node.metrics.rate_limit_closed();
                return Some(CloseReason::RateLimited);
            }
            let err = ProtocolError::new(ErrorCode::RateLimited, "too many commands: slow down");
            self.error(&err, id);
            return None;
        }
        let result = match envelope.command {
            // Boxed: acting may wait on Redis, a large future that every idle
            // connection's task would otherwise carry inline.
            Ok(c) => Box::pin(self.act(c, id)).await,
            Err(e) => Err(e),
        };
        self.node.metrics.command(result.is_ok());
        if let Err(e) = result {
            self.error(&e, id);
        }
        None
    }

    async fn act(&mut self, command: Command, id: Option<&serde_json::Value>) -> Result<(), ProtocolError> {
        let node = self.node.clone();
        let fanout = &node.fanout;
        match command {
            Command::Ping => self.reply(encode::pong(id)),
            Command::Subscribe {
                symbols,
                since,
                max_frequency,
            } => {
                let forbidden: Vec<&str> = symbols
                    .iter()
                    .filter(|s| !self.identity.symbols.allows(s))
                    .map(|s| &**s)
                    .collect();
                if !forbidden.is_empty() {
                    return Err(ProtocolError::new(
                        ErrorCode::Forbidden,
                        format!("your token does not allow {}", forbidden.join(", ")),
                    ));
                }
                let new = symbols.iter().filter(|s| !self.symbols.contains(*s)).count();
                let limit = self.node.config.max_subscriptions.get();
                if self.symbols.len() + new > limit {
                    return Err(ProtocolError::new(
                        ErrorCode::TooManySubscriptions,
                        format!("at most {limit} symbols per connection"),
                    ));
                }
                // Cluster mode: listen to the streams' groups and read what
                // Redis holds of them first, so that `subscribed` means every
                // later publish arrives (see DESIGN.md, "Replication").
                let mut controls = Vec::with_capacity(symbols.len());
                for symbol in &symbols {
                    let key = StreamKey::Symbol(symbol.clone());
                    let (sub, symbol) = (self.sub.clone(), symbol.clone());
                    if !self.symbols.insert(symbol.clone()) {
                        // Already subscribed: a new max_frequency is all that can change.
                        if max_frequency.is_some() {
                            let (since, fetched) = (None, None);
                            controls.push((
                                key,
                                Control::Subscribe {
                                    sub,
                                    symbol,
                                    since,
                                    fetched,
                                    max_frequency,
                                },
                            ));
                        }
                        continue;
                    }
                    let since = since.get(&symbol).copied();
                    let fetched = match &node.replication {
                        None => None,
                        Some(r) => {
                            r.want(&key).await;
                            match since {
                                Some(since) => r.fetch_history(&key, since).await.ok(),
                                None => r.fetch_latest(&symbol).await.ok(),
                            }
                        }
                    };
                    controls.push((
                        key,
                        Control::Subscribe {
                            sub,
                            symbol,
                            since,
                            fetched,
                            max_frequency,
                        },
                    ));
                }
                self.reply(encode::subscribed(&symbols, id));
                for (key, control) in controls {
                    fanout.control(&key, control);
                }
            }
            Command::Unsubscribe { symbols } => {
                for symbol in &symbols {
                    if self.symbols.remove(symbol) {
                        let key = StreamKey::Symbol(symbol.clone());
                        if let Some(r) = &node.replication {
                            r.unwant(&key);
                        }
                        fanout.control(
                            &key,
                            Control::Unsubscribe {
                                id: self.sub.id,
                                symbol: symbol.clone(),
                            },
                        );
                    }
                }
                self.reply(encode::unsubscribed(&symbols, id));
            }
            Command::Filter {
                symbol,
                signal_type,
                since,
            } => {
                if let Some(s) = &symbol {
                    if !self.identity.symbols.allows(s) {
                        return Err(ProtocolError::new(
                            ErrorCode::Forbidden,
                            format!("your token does not allow {s}"),
                        ));
                    }
                }
                let answer = encode::filtered(symbol.as_deref(), signal_type.map(|t| t.wire_name()), id);
                let filter = SignalFilter { symbol, signal_type };
                let fetched = match (&node.replication, since) {
                    (Some(r), Some(since)) => r.fetch_history(&StreamKey::Signals, since).await.ok(),
                    _ => None,
                };
                let sub = self.sub.clone();
                fanout.control(
                    &StreamKey::Signals,
                    Control::Filter {
                        sub,
                        filter,
                        since,
                        answer: Some(answer),
                        fetched,
                    },
                );
            }
            Command::MarkRead { notification_id, key } => {
                let user = self.identity.user.clone();
                if let Some(r) = &node.replication {
                    let frame = encode::notification_read(&notification_id, None);
                    let origin = format!("{}/{}", r.node_id(), self.sub.id.0);
                    match r.mark_read(&user, &key, &frame, &origin).await {
                        Ok(true) => {
                            self.reply(encode::notification_read(&notification_id, id));
                            return Ok(());
                        }
                        Ok(false) => {
                            return Err(ProtocolError::new(
                                ErrorCode::InvalidField,
                                format!(
                                    "no notification `{}` for this user",
                                    key.chars().take(64).collect::<String>()
                                ),
                            ))
                        }
                        // Redis is away: mark it on this node only, as embedded mode does.
                        Err(e) => tracing::warn!(error = %e, "mark_read not stored in Redis"),
                    }
                }
                fanout.control(
                    &StreamKey::User(user.clone()),
                    Control::MarkRead {
                        user,
                        key,
                        notification_id,
                        from: self.sub.clone(),
                        echo_id: id.cloned(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Joins the streams a connection gets without asking.
    async fn attach(&self) {
        let fanout = &self.node.fanout;
        if let (Some(r), Some(key)) = (&self.node.replication, self.own_stream()) {
            r.want(&key).await;
        }
        match self.endpoint {
            Endpoint::TradingSignals => fanout.control(
                &StreamKey::Signals,
                Control::Filter {
                    sub: self.sub.clone(),
                    filter: SignalFilter::default(),
                    since: None,
                    answer: None,
                    fetched: None,
                },
            ),
            Endpoint::Notifications => {
                let user = self.identity.user.clone();
                let fetched = match &self.node.replication {
                    Some(r) => r.fetch_unread(&user).await.ok(),
                    None => None,
                };
                let sub = self.sub.clone();
                fanout.control(
                    &StreamKey::User(user.clone()),
                    Control::AttachUser { sub, user, fetched },
                );
            }
            _ => {}
        }
    }

    /// The stream a signals or notifications connection follows by itself.
    fn own_stream(&self) -> Option<StreamKey> {
        match self.endpoint {
            Endpoint::TradingSignals => Some(StreamKey::Signals),
            Endpoint::Notifications => Some(StreamKey::User(self.identity.user.clone())),
            _ => None,
        }
    }

    /// Leaves every stream, so fanout forgets this connection (and, in
    /// cluster mode, the node stops listening to groups nobody needs).
    fn detach(&self) {
        let fanout = &self.node.fanout;
        let id = self.sub.id;
        if let Some(r) = &self.node.replication {
            for symbol in &self.symbols {
                r.unwant(&StreamKey::Symbol(symbol.clone()));
            }
            if let Some(key) = self.own_stream() {
                r.unwant(&key);
            }
        }
        for symbol in &self.symbols {
            fanout.control(
                &StreamKey::Symbol(symbol.clone()),
                Control::Unsubscribe {
                    id,
                    symbol: symbol.clone(),
                },
            );
        }
        match self.endpoint {
            Endpoint::TradingSignals => fanout.control(&StreamKey::Signals, Control::RemoveSignals { id }),
            Endpoint::Notifications => {
                let user = self.identity.user.clone();
                fanout.control(&StreamKey::User(user.clone()), Control::DetachUser { id, user });
            }
            _ => {}
        }
    }
}

/// Why a connection ended, for its log line.
enum End {
    ClientClosed,
    Server(CloseReason),
    WriterGone,
    Error(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => f.write_str("client closed"),
            End::Server(r) => write!(f, "{} ({})", r.text(), r.code()),
            End::WriterGone => f.write_str("socket write failed or timed out"),
            End::Error(e) => write!(f, "read error: {e}"),
        }
    }
}

/// Runs a subscriber connection to its end.
pub async fn serve_subscriber(
    ws: Socket,
    node: Arc<Node>,
    endpoint: Endpoint,
    identity: Identity,
    peer: SocketAddr,
) {
    let id = SubscriberId::next();
    let overflow = match endpoint {
        Endpoint::MarketData => node.config.market_data_overflow,
        _ => Overflow::Close,
    };
    let capacity = node.config.outbound_queue_frames.get();
    let outbox = Arc::new(Outbox::counted(capacity, overflow, node.metrics.backlog.clone()));
    let sub = Arc::new(Subscriber {
        id,
        outbox: outbox.clone(),
        access: identity.symbols.clone(),
    });
    let opened = Instant::now();
    tracing::info!(conn = id.0, endpoint = endpoint.name(), user = %identity.user, %peer, "connection opened");
    node.metrics.connection_opened(endpoint);

    let (sink, mut stream) = ws.split();
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        node.metrics.clone(),
        node.config.ping_interval,
    ));
    let limit = RateLimit::new(node.config.commands_per_second, node.config.command_burst);
    let mut session = Session {
        node: node.clone(),
        endpoint,
        identity,
        sub,
        symbols: HashSet::new(),
        limit,
    };
    Box::pin(session.attach()).await;

    let expiry = session.identity.expires_at.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    let end = read_loop(&mut session, &mut stream, &mut writer, expiry).await;
    session.detach();
    finish(&outbox, &mut stream, writer, &end).await;

    node.metrics.connection_closed(endpoint);
    tracing::info!(
        conn = id.0,
        endpoint = endpoint.name(),
        user = %session.identity.user,
        reason = %end,
        secs = opened.elapsed().as_secs_f64(),
        "connection closed"
    );
}

async fn read_loop(
    session: &mut Session,
    stream: &mut SplitStream<Socket>,
    writer: &mut tokio::task::JoinHandle<()>,
    expiry: Option<tokio::time::Instant>,
) -> End {
    let node = session.node.clone();
    let idle_timeout = node.config.idle_timeout;
    let mut last_heard = Instant::now();
    let mut idle_check = tokio::time::interval(idle_timeout / 4);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let expired = async {
        match expiry {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    loop {
        let reason = tokio::select! {
            biased;
            _ = node.shutdown.wait() => CloseReason::GoingAway,
            _ = &mut expired => CloseReason::TokenExpired,
            _ = &mut *writer => return End::WriterGone,
            _ = idle_check.tick() => {
                if last_heard.elapsed() < idle_timeout {
                    continue;
                }
                CloseReason::IdleTimeout
            }
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return End::ClientClosed,
                    Some(Ok(Message::Text(text))) => match session.on_text(&text).await {
                        Some(reason) => reason,
                        None => continue,
                    },
                    Some(Ok(Message::Binary(_))) => CloseReason::Binary,
                    // Keep reading: the next read sends tungstenite's close reply and ends.
                    Some(Ok(Message::Close(_))) => continue,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => match close_reason_for(&e) {
                        Some(reason) => reason,
                        None => return End::Error(e.to_string()),
                    },
                }
            }
        };
        session.sub.outbox.close(reason.clone());
        return End::Server(reason);
    }
}

/// The close code owed for a read error, if the connection can still be told.
fn close_reason_for(e: &WsError) -> Option<CloseReason> {
    match e {
        WsError::Capacity(_) => Some(CloseReason::TooBig),
        WsError::Utf8(_) => Some(CloseReason::BadUtf8),
        WsError::Protocol(_) => Some(CloseReason::ProtocolViolation),
        _ => None,
    }
}

/// Lets the writer send what it owes and the close frame, then waits
/// briefly for the client's close answer.
async fn finish(
    outbox: &Outbox,
    stream: &mut SplitStream<Socket>,
    mut writer: tokio::task::JoinHandle<()>,
    end: &End,
) {
    match end {
        End::Server(_) => {
            if tokio::time::timeout(WRITE_TIMEOUT, &mut writer).await.is_err() {
                writer.abort();
                return;
            }
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
        End::WriterGone => {}
        End::ClientClosed | End::Error(_) => {
            outbox.close(CloseReason::GoingAway);
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
            writer.abort();
        }
    }
}

/// Drains the outbox into the socket: every queued frame is fed into the
/// WebSocket's write buffer and the batch goes out with one flush.
async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    ping_every: Duration,
) {
    let mut batch: VecDeque<Outgoing> = VecDeque::new();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let close = tokio::select! {
            close = outbox.next_batch(&mut batch) => close,
            _ = ping.tick() => {
                match tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => continue,
                    _ => return,
                }
            }
        };
        if !batch.is_empty() {
            let frames = batch.len() as u64;
            let oldest = batch.iter().find_map(|o| o.received_at);
            let mut bytes = 0u64;
            let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
                for o in batch.drain(..) {
                    bytes += o.frame.len() as u64;
                    sink.feed(Message::Text(o.frame)).await?;
                }
                sink.flush().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {
                    outbox.written();
                    metrics.wrote(frames, bytes);
                    if let Some(t) = oldest {
                        metrics.publish_to_write.record(t.elapsed());
                    }
                }
                Ok(Err(_)) => return,
                Err(_) => {
                    if outbox.close(CloseReason::SlowConsumer) {
                        metrics.slow_consumer_cut();
                    }
                    return;
                }
            }
            batch.clear();
            // A burst grew the queue; keep what a usual batch needs, so that
            // thousands of connections do not each hold their largest burst.
            if batch.capacity() > KEPT_BATCH_CAPACITY * 4 {
                batch.shrink_to(KEPT_BATCH_CAPACITY);
            }
        }
        if let Some(reason) = close {
            let frame = CloseFrame {
                code: CloseCode::from(reason.code()),
                reason: reason.text().into(),
            };
            let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
            return;
        }
    }
}

/// Runs a publisher's `/ws/ingest` connection: each text frame is a
/// message or an array of them; only errors are answered.
pub async fn serve_ingest(ws: Socket, node: Arc<Node>, publisher: Option<usize>, peer: SocketAddr) {
    let id = SubscriberId::next();
    tracing::info!(conn = id.0, endpoint = "ingest", %peer, "connection opened");
    node.metrics.connection_opened(Endpoint::Ingest);
    let outbox = Arc::new(Outbox::new(
        node.config.outbound_queue_frames.get(),
        Overflow::Close,
    ));
    let (sink, mut stream) = ws.split();
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        node.metrics.clone(),
        node.config.ping_interval,
    ));
    let end = loop {
        let msg = tokio::select! {
            biased;
            _ = node.shutdown.wait() => {
                outbox.close(CloseReason::GoingAway);
                break End::Server(CloseReason::GoingAway);
            }
            _ = &mut writer => break End::WriterGone,
            msg = stream.next() => msg,
        };
        let reason = match msg {
            None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => break End::ClientClosed,
            // Keep reading: the next read sends tungstenite's close reply and ends.
            Some(Ok(Message::Close(_))) => continue,
            Some(Ok(Message::Text(text))) => {
                publish_frame(&node, &outbox, publisher, text.as_bytes()).await;
                continue;
            }
            Some(Ok(Message::Binary(_))) => CloseReason::Binary,
            Some(Ok(_)) => continue,
            Some(Err(e)) => match close_reason_for(&e) {
                Some(r) => r,
                None => break End::Error(e.to_string()),
            },
        };
        outbox.close(reason.clone());
        break End::Server(reason);
    };
    finish(&outbox, &mut stream, writer, &end).await;
    node.metrics.connection_closed(Endpoint::Ingest);
    tracing::info!(conn = id.0, endpoint = "ingest", reason = %end, "connection closed");
}

async fn publish_frame(node: &Node, outbox: &Outbox, publisher: Option<usize>, bytes: &[u8]) {
    let outcome = match node.ingress.publish_as(bytes, publisher).await {
        Ok(o) => o,
        Err(e) => {
            outbox.push(encode::error(&e, None), None);
            return;
        }
    };
    for (index, e) in &outcome.errors {
        let frame = json!({"type": "error", "code": e.code.as_str(), "message": e.message, "index": index});
        outbox.push(Frame::from(frame.to_string()), None);
    }
    if outcome.unavailable > 0 {
        let frame = json!({"type": "error", "code": "unavailable", "message": format!("{} entries not taken: Redis is unreachable, retry", outcome.unavailable)});
        outbox.push(Frame::from(frame.to_string()), None);
    }
    if outcome.overloaded > 0 {
        let frame = json!({"type": "error", "code": "overloaded", "message": format!("{} entries not taken: the server is saturated, retry", outcome.overloaded)});
        outbox.push(Frame::from(frame.to_string()), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = RateLimit::new(10.0, 3);
        let t0 = Instant::now();
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert_eq!(b.strikes, 1);
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert_eq!(b.strikes, 0);
    }
}
