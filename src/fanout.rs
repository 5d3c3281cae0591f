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

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::outbox::{Outbox, Push};
use crate::protocol::encode::{self, Frame};
use crate::protocol::update::Update;
use crate::protocol::{ErrorCode, ProtocolError, Seq, SignalType, StreamKey, UpdateKind};
use crate::registry::{Registry, SignalFilter, Subscriber, SubscriberId};
use crate::ring::Ring;
use crate::sequencer::Sequencer;

/// Updates taken from the ring before writers are woken and publishers
/// told there is room. Small enough to keep latency in microseconds.
const BATCH: usize = 64;

/// An update on its way to fanout.
pub struct Inbound {
    pub update: Update,
    /// When ingress received it, for the latency histograms.
    pub received_at: Instant,
    /// Given by Redis in cluster mode; `None` in embedded mode.
    pub seq: Option<Seq>,
}

/// Changes to subscriptions and questions, applied between updates.
pub enum Control {
    Subscribe {
        sub: Arc<Subscriber>,
        symbol: Arc<str>,
        since: Option<Seq>,
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
    },
    RemoveSignals {
        id: SubscriberId,
    },
    /// Sends the user's unread notifications, then live ones.
    AttachUser {
        sub: Arc<Subscriber>,
        user: Arc<str>,
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
    pub fn start(config: FanoutConfig, metrics: Arc<Metrics>) -> Arc<Fanout> {
        let latest = Arc::new(DashMap::new());
        let stop = Arc::new(AtomicBool::new(false));
        let mut shards = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards);
        for index in 0..config.shards {
            let (ring, parker) = Ring::new(config.ring_capacity);
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
            };
            let stop = stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("fanout-{index}"))
                .spawn(move || worker.run(parker, &stop))
                // Failing to start a thread at boot leaves nothing to run.
                .expect("spawn fanout worker thread");
            shards.push(ring);
            threads.push(handle);
        }
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

    pub fn control(&self, key: &StreamKey, c: Control) {
        self.shard_for(key).send_control(c);
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

/// One stream's state, owned by its worker.
struct StreamState {
    sequencer: Sequencer,
    history: History,
    /// The newest market update, sent right after `subscribed`.
    latest: Option<Frame>,
}

/// A user's unread notifications, oldest first.
#[derive(Default)]
struct Unread {
    by_seq: BTreeMap<Seq, (Arc<str>, Frame)>,
    by_key: HashMap<Arc<str>, Seq>,
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
}

impl Worker {
    fn run(mut self, parker: Parker, stop: &AtomicBool) {
        let mut in_batch = 0;
        loop {
            while let Some(c) = self.ring.pop_control() {
                self.control(c);
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
                    self.flush_wakes();
                    // Acquire pairs with the Release in `Fanout::stop`.
                    if stop.load(Ordering::Acquire) && !self.ring.has_control() {
                        return;
                    }
                    parker.park_timeout(Duration::from_secs(1));
                }
            }
        }
    }

    fn end_batch(&mut self) {
        self.flush_wakes();
        self.ring.made_room();
    }

    fn flush_wakes(&mut self) {
        for outbox in self.wakes.drain(..) {
            outbox.wake();
        }
    }

    fn stream(&mut self, key: &StreamKey) -> &mut StreamState {
        stream_state(&mut self.streams, &self.config, key)
    }

    fn publish(&mut self, inbound: Inbound) {
        let Inbound {
            update,
            received_at,
            seq,
        } = inbound;
        let now = Instant::now();
        let meta = EntryMeta {
            symbol: update.symbol.clone(),
            signal_type: update.signal_type,
            notification_key: update.notification_id.clone(),
        };
        let stream = self.stream(&update.stream);
        let seq = match seq {
            Some(given) => {
                if !stream.sequencer.observe(given) {
                    return;
                }
                given
            }
            None => stream.sequencer.next(),
        };
        let frame = encode::update(&update.body, seq);
        stream.history.push(seq, frame.clone(), meta, now);
        match update.kind {
            UpdateKind::MarketUpdate => {
                stream.latest = Some(frame.clone());
                if let Some(symbol) = &update.symbol {
                    self.latest.insert(symbol.clone(), frame.clone());
                    let subs = self.registry.symbol_subscribers(symbol);
                    deliver(subs.iter(), &frame, received_at, &mut self.wakes, &self.metrics);
                }
            }
            UpdateKind::NewSignal | UpdateKind::SignalUpdate => {
                let symbol = update.symbol.as_deref();
                let subs = self
                    .registry
                    .signal_subscribers()
                    .iter()
                    .filter_map(|(sub, filter)| {
                        (filter.matches(symbol, update.signal_type)
                            && symbol.is_none_or(|s| sub.access.allows(s)))
                        .then_some(sub)
                    });
                deliver(subs, &frame, received_at, &mut self.wakes, &self.metrics);
            }
            UpdateKind::NewNotification => {
                let StreamKey::User(user) = &update.stream else {
                    return;
                };
                if let Some(key) = &update.notification_id {
                    let unread = self.unread.entry(user.clone()).or_default();
                    if let Some(old) = unread.by_key.insert(key.clone(), seq) {
                        unread.by_seq.remove(&old);
                    }
                    unread.by_seq.insert(seq, (key.clone(), frame.clone()));
                    while unread.by_seq.len() > self.config.max_unread_per_user {
                        if let Some((_, (k, _))) = unread.by_seq.pop_first() {
                            unread.by_key.remove(&k);
                        }
                    }
                }
                let subs = self.registry.user_connections(user);
                deliver(subs.iter(), &frame, received_at, &mut self.wakes, &self.metrics);
            }
        }
        self.metrics.publish_to_enqueue.record(received_at.elapsed());
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Subscribe { sub, symbol, since } => {
                if !self.registry.subscribe(&symbol, sub.clone()) {
                    return;
                }
                let key = StreamKey::Symbol(symbol);
                let Some(stream) = self.streams.get_mut(&key) else {
                    if since.is_some_and(|s| s.0 > 0) {
                        // The client saw messages this node never had.
                        push_now(&sub, encode::reset(key.wire_name(), Seq(1)));
                    }
                    return;
                };
                match since {
                    Some(since) => replay(&sub, &key, stream, since, |_| true),
                    None => {
                        if let Some(latest) = &stream.latest {
                            push_now(&sub, latest.clone());
                        }
                    }
                }
            }
            Control::Unsubscribe { id, symbol } => self.registry.unsubscribe(&symbol, id),
            Control::Filter {
                sub,
                filter,
                since,
                answer,
            } => {
                if let Some(answer) = answer {
                    push_now(&sub, answer);
                }
                self.registry.set_signal_filter(sub.clone(), filter.clone());
                if let Some(since) = since {
                    let key = StreamKey::Signals;
                    let access = sub.access.clone();
                    let stream = self.stream(&key);
                    replay(&sub, &key, stream, since, |m| {
                        filter.matches(m.symbol.as_deref(), m.signal_type)
                            && m.symbol.as_deref().is_none_or(|s| access.allows(s))
                    });
                }
            }
            Control::RemoveSignals { id } => self.registry.remove_signal_subscriber(id),
            Control::AttachUser { sub, user } => {
                let frames = self
                    .unread
                    .get(&user)
                    .into_iter()
                    .flat_map(|u| u.by_seq.values().map(|(_, f)| f));
                push_now(&sub, encode::unread_notifications(frames));
                self.registry.attach_user(&user, sub);
            }
            Control::DetachUser { id, user } => self.registry.detach_user(&user, id),
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
                let frames = stream.history.entries().iter().filter(|e| {
                    e.seq > since
                        && filter.matches(e.meta.symbol.as_deref(), e.meta.signal_type)
                        && e.meta.symbol.as_deref().is_none_or(|s| access.allows(s))
                });
                let _ = reply.send(encode::json_array(frames.map(|e| &e.frame)));
            }
            Control::QueryNotifications { user, since, reply } => {
                let unread = self.unread.get(&user);
                let stream = stream_state(&mut self.streams, &self.config, &StreamKey::User(user.clone()));
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
        let was_unread = self.unread.get_mut(&user).and_then(|u| {
            let seq = u.by_key.remove(&key)?;
            u.by_seq.remove(&seq)
        });
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
        for sub in self.registry.user_connections(&user) {
            if sub.id == from.id {
                sent_to_sender = true;
                push_now(sub, encode::notification_read(&notification_id, echo_id.as_ref()));
            } else {
                push_now(sub, plain.clone());
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
    })
}

/// Sends what a client that last saw `since` missed: a `reset` first when
/// the window does not reach back, then the kept messages after `since`
/// that `wanted` selects.
fn replay(
    sub: &Subscriber,
    key: &StreamKey,
    stream: &mut StreamState,
    since: Seq,
    wanted: impl Fn(&EntryMeta) -> bool,
) {
    stream.history.expire(Instant::now());
    let plan = stream.history.replay(since, stream.sequencer.head());
    if let Some(oldest) = plan.reset {
        push_now(sub, encode::reset(key.wire_name(), oldest));
    }
    for e in stream.history.entries().iter().skip(plan.from) {
        if wanted(&e.meta) && push_now(sub, e.frame.clone()) != Push::Queued {
            return;
        }
    }
}

fn push_now(sub: &Subscriber, frame: Frame) -> Push {
    sub.outbox.push(frame, None)
}

fn deliver<'a>(
    subs: impl Iterator<Item = &'a Arc<Subscriber>>,
    frame: &Frame,
    received_at: Instant,
    wakes: &mut Vec<Arc<Outbox>>,
    metrics: &Metrics,
) {
    for sub in subs {
        match sub.outbox.push_deferred(frame.clone(), Some(received_at)) {
            (Push::Queued, true) => wakes.push(sub.outbox.clone()),
            (Push::Overflowed, _) => metrics.slow_consumer_cut(),
            _ => {}
        }
    }
}

impl SignalType {
    /// For filters given as text in HTTP queries.
    pub fn parse_loose(s: &str) -> Option<SignalType> {
        SignalType::from_wire(&s.to_ascii_uppercase())
    }
}
