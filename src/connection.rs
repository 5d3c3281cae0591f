//! One WebSocket connection, after its handshake, run by one task: it
//! decodes commands and acts on them (subscriber endpoints) or publishes
//! what it reads (`/ws/ingest`), and drains the connection's outbox into
//! the socket, many frames per system call. The task owns the session's
//! state (its subscriptions, its rate-limit bucket); subscription changes
//! go to the fanout shard that owns each stream. It has no timers of its
//! own: the node's sweeper pings it and closes it on idleness, token
//! expiry or a stalled socket.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::auth::Identity;
use crate::fanout::Control;
use crate::limit::TokenBucket;
use crate::outbox::{CloseReason, Outbox, Outgoing, Overflow};
use crate::protocol::command::{self, Command};
use crate::protocol::encode::{self, Frame};
use crate::protocol::{Endpoint, ErrorCode, LogSafe, ProtocolError, StreamKey};
use crate::registry::{SignalFilter, Subscriber, SubscriberId};
use crate::server::Node;
use crate::sweep::WRITE_TIMEOUT;
use crate::wire::{self, Wire};

/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Queue entries a writer keeps allocated between batches.
const KEPT_BATCH_CAPACITY: usize = 64;
/// A batch this small is a quiet connection's: its queue is freed.
const IDLE_BATCH_CAPACITY: usize = 8;

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
                min_interval,
            } => {
                let forbidden: Vec<&str> = symbols
                    .iter()
                    .filter(|s| !self.identity.symbols.allows(s))
                    .map(|s| &**s)
                    .collect();
                if !forbidden.is_empty() {
                    // A few names, not a copy of a huge command.
                    let named = forbidden.iter().take(5).copied().collect::<Vec<_>>().join(", ");
                    let more = match forbidden.len() {
                        n if n > 5 => format!(" and {} more", n - 5),
                        _ => String::new(),
                    };
                    return Err(ProtocolError::new(
                        ErrorCode::Forbidden,
                        format!("your token does not allow {named}{more}"),
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
                    let new = self.symbols.insert(symbol.clone());
                    // Already subscribed: a new max_frequency is all that can change.
                    if !new && min_interval.is_none() {
                        continue;
                    }
                    let since = if new { since.get(&symbol).copied() } else { None };
                    let fetched = match &node.replication {
                        Some(r) if new => {
                            r.want(&key).await;
                            match since {
                                Some(since) => r.fetch_history(&key, since).await.ok(),
                                None => r.fetch_latest(&symbol).await.ok(),
                            }
                        }
                        _ => None,
                    };
                    controls.push((
                        key,
                        Control::Subscribe {
                            sub,
                            symbol,
                            since,
                            fetched,
                            min_interval,
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
            End::WriterGone => f.write_str("socket write failed or stalled"),
            End::Error(e) => write!(f, "read error: {e}"),
        }
    }
}

/// A socket whose handshake succeeded, ready to speak WebSocket.
pub struct Accepted {
    pub tcp: Arc<TcpStream>,
    /// Bytes read past the handshake.
    pub prefix: Bytes,
    pub config: WebSocketConfig,
    pub peer: SocketAddr,
}

impl Accepted {
    /// Takes the TCP stream back from an upgraded HTTP connection; `None`
    /// if it is not one (the server serves plain TCP; TLS ends at the proxy).
    pub fn from_upgrade(upgraded: Upgraded, config: WebSocketConfig, peer: SocketAddr) -> Option<Accepted> {
        let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
        Some(Accepted {
            tcp: Arc::new(parts.io.into_inner()),
            prefix: parts.read_buf,
            config,
            peer,
        })
    }
}

/// Both halves of a connection's socket: tungstenite reads, the
/// connection writes from its outbox (see [`crate::wire`]).
struct Link {
    tcp: Arc<TcpStream>,
    ws: WebSocketStream<Wire>,
    /// Frames taken from the outbox and not yet written, and how much of
    /// the first one was.
    batch: VecDeque<Outgoing>,
    offset: usize,
}

/// Unsent bytes the kernel may hold for one socket. Small, so that the
/// socket turns writable again as soon as a slow client reads a little
/// (the default hysteresis waits for a third of a multi-megabyte buffer):
/// a reading client shows progress within milliseconds, which tells it
/// from one that stopped reading (see `sweep::STUCK_AFTER`), and what a
/// lagging client has not taken stays in its outbox, where it can still
/// be conflated, instead of in the kernel.
const NOTSENT_LOWAT_BYTES: u32 = 16 * 1024;

impl Link {
    async fn new(accepted: Accepted, outbox: Arc<Outbox>) -> Link {
        // Best effort: a socket without it is still served, only its stalls
        // are told apart less quickly.
        let _ = socket2::SockRef::from(&*accepted.tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES);
        let wire = Wire::new(accepted.tcp.clone(), accepted.prefix, outbox.clone());
        outbox.set_socket(Some(accepted.tcp.clone()));
        let ws = WebSocketStream::from_raw_socket(wire, Role::Server, Some(accepted.config)).await;
        Link {
            tcp: accepted.tcp,
            ws,
            batch: VecDeque::new(),
            offset: 0,
        }
    }

    /// Writes what the socket takes now, without waiting.
    fn write_some(&mut self, outbox: &Outbox, node: &Node) -> std::io::Result<()> {
        let wrote = wire::write_batch(&self.tcp, &mut self.batch, &mut self.offset)?;
        if wrote.messages > 0 {
            node.metrics.wrote(wrote.messages, wrote.bytes);
        }
        if let Some(t) = wrote.oldest {
            node.metrics.publish_to_write.record(t.elapsed());
        }
        node.sweeper.wrote(&outbox.watch, wrote.progressed, wrote.done);
        if wrote.progressed && outbox.is_stuck() {
            outbox.set_stuck(false);
        }
        if wrote.done {
            outbox.written();
            // A burst grew the queue; keep what a usual batch needs, so that
            // thousands of connections do not each hold their largest burst,
            // and nothing for a connection that gets a frame now and then.
            if self.batch.capacity() <= IDLE_BATCH_CAPACITY {
                self.batch = VecDeque::new();
            } else if self.batch.capacity() > KEPT_BATCH_CAPACITY * 4 {
                self.batch.shrink_to(KEPT_BATCH_CAPACITY);
            }
        }
        Ok(())
    }

    /// Writes the whole batch, waiting for the socket as needed.
    async fn flush(&mut self, outbox: &Outbox, node: &Node) -> std::io::Result<()> {
        loop {
            self.write_some(outbox, node)?;
            if self.batch.is_empty() {
                return Ok(());
            }
            self.tcp.writable().await?;
        }
    }
}

/// What a connection does with the messages it reads.
pub(crate) trait Reader {
    /// Acts on a text message; a close reason cuts the client off.
    async fn on_text(&mut self, text: &str) -> Option<CloseReason>;

    /// A binary message: refused (1003) by every endpoint of the protocol.
    async fn on_binary(&mut self, _data: &[u8]) -> Option<CloseReason> {
        Some(CloseReason::Binary)
    }
}

impl Reader for Session {
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        Session::on_text(self, text).await
    }
}

/// How [`serve`]'s main loop ended.
enum Exit {
    /// A close was decided; queued frames and the close frame are owed.
    Closing(CloseReason),
    /// The client closed or the read side failed; queued frames are owed.
    ClientGone(End),
    /// The socket failed or stalled past the write timeout: just drop it.
    Dropped,
}

/// Runs one connection to its end in a single task: reads and acts on the
/// client's messages, writes the outbox whenever it has frames and the
/// socket takes them, and closes as PROTOCOL.md says. Timeouts and pings
/// come from the node's sweeper, through the outbox.
async fn serve(link: &mut Link, outbox: &Outbox, node: &Node, reader: &mut impl Reader) -> End {
    let exit = serve_open(link, outbox, node, reader).await;
    // Boxed: the closing steps' timers would otherwise sit in every open
    // connection's task for its whole life.
    Box::pin(close(link, outbox, node, exit)).await
}

/// Sends what is owed once the connection is ending.
async fn close(link: &mut Link, outbox: &Outbox, node: &Node, exit: Exit) -> End {
    match exit {
        Exit::Dropped => End::WriterGone,
        Exit::ClientGone(end) => {
            // Refuse new frames; send what is queued (tungstenite's reply to
            // the client's close among them) if the socket still takes it.
            outbox.close(CloseReason::GoingAway);
            outbox.take(&mut link.batch, &mut link.offset);
            let _ = tokio::time::timeout(CLOSE_GRACE, link.flush(outbox, node)).await;
            end
        }
        Exit::Closing(reason) => {
            outbox.take(&mut link.batch, &mut link.offset);
            link.batch.push_back(Outgoing {
                bytes: wire::close_frame(&reason),
                raw: true,
                received_at: None,
                key: None,
            });
            if let Ok(Ok(())) = tokio::time::timeout(WRITE_TIMEOUT, link.flush(outbox, node)).await {
                // Wait briefly for the client's close answer.
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(_)) = link.ws.next().await {}
                })
                .await;
            }
            End::Server(reason)
        }
    }
}

