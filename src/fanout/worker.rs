//! A shard's worker: its loop (controls first, then updates in batches,
//! back-pressure, throttle timers) and the delivery of each update to its
//! subscribers' outboxes, written directly when the ring is empty.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::sync::Parker;
use dashmap::DashMap;

use crate::history::History;
use crate::metrics::{Metrics, Samples};
use crate::outbox::{ConflationKey, Outbox, Push};
use crate::protocol::encode::{self, Frame};
use crate::protocol::{Seq, StreamKey, UpdateKind};
use crate::registry::{shrink, Member, Registry, Subscriber, SubscriberId};
use crate::sequencer::Sequencer;

use super::unread::Unread;
use super::*;

/// One stream's state, owned by its worker.
pub(super) struct StreamState {
    pub(super) sequencer: Sequencer,
    pub(super) history: History,
    /// The newest market update, sent right after `subscribed`.
    pub(super) latest: Option<Frame>,
    pub(super) conflation_key: ConflationKey,
}

/// When a throttled subscription owes its pending update: (when,
/// subscriber, symbol, the symbol's conflation key).
pub(super) type ThrottleTimer = (Instant, u64, Arc<str>, ConflationKey);

/// Gives every stream of the node its own conflation key.
pub(super) static NEXT_CONFLATION_KEY: AtomicU32 = AtomicU32::new(1);

pub(super) struct Worker {
    pub(super) ring: Arc<ShardRing>,
    pub(super) streams: HashMap<StreamKey, StreamState>,
    pub(super) unread: HashMap<Arc<str>, Unread>,
    pub(super) registry: Registry,
    pub(super) latest: Arc<DashMap<Arc<str>, Frame>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) config: FanoutConfig,
    /// Outboxes that got their first frame in this batch.
    pub(super) wakes: Vec<Arc<Outbox>>,
    /// When throttled subscriptions (`max_frequency`) owe their pending
    /// update, earliest first.
    pub(super) timers: BinaryHeap<Reverse<ThrottleTimer>>,
    pub(super) backlog: Arc<Backlog>,
    /// This batch's latencies, recorded once per batch (`flush_wakes`).
    pub(super) to_enqueue: Samples,
    pub(super) to_write: Samples,
}

impl Worker {
    pub(super) fn run(mut self, parker: Parker, stop: &AtomicBool) {
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

    pub(super) fn end_batch(&mut self) {
        self.fire_timers();
        self.flush_wakes();
        self.ring.made_room();
    }

    /// Sends the pending updates of throttled subscriptions that are due;
    /// returns when the next one is.
    pub(super) fn fire_timers(&mut self) -> Option<Instant> {
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
    pub(super) fn flush_wakes(&mut self) {
        let direct = self.ring.depth() == 0;
        let (mut messages, mut bytes, mut plain_bytes, mut binary, mut turns) = (0, 0, 0, 0, 0);
        for outbox in self.wakes.drain(..) {
            if direct {
                if let Some(Ok(wrote)) = outbox.write_out(false).map(|out| out.wrote) {
                    messages += wrote.messages;
                    bytes += wrote.bytes;
                    plain_bytes += wrote.plain_bytes;
                    binary += wrote.binary_messages;
                    turns += u64::from(wrote.messages > 0);
                    if let Some(t) = wrote.oldest {
                        self.to_write.push(t.elapsed());
                    }
                    if wrote.done {
                        continue;
                    }
                }
            }
            outbox.wake();
        }
        if messages > 0 {
            self.metrics.wrote(messages, bytes, plain_bytes, binary, turns);
        }
        self.metrics.publish_to_write.record_all(&mut self.to_write);
        self.metrics.publish_to_enqueue.record_all(&mut self.to_enqueue);
    }

    pub(super) fn stream(&mut self, key: &StreamKey) -> &mut StreamState {
        stream_state(&mut self.streams, &self.config, key)
    }

    /// Drops the state of a stream that nobody here follows and that never
    /// had a message: subscribing to and leaving symbols that were never
    /// published must not leave an entry each behind. A stream that had
    /// messages keeps its state, whose counter its next `seq` continues.
    pub(super) fn forget_if_unused(&mut self, key: &StreamKey) {
        if self
            .streams
            .get(key)
            .is_some_and(|s| s.sequencer.head() == Seq(0))
        {
            self.streams.remove(key);
            shrink(&mut self.streams);
        }
    }

    pub(super) fn publish(&mut self, inbound: Inbound) {
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
        self.to_enqueue.push(received_at.elapsed());
    }
}

pub(super) fn push_now(sub: &Subscriber, frame: Frame) -> Push {
    sub.outbox.push(frame, None)
}

pub(super) fn deliver<'a>(
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

pub(super) fn push_one(
    m: &Member,
    frame: &Frame,
    received_at: Instant,
    key: Option<ConflationKey>,
    wakes: &mut Vec<Arc<Outbox>>,
    metrics: &Metrics,
) {
    let (pushed, wake) = m.sub.outbox.push_deferred(frame, Some(received_at), key);
    match pushed {
        Push::Overflowed => metrics.slow_consumer_cut(),
        Push::Conflated(n) => metrics.conflated(n as u64),
        Push::Queued | Push::Closed => {}
    }
    if wake {
        wakes.push(m.sub.outbox.clone());
    }
}

pub(super) fn stream_state<'a>(
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
