//! One subscriber connection's session, with no socket: a command goes in
//! (a text frame), effects come out (answers for the client, controls for
//! the fanout shards that own the streams, or a close), in the manner of
//! quinn's protocol state machines. The session owns the connection's
//! state: its subscriptions and its command rate limit. The socket loop
//! carries bytes and applies the effects in order.
//!
//! In cluster mode acting on a command may first wait on Redis (listening
//! to a stream group, reading what Redis holds of a stream), so that
//! `subscribed` means every later publish arrives (DESIGN.md,
//! "Replication"); without Redis the session does no I/O at all, which is
//! how its tests drive it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::auth::Identity;
use crate::fanout::Control;
use crate::limit::TokenBucket;
use crate::metrics::Metrics;
use crate::protocol::close::CloseReason;
use crate::protocol::command::{self, Command};
use crate::protocol::encode::{self, Frame};
use crate::protocol::msgpack;
use crate::protocol::{Endpoint, ErrorCode, ProtocolError, StreamKey, Streams};
use crate::registry::{SignalFilter, Subscriber};
use crate::replication::Replication;

use super::subscriptions::Subscriptions;

/// What acting on a command asks of the connection, in order.
pub enum Effect {
    /// A frame for this client.
    Reply(Frame),
    /// A change for the fanout shard that owns the stream.
    Control(StreamKey, Control),
    /// Cut the client off.
    Close(CloseReason),
}

impl std::fmt::Debug for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Reply(frame) => write!(f, "Reply({})", frame.as_str()),
            Effect::Control(key, _) => write!(f, "Control({key:?}, ..)"),
            Effect::Close(reason) => write!(f, "Close({reason:?})"),
        }
    }
}

/// What every session of a node shares: its limits and the handles it
/// uses. One per node, so that a session holds one pointer to it.
pub struct SessionEnv {
    pub limits: SessionLimits,
    pub metrics: Arc<Metrics>,
    /// Cluster mode's link to Redis.
    pub replication: Option<Arc<Replication>>,
}

/// The limits a session enforces.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_subscriptions: usize,
    pub commands_per_second: f64,
    pub command_burst: u32,
    /// Refused commands in a row before the close (1008).
    pub rate_limit_strikes: u32,
}

/// The command rate limit of one connection.
struct RateLimit {
    bucket: TokenBucket,
    /// Refused commands since the last accepted one.
    strikes: u32,
}

impl RateLimit {
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

/// The state of one subscriber connection, driven by its commands. A
/// socket of `/ws/stream/` is one session carrying several kinds of
/// stream (`streams`), each kept by the same rules as on its own endpoint:
/// one subscriber, one outbox, one rate limit for all of them.
pub struct Session {
    endpoint: Endpoint,
    streams: Streams,
    /// Who the token said (`sub`); what it allows is `sub.access`, and its
    /// expiry the sweeper's.
    pub user: Arc<str>,
    sub: Arc<Subscriber>,
    symbols: Subscriptions,
    limit: RateLimit,
    env: Arc<SessionEnv>,
}

impl Session {
    pub fn new(
        endpoint: Endpoint,
        streams: Streams,
        identity: Identity,
        sub: Arc<Subscriber>,
        env: Arc<SessionEnv>,
    ) -> Session {
        Session {
            endpoint,
            streams,
            user: identity.user,
            sub,
            symbols: Subscriptions::default(),
            limit: RateLimit {
                bucket: TokenBucket::new(env.limits.commands_per_second, env.limits.command_burst),
                strikes: 0,
            },
            env,
        }
    }

    /// Acts on one text frame received at `now`.
    pub async fn on_text(&mut self, text: &str, now: Instant, out: &mut Vec<Effect>) {
        // Decoded first, so that even a refusal echoes the command's `id`.
        let envelope = command::decode_on(text.as_bytes(), self.endpoint, self.streams);
        self.on_envelope(envelope, now, out).await;
    }