async fn serve_open(link: &mut Link, outbox: &Outbox, node: &Node, reader: &mut impl Reader) -> Exit {
    loop {
        if outbox.watch.abandoned() {
            return Exit::Dropped;
        }
        // While a batch is stuck on a full socket, new frames stay queued in
        // the outbox (which then owes no wake per frame).
        if link.batch.is_empty() {
            if let Some(reason) = outbox.take(&mut link.batch, &mut link.offset) {
                return Exit::Closing(reason);
            }
        }
        if !link.batch.is_empty() {
            if link.write_some(outbox, node).is_err() {
                return Exit::Dropped;
            }
            if link.batch.is_empty() {
                continue;
            }
        }
        // A client whose socket takes nothing is not read from either: its
        // commands and pings would only queue answers it does not take.
        let stalled = !link.batch.is_empty();
        // Shutdown, like every timeout, arrives as a close in the outbox.
        tokio::select! {
            biased;
            _ = link.tcp.writable(), if stalled => {}
            _ = outbox.notified() => {}
            msg = link.ws.next(), if !stalled => {
                node.sweeper.heard(&outbox.watch);
                match msg {
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                        return Exit::ClientGone(End::ClientClosed)
                    }
                    Some(Ok(Message::Text(text))) => {
                        // Boxed: acting on a command is a large future that an
                        // idle connection's task need not carry.
                        if let Some(reason) = Box::pin(reader.on_text(&text)).await {
                            outbox.close(reason);
                        }
                    }
                    Some(Ok(Message::Binary(data))) => {
                        if let Some(reason) = reader.on_binary(&data).await {
                            outbox.close(reason);
                        }
                    }
                    // Pongs, and pings and closes that tungstenite answers by
                    // itself on the next read (see `Wire`).
                    Some(Ok(_)) => {}
                    Some(Err(e)) => match close_reason_for(&e) {
                        Some(reason) => {
                            outbox.close(reason);
                        }
                        None => return Exit::ClientGone(End::Error(e.to_string())),
                    },
                }
            }
        }
    }
}

