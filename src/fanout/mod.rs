//! The fanout shards. Each stream (a symbol, the signals stream, a user's
//! notifications) belongs to exactly one shard, whose single worker thread
//! owns everything about it: the sequencer, the history window, the latest
//! update, the unread notifications and the subscriber sets. One owner
//! means no lock on the path of an update, and a subscription, a resume
//! or a `mark_read` takes effect at one exact point in the stream's order,
//! so a resuming client gets no gap and no duplicate.
//!
//! A worker encodes each update once and hands a clone of the frame (a
//! reference count) to every subscriber's outbox. It never awaits a socket:
//! a full outbox is that subscriber's problem. Writers are woken once per
//! batch, not once per frame, so that frames leave in few system calls.
//! When its ring is empty no later update can share those writes, and the
//! worker makes them itself, without blocking (`Outbox::write_out`):
//! DESIGN.md has one writer per socket; this saves a task wake and switch
//! per delivery where each socket gets a frame now and then, and leaves
//! whatever a full socket does not take to the connection's own task.
//!
//! When the node's subscribers as a whole fall behind (the [`Backlog`] says
//! saturated), workers stop taking updates from their rings until writers
//! catch up; the rings fill and publishers wait. So a machine that cannot
//! keep up slows its publishers rather than growing every queue to its
//! limit and conflating or cutting subscribers that did nothing wrong.

//!
//! Its rooms: [`worker`] (the loop and the delivery of updates),
//! [`control`] (subscriptions, resumes, read state and questions, applied
//! between updates), [`replay`] (what a resuming subscriber missed),
//! [`unread`] (each user's unread notifications), [`backpressure`] (the
//! node-wide signal that subscribers as a whole are behind).

pub mod backpressure;
mod control;
mod replay;
mod unread;
mod worker;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::auth::SymbolAccess;
use crate::history::EntryMeta;
use crate::metrics::{FanoutGauges, Metrics, Samples};
use crate::protocol::encode::Frame;
use crate::protocol::update::Update;
use crate::protocol::{Seq, StreamKey, UpdateKind};
use crate::registry::{Registry, SignalFilter, Subscriber, SubscriberId};
use crate::ring::Ring;
use crate::shutdown::Shutdown;
use backpressure::Backlog;
use worker::Worker;

/// Updates taken from the ring before writers are woken and publishers
/// told there is room. Small enough to keep latency in microseconds.
const BATCH: usize = 64;
/// How long a paused worker sleeps at most; the writer that ends the
/// saturation wakes it earlier.
const SATURATED_PAUSE: Duration = Duration::from_millis(2);

/// An update on its way to fanout.
pub struct Inbound {
    pub kind: UpdateKind,
    pub stream: StreamKey,
    pub meta: EntryMeta,
    pub payload: Payload,
    /// When ingress received it, for the latency histograms.
    pub received_at: Instant,
}

pub enum Payload {
    /// Embedded mode: the worker gives the `seq` and encodes.
    Fresh(serde_json::Map<String, Value>),
    /// Cluster mode: Redis gave the `seq`; the frame is encoded already.
    Sequenced { seq: Seq, frame: Frame },
}

impl Inbound {
    /// An update validated by this node's ingress, for embedded mode.
    pub fn fresh(update: Update, received_at: Instant) -> Inbound {
        Inbound {
            kind: update.kind,
            meta: EntryMeta {
                symbol: update.symbol,
                signal_type: update.signal_type,
                notification_key: update.notification_id,
            },
            stream: update.stream,
            payload: Payload::Fresh(update.body),
            received_at,
        }
    }
}

/// Messages of a stream read from Redis for a resuming subscriber, when
/// this node's own history may not reach back (it started later, or was
/// cut from Redis for a while).
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The stream's newest `seq` in Redis.
    pub head: Seq,
    /// Kept messages, oldest first.
    pub entries: Vec<FetchedEntry>,
}