    /// Acts on one binary frame holding a MessagePack command (a socket
    /// opened with `format=msgpack`, PROTOCOL.md 5.3); bytes that are not
    /// MessagePack get `invalid_json`, as text that is not JSON does.
    pub async fn on_msgpack(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Effect>) {
        let envelope = match msgpack::decode(bytes) {
            Ok(value) => command::decode_value(value, self.endpoint, self.streams),
            Err(why) => command::Envelope {
                id: None,
                command: Err(ProtocolError::new(ErrorCode::InvalidJson, why)),
            },
        };
        self.on_envelope(envelope, now, out).await;
    }

    async fn on_envelope(&mut self, envelope: command::Envelope, now: Instant, out: &mut Vec<Effect>) {
        let id = envelope.id.as_ref();
        if !self.limit.take(now) {
            self.env.metrics.rate_limited();
            if self.limit.strikes >= self.env.limits.rate_limit_strikes {
                self.env.metrics.rate_limit_closed();
                out.push(Effect::Close(CloseReason::RateLimited));
                return;
            }
            let err = ProtocolError::new(ErrorCode::RateLimited, "too many commands: slow down");
            out.push(Effect::Reply(encode::error(&err, id)));
            return;
        }
        let result = match envelope.command {
            // Boxed: acting may wait on Redis, a large future that every idle
            // connection's task would otherwise carry inline.
            Ok(c) => Box::pin(self.act(c, id, out)).await,
            Err(e) => Err(e),
        };
        self.env.metrics.command(result.is_ok());
        if let Err(e) = result {
            out.push(Effect::Reply(encode::error(&e, id)));
        }
    }

    async fn act(
        &mut self,
        command: Command,
        id: Option<&Value>,
        out: &mut Vec<Effect>,
    ) -> Result<(), ProtocolError> {
        match command {
            Command::Ping => out.push(Effect::Reply(encode::pong(id))),
            Command::Subscribe {
                symbols,
                since,
                min_interval,
            } => {
                let forbidden: Vec<&str> = symbols
                    .iter()
                    .filter(|s| !self.sub.access.allows(s))
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
                let new = symbols.iter().filter(|s| !self.symbols.contains(s)).count();
                let limit = self.env.limits.max_subscriptions;
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
                    let new = self.symbols.insert(symbol.clone());
                    // Already subscribed: a new max_frequency is all that can change.
                    if !new && min_interval.is_none() {
                        continue;
                    }
                    let since = if new { since.get(symbol).copied() } else { None };
                    let fetched = match &self.env.replication {
                        Some(r) if new => {
                            r.want(&key).await;
                            match since {
                                Some(since) => r.fetch_history(&key, since).await.ok(),
                                None => r.fetch_latest(symbol).await.ok(),
                            }
                        }
                        _ => None,
                    };
                    let control = Control::Subscribe {
                        sub: self.sub.clone(),
                        symbol: symbol.clone(),
                        since,
                        fetched,
                        min_interval,
                    };
                    controls.push(Effect::Control(key, control));
                }
                out.push(Effect::Reply(encode::subscribed(&symbols, id)));
                out.extend(controls);
            }
            Command::Unsubscribe { symbols } => {
                for symbol in &symbols {
                    if self.symbols.remove(symbol) {
                        let key = StreamKey::Symbol(symbol.clone());
                        if let Some(r) = &self.env.replication {
                            r.unwant(&key);
                        }
                        let control = Control::Unsubscribe {
                            id: self.sub.id,
                            symbol: symbol.clone(),
                        };
                        out.push(Effect::Control(key, control));
                    }
                }
                out.push(Effect::Reply(encode::unsubscribed(&symbols, id)));
            }
            Command::Filter {
                symbol,
                signal_type,
                since,
            } => {
                if let Some(s) = &symbol {
                    if !self.sub.access.allows(s) {
                        return Err(ProtocolError::new(
                            ErrorCode::Forbidden,
                            format!("your token does not allow {s}"),
                        ));
                    }
                }
                let answer = encode::filtered(symbol.as_deref(), signal_type.map(|t| t.wire_name()), id);
                let filter = SignalFilter { symbol, signal_type };
                let fetched = match (&self.env.replication, since) {
                    (Some(r), Some(since)) => r.fetch_history(&StreamKey::Signals, since).await.ok(),
                    _ => None,
                };
                let control = Control::Filter {
                    sub: self.sub.clone(),
                    filter,
                    since,
                    answer: Some(answer),
                    fetched,
                };
                out.push(Effect::Control(StreamKey::Signals, control));
            }
            Command::MarkRead { notification_id, key } => {
                let user = self.user.clone();
                if let Some(r) = &self.env.replication {
                    let frame = encode::notification_read(&notification_id, None);
                    let origin = format!("{}/{}", r.node_id(), self.sub.id.0);
                    match r.mark_read(&user, &key, &frame, &origin).await {
                        Ok(true) => {
                            out.push(Effect::Reply(encode::notification_read(&notification_id, id)));
                            return Ok(());
                        }
                        Ok(false) => return Err(no_such_notification(&key)),
                        // Redis is away: mark it on this node only, as embedded mode does.
                        Err(e) => tracing::warn!(error = %e, "mark_read not stored in Redis"),
                    }
                }
                let control = Control::MarkRead {
                    user: user.clone(),
                    key,
                    notification_id,
                    from: self.sub.clone(),
                    echo_id: id.cloned(),
                };
                out.push(Effect::Control(StreamKey::User(user), control));
            }
        }
        Ok(())
    }

