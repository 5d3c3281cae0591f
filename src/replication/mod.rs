//! Cluster mode: Redis is the sequencer and the memory of the cluster
//! (DESIGN.md, "Replication"). A node sends each batch of validated
//! publishes to Redis, where one script call per stream group numbers
//! them, appends them to the group's history streams, keeps the latest
//! price, the unread notifications and the signals' state, and publishes
//! them on the group's channel. Every node, the publishing one included,
//! fans out only what arrives on those channels, so all nodes agree on
//! every stream's order.
//!
//! The link to Redis is supervised: on loss the node keeps serving what it
//! holds, reports not-ready, refuses publishes (503), and reconnects with
//! backoff; after a reconnect it catches up every stream a local
//! subscriber follows from Redis's history before it takes live messages
//! again, so nothing is lost or repeated (`recovery`). A heartbeat goes
//! through every channel it listens on four times a second, from the end
//! of the catch-up: a channel silent for a second means a wedged
//! subscription, treated as a lost link.

pub mod idempotency;
pub mod layout;
mod recovery;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Script, Value as RValue};
use tokio::sync::{mpsc, oneshot};

use crate::fanout::{Control, Fetched, FetchedEntry, Inbound, Payload};
use crate::history::EntryMeta;
use crate::node::Node;
use crate::protocol::encode::Frame;
use crate::protocol::update::Update;
use crate::protocol::{Seq, StreamKey, UpdateKind};
use layout::{Envelope, GROUPS};

const PUBLISH_LUA: &str = include_str!("publish.lua");
const MARK_READ_LUA: &str = include_str!("mark_read.lua");

/// Entries sent to Redis in one batch at most (one script call per group).
const MAX_BATCH: usize = 2048;
/// How long a Redis request may take before the link counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a subscriber's resume waits for Redis before using what the
/// node holds itself.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// A channel whose heartbeat is older than this is wedged.
const HEARTBEAT_LOST: Duration = Duration::from_secs(1);
/// Messages waiting between the Redis connection and this node's fanout.
const PUSH_QUEUE: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("Redis is unreachable")]
    Unavailable,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the pub/sub link stalled: {0}")]
    Stalled(String),
}

/// One validated update on its way to Redis.
struct Entry {
    group: u64,
    /// The 9 script arguments of the entry (see publish.lua).
    args: [String; 9],
}

struct Job {
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Vec<i64>, ReplicationError>>,
}

/// The connection a node listens on, and the groups it listens to.
struct Listener {
    conn: Conn,
    groups: std::collections::HashSet<u64>,
}

/// The key the ingest channel's heartbeat is tracked under.
const INGEST_BEAT: u64 = u64::MAX;

/// A connection for commands, to one Redis or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Runs a Redis request, failing it as [`ReplicationError::Timeout`] when
/// it takes longer than `limit`.
async fn within<T, E: Into<ReplicationError>>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ReplicationError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ReplicationError::Timeout(limit))?
        .map_err(Into::into)
}

impl Conn {
    /// Starts (`on`) or stops listening to a stream group's channel:
    /// sharded pub/sub in a Redis Cluster, plain pub/sub otherwise.
    async fn listen(&mut self, channel: &str, on: bool) -> Result<(), ReplicationError> {
        let fut = async {
            match (self, on) {
                (Conn::Single(c), true) => c.subscribe(channel).await,
                (Conn::Single(c), false) => c.unsubscribe(channel).await,
                (Conn::Cluster(c), true) => c.ssubscribe(channel).await,
                (Conn::Cluster(c), false) => c.sunsubscribe(channel).await,
            }
        };
        within(REQUEST_TIMEOUT, fut).await
    }

    async fn run<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, ReplicationError> {
        let fut = async {
            match self {
                Conn::Single(c) => cmd.query_async(c).await,
                Conn::Cluster(c) => cmd.query_async(c).await,
            }
        };
        within(REQUEST_TIMEOUT, fut).await
    }

