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
//! through every channel it listens on that carried nothing for a while,
//! checked four times a second from the end of the catch-up: a channel
//! silent for a second means a wedged subscription, treated as a lost
//! link.
//!
//! On one Redis, a node that needs most groups listens to the all-groups
//! channel instead of the groups' own (one message per script call instead
//! of one per group, `layout::ALL_CHANNEL`), once every node it hears
//! announces that its scripts publish there.

mod batcher;
mod conn;
mod fetch;
pub mod idempotency;
pub mod layout;
mod link;
mod recovery;

pub use batcher::{entry as script_entry, Entry as ScriptEntry};
use batcher::{entry, Entry, Job};
use conn::{within, Conn};
use fetch::bytes_of;
pub use fetch::frame_seq;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::future::Future;

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::protocol::encode::Frame;
use crate::protocol::update::Update;
use crate::protocol::StreamKey;
use crate::shutdown::Shutdown;

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
/// Messages from Redis relayed to the shards at most before their workers
/// are woken.
const RELAY_BATCH: usize = 256;
/// Wanted groups from which a node listens to the all-groups channel, and
/// below which it goes back to the groups' own channels.
const ALL_FROM: usize = (layout::GROUPS / 4) as usize;
const ALL_UNTIL: usize = (layout::GROUPS / 8) as usize;
/// How long a node hears the others before it trusts that it knows them
/// all (they announce themselves four times a second).
const KNOW_PEERS_AFTER: Duration = Duration::from_secs(1);
/// How long a node counts as present after its last heartbeat.
const PEER_GONE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("Redis is unreachable")]
    Unavailable,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the Redis Cluster is not ok yet (a slot has no master)")]
    ClusterNotReady,
    #[error("the pub/sub connection closed")]
    PushClosed,
    #[error("the pub/sub connection was lost")]
    Disconnected,
    #[error("fell behind the pub/sub stream")]
    FellBehind,
    #[error("no heartbeat on {channel} for {after:?}")]
    NoHeartbeat { channel: String, after: Duration },
    #[error("the fanout rings stayed full")]
    RingsFull,
}

/// Redis's answer to queued updates (see [`Replication::enqueue`]).
pub struct Answer(oneshot::Receiver<Result<Vec<i64>, ReplicationError>>);

impl Future for Answer {
    type Output = Result<Vec<i64>, ReplicationError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // A reply dropped unsent: the batcher is gone, the batch was never sent.
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ReplicationError::Unavailable)))
    }
}

/// The connection a node listens on, and the channels it listens to: the
/// groups' own, and (`all`) the all-groups channel.
struct Listener {
    conn: Conn,
    groups: std::collections::HashSet<u64>,
    all: bool,
}

/// The key the ingest channel's heartbeat is tracked under.
const INGEST_BEAT: u64 = u64::MAX;
/// The key the all-groups channel's heartbeat is tracked under.
const ALL_BEAT: u64 = u64::MAX - 1;

/// What the link to Redis hands on, and to whom: the fanout shards get
/// what Redis carries, ingress gets the messages of the ingest channel
/// (through `ingest`, see `ingress::redis`). Never the node.
pub struct Handles {
    pub fanout: Arc<Fanout>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<Shutdown>,
    pub ingest: mpsc::Sender<Vec<u8>>,
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
    /// Other nodes heard from, by id, for the dashboard: when, and
    /// whether they publish to the all-groups channel.
    nodes: Mutex<HashMap<String, (Instant, bool)>>,
    /// Stream groups some local subscriber needs, with how many need each.
    /// A mutex held to count.
    interest: Mutex<HashMap<u64, usize>>,
    /// The same groups as bits (bit g: group g), read for each section of
    /// the all-groups channel. Written under `interest`'s lock.
    wanted: AtomicU64,
    /// Whether the pushes taken so far come after the confirmation of the
    /// all-groups subscription and before its end: then the groups' own
    /// channels carry nothing the all-groups channel does not, and are
    /// ignored. Only the link's task uses it (Relaxed).
    all_active: AtomicBool,
    /// Since when the current link is up.
    up_since: Mutex<Option<Instant>>,
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
            wanted: AtomicU64::new(0),
            all_active: AtomicBool::new(false),
            up_since: Mutex::new(None),
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
            .filter(|(_, (t, _))| t.elapsed() < PEER_GONE)
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

