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

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::sync::Parker;
use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::auth::SymbolAccess;
use crate::history::{EntryMeta, History};
use crate::metrics::Metrics;
use crate::outbox::{Backlog, ConflationKey, Outbox, Push};
use crate::protocol::encode::{self, Frame};
use crate::protocol::update::Update;
use crate::protocol::{ErrorCode, ProtocolError, Seq, SignalType, StreamKey, UpdateKind};
use crate::registry::{Member, Registry, SignalFilter, Subscriber, SubscriberId, Throttle};
use crate::ring::Ring;
use crate::sequencer::Sequencer;
use crate::shutdown::Shutdown;

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
}

impl Fanout {
    /// Starts one worker thread per shard. A worker that dies (a panic: a
    /// bug) takes the node down through `shutdown`, rather than leaving
    /// its streams silently undelivered while the node looks healthy.
    pub fn start(config: FanoutConfig, metrics: Arc<Metrics>, shutdown: Arc<Shutdown>) -> Arc<Fanout> {
        let latest = Arc::new(DashMap::new());
        let stop = Arc::new(AtomicBool::new(false));
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
                timers: BinaryHeap::new(),
                backlog: metrics.backlog.clone(),
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
        metrics.backlog.set_unparkers(unparkers);
        Arc::new(Fanout {
            shards,
            latest,
            stop,
            threads: Mutex::new(threads),
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

/// Gives memory back after a map shrank to a small part of what it holds
/// room for (a flood of subscriptions came and went).
fn shrink<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
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

/// One stream's state, owned by its worker.
struct StreamState {
    sequencer: Sequencer,
    history: History,
    /// The newest market update, sent right after `subscribed`.
    latest: Option<Frame>,
    conflation_key: ConflationKey,
}

/// When a throttled subscription owes its pending update: (when,
/// subscriber, symbol, the symbol's conflation key).
type ThrottleTimer = (Instant, u64, Arc<str>, ConflationKey);

/// Gives every stream of the node its own conflation key.
static NEXT_CONFLATION_KEY: AtomicU32 = AtomicU32::new(1);

/// A user's unread notifications, oldest first.
#[derive(Default)]
struct Unread {
    by_seq: BTreeMap<Seq, (Arc<str>, Frame)>,
    by_key: HashMap<Arc<str>, Seq>,
}

impl Unread {
    fn insert(&mut self, seq: Seq, key: Arc<str>, frame: Frame, max: usize) {
        if let Some(old) = self.by_key.insert(key.clone(), seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(seq, (key, frame));
        while self.by_seq.len() > max {
            if let Some((_, (k, _))) = self.by_seq.pop_first() {
                self.by_key.remove(&k);
            }
        }
    }

    fn remove(&mut self, key: &str) -> Option<Frame> {
        let seq = self.by_key.remove(key)?;
        self.by_seq.remove(&seq).map(|(_, f)| f)
    }

    /// Takes Redis's list as the truth up to its head, keeping what this
    /// node received after it.
    fn adopt(&mut self, fetched: &Fetched, max: usize) {
        let newer: Vec<(Seq, (Arc<str>, Frame))> = self
            .by_seq
            .iter()
            .filter(|(s, _)| **s > fetched.head)
            .map(|(s, v)| (*s, v.clone()))
            .collect();
        self.by_seq.clear();
        self.by_key.clear();
        for e in &fetched.entries {
            if let Some(k) = &e.meta.notification_key {
                self.insert(e.seq, k.clone(), e.frame.clone(), max);
            }
        }
        for (seq, (k, f)) in newer {
            self.insert(seq, k, f, max);
        }
    }
}

struct Worker {
    ring: Arc<ShardRing>,
    streams: HashMap<StreamKey, StreamState>,
    unread: HashMap<Arc<str>, Unread>,
    registry: Registry,
    latest: Arc<DashMap<Arc<str>, Frame>>,
    metrics: Arc<Metrics>,
    config: FanoutConfig,
    /// Outboxes that got their first frame in this batch.
    wakes: Vec<Arc<Outbox>>,
    /// When throttled subscriptions (`max_frequency`) owe their pending
    /// update, earliest first.
    timers: BinaryHeap<Reverse<ThrottleTimer>>,
    backlog: Arc<Backlog>,
}

impl Worker {
    fn run(mut self, parker: Parker, stop: &AtomicBool) {
        let mut in_batch = 0;
        loop {
            while let Some(c) = self.ring.pop_control() {
                self.control(c);
            }
            // Acquire pairs with the Release in `Fanout::stop`: a stopping
            // node drains its rings whatever its subscribers' backlog.
            if self.backlog.saturated() && !stop.load(Ordering::Acquire) {
                if in_batch > 0 {
                    self.fire_timers();
                    self.flush_wakes();
                    in_batch = 0;
                }
                self.backlog.paused();
                // Looked again after announcing the pause: a writer that
                // caught up in between would not have known to wake us.
                if self.backlog.saturated() {
                    parker.park_timeout(SATURATED_PAUSE);
                }
                continue;
            }
            match self.ring.pop_update() {
                Some(inbound) => {
                    self.publish(inbound);
                    in_batch += 1;
                    if in_batch == BATCH {
                        self.end_batch();
                        in_batch = 0;
                    }
                }
                None => {
                    if in_batch > 0 {
                        self.end_batch();
                        in_batch = 0;
                    }
                    let next_timer = self.fire_timers();
                    self.flush_wakes();
                    // Acquire pairs with the Release in `Fanout::stop`.
                    if stop.load(Ordering::Acquire) && !self.ring.has_control() {
                        return;
                    }
                    let sleep = next_timer.map_or(Duration::from_secs(1), |at| {
                        at.saturating_duration_since(Instant::now())
                            .min(Duration::from_secs(1))
                    });
                    if !sleep.is_zero() {
                        parker.park_timeout(sleep);
                    }
                }
            }
        }
    }

    fn end_batch(&mut self) {
        self.fire_timers();
        self.flush_wakes();
        self.ring.made_room();
    }

    /// Sends the pending updates of throttled subscriptions that are due;
    /// returns when the next one is.
    fn fire_timers(&mut self) -> Option<Instant> {
        let now = Instant::now();
        while let Some(Reverse((at, ..))) = self.timers.peek() {
            if *at > now {
                return Some(*at);
            }
            let Some(Reverse((_, id, symbol, key))) = self.timers.pop() else {
                break;
            };
            let Some(m) = self.registry.member_mut(&symbol, SubscriberId(id)) else {
                continue;
            };
            let Some(t) = &mut m.throttle else { continue };
            if let Some((frame, received_at)) = t.pending.take() {
                t.sent(now);
                push_one(m, &frame, received_at, Some(key), &mut self.wakes, &self.metrics);
            }
        }
        None
    }

    /// Gets the frames of this batch moving. When the ring is empty no
    /// later update can share their writes, so the worker writes them
    /// itself (one system call per subscriber, no task wake); otherwise,
    /// or when a socket is full or its task is writing, it wakes the
    /// subscriber's task, which writes whatever has gathered by then.
    fn flush_wakes(&mut self) {
        let direct = self.ring.depth() == 0;
        let (mut messages, mut bytes) = (0, 0);
        for outbox in self.wakes.drain(..) {
            if direct {
                if let Some(Ok(wrote)) = outbox.write_out(false).map(|out| out.wrote) {
                    messages += wrote.messages;
                    bytes += wrote.bytes;
                    if let Some(t) = wrote.oldest {
                        self.metrics.publish_to_write.record(t.elapsed());
                    }
                    if wrote.done {
                        continue;
                    }
                }
            }
            outbox.wake();
        }
        if messages > 0 {
            self.metrics.wrote(messages, bytes);
        }
    }

    fn stream(&mut self, key: &StreamKey) -> &mut StreamState {
        stream_state(&mut self.streams, &self.config, key)
    }

    /// Drops the state of a stream that nobody here follows and that never
    /// had a message: subscribing to and leaving symbols that were never
    /// published must not leave an entry each behind. A stream that had
    /// messages keeps its state, whose counter its next `seq` continues.
    fn forget_if_unused(&mut self, key: &StreamKey) {
        if self
            .streams
            .get(key)
            .is_some_and(|s| s.sequencer.head() == Seq(0))
        {
            self.streams.remove(key);
            shrink(&mut self.streams);
        }
    }

    fn publish(&mut self, inbound: Inbound) {
        let Inbound {
            kind,
            stream: key,
            meta,
            payload,
            received_at,
        } = inbound;
        let now = Instant::now();
        let stream = self.stream(&key);
        let conflation_key = stream.conflation_key;
        let (seq, frame) = match payload {
            Payload::Fresh(body) => {
                let seq = stream.sequencer.next_seq();
                (seq, encode::update(&body, seq))
            }
            Payload::Sequenced { seq, frame } => {
                if !stream.sequencer.observe(seq) {
                    return;
                }
                (seq, frame)
            }
        };
        stream.history.push(seq, frame.clone(), meta.clone(), now);
        match kind {
            UpdateKind::MarketUpdate => {
                stream.latest = Some(frame.clone());
                if let Some(symbol) = &meta.symbol {
                    self.latest.insert(symbol.clone(), frame.clone());
                    let members = self.registry.symbol_subscribers_mut(symbol);
                    for m in members.iter_mut().filter(|m| m.wants(seq)) {
                        if let Some(t) = &mut m.throttle {
                            if now < t.next_at {
                                if t.pending.is_none() {
                                    let timer = (t.next_at, m.sub.id.0, symbol.clone(), conflation_key);
                                    self.timers.push(Reverse(timer));
                                }
                                t.pending = Some((frame.clone(), received_at));
                                continue;
                            }
                            t.sent(now);
                        }
                        push_one(
                            m,
                            &frame,
                            received_at,
                            Some(conflation_key),
                            &mut self.wakes,
                            &self.metrics,
                        );
                    }
                }
            }
            UpdateKind::NewSignal | UpdateKind::SignalUpdate => {
                let subs = self
                    .registry
                    .signal_subscribers()
                    .iter()
                    .filter_map(|m| m.filter.admits(&meta, &m.member.sub.access).then_some(&m.member));
                deliver(subs, seq, &frame, received_at, &mut self.wakes, &self.metrics);
            }
            UpdateKind::NewNotification => {
                let StreamKey::User(user) = &key else { return };
                if let Some(nk) = &meta.notification_key {
                    let unread = self.unread.entry(user.clone()).or_default();
                    unread.insert(seq, nk.clone(), frame.clone(), self.config.max_unread_per_user);
                }
                let subs = self.registry.user_connections(user).iter();
                deliver(subs, seq, &frame, received_at, &mut self.wakes, &self.metrics);
            }
        }
        self.metrics.publish_to_enqueue.record(received_at.elapsed());
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Subscribe {
                sub,
                symbol,
                since,
                fetched,
                min_interval,
            } => {
                let throttle = min_interval.map(|i| Throttle::every(i, Instant::now()));
                if let Some(member) = self.registry.member_mut(&symbol, sub.id) {
                    // Already subscribed: only a new max_frequency changes anything.
                    if throttle.is_some() {
                        member.throttle = throttle;
                    }
                    return;
                }
                let key = StreamKey::Symbol(symbol.clone());
                let stream = self.stream(&key);
                let conflation_key = Some(stream.conflation_key);
                let floor = match since {
                    Some(since) => replay(
                        &sub,
                        &key,
                        stream,
                        since,
                        fetched.as_ref(),
                        conflation_key,
                        |_| true,
                    ),
                    None => {
                        let local = stream.latest.as_ref().map(|f| (stream.sequencer.head(), f));
                        let remote = fetched
                            .as_ref()
                            .and_then(|f| f.entries.last().map(|e| (e.seq, &e.frame)));
                        let newest = match (local, remote) {
                            (Some(l), Some(r)) => Some(if r.0 > l.0 { r } else { l }),
                            (l, r) => l.or(r),
                        };
                        match newest {
                            Some((seq, frame)) => {
                                sub.outbox.push_keyed(frame.clone(), None, conflation_key);
                                seq
                            }
                            None => stream.sequencer.head(),
                        }
                    }
                };
                self.registry.subscribe(&symbol, sub, floor, throttle);
            }
            Control::Unsubscribe { id, symbol } => {
                self.registry.unsubscribe(&symbol, id);
                if self.registry.symbol_subscribers(&symbol).is_empty() {
                    self.forget_if_unused(&StreamKey::Symbol(symbol));
                }
            }
            Control::Filter {
                sub,
                filter,
                since,
                answer,
                fetched,
            } => {
                if let Some(answer) = answer {
                    push_now(&sub, answer);
                }
                let key = StreamKey::Signals;
                let stream = self.stream(&key);
                let floor = match since {
                    Some(since) => {
                        let access = sub.access.clone();
                        replay(&sub, &key, stream, since, fetched.as_ref(), None, |m| {
                            filter.admits(m, &access)
                        })
                    }
                    None => stream.sequencer.head(),
                };
                self.registry.set_signal_filter(sub, filter, floor);
            }
            Control::RemoveSignals { id } => self.registry.remove_signal_subscriber(id),
            Control::AttachUser { sub, user, fetched } => {
                let unread = self.unread.entry(user.clone()).or_default();
                let mut floor = Seq(0);
                if let Some(f) = fetched {
                    unread.adopt(&f, self.config.max_unread_per_user);
                    floor = f.head;
                }
                push_now(
                    &sub,
                    encode::unread_notifications(unread.by_seq.values().map(|(_, f)| f)),
                );
                let head = self
                    .streams
                    .get(&StreamKey::User(user.clone()))
                    .map(|s| s.sequencer.head());
                self.registry
                    .attach_user(&user, sub, floor.max(head.unwrap_or_default()));
            }
            Control::ReadElsewhere {
                user,
                key,
                frame,
                skip,
            } => {
                if let Some(u) = self.unread.get_mut(&user) {
                    u.remove(&key);
                }
                for m in self.registry.user_connections(&user) {
                    if Some(m.sub.id) != skip {
                        push_now(&m.sub, frame.clone());
                    }
                }
            }
            Control::Heads { reply } => {
                while let Some(inbound) = self.ring.pop_update() {
                    self.publish(inbound);
                }
                self.end_batch();
                let mut heads: HashMap<StreamKey, Seq> = self
                    .streams
                    .iter()
                    .map(|(k, s)| (k.clone(), s.sequencer.head()))
                    .collect();
                let mut hold = |key: StreamKey, held: Option<Seq>| {
                    let head = heads.entry(key).or_default();
                    *head = (*head).max(held.unwrap_or_default());
                };
                for symbol in self.registry.symbols() {
                    let held = self
                        .registry
                        .symbol_subscribers(symbol)
                        .iter()
                        .map(|m| m.floor)
                        .max();
                    hold(StreamKey::Symbol(symbol.clone()), held);
                }
                for user in self.registry.users() {
                    let held = self.registry.user_connections(user).iter().map(|m| m.floor).max();
                    hold(StreamKey::User(user.clone()), held);
                }
                let signals = self.registry.signal_subscribers();
                if !signals.is_empty() {
                    hold(StreamKey::Signals, signals.iter().map(|m| m.member.floor).max());
                }
                let _ = reply.send(heads.into_iter().collect());
            }
            Control::Relinked { reseeded, reply } => {
                for (key, head) in reseeded {
                    let local = self.streams.get(&key).map_or(Seq(0), |s| s.sequencer.head());
                    let reset = encode::reset(key.wire_name(), Seq(head.max(local).0 + 1));
                    match &key {
                        StreamKey::Symbol(symbol) => {
                            for m in self.registry.symbol_subscribers(symbol) {
                                push_now(&m.sub, reset.clone());
                            }
                        }
                        StreamKey::Signals => {
                            for m in self.registry.signal_subscribers() {
                                push_now(&m.member.sub, reset.clone());
                            }
                        }
                        StreamKey::User(user) => {
                            self.unread.remove(user);
                            let unread = encode::unread_notifications(std::iter::empty());
                            for m in self.registry.user_connections(user) {
                                push_now(&m.sub, reset.clone());
                                push_now(&m.sub, unread.clone());
                            }
                        }
                    }
                }
                let mut live: HashMap<StreamKey, Seq> = HashMap::new();
                live.extend(
                    self.registry
                        .symbols()
                        .map(|s| (StreamKey::Symbol(s.clone()), Seq(0))),
                );
                live.extend(
                    self.registry
                        .users()
                        .map(|u| (StreamKey::User(u.clone()), Seq(0))),
                );
                if !self.registry.signal_subscribers().is_empty() {
                    live.insert(StreamKey::Signals, Seq(0));
                }
                let (messages, max_age) = (self.config.history_messages, self.config.history_max_age);
                for (key, stream) in self.streams.iter_mut() {
                    match live.get_mut(key) {
                        Some(head) => *head = stream.sequencer.head(),
                        None => stream.history = History::new(messages, max_age),
                    }
                }
                let _ = reply.send(live.into_iter().collect());
            }
            Control::DetachUser { id, user } => {
                self.registry.detach_user(&user, id);
                if self.registry.user_connections(&user).is_empty() {
                    if self.unread.get(&user).is_some_and(|u| u.by_seq.is_empty()) {
                        self.unread.remove(&user);
                        shrink(&mut self.unread);
                    }
                    self.forget_if_unused(&StreamKey::User(user));
                }
            }
            Control::MarkRead {
                user,
                key,
                notification_id,
                from,
                echo_id,
            } => self.mark_read(user, key, notification_id, from, echo_id),
            Control::QuerySignals {
                filter,
                access,
                since,
                reply,
            } => {
                let stream = self.stream(&StreamKey::Signals);
                stream.history.expire(Instant::now());
                let frames = stream
                    .history
                    .entries()
                    .iter()
                    .filter(|e| e.seq > since && filter.admits(&e.meta, &access));
                let _ = reply.send(encode::json_array(frames.map(|e| &e.frame)));
            }
            Control::QueryNotifications { user, since, reply } => {
                let unread = self.unread.get(&user);
                // Asking about a user creates nothing: nobody can grow the
                // node's state by asking about users who have none.
                let Some(stream) = self.streams.get_mut(&StreamKey::User(user.clone())) else {
                    let _ = reply.send(encode::json_array(std::iter::empty::<&Frame>()));
                    return;
                };
                stream.history.expire(Instant::now());
                let frames: Vec<Frame> = stream
                    .history
                    .entries()
                    .iter()
                    .filter(|e| e.seq > since)
                    .map(|e| {
                        let read = match (&e.meta.notification_key, unread) {
                            (Some(k), Some(u)) => !u.by_key.contains_key(k),
                            _ => true,
                        };
                        encode::with_flag(&e.frame, "read", read)
                    })
                    .collect();
                let _ = reply.send(encode::json_array(frames.iter()));
            }
            Control::Fault => panic!("fault injected"),
        }
    }

    fn mark_read(
        &mut self,
        user: Arc<str>,
        key: Arc<str>,
        notification_id: Value,
        from: Arc<Subscriber>,
        echo_id: Option<Value>,
    ) {
        let was_unread = self.unread.get_mut(&user).and_then(|u| u.remove(&key));
        let known = was_unread.is_some()
            || self.streams.get(&StreamKey::User(user.clone())).is_some_and(|s| {
                s.history
                    .entries()
                    .iter()
                    .any(|e| e.meta.notification_key.as_deref() == Some(&*key))
            });
        if !known {
            let err = ProtocolError::new(
                ErrorCode::InvalidField,
                format!(
                    "no notification `{}` for this user",
                    key.chars().take(64).collect::<String>()
                ),
            );
            push_now(&from, encode::error(&err, echo_id.as_ref()));
            return;
        }
        let plain = encode::notification_read(&notification_id, None);
        let mut sent_to_sender = false;
        for m in self.registry.user_connections(&user) {
            if m.sub.id == from.id {
                sent_to_sender = true;
                push_now(
                    &m.sub,
                    encode::notification_read(&notification_id, echo_id.as_ref()),
                );
            } else {
                push_now(&m.sub, plain.clone());
            }
        }
        if !sent_to_sender {
            push_now(
                &from,
                encode::notification_read(&notification_id, echo_id.as_ref()),
            );
        }
    }
}

fn stream_state<'a>(
    streams: &'a mut HashMap<StreamKey, StreamState>,
    config: &FanoutConfig,
    key: &StreamKey,
) -> &'a mut StreamState {
    streams.entry(key.clone()).or_insert_with(|| StreamState {
        sequencer: Sequencer::default(),
        history: History::new(config.history_messages, config.history_max_age),
        latest: None,
        conflation_key: NEXT_CONFLATION_KEY.fetch_add(1, Ordering::Relaxed),
    })
}

/// Sends what a client that last saw `since` missed: a `reset` first when
/// what is kept (here, and in Redis when `fetched`) does not reach back,
/// then the kept messages after `since` that `wanted` selects. Returns the
/// newest `seq` sent or known, the subscriber's floor for live messages.
fn replay(
    sub: &Subscriber,
    key: &StreamKey,
    stream: &mut StreamState,
    since: Seq,
    fetched: Option<&Fetched>,
    conflation_key: Option<ConflationKey>,
    wanted: impl Fn(&EntryMeta) -> bool,
) -> Seq {
    stream.history.expire(Instant::now());
    let local = stream.history.entries();
    let remote: &[FetchedEntry] = fetched.map_or(&[], |f| &f.entries);
    let head = stream.sequencer.head().max(fetched.map_or(Seq(0), |f| f.head));
    let oldest = match (local.front().map(|e| e.seq), remote.first().map(|e| e.seq)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let reset = if since > head {
        Some(oldest.unwrap_or(Seq(head.0 + 1)))
    } else if since < head {
        match oldest {
            Some(o) if o.0 <= since.0 + 1 => None,
            Some(o) => Some(o),
            None => Some(Seq(head.0 + 1)),
        }
    } else {
        None
    };
    if let Some(oldest) = reset {
        push_now(sub, encode::reset(key.wire_name(), oldest));
    }
    // A client ahead of this node's stream gets everything kept.
    let since = if since > head { Seq(0) } else { since };
    // Merge the two ordered lists by seq, each message once.
    let mut l = local.iter().filter(|e| e.seq > since).peekable();
    let mut r = remote.iter().filter(|e| e.seq > since).peekable();
    loop {
        let next = match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) if a.seq == b.seq => {
                r.next();
                l.next().map(|e| (&e.frame, &e.meta))
            }
            (Some(a), Some(b)) if b.seq < a.seq => r.next().map(|e| (&e.frame, &e.meta)),
            (Some(_), _) => l.next().map(|e| (&e.frame, &e.meta)),
            (None, Some(_)) => r.next().map(|e| (&e.frame, &e.meta)),
        };
        let Some((frame, meta)) = next else { break };
        if wanted(meta)
            && matches!(
                sub.outbox.push_keyed(frame.clone(), None, conflation_key),
                Push::Overflowed | Push::Closed
            )
        {
            break;
        }
    }
    head
}

fn push_now(sub: &Subscriber, frame: Frame) -> Push {
    sub.outbox.push(frame, None)
}

fn deliver<'a>(
    members: impl Iterator<Item = &'a Member>,
    seq: Seq,
    frame: &Frame,
    received_at: Instant,
    wakes: &mut Vec<Arc<Outbox>>,
    metrics: &Metrics,
) {
    for m in members.filter(|m| m.wants(seq)) {
        push_one(m, frame, received_at, None, wakes, metrics);
    }
}

fn push_one(
    m: &Member,
    frame: &Frame,
    received_at: Instant,
    key: Option<ConflationKey>,
    wakes: &mut Vec<Arc<Outbox>>,
    metrics: &Metrics,
) {
    let (pushed, wake) = m.sub.outbox.push_deferred(frame.clone(), Some(received_at), key);
    match pushed {
        Push::Overflowed => metrics.slow_consumer_cut(),
        Push::Conflated(n) => metrics.conflated(n as u64),
        Push::Queued | Push::Closed => {}
    }
    if wake {
        wakes.push(m.sub.outbox.clone());
    }
}

impl SignalType {
    /// For filters given as text in HTTP queries.
    pub fn parse_loose(s: &str) -> Option<SignalType> {
        SignalType::from_wire(&s.to_ascii_uppercase())
    }
}