#[derive(Debug, Clone)]
pub struct FetchedEntry {
    pub seq: Seq,
    pub kind: UpdateKind,
    pub frame: Frame,
    pub meta: EntryMeta,
}

/// Changes to subscriptions and questions, applied between updates.
pub enum Control {
    /// Subscribes; replays from `since`, or sends the latest update.
    /// `fetched` (cluster mode) is what Redis holds of the stream: the
    /// messages after `since`, or the latest update.
    Subscribe {
        sub: Arc<Subscriber>,
        symbol: Arc<str>,
        since: Option<Seq>,
        fetched: Option<Fetched>,
        /// At most one update of this symbol per this interval.
        min_interval: Option<Duration>,
    },
    Unsubscribe {
        id: SubscriberId,
        symbol: Arc<str>,
    },
    /// Sets a signal subscriber's filter (first call adds it), sends
    /// `answer` first, then replays from `since` if given.
    Filter {
        sub: Arc<Subscriber>,
        filter: SignalFilter,
        since: Option<Seq>,
        answer: Option<Frame>,
        fetched: Option<Fetched>,
    },
    RemoveSignals {
        id: SubscriberId,
    },
    /// Sends the user's unread notifications, then live ones. `fetched`
    /// (cluster mode) is the authoritative unread list from Redis.
    AttachUser {
        sub: Arc<Subscriber>,
        user: Arc<str>,
        fetched: Option<Fetched>,
    },
    DetachUser {
        id: SubscriberId,
        user: Arc<str>,
    },
    MarkRead {
        user: Arc<str>,
        key: Arc<str>,
        notification_id: Value,
        from: Arc<Subscriber>,
        echo_id: Option<Value>,
    },
    /// A notification was marked read on some node (cluster mode): forget
    /// it as unread and tell the user's connections here, except `skip`
    /// (the one that asked, which was answered already).
    ReadElsewhere {
        user: Arc<str>,
        key: Arc<str>,
        frame: Frame,
        skip: Option<SubscriberId>,
    },
    /// The newest `seq` of every stream this node follows or serves: its
    /// head, or the highest `seq` a local subscriber holds (a latest update
    /// read from Redis) where that is higher. Sent when the link to Redis
    /// is back, before anything new enters the rings, so the worker first
    /// applies the updates still in its ring (they came before the link
    /// was lost).
    Heads {
        reply: oneshot::Sender<Vec<(StreamKey, Seq)>>,
    },
    /// The link to Redis is back (cluster mode); follows `Heads`, before
    /// the catch-up. Each stream in `reseeded` (with the head `Heads` gave)
    /// lost its state in Redis and had its counter put back: its local
    /// subscribers get a `reset` to the next `seq` to come, and on
    /// `/ws/notifications/` the unread list as Redis now holds it (empty:
    /// it lost them). Every stream with no local subscriber forgets its
    /// kept messages, keeping its head: what was published while the link
    /// was down is not read for it, so its window would have a hole that
    /// a later resume could take for the whole story; with it empty, a
    /// resume reads Redis or is told to reset. Answers the heads of the
    /// streams with local subscribers, the ones to catch up.
    Relinked {
        reseeded: Vec<(StreamKey, Seq)>,
        reply: oneshot::Sender<Vec<(StreamKey, Seq)>>,
    },
    /// Recent signals after `since`, matching the filter, as a JSON array.
    QuerySignals {
        filter: SignalFilter,
        access: SymbolAccess,
        since: Seq,
        reply: oneshot::Sender<Frame>,
    },
    /// A user's notifications after `since`, each with `read`, as a JSON array.
    QueryNotifications {
        user: Arc<str>,
        since: Seq,
        reply: oneshot::Sender<Frame>,
    },
    /// Makes the worker panic, as a bug would. Only [`Fanout::inject_fault`]
    /// sends it, for the test that proves a dead worker stops the node;
    /// nothing a client or publisher sends can produce it.
    #[doc(hidden)]
    Fault,
}

