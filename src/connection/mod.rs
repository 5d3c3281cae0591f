//! One WebSocket connection after its handshake, run by one task from its
//! first frame to its close: the socket loop ([`socket`]) carries bytes
//! between the socket and the connection's [`Reader`]: a subscriber's
//! [`session`], a publisher's ingest ([`ingest`]) or the test echo. The
//! task has no timers of its own: the node's [`sweep`]er pings it and
//! closes it on idleness, token expiry or a stalled socket.
//!
//! A connection is handed the handles it uses ([`Context`]), never the
//! node; it never awaits fanout (commands go to the shards as controls)
//! and never writes outside its outbox's writer.

mod inflate;
mod ingest;
pub mod session;
mod socket;
mod subscriptions;
pub mod sweep;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::Identity;
use crate::config::Config;
use crate::fanout::backpressure::Backlog;
use crate::fanout::Fanout;
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Overflow};
use crate::protocol::close::CloseReason;
use crate::protocol::frame::{Encoding, Format};
use crate::protocol::{Endpoint, LogSafe, Streams};
use crate::registry::{Subscriber, SubscriberId};
use crate::replication::Replication;
use crate::shutdown::Shutdown;
use session::{Effect, Session, SessionEnv, SessionLimits};
pub(crate) use socket::Reader;
use socket::{Link, Loop};
use sweep::Sweeper;

/// What connections use of their node.
pub struct Context {
    pub config: Arc<Config>,
    pub fanout: Arc<Fanout>,
    pub ingress: Arc<Ingress>,
    /// Cluster mode's link to Redis; `None` in embedded mode.
    pub replication: Option<Arc<Replication>>,
    pub metrics: Arc<Metrics>,
    pub backlog: Arc<Backlog>,
    pub sweeper: Arc<Sweeper>,
    pub shutdown: Arc<Shutdown>,
    /// What every session shares, made once.
    sessions: Arc<SessionEnv>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        fanout: Arc<Fanout>,
        ingress: Arc<Ingress>,
        replication: Option<Arc<Replication>>,
        metrics: Arc<Metrics>,
        backlog: Arc<Backlog>,
        sweeper: Arc<Sweeper>,
        shutdown: Arc<Shutdown>,
    ) -> Context {
        let sessions = Arc::new(SessionEnv {
            limits: SessionLimits {
                max_subscriptions: config.max_subscriptions.get(),
                commands_per_second: config.commands_per_second,
                command_burst: config.command_burst,
                rate_limit_strikes: config.rate_limit_strikes,
            },
            metrics: metrics.clone(),
            replication: replication.clone(),
        });
        Context {
            config,
            fanout,
            ingress,
            replication,
            metrics,
            backlog,
            sweeper,
            shutdown,
            sessions,
        }
    }

    fn socket_loop<'a>(&'a self, outbox: &'a Outbox) -> Loop<'a> {
        Loop {
            outbox,
            sweeper: &self.sweeper,
            metrics: &self.metrics,
        }
    }

    /// Carries out what a session asked for, in order.
    fn apply(&self, outbox: &Outbox, effects: &mut Vec<Effect>) -> Option<CloseReason> {
        let mut close = None;
        for effect in effects.drain(..) {
            match effect {
                Effect::Reply(frame) => {
                    outbox.push(frame, None);
                }
                Effect::Control(key, control) => self.fanout.control(&key, control),
                Effect::Close(reason) => close = close.or(Some(reason)),
            }
        }
        close
    }
}

/// A socket whose handshake succeeded, ready to speak WebSocket.
pub struct Accepted {
    pub tcp: Arc<TcpStream>,
    /// Bytes read past the handshake.
    pub prefix: Bytes,
    pub config: WebSocketConfig,
    pub peer: SocketAddr,
    /// What the handshake agreed for frames (permessage-deflate).
    pub encoding: Encoding,
}