    /// The all-groups channel the scripts publish to: none in a Redis
    /// Cluster (a call touches one slot).
    fn all_channel(&self) -> &'static str {
        if self.cluster.load(Ordering::Relaxed) {
            ""
        } else {
            layout::ALL_CHANNEL
        }
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
        self.enqueue(updates, claim, received_micros).await?.await
    }

    /// Queues updates for Redis behind everything queued before them and
    /// returns at once with the answer to come (as [`Replication::publish`]
    /// gives it), so that a publisher can send its next batch meanwhile and
    /// batches grow with the load. The order of `enqueue` calls is the
    /// order Redis sequences them in.
    pub async fn enqueue(
        &self,
        updates: Vec<Update>,
        claim: Option<&str>,
        received_micros: u64,
    ) -> Result<Answer, ReplicationError> {
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
        Ok(Answer(answer))
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
            .arg(layout::now_micros())
            .arg(self.all_channel())
            .arg(group);
        let n: i64 = conn.script(&inv).await?;
        Ok(n == 1)
    }

    /// Starts listening to `key`'s group (if no local subscriber did yet);
    /// returns once Redis confirmed it, so a fetch made after it plus the
    /// live messages that follow miss nothing.
    pub async fn want(&self, key: &StreamKey) {
        let group = layout::group_of(&layout::stream_id(key));
        {
            let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
            *interest.entry(group).or_default() += 1;
            self.wanted.fetch_or(1 << group, Ordering::AcqRel);
        }
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
                    self.wanted.fetch_and(!(1 << group), Ordering::AcqRel);
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

    /// Whether to listen to the all-groups channel rather than to the
    /// groups' own: on one Redis, for most groups, once this link has
    /// heard the other nodes long enough to know them, and only if all of
    /// them publish there (a node of 0.1 publishes to the groups' channels
    /// only).
    fn wants_all(&self, wanted: usize, now_all: bool) -> bool {
        if self.cluster.load(Ordering::Relaxed) || wanted < if now_all { ALL_UNTIL } else { ALL_FROM } {
            return false;
        }
        let known = (*self.up_since.lock().unwrap_or_else(|p| p.into_inner()))
            .is_some_and(|t| t.elapsed() >= KNOW_PEERS_AFTER);
        known
            && self
                .nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .all(|(t, all)| *all || t.elapsed() >= PEER_GONE)
    }

    /// Makes the listener listen to exactly the wanted groups: through
    /// their own channels, or through the all-groups channel (see
    /// [`Replication::wants_all`]). A switch listens to the new channels
    /// before it leaves the old ones, so nothing falls between; what
    /// arrives twice meanwhile is told apart in `link` (`all_active`).
    async fn sync_listening(&self) -> Result<(), ReplicationError> {
        let mut guard = self.listener.lock().await;
        let Some(listener) = guard.as_mut() else {
            return Ok(());
        };
        let mut wanted = self.wanted_groups();
        let all = self.wants_all(wanted.len(), listener.all);
        if all && !listener.all {
            listener.conn.listen(layout::ALL_CHANNEL, true).await?;
            listener.all = true;
            self.beats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ALL_BEAT, Instant::now());
        }
        if all {
            wanted.clear();
        }
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
        if !all && listener.all {
            listener.conn.listen(layout::ALL_CHANNEL, false).await?;
            listener.all = false;
            self.beats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ALL_BEAT);
        }
        Ok(())
    }
}