pub type ShardRing = Ring<Inbound, Control>;

/// Settings a worker needs.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub shards: usize,
    pub ring_capacity: usize,
    pub history_messages: usize,
    pub history_max_age: Duration,
    pub max_unread_per_user: usize,
}

/// All shards of a node, and the latest market update per symbol (shared
/// with HTTP readers; a dashmap because each symbol's worker writes it
/// while any number of requests read it).
pub struct Fanout {
    shards: Vec<Arc<ShardRing>>,
    pub latest: Arc<DashMap<Arc<str>, Frame>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// How far behind the node's subscribers are (see [`backpressure`]).
    backlog: Arc<Backlog>,
}

impl Fanout {
    /// Starts one worker thread per shard. A worker that dies (a panic: a
    /// bug) takes the node down through `shutdown`, rather than leaving
    /// its streams silently undelivered while the node looks healthy.
    pub fn start(config: FanoutConfig, metrics: Arc<Metrics>, shutdown: Arc<Shutdown>) -> Arc<Fanout> {
        let latest = Arc::new(DashMap::new());
        let stop = Arc::new(AtomicBool::new(false));
        let backlog = Arc::new(Backlog::default());
        let mut shards = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards);
        let mut unparkers = Vec::with_capacity(config.shards);
        for index in 0..config.shards {
            let (ring, parker) = Ring::new(config.ring_capacity);
            unparkers.push(parker.unparker().clone());
            let ring = Arc::new(ring);
            let worker = Worker {
                ring: ring.clone(),
                streams: HashMap::new(),
                unread: HashMap::new(),
                registry: Registry::default(),
                latest: latest.clone(),
                metrics: metrics.clone(),
                config: config.clone(),
                wakes: Vec::new(),
                to_enqueue: Samples::default(),
                to_write: Samples::default(),
                timers: BinaryHeap::new(),
                backlog: backlog.clone(),
            };
            let (stop, shutdown, own_ring) = (stop.clone(), shutdown.clone(), ring.clone());
            let handle = std::thread::Builder::new()
                .name(format!("fanout-{index}"))
                .spawn(move || {
                    let ran =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run(parker, &stop)));
                    if let Err(panic) = ran {
                        own_ring.kill();
                        let why = format!("fanout worker {index} died: {}", panic_message(&*panic));
                        tracing::error!("{why}; the node stops so that its clients resume on another node");
                        shutdown.fail(why);
                    }
                })
                // Failing to start a thread at boot leaves nothing to run.
                .expect("spawn fanout worker thread");
            shards.push(ring);
            threads.push(handle);
        }
        backlog.set_unparkers(unparkers);
        Arc::new(Fanout {
            shards,
            latest,
            stop,
            threads: Mutex::new(threads),
            backlog,
        })
    }

    pub fn shard_for(&self, key: &StreamKey) -> &ShardRing {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    pub fn shards(&self) -> &[Arc<ShardRing>] {
        &self.shards
    }

    pub fn control(&self, key: &StreamKey, c: Control) {
        self.shard_for(key).send_control(c);
    }

    /// Makes the worker of `key`'s shard panic (see [`Control::Fault`]).
    #[doc(hidden)]
    pub fn inject_fault(&self, key: &StreamKey) {
        self.control(key, Control::Fault);
    }

    /// The node's back-pressure signal: subscriber outboxes count into it.
    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    /// What fanout reports of itself, for the stats and `/metrics`.
    pub fn gauges(&self) -> FanoutGauges {
        FanoutGauges {
            ring_depths: self.ring_depths(),
            subscribers_behind: self.backlog.behind(),
            backpressure_pauses: self.backlog.pauses(),
        }
    }

    pub fn ring_depths(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.depth()).collect()
    }

    /// Stops the workers once their rings are drained, and waits for them.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for s in &self.shards {
            s.wake();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The text of a panic's payload, for the log line of a dead worker.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic".to_string(),
    }
}