impl Accepted {
    /// Takes the TCP stream back from an upgraded HTTP connection; `None`
    /// if it is not one (the server serves plain TCP; TLS ends at the proxy).
    pub fn from_upgrade(
        upgraded: Upgraded,
        config: WebSocketConfig,
        peer: SocketAddr,
        encoding: Encoding,
    ) -> Option<Accepted> {
        let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
        Some(Accepted {
            tcp: Arc::new(parts.io.into_inner()),
            prefix: parts.read_buf,
            config,
            peer,
            encoding,
        })
    }
}

/// A subscriber's session as the socket loop sees it: it applies the
/// session's effects as they come.
struct SubscriberReader<'a> {
    session: &'a mut Session,
    ctx: &'a Context,
    outbox: &'a Outbox,
    /// Binary frames are MessagePack commands (`format=msgpack`), not the
    /// 1003 of a JSON socket.
    msgpack: bool,
}

impl Reader for SubscriberReader<'_> {
    async fn on_text(&mut self, text: &str) -> Option<CloseReason> {
        // A fresh list per command: an idle connection keeps no room for one.
        let mut effects = Vec::new();
        self.session.on_text(text, Instant::now(), &mut effects).await;
        self.ctx.apply(self.outbox, &mut effects)
    }

    async fn on_binary(&mut self, data: &[u8]) -> Option<CloseReason> {
        if !self.msgpack {
            return Some(CloseReason::Binary);
        }
        let mut effects = Vec::new();
        Box::pin(self.session.on_msgpack(data, Instant::now(), &mut effects)).await;
        self.ctx.apply(self.outbox, &mut effects)
    }
}

/// A subscriber connection once set up: all that its task keeps while
/// the connection is open, and nothing of its setup (the handshake's
/// leftovers, its parameters), which [`open_subscriber`] took.
pub struct OpenSubscriber {
    id: SubscriberId,
    endpoint: Endpoint,
    opened: Instant,
    ctx: Arc<Context>,
    outbox: Arc<Outbox>,
    link: Link,
    session: Session,
    /// Binary frames are MessagePack commands (`format=msgpack`).
    msgpack: bool,
}

/// Sets a subscriber connection up, a socket of `endpoint` carrying
/// `streams` (one kind on version 1's endpoints, any on `/ws/stream/`):
/// its outbox, its place in the sweeper, its session attached. Meant to be boxed by the caller and dropped once
/// done, then [`OpenSubscriber::serve`] run: an async fn's parameters stay
/// in its future for its whole life, and here they would be kept by every
/// idle connection.
pub async fn open_subscriber(
    accepted: Accepted,
    ctx: Arc<Context>,
    endpoint: Endpoint,
    streams: Streams,
    identity: Identity,
) -> OpenSubscriber {
    let id = SubscriberId::next();
    let peer = accepted.peer;
    // Conflation drops only market updates (the only keyed frames), so a
    // socket that also carries signals or notifications may conflate too:
    // those are kept, and the socket is cut if even they do not fit.
    let overflow = if streams.carries(Streams::MARKET_DATA) {
        ctx.config.market_data_overflow
    } else {
        Overflow::Close
    };
    let capacity = ctx.config.outbound_queue_frames.get();
    let outbox = Arc::new(
        Outbox::counted(capacity, overflow, ctx.backlog.clone())
            .with_max_bytes(ctx.config.outbound_queue_bytes.get())
            .with_encoding(accepted.encoding),
    );
    let sub = Arc::new(Subscriber {
        id,
        outbox: outbox.clone(),
        access: identity.symbols.clone(),
    });
    let opened = Instant::now();
    let format = accepted.encoding.format;
    log_opened(id, endpoint, streams, accepted.encoding, &identity.user, peer);
    ctx.metrics.connection_opened(endpoint);
    ctx.sweeper
        .watch(id.0, outbox.clone(), identity.expires_at, &ctx.shutdown);
    let link = Link::new(id.0, accepted, outbox.clone());
    let session = Session::new(endpoint, streams, identity, sub, ctx.sessions.clone());
    let mut effects = Vec::new();
    session.attach(&mut effects).await;
    ctx.apply(&outbox, &mut effects);
    OpenSubscriber {
        id,
        endpoint,
        opened,
        ctx,
        outbox,
        link,
        session,
        msgpack: format == Format::MsgPack,
    }
}