/// Runs a subscriber connection to its end.
pub async fn serve_subscriber(accepted: Accepted, node: Arc<Node>, endpoint: Endpoint, identity: Identity) {
    let id = SubscriberId::next();
    let peer = accepted.peer;
    let overflow = match endpoint {
        Endpoint::MarketData => node.config.market_data_overflow,
        _ => Overflow::Close,
    };
    let capacity = node.config.outbound_queue_frames.get();
    let outbox = Arc::new(
        Outbox::counted(capacity, overflow, node.metrics.backlog.clone())
            .with_max_bytes(node.config.outbound_queue_bytes.get()),
    );
    let sub = Arc::new(Subscriber {
        id,
        outbox: outbox.clone(),
        access: identity.symbols.clone(),
    });
    let opened = Instant::now();
    tracing::info!(conn = id.0, endpoint = endpoint.name(), user = %LogSafe(&identity.user), %peer, "connection opened");
    node.metrics.connection_opened(endpoint);
    node.sweeper
        .watch(id.0, outbox.clone(), identity.expires_at, &node.shutdown);

    // Boxed, like the other one-off steps: the task keeps only what it
    // needs while the connection is open. (Not behind a shared helper: an
    // async fn's parameters stay in its future for its whole life, and
    // `accepted` there cost every idle connection 0.5 KiB.)
    let mut link = Box::pin(Link::new(accepted, outbox.clone())).await;
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
    let end = serve(&mut link, &outbox, &node, &mut session).await;
    closed(&node, id, &outbox);
    session.detach();
    node.metrics.connection_closed(endpoint);
    tracing::info!(
        conn = id.0,
        endpoint = endpoint.name(),
        user = %LogSafe(&session.identity.user),
        reason = %end,
        secs = opened.elapsed().as_secs_f64(),
        "connection closed"
    );
}