    async fn script<T: redis::FromRedisValue>(
        &mut self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ReplicationError> {
        let fut = async {
            match self {
                Conn::Single(c) => inv.invoke_async(c).await,
                Conn::Cluster(c) => inv.invoke_async(c).await,
            }
        };
        within(REQUEST_TIMEOUT, fut).await
    }
}

pub struct Replication {
    url: String,
    node_id: Arc<str>,
    history_messages: usize,
    max_unread: usize,
    ingest_channel: String,
    /// The command connection while the link is up. A mutex held only to
    /// clone the handle out.
    conn: Mutex<Option<Conn>>,
    /// Redis Cluster (sharded pub/sub, SPUBLISH) rather than one Redis.
    cluster: AtomicBool,
    up: AtomicBool,
    jobs: mpsc::Sender<Job>,
    jobs_rx: Mutex<Option<mpsc::Receiver<Job>>>,
    publish_script: Script,
    mark_read_script: Script,
    /// Other nodes heard from, by id, for the dashboard.
    nodes: Mutex<HashMap<String, Instant>>,
    /// Stream groups some local subscriber needs, with how many need each.
    /// A mutex held to count.
    interest: Mutex<HashMap<u64, usize>>,
    /// The listening connection of the current link and the groups it
    /// listens to; an async mutex so (un)subscribing happens one at a time.
    listener: tokio::sync::Mutex<Option<Listener>>,
    /// When each listened group (and the ingest channel, as `u64::MAX`)
    /// last carried this node's own heartbeat.
    beats: Mutex<HashMap<u64, Instant>>,
    /// The id of the Redis data set this node last saw; a different one
    /// after a reconnect means Redis lost its data (restarted without
    /// persistence), and the stream counters must be re-seeded.
    epoch: Mutex<Option<String>>,
}

impl Replication {
    pub fn new(
        url: String,
        ingest_channel: String,
        history_messages: usize,
        max_unread: usize,
    ) -> Replication {
        let (jobs, jobs_rx) = mpsc::channel(1024);
        let node_id = format!(
            "{:016x}",
            layout::fnv1a(
                format!(
                    "{}-{:?}-{}",
                    std::process::id(),
                    Instant::now(),
                    layout::now_micros()
                )
                .as_bytes()
            )
        );
        Replication {
            url,
            node_id: Arc::from(node_id),
            history_messages,
            max_unread,
            ingest_channel,
            conn: Mutex::new(None),
            cluster: AtomicBool::new(false),
            up: AtomicBool::new(false),
            jobs,
            jobs_rx: Mutex::new(Some(jobs_rx)),
            publish_script: Script::new(PUBLISH_LUA),
            mark_read_script: Script::new(MARK_READ_LUA),
            nodes: Mutex::new(HashMap::new()),
            epoch: Mutex::new(None),
            interest: Mutex::new(HashMap::new()),
            listener: tokio::sync::Mutex::new(None),
            beats: Mutex::new(HashMap::new()),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether the link to Redis is up and caught up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Waits (up to `patience`) for the link to be up and caught up; a
    /// resume is answered from Redis rather than from a memory that may
    /// have a hole.
    pub async fn wait_up(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while !self.is_up() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Nodes heard from in the last few seconds (this one included).
    pub fn nodes(&self) -> Vec<String> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = nodes
            .iter()
            .filter(|(_, t)| t.elapsed() < Duration::from_secs(3))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    fn conn(&self) -> Result<Conn, ReplicationError> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(ReplicationError::Unavailable)
    }

    fn publish_command(&self) -> &'static str {
        if self.cluster.load(Ordering::Relaxed) {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Sequences and publishes validated updates, in order. `claim` names
    /// an ingest message so that only one node takes it. Returns one
    /// result per update: its seq, 0 when another node took the message,
    /// -1 for an update of an unknown signal.
    pub async fn publish(
        &self,
        updates: Vec<Update>,
        claim: Option<&str>,
        received_micros: u64,
    ) -> Result<Vec<i64>, ReplicationError> {
        if !self.is_up() {
            return Err(ReplicationError::Unavailable);
        }
        let entries = updates
            .into_iter()
            .enumerate()
            .map(|(i, u)| entry(u, claim.map(|c| format!("{c}.{i}")), received_micros))
            .collect();
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { entries, reply })
            .await
            .map_err(|_| ReplicationError::Unavailable)?;
        answer.await.map_err(|_| ReplicationError::Unavailable)?
    }

    /// Marks a notification read in Redis and tells every node. `Ok(false)`
    /// when the user has no such notification.
    pub async fn mark_read(
        &self,
        user: &str,
        key: &str,
        frame: &Frame,
        origin: &str,
    ) -> Result<bool, ReplicationError> {
        let sid = layout::stream_id(&StreamKey::User(Arc::from(user)));
        let group = layout::group_of(&sid);
        let mut conn = self.conn()?;
        let mut inv = self.mark_read_script.key(layout::channel(group));
        inv.arg(layout::prefix(group))
            .arg(layout::channel(group))
            .arg(self.publish_command())
            .arg(user)
            .arg(key)
            .arg(frame.as_str())
            .arg(origin)
            .arg(layout::now_micros());
        let n: i64 = conn.script(&inv).await?;
        Ok(n == 1)
    }

    /// The kept messages of a stream after `after`, and its head.
    pub async fn fetch_history(&self, key: &StreamKey, after: Seq) -> Result<Fetched, ReplicationError> {
        self.wait_up(Duration::from_secs(3)).await;
        self.read_history(key, after).await
    }

    async fn read_history(&self, key: &StreamKey, after: Seq) -> Result<Fetched, ReplicationError> {
        let sid = layout::stream_id(key);
        let p = layout::prefix(layout::group_of(&sid));
        let mut conn = self.conn()?;
        let mut conn2 = conn.clone();
        let head = redis::cmd("GET").arg(format!("{p}seq:{sid}")).to_owned();
        let range = redis::cmd("XRANGE")
            .arg(format!("{p}h:{sid}"))
            .arg(format!("{}-0", after.0 + 1))
            .arg("+")
            .arg("COUNT")
            .arg(self.history_messages)
            .to_owned();
        let fetch = async {
            let (head, range) = tokio::join!(conn.run::<Option<u64>>(&head), conn2.run::<RValue>(&range));
            Ok::<_, ReplicationError>((head?, range?))
        };
        let (head, range) = within(FETCH_TIMEOUT, fetch).await?;
        Ok(Fetched {
            head: Seq(head.unwrap_or(0)),
            entries: parse_xrange(&range),
        })
    }

    /// The latest `market_update` of a symbol, as `Fetched` with one entry.
    pub async fn fetch_latest(&self, symbol: &str) -> Result<Fetched, ReplicationError> {
        let sid = layout::stream_id(&StreamKey::Symbol(Arc::from(symbol)));
        let p = layout::prefix(layout::group_of(&sid));
        let mut conn = self.conn()?;
        let cmd = redis::cmd("HGET")
            .arg(format!("{p}latest"))
            .arg(symbol)
            .to_owned();
        let frame: Option<String> = within(FETCH_TIMEOUT, conn.run(&cmd)).await?;
        let entries: Vec<FetchedEntry> = frame
            .and_then(|f| {
                let seq = frame_seq(&f)?;
                Some(FetchedEntry {
                    seq,
                    kind: UpdateKind::MarketUpdate,
                    frame: Frame::from(f),
                    meta: EntryMeta {
                        symbol: Some(Arc::from(symbol)),
                        ..Default::default()
                    },
                })
            })
            .into_iter()
            .collect();
        Ok(Fetched {
            head: entries.last().map_or(Seq(0), |e| e.seq),
            entries,
        })
    }

    /// The latest `market_update` of every symbol.
    pub async fn fetch_all_latest(&self) -> Result<Vec<(String, Frame)>, ReplicationError> {
        let conn = self.conn()?;
        let fetches = (0..GROUPS).map(|g| {
            let mut conn = conn.clone();
            async move {
                let cmd = redis::cmd("HGETALL")
                    .arg(format!("{}latest", layout::prefix(g)))
                    .to_owned();
                conn.run::<RValue>(&cmd).await
            }
        });
        let replies = tokio::time::timeout(FETCH_TIMEOUT, futures_util::future::join_all(fetches))
            .await
            .map_err(|_| ReplicationError::Timeout(FETCH_TIMEOUT))?;
        let mut all = Vec::new();
        for r in replies {
            all.extend(pairs(&r?).into_iter().map(|(k, v)| (k, Frame::from(v))));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// A user's unread notifications (authoritative), oldest first.
    pub async fn fetch_unread(&self, user: &str) -> Result<Fetched, ReplicationError> {
        let sid = layout::stream_id(&StreamKey::User(Arc::from(user)));
        let p = layout::prefix(layout::group_of(&sid));
        let conn = self.conn()?;
        let (mut c1, mut c2, mut c3) = (conn.clone(), conn.clone(), conn);
        let order = redis::cmd("ZRANGE")
            .arg(format!("{p}unread:{user}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .to_owned();
        let frames = redis::cmd("HGETALL").arg(format!("{p}nf:{user}")).to_owned();
        let head = redis::cmd("GET").arg(format!("{p}seq:{sid}")).to_owned();
        let fetch = async {
            let (o, f, h) = tokio::join!(
                c1.run::<RValue>(&order),
                c2.run::<RValue>(&frames),
                c3.run::<Option<u64>>(&head)
            );
            Ok::<_, ReplicationError>((o?, f?, h?))
        };
        let (order, frames, head) = within(FETCH_TIMEOUT, fetch).await?;
        let mut frames: HashMap<String, String> = pairs(&frames).into_iter().collect();
        let mut entries = Vec::new();
        for (key, score) in pairs(&order) {
            let (Ok(seq), Some(frame)) = (score.parse::<f64>(), frames.remove(&key)) else {
                continue;
            };
            entries.push(FetchedEntry {
                seq: Seq(seq as u64),
                kind: UpdateKind::NewNotification,
                frame: Frame::from(frame),
                meta: EntryMeta {
                    notification_key: Some(Arc::from(key)),
                    ..Default::default()
                },
            });
        }
        entries.sort_by_key(|e| e.seq);
        Ok(Fetched {
            head: Seq(head.unwrap_or(0)),
            entries,
        })
    }

    /// Starts listening to `key`'s group (if no local subscriber did yet);
    /// returns once Redis confirmed it, so a fetch made after it plus the
    /// live messages that follow miss nothing.
    pub async fn want(&self, key: &StreamKey) {
        let group = layout::group_of(&layout::stream_id(key));
        *self
            .interest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group)
            .or_default() += 1;
        if let Err(e) = self.sync_listening().await {
            tracing::debug!(error = %e, "subscribing to a stream group failed; the link will recover");
        }
    }

    /// The opposite of [`Replication::want`]; stops listening to a group
    /// no local subscriber needs any more.
    pub fn unwant(self: &Arc<Self>, key: &StreamKey) {
        let group = layout::group_of(&layout::stream_id(key));
        {
            let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = interest.get_mut(&group) {
                *n -= 1;
                if *n == 0 {
                    interest.remove(&group);
                }
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.sync_listening().await;
        });
    }

    fn wanted_groups(&self) -> std::collections::HashSet<u64> {
        self.interest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Makes the listener listen to exactly the wanted groups.
    async fn sync_listening(&self) -> Result<(), ReplicationError> {
        let mut guard = self.listener.lock().await;
        let Some(listener) = guard.as_mut() else {
            return Ok(());
        };
        let wanted = self.wanted_groups();
        for group in wanted.difference(&listener.groups.clone()) {
            listener.conn.listen(&layout::channel(*group), true).await?;
            listener.groups.insert(*group);
            self.beats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*group, Instant::now());
        }
        for group in listener.groups.difference(&wanted).copied().collect::<Vec<_>>() {
            listener.conn.listen(&layout::channel(group), false).await?;
            listener.groups.remove(&group);
            self.beats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&group);
        }
        Ok(())
    }

    /// Runs the link to Redis until shutdown: connects, catches up, relays
    /// what arrives to fanout, reconnects with backoff.
    pub async fn run(self: Arc<Self>, node: Arc<Node>) {
        let jobs = self.jobs_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(jobs) = jobs {
            tokio::spawn(self.clone().batcher(jobs));
        }
        let (ingest_tx, ingest_rx) = mpsc::channel::<Vec<u8>>(4096);
        tokio::spawn(ingest_loop(node.clone(), ingest_rx));
        let mut backoff = Duration::from_millis(100);
        let mut reported_down = false;
        loop {
            let ended = tokio::select! {
                _ = node.shutdown.wait() => return,
                r = self.session(&node, &ingest_tx) => r,
            };
            let was_up = self.up.swap(false, Ordering::AcqRel);
            *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
            node.metrics.set_redis_connected(false);
            if was_up {
                backoff = Duration::from_millis(100);
            }
            if was_up || !reported_down {
                let why = match ended {
                    Err(e) => e.to_string(),
                    Ok(()) => "link closed".into(),
                };
                if was_up {
                    tracing::warn!(url = %crate::config::redacted_url(&self.url), error = %why, "Redis link lost: not ready; serving local subscribers, refusing publishes and new clients, reconnecting with backoff");
                } else {
                    tracing::warn!(url = %crate::config::redacted_url(&self.url), error = %why, "Redis unreachable: not ready; retrying with backoff");
                }
                reported_down = true;
            }
            let jitter = Duration::from_millis(layout::now_micros() % 100);
            tokio::select! {
                _ = node.shutdown.wait() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connected period: returns when the link fails.
    async fn session(
        &self,
        node: &Arc<Node>,
        ingest: &mpsc::Sender<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let (push_tx, mut push_rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let sender = {
            let overflow = overflow.clone();
            move |p: PushInfo| -> Result<(), ()> {
                if push_tx.try_send(p).is_err() {
                    // Relaxed: a flag checked on the next heartbeat.
                    overflow.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
        };
        let client = redis::Client::open(self.url.as_str())?;
        let mut probe = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut probe).await?;
        let cluster = info.contains("cluster_enabled:1");
        self.cluster.store(cluster, Ordering::Relaxed);
        if cluster {
            // A cluster still being formed has slots that no master serves.
            let state: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut probe).await?;
            if !state.contains("cluster_state:ok") {
                return Err(ReplicationError::Stalled(
                    "the Redis Cluster is not ok yet".into(),
                ));
            }
        }
        let (conn, listening) = if cluster {
            let builder = redis::cluster::ClusterClientBuilder::new(vec![self.url.as_str()])
                .response_timeout(REQUEST_TIMEOUT);
            let cmd = builder.build()?.get_async_connection().await?;
            let sub_client = redis::cluster::ClusterClientBuilder::new(vec![self.url.as_str()])
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(sender)
                .build()?;
            let mut sub = sub_client.get_async_connection().await?;
            sub.subscribe(&self.ingest_channel).await?;
            (Conn::Cluster(cmd), Conn::Cluster(sub))
        } else {
            let info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())?;
            let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
            let sub_client = redis::Client::open(info.set_redis_settings(settings))?;
            let config = AsyncConnectionConfig::new().set_push_sender(sender);
            let mut sub = sub_client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            sub.subscribe(&self.ingest_channel).await?;
            (Conn::Single(probe), Conn::Single(sub))
        };
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        {
            let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
            beats.clear();
            beats.insert(INGEST_BEAT, Instant::now());
        }
        *self.listener.lock().await = Some(Listener {
            conn: listening,
            groups: Default::default(),
        });
        self.sync_listening().await?;

        self.recover(node, &conn).await?;
        self.up.store(true, Ordering::Release);
        node.metrics.set_redis_connected(true);
        tracing::info!(url = %crate::config::redacted_url(&self.url), cluster, node = %self.node_id, "Redis link up: ready");

        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        let result = loop {
            tokio::select! {
                push = push_rx.recv() => {
                    let Some(push) = push else { break Err(ReplicationError::Stalled("push channel closed".into())) };
                    if let Err(e) = self.on_push(node, push, ingest).await {
                        break Err(e);
                    }
                }
                _ = beat.tick() => {
                    if overflow.load(Ordering::Relaxed) {
                        break Err(ReplicationError::Stalled("fell behind the pub/sub stream".into()));
                    }
                    let silent = self
                        .beats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .find(|(_, t)| t.elapsed() > HEARTBEAT_LOST)
                        .map(|(g, _)| *g);
                    if let Some(g) = silent {
                        let channel = if g == INGEST_BEAT { self.ingest_channel.clone() } else { layout::channel(g) };
                        break Err(ReplicationError::Stalled(format!("no heartbeat on {channel} for {HEARTBEAT_LOST:?}")));
                    }
                    if let Err(e) = self.beat(&conn).await {
                        break Err(e);
                    }
                }
            }
        };
        *self.listener.lock().await = None;
        result
    }

    async fn beat(&self, conn: &Conn) -> Result<(), ReplicationError> {
        let payload = layout::heartbeat(&self.node_id, layout::now_micros());
        let mut channels: Vec<(String, &'static str)> = self
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|g| **g != INGEST_BEAT)
            .map(|g| (layout::channel(*g), self.publish_command()))
            .collect();
        // Classic pub/sub for the ingest channel, in a Redis Cluster too.
        channels.push((self.ingest_channel.clone(), "PUBLISH"));
        let sends = channels.into_iter().map(|(channel, publish)| {
            let mut conn = conn.clone();
            let cmd = redis::cmd(publish).arg(channel).arg(&payload).to_owned();
            async move { conn.run::<RValue>(&cmd).await }
        });
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
        Ok(())
    }

    async fn on_push(
        &self,
        node: &Arc<Node>,
        push: PushInfo,
        ingest: &mpsc::Sender<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let (channel, payload) = match (push.kind, push.data.as_slice()) {
            (PushKind::Message | PushKind::SMessage, [channel, payload]) => {
                (bytes_of(channel), bytes_of(payload))
            }
            (PushKind::Disconnection, _) => return Err(ReplicationError::Stalled("disconnected".into())),
            _ => return Ok(()),
        };
        let (Some(channel), Some(payload)) = (channel, payload) else {
            return Ok(());
        };
        let Some(group) = layout::group_of_channel(channel) else {
            if channel == self.ingest_channel.as_bytes() {
                if let Ok(Some(Envelope::Heartbeat { node: from, .. })) =
                    std::str::from_utf8(payload).map(layout::decode_envelope)
                {
                    if from == &*self.node_id {
                        self.beats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(INGEST_BEAT, Instant::now());
                    }
                    self.nodes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(from.to_string(), Instant::now());
                    return Ok(());
                }
                // A full queue means ingest is far behind: drop rather than stall fanout.
                if ingest.try_send(payload.to_vec()).is_err() {
                    tracing::warn!("ingest channel backlog full: message dropped");
                }
            }
            return Ok(());
        };
        let Ok(text) = std::str::from_utf8(payload) else {
            return Ok(());
        };
        match layout::decode_envelope(text) {
            Some(Envelope::Heartbeat { node: from, .. }) => {
                if from == &*self.node_id {
                    if let Some(t) = self
                        .beats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&group)
                    {
                        *t = Instant::now();
                    }
                }
                self.nodes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(from.to_string(), Instant::now());
            }
            Some(Envelope::Update {
                kind,
                stream,
                seq,
                micros,
                meta,
                frame,
            }) => {
                let age = Duration::from_micros(layout::now_micros().saturating_sub(micros));
                let received_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                let inbound = Inbound {
                    kind,
                    stream,
                    meta,
                    payload: Payload::Sequenced {
                        seq,
                        frame: Frame::from(frame),
                    },
                    received_at,
                };
                let ring = node.fanout.shard_for(&inbound.stream);
                if ring.push(inbound, REQUEST_TIMEOUT).await.is_err() {
                    return Err(ReplicationError::Stalled("fanout rings stayed full".into()));
                }
            }
            Some(Envelope::Read {
                user,
                key,
                origin,
                frame,
            }) => {
                let skip = origin
                    .strip_prefix(&*self.node_id)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(|id| id.parse().ok())
                    .map(crate::registry::SubscriberId);
                let key_stream = StreamKey::User(user.clone());
                node.fanout.control(
                    &key_stream,
                    Control::ReadElsewhere {
                        user,
                        key,
                        frame: Frame::from(frame),
                        skip,
                    },
                );
            }
            None => tracing::debug!("malformed envelope ignored"),
        }
        Ok(())
    }

    /// Sends queued publishes to Redis in batches: everything waiting, up
    /// to [`MAX_BATCH`] entries, one script call per group, all groups at
    /// once; the next batch only after this one is answered, so a
    /// publisher's order holds.
    async fn batcher(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            let mut n = batch[0].entries.len();
            while n < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(j) => {
                        n += j.entries.len();
                        batch.push(j);
                    }
                    Err(_) => break,
                }
            }
            let result = self.run_batch(&batch).await;
            match result {
                Ok(mut per_job) => {
                    for (job, res) in batch.into_iter().zip(per_job.drain(..)) {
                        let _ = job.reply.send(Ok(res));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publish batch failed");
                    // Only a batch never sent is known unpublished.
                    for job in batch {
                        let _ = job.reply.send(Err(e.for_each_job()));
                    }
                }
            }
        }
    }

    async fn run_batch(&self, batch: &[Job]) -> Result<Vec<Vec<i64>>, ReplicationError> {
        let conn = self.conn()?;
        // Entries by group, remembering where each came from.
        let mut groups: HashMap<u64, Vec<(usize, usize)>> = HashMap::new();
        for (j, job) in batch.iter().enumerate() {
            for (e, entry) in job.entries.iter().enumerate() {
                groups.entry(entry.group).or_default().push((j, e));
            }
        }
        let calls = groups.iter().map(|(group, places)| {
            let mut conn = conn.clone();
            let mut inv = self.publish_script.key(layout::channel(*group));
            inv.arg(layout::prefix(*group))
                .arg(layout::channel(*group))
                .arg(self.publish_command())
                .arg(self.history_messages)
                .arg(self.max_unread)
                .arg(places.len());
            for (j, e) in places {
                for a in &batch[*j].entries[*e].args {
                    inv.arg(a.as_str());
                }
            }
            async move { conn.script::<Vec<i64>>(&inv).await }
        });
        let replies = futures_util::future::join_all(calls).await;
        let mut out: Vec<Vec<i64>> = batch.iter().map(|j| vec![0; j.entries.len()]).collect();
        for ((_, places), reply) in groups.iter().zip(replies) {
            let seqs = reply?;
            for ((j, e), seq) in places.iter().zip(seqs) {
                out[*j][*e] = seq;
            }
        }
        Ok(out)
    }
}

/// Publishes ingest-channel messages one by one, in arrival order. Each
/// is claimed in Redis by its content and its occurrence, so that of all
/// the nodes receiving it exactly one publishes it.
async fn ingest_loop(node: Arc<Node>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut seen: HashMap<u64, (u32, Instant)> = HashMap::new();
    while let Some(payload) = rx.recv().await {
        let hash = layout::fnv1a(&payload);
        let now = Instant::now();
        // The n-th time the same bytes arrive within 30 s is the same n-th
        // message on every node, since Redis delivers a channel in order.
        let occurrence = match seen.get_mut(&hash) {
            Some((n, at)) if now.duration_since(*at) < Duration::from_secs(30) => {
                *n += 1;
                *at = now;
                *n
            }
            _ => {
                seen.insert(hash, (0, now));
                0
            }
        };
        if seen.len() > 100_000 {
            seen.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(30));
        }
        let claim = format!("{hash:016x}.{occurrence}");
        match node.ingress.publish_claimed(&payload, Some(&claim)).await {
            Ok(outcome) if !outcome.errors.is_empty() => {
                tracing::warn!(errors = ?outcome.errors, "ingest channel message had invalid entries");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ingest channel message is not JSON"),
        }
    }
}

fn entry(u: Update, claim: Option<String>, micros: u64) -> Entry {
    let sid = layout::stream_id(&u.stream);
    let group = layout::group_of(&sid);
    let mut flags = String::new();
    if u.kind == UpdateKind::SignalUpdate {
        if !u.body.contains_key("symbol") {
            flags.push('S');
        }
        if !u.body.contains_key("signal_type") {
            flags.push('T');
        }
    }
    // Serializing plain JSON values into a String cannot fail.
    let mut body = serde_json::to_string(&u.body).expect("JSON values always serialize");
    body.pop();
    let key = match u.kind {
        UpdateKind::NewSignal | UpdateKind::SignalUpdate => u.signal_id.as_deref().unwrap_or(""),
        UpdateKind::NewNotification => u.notification_id.as_deref().unwrap_or(""),
        UpdateKind::MarketUpdate => "",
    };
    Entry {
        group,
        args: [
            layout::kind_code(u.kind).to_string(),
            sid,
            micros.to_string(),
            u.symbol.as_deref().unwrap_or("").to_string(),
            u.signal_type.map_or("", |t| t.wire_name()).to_string(),
            key.to_string(),
            claim.unwrap_or_default(),
            flags,
            body,
        ],
    }
}

/// The `seq` at the end of an encoded update (`...,"seq":N}`).
pub fn frame_seq(frame: &str) -> Option<Seq> {
    let tail = frame.strip_suffix('}')?;
    let at = tail.rfind("\"seq\":")?;
    tail[at + 6..].parse().ok().map(Seq)
}

fn bytes_of(v: &RValue) -> Option<&[u8]> {
    match v {
        RValue::BulkString(b) => Some(b),
        RValue::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn string_of(v: &RValue) -> Option<String> {
    match v {
        RValue::BulkString(b) => String::from_utf8(b.clone()).ok(),
        RValue::SimpleString(s) => Some(s.clone()),
        RValue::Int(i) => Some(i.to_string()),
        RValue::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Field/value pairs of a hash, a WITHSCORES range, or a stream entry, in
/// the reply shapes of RESP2 (flat arrays) and RESP3 (maps, pairs).
fn pairs(v: &RValue) -> Vec<(String, String)> {
    match v {
        RValue::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((string_of(k)?, string_of(v)?)))
            .collect(),
        RValue::Array(items)
            if items
                .iter()
                .all(|i| matches!(i, RValue::Array(p) if p.len() == 2))
                && !items.is_empty() =>
        {
            items
                .iter()
                .filter_map(|i| match i {
                    RValue::Array(p) => Some((string_of(&p[0])?, string_of(&p[1])?)),
                    _ => None,
                })
                .collect()
        }
        RValue::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((string_of(c.first()?)?, string_of(c.get(1)?)?)))
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_xrange(v: &RValue) -> Vec<FetchedEntry> {
    let RValue::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let RValue::Array(parts) = e else { continue };
        let (Some(id), Some(fields)) = (parts.first().and_then(string_of), parts.get(1)) else {
            continue;
        };
        let Some(seq) = id.split('-').next().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let fields: HashMap<String, String> = pairs(fields).into_iter().collect();
        let (Some(frame), Some(kind)) = (
            fields.get("f"),
            fields.get("k").and_then(|k| layout::kind_of_code(k)),
        ) else {
            continue;
        };
        out.push(FetchedEntry {
            seq: Seq(seq),
            kind,
            frame: Frame::from(frame.clone()),
            meta: layout::decode_meta(fields.get("m").map_or("", String::as_str)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_is_read_back_from_a_frame() {
        assert_eq!(
            frame_seq(r#"{"type":"market_update","seq":1042}"#),
            Some(Seq(1042))
        );
        assert_eq!(frame_seq("{}"), None);
    }

    #[test]
    fn reply_pairs_in_both_protocols() {
        let flat = RValue::Array(vec![
            RValue::BulkString(b"a".to_vec()),
            RValue::BulkString(b"1".to_vec()),
            RValue::BulkString(b"b".to_vec()),
            RValue::BulkString(b"2".to_vec()),
        ]);
        assert_eq!(
            pairs(&flat),
            [
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string())
            ]
        );
        let map = RValue::Map(vec![(RValue::BulkString(b"a".to_vec()), RValue::Double(1.0))]);
        assert_eq!(pairs(&map), [("a".to_string(), "1".to_string())]);
    }

    #[test]
    fn signal_updates_say_what_they_lack() {
        let u = crate::protocol::update::decode_entry(
            serde_json::json!({"type":"signal_update","signal_id":"s1","confidence_score":3}),
        )
        .unwrap();
        let e = entry(u, None, 5);
        assert_eq!(e.args[0], "u");
        assert_eq!(e.args[5], "s1");
        assert_eq!(e.args[7], "ST");
        assert!(!e.args[8].ends_with('}'));
    }
}