    /// Joins the streams a connection gets without asking: the signals
    /// stream (every allowed signal until a `filter`) and the user's
    /// notifications (the unread ones first), where the socket carries them.
    pub async fn attach(&self, out: &mut Vec<Effect>) {
        if let Some(r) = &self.env.replication {
            for key in self.own_streams().into_iter().flatten() {
                r.want(&key).await;
            }
        }
        if self.streams.carries(Streams::TRADING_SIGNALS) {
            out.push(Effect::Control(
                StreamKey::Signals,
                Control::Filter {
                    sub: self.sub.clone(),
                    filter: SignalFilter::default(),
                    since: None,
                    answer: None,
                    fetched: None,
                },
            ));
        }
        if self.streams.carries(Streams::NOTIFICATIONS) {
            let user = self.user.clone();
            let fetched = match &self.env.replication {
                Some(r) => r.fetch_unread(&user).await.ok(),
                None => None,
            };
            let sub = self.sub.clone();
            out.push(Effect::Control(
                StreamKey::User(user.clone()),
                Control::AttachUser { sub, user, fetched },
            ));
        }
    }

    /// The streams a connection follows by itself: signals, the user's
    /// notifications, or both.
    fn own_streams(&self) -> [Option<StreamKey>; 2] {
        [
            self.streams
                .carries(Streams::TRADING_SIGNALS)
                .then_some(StreamKey::Signals),
            self.streams
                .carries(Streams::NOTIFICATIONS)
                .then(|| StreamKey::User(self.user.clone())),
        ]
    }

    /// Leaves every stream, so fanout forgets this connection (and, in
    /// cluster mode, the node stops listening to groups nobody needs).
    pub fn detach(&self, out: &mut Vec<Effect>) {
        let id = self.sub.id;
        if let Some(r) = &self.env.replication {
            for symbol in self.symbols.iter() {
                r.unwant(&StreamKey::Symbol(symbol.clone()));
            }
            for key in self.own_streams().into_iter().flatten() {
                r.unwant(&key);
            }
        }
        for symbol in self.symbols.iter() {
            let control = Control::Unsubscribe {
                id,
                symbol: symbol.clone(),
            };
            out.push(Effect::Control(StreamKey::Symbol(symbol.clone()), control));
        }
        if self.streams.carries(Streams::TRADING_SIGNALS) {
            out.push(Effect::Control(StreamKey::Signals, Control::RemoveSignals { id }));
        }
        if self.streams.carries(Streams::NOTIFICATIONS) {
            let user = self.user.clone();
            out.push(Effect::Control(
                StreamKey::User(user.clone()),
                Control::DetachUser { id, user },
            ));
        }
    }
}