/// A connection's socket ended: it closes now, not when fanout drops the
/// outbox, and the sweeper stops watching it.
fn closed(node: &Node, id: SubscriberId, outbox: &Outbox) {
    outbox.set_socket(None);
    node.sweeper.forget(id.0);
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

/// A publisher's `/ws/ingest` connection: each text frame is a message or
/// an array of them; only errors are answered.
struct Publisher {
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    key: Option<usize>,
}

impl Reader for Publisher {
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        // Boxed: publishing is a deep future that this connection's task
        // should not carry inline while it waits for the next message.
        Box::pin(publish_frame(&self.node, &self.outbox, self.key, text.as_bytes())).await;
        None
    }
}

/// Runs a connection of the test-only `/ws/echo` route (feature
/// `test-echo`) to its end, through the same socket handling as the
/// protocol's endpoints, so that the Autobahn cases judge that.
#[cfg(feature = "test-echo")]
pub(crate) async fn serve_test_echo(
    accepted: Accepted,
    node: Arc<Node>,
    reader: &mut impl Reader,
    outbox: Arc<Outbox>,
) {
    let id = SubscriberId::next();
    node.sweeper.watch(id.0, outbox.clone(), None, &node.shutdown);
    let mut link = Link::new(accepted, outbox.clone()).await;
    serve(&mut link, &outbox, &node, reader).await;
    closed(&node, id, &outbox);
}

/// Runs a publisher's `/ws/ingest` connection to its end.
pub async fn serve_ingest(accepted: Accepted, node: Arc<Node>, publisher: Option<usize>) {
    let id = SubscriberId::next();
    tracing::info!(conn = id.0, endpoint = "ingest", peer = %accepted.peer, "connection opened");
    node.metrics.connection_opened(Endpoint::Ingest);
    let outbox = Arc::new(
        Outbox::new(node.config.outbound_queue_frames.get(), Overflow::Close)
            .with_max_bytes(node.config.outbound_queue_bytes.get()),
    );
    node.sweeper.watch(id.0, outbox.clone(), None, &node.shutdown);
    let mut link = Link::new(accepted, outbox.clone()).await;
    let mut reader = Publisher {
        node: node.clone(),
        outbox: outbox.clone(),
        key: publisher,
    };
    let end = serve(&mut link, &outbox, &node, &mut reader).await;
    closed(&node, id, &outbox);
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
    if outcome.unknown > 0 {
        let frame = json!({"type": "error", "code": "outcome_unknown", "message": format!("{} entries sent to Redis got no answer in time: they may or may not have been published; retry them with the same publish_id to have them published once", outcome.unknown)});
        outbox.push(Frame::from(frame.to_string()), None);
    }
    if outcome.overloaded > 0 {
        let frame = json!({"type": "error", "code": "overloaded", "message": format!("{} entries not taken: the server is saturated, retry", outcome.overloaded)});
        outbox.push(Frame::from(frame.to_string()), None);
    }
    if outcome.in_progress > 0 {
        let frame = json!({"type": "error", "code": "in_progress", "message": format!("{} entries not taken: an entry with the same publish_id is being published; retry if that one fails", outcome.in_progress)});
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
