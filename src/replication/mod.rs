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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The connection a node listens on, and the groups it listens to.
struct Listener {
    conn: Conn,
    groups: std::collections::HashSet<u64>,
}

/// The key the ingest channel's heartbeat is tracked under.
const INGEST_BEAT: u64 = u64::MAX;

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
            .arg(layout::now_micros());
        let n: i64 = conn.script(&inv).await?;
        Ok(n == 1)
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
}