impl OpenSubscriber {
    /// Runs the connection to its end.
    pub async fn serve(&mut self) {
        let mut reader = SubscriberReader {
            session: &mut self.session,
            ctx: &self.ctx,
            outbox: &self.outbox,
            msgpack: self.msgpack,
        };
        let end = socket::serve(&mut self.link, &self.ctx.socket_loop(&self.outbox), &mut reader).await;
        closed(&self.ctx, self.id, &self.outbox);
        let mut effects = Vec::new();
        self.session.detach(&mut effects);
        self.ctx.apply(&self.outbox, &mut effects);
        self.ctx.metrics.connection_closed(self.endpoint);
        tracing::info!(
            conn = self.id.0,
            endpoint = self.endpoint.name(),
            user = %LogSafe(&self.session.user),
            reason = %end,
            secs = self.opened.elapsed().as_secs_f64(),
            "connection closed"
        );
    }
}

/// The line a subscriber connection opens with. A function of its own:
/// inline in [`serve_subscriber`], the macro's values took 144 bytes of
/// every connection's task for its whole life.
#[inline(never)]
fn log_opened(
    id: SubscriberId,
    endpoint: Endpoint,
    streams: Streams,
    encoding: Encoding,
    user: &str,
    peer: SocketAddr,
) {
    tracing::info!(
        conn = id.0,
        endpoint = endpoint.name(),
        streams = %streams.names(),
        format = encoding.format.name(),
        deflate = encoding.deflate.is_some(),
        user = %LogSafe(user),
        %peer,
        "connection opened"
    );
}

/// A connection's socket ended: it closes now, not when fanout drops the
/// outbox, and the sweeper stops watching it.
fn closed(ctx: &Context, id: SubscriberId, outbox: &Outbox) {
    outbox.set_socket(None);
    ctx.sweeper.forget(id.0);
}

/// Runs a connection of the test-only `/ws/echo` route (feature
/// `test-echo`) to its end, through the same socket handling as the
/// protocol's endpoints, so that the Autobahn cases judge that.
#[cfg(feature = "test-echo")]
pub(crate) async fn serve_test_echo(
    accepted: Accepted,
    ctx: Arc<Context>,
    reader: &mut impl Reader,
    outbox: Arc<Outbox>,
) {
    let id = SubscriberId::next();
    ctx.sweeper.watch(id.0, outbox.clone(), None, &ctx.shutdown);
    let mut link = Link::new(id.0, accepted, outbox.clone());
    socket::serve(&mut link, &ctx.socket_loop(&outbox), reader).await;
    closed(&ctx, id, &outbox);
}

/// Runs a publisher's `/ws/ingest` connection to its end.
pub async fn serve_ingest(accepted: Accepted, ctx: Arc<Context>, publisher: Option<usize>) {
    let id = SubscriberId::next();
    tracing::info!(conn = id.0, endpoint = "ingest", peer = %accepted.peer, "connection opened");
    ctx.metrics.connection_opened(Endpoint::Ingest);
    let outbox = Arc::new(
        Outbox::new(ctx.config.outbound_queue_frames.get(), Overflow::Close)
            .with_max_bytes(ctx.config.outbound_queue_bytes.get()),
    );
    ctx.sweeper.watch(id.0, outbox.clone(), None, &ctx.shutdown);
    let mut link = Link::new(id.0, accepted, outbox.clone());
    let mut reader = ingest::Publisher::new(ctx.ingress.clone(), outbox.clone(), publisher);
    let end = socket::serve(&mut link, &ctx.socket_loop(&outbox), &mut reader).await;
    closed(&ctx, id, &outbox);
    ctx.metrics.connection_closed(Endpoint::Ingest);
    tracing::info!(conn = id.0, endpoint = "ingest", reason = %end, "connection closed");
}