fn no_such_notification(key: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::InvalidField,
        format!(
            "no notification `{}` for this user",
            key.chars().take(64).collect::<String>()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::SymbolAccess;
    use crate::outbox::{Outbox, Overflow};
    use crate::protocol::Seq;
    use crate::registry::SubscriberId;

    fn session(endpoint: Endpoint, symbols: SymbolAccess, limits: SessionLimits) -> Session {
        let identity = Identity {
            user: "alice".into(),
            symbols: symbols.clone(),
            expires_at: None,
        };
        let sub = Arc::new(Subscriber {
            id: SubscriberId::next(),
            outbox: Arc::new(Outbox::new(16, Overflow::Close)),
            access: symbols,
        });
        let env = SessionEnv {
            limits,
            metrics: Arc::new(Metrics::new(false)),
            replication: None,
        };
        Session::new(endpoint, Streams::of(endpoint), identity, sub, Arc::new(env))
    }

    const LIMITS: SessionLimits = SessionLimits {
        max_subscriptions: 3,
        commands_per_second: 10.0,
        command_burst: 2,
        rate_limit_strikes: 2,
    };

    async fn run(s: &mut Session, text: &str, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        s.on_text(text, now, &mut out).await;
        out
    }

    fn reply(e: &Effect) -> Value {
        match e {
            Effect::Reply(f) => serde_json::from_str(f.as_str()).unwrap(),
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[tokio::test]
    async fn subscribe_answers_then_asks_each_shard_with_since_and_rate() {
        let mut s = session(Endpoint::MarketData, SymbolAccess::All, LIMITS);
        let out = run(
            &mut s,
            r#"{"type":"subscribe","symbols":["A","B"],"since":{"B":7},"max_frequency":4,"id":1}"#,
            Instant::now(),
        )
        .await;
        assert_eq!(out.len(), 3);
        assert_eq!(reply(&out[0])["type"], "subscribed");
        assert_eq!(reply(&out[0])["id"], 1);
        let Effect::Control(
            key,
            Control::Subscribe {
                since, min_interval, ..
            },
        ) = &out[2]
        else {
            panic!("{:?}", out[2]);
        };
        assert_eq!(key, &StreamKey::Symbol("B".into()));
        assert_eq!(*since, Some(Seq(7)));
        assert_eq!(*min_interval, Some(Duration::from_millis(250)));
        // Subscribing again changes nothing without a new rate; unsubscribing
        // tells the shard; leaving tells the rest.
        let later = Instant::now() + Duration::from_secs(1);
        let out = run(&mut s, r#"{"type":"subscribe","symbols":["A"]}"#, later).await;
        assert_eq!(out.len(), 1);
        let out = run(
            &mut s,
            r#"{"type":"unsubscribe","symbols":["A"]}"#,
            later + Duration::from_secs(1),
        )
        .await;
        assert!(matches!(&out[0], Effect::Control(_, Control::Unsubscribe { .. })));
        let mut left = Vec::new();
        s.detach(&mut left);
        assert!(
            matches!(&left[..], [Effect::Control(k, Control::Unsubscribe { .. })] if k == &StreamKey::Symbol("B".into()))
        );
    }

    #[tokio::test]
    async fn forbidden_symbols_and_too_many_subscriptions_are_refused_whole() {
        let only_eth = SymbolAccess::Only(vec![crate::auth::Pattern::parse("ETH-*")]);
        let mut s = session(Endpoint::MarketData, only_eth, LIMITS);
        let out = run(
            &mut s,
            r#"{"type":"subscribe","symbols":["ETH-USD","BTC-USD"]}"#,
            Instant::now(),
        )
        .await;
        assert_eq!(reply(&out[0])["code"], "forbidden");
        assert_eq!(out.len(), 1, "nothing subscribed");
        let out = run(
            &mut s,
            r#"{"type":"subscribe","symbols":["ETH-1","ETH-2","ETH-3","ETH-4"]}"#,
            Instant::now(),
        )
        .await;
        assert_eq!(reply(&out[0])["code"], "too_many_subscriptions");
    }

    #[tokio::test]
    async fn a_client_that_keeps_breaking_the_rate_limit_is_closed() {
        let mut s = session(Endpoint::MarketData, SymbolAccess::All, LIMITS);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(
                reply(&run(&mut s, r#"{"type":"ping"}"#, t0).await[0])["type"],
                "pong"
            );
        }
        let refused = run(&mut s, r#"{"type":"ping","id":"x"}"#, t0).await;
        assert_eq!(
            (
                reply(&refused[0])["code"].clone(),
                reply(&refused[0])["id"].clone()
            ),
            ("rate_limited".into(), "x".into())
        );
        let out = run(&mut s, r#"{"type":"ping"}"#, t0).await;
        assert!(matches!(out[..], [Effect::Close(CloseReason::RateLimited)]));
        // Time passing refills the bucket: the clock is the caller's.
        let out = run(&mut s, r#"{"type":"ping"}"#, t0 + Duration::from_secs(1)).await;
        assert_eq!(reply(&out[0])["type"], "pong");
    }

    #[tokio::test]
    async fn notifications_attach_to_the_users_stream_and_mark_read_goes_to_its_shard() {
        let mut s = session(Endpoint::Notifications, SymbolAccess::All, LIMITS);
        let mut out = Vec::new();
        s.attach(&mut out).await;
        assert!(
            matches!(&out[..], [Effect::Control(StreamKey::User(u), Control::AttachUser { .. })] if &**u == "alice")
        );
        let out = run(
            &mut s,
            r#"{"type":"mark_read","notification_id":"n1","id":3}"#,
            Instant::now(),
        )
        .await;
        assert!(matches!(
            &out[..],
            [Effect::Control(StreamKey::User(_), Control::MarkRead { .. })]
        ));
        let out = run(&mut s, r#"{"type":"subscribe","symbols":["A"]}"#, Instant::now()).await;
        assert_eq!(reply(&out[0])["code"], "unknown_type");
    }

    #[tokio::test]
    async fn one_socket_for_every_stream_joins_and_leaves_them_all() {
        let identity = Identity {
            user: "alice".into(),
            symbols: SymbolAccess::All,
            expires_at: None,
        };
        let sub = Arc::new(Subscriber {
            id: SubscriberId::next(),
            outbox: Arc::new(Outbox::new(16, Overflow::Close)),
            access: SymbolAccess::All,
        });
        let env = Arc::new(SessionEnv {
            limits: LIMITS,
            metrics: Arc::new(Metrics::new(false)),
            replication: None,
        });
        let mut s = Session::new(Endpoint::Stream, Streams::ALL, identity, sub, env);
        let mut out = Vec::new();
        s.attach(&mut out).await;
        assert!(matches!(
            &out[..],
            [
                Effect::Control(StreamKey::Signals, Control::Filter { answer: None, .. }),
                Effect::Control(StreamKey::User(_), Control::AttachUser { .. })
            ]
        ));
        let out = run(&mut s, r#"{"type":"subscribe","symbols":["A"]}"#, Instant::now()).await;
        assert_eq!(reply(&out[0])["type"], "subscribed");
        let out = run(&mut s, r#"{"type":"ping","id":1}"#, Instant::now()).await;
        assert_eq!(out.len(), 1, "one pong: {out:?}");
        let mut left = Vec::new();
        s.detach(&mut left);
        assert!(matches!(
            &left[..],
            [
                Effect::Control(StreamKey::Symbol(_), Control::Unsubscribe { .. }),
                Effect::Control(StreamKey::Signals, Control::RemoveSignals { .. }),
                Effect::Control(StreamKey::User(_), Control::DetachUser { .. })
            ]
        ));
    }
}
