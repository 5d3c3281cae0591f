//! A subscriber's bounded outbound queue: fanout workers and the
//! connection's own reader put frames in, the connection's writer takes
//! them out in batches. Pushing never waits: a full queue is that
//! subscriber's problem, never the pusher's. What happens then is the
//! subscriber's [`Overflow`] policy: it is closed as a slow consumer, or
//! (market data) its queue is conflated to the latest update of each
//! symbol, so a lagging client still shows current prices. The queue
//! starts with no allocation, so an idle subscriber costs only this struct.
//!
//! The queue is bounded in frames and in bytes, and everything counts:
//! updates, answers to commands, and the control frames the connection
//! sends by itself (a pending pong is replaced by a newer one, as RFC 6455
//! allows). So no client, reading or not, can grow the server's memory
//! past its queue.
//!
//! A lagging minority is handled by each one's policy; a lagging majority
//! means the server itself is behind. [`Backlog`] tells the two apart, and
//! fanout stops taking updates while it says so (back-pressure), instead
//! of filling every queue to its limit. A subscriber whose socket stays
//! full with no progress (the sweeper marks it *stuck*: its client stopped
//! reading) is never counted there: back-pressure answers a machine that
//! cannot keep up, not a client that stopped reading, which its own policy
//! conflates or cuts.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::protocol::encode::Frame;
use crate::sweep::Watch;
use crate::wire::{self, Wrote};

/// Why a connection is being closed by the server, and so its close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Fell a full queue behind: 4002, resume with `since`.
    SlowConsumer,
    /// Server shutting down: 1001.
    GoingAway,
    /// The token's `exp` passed: 4001.
    TokenExpired,
    /// Kept breaking the command rate limit: 1008.
    RateLimited,
    /// Sent nothing, not even a pong, for the idle timeout: 1001.
    IdleTimeout,
    /// A frame over the size limit: 1009.
    TooBig,
    /// A binary frame: 1003.
    Binary,
    /// Invalid UTF-8 in a text frame: 1007.
    BadUtf8,
    /// A WebSocket protocol violation: 1002.
    ProtocolViolation,
}

impl CloseReason {
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::SlowConsumer => 4002,
            CloseReason::GoingAway | CloseReason::IdleTimeout => 1001,
            CloseReason::TokenExpired => 4001,
            CloseReason::RateLimited => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::Binary => 1003,
            CloseReason::BadUtf8 => 1007,
            CloseReason::ProtocolViolation => 1002,
        }
    }

    pub fn text(&self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::GoingAway => "going away",
            CloseReason::TokenExpired => "token expired",
            CloseReason::RateLimited => "rate limit exceeded",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::TooBig => "message too big",
            CloseReason::Binary => "binary frames are not accepted",
            CloseReason::BadUtf8 => "invalid UTF-8",
            CloseReason::ProtocolViolation => "protocol error",
        }
    }

    /// Whether frames already queued are still sent before the close:
    /// always, except for a slow consumer, whose backlog is the problem.
    fn flushes_queue(&self) -> bool {
        !matches!(self, CloseReason::SlowConsumer)
    }
}

/// What a full queue does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Close the connection (4002); the client resumes with `since`.
    Close,
    /// Keep only the newest frame of each conflation key (a symbol), and
    /// close only when even that does not fit.
    Conflate,
}

/// Names a stream for conflation: frames with the same key supersede each
/// other. A plain number given once per stream by its fanout worker, so a
/// delivery copies 4 bytes rather than touching a shared reference count.
pub type ConflationKey = u32;

/// One queued message, with the instant its update entered the server
/// (for the publish→write latency histogram), when it is an update.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// A text message's payload, or (when `raw`) bytes already framed.
    pub bytes: Bytes,
    /// A control frame (ping, pong, close) framed whole, not a text message.
    pub raw: bool,
    pub received_at: Option<Instant>,
    pub key: Option<ConflationKey>,
}

impl Outgoing {
    /// The text of a text message (for tests).
    pub fn text(&self) -> Option<&str> {
        (!self.raw)
            .then(|| std::str::from_utf8(&self.bytes).ok())
            .flatten()
    }
}

/// A subscriber is *behind* when a quarter of its queue's capacity, and at
/// most this many frames, wait in it: late enough that the writes carry
/// many frames each, early enough that a queue never nears its limit.
pub const BEHIND_FRAMES: usize = 256;
/// The server is saturated when at least this many subscribers are behind
/// and they are at least a quarter of all of them: fewer is a lagging
/// minority, which conflation or the slow-consumer close deals with alone.
pub const SATURATED_MIN_BEHIND: usize = 16;

/// The default bound of a queue in bytes (`limits.outbound_queue_bytes`).
pub const DEFAULT_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// How far behind the node's subscribers are, counted by their outboxes:
/// the signal for back-pressure from subscribers to publishers.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Subscriber outboxes in existence.
    outboxes: AtomicUsize,
    /// Of those, how many are behind (see [`BEHIND_FRAMES`]).
    behind: AtomicUsize,
    /// Times a fanout worker paused because the node was saturated.
    pauses: AtomicU64,
    /// Set while some fanout worker is paused; the writer that ends the
    /// saturation wakes them (`unparkers`).
    waiting: AtomicBool,
    unparkers: std::sync::OnceLock<Vec<crossbeam::sync::Unparker>>,
}

// Relaxed throughout: the counts steer a heuristic and are read for display;
// no other memory is published through them.
impl Backlog {
    /// Whether so many subscribers are behind that fanout should stop
    /// taking updates until they catch up.
    pub fn saturated(&self) -> bool {
        let behind = self.behind.load(Ordering::Relaxed);
        behind >= SATURATED_MIN_BEHIND && behind * 4 >= self.outboxes.load(Ordering::Relaxed)
    }

    /// A fanout worker is about to park because the node is saturated.
    pub fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// The fanout workers to wake when the node catches up.
    pub fn set_unparkers(&self, unparkers: Vec<crossbeam::sync::Unparker>) {
        let _ = self.unparkers.set(unparkers);
    }

    /// One fewer subscriber is behind: wake paused workers once the node
    /// is no longer saturated.
    fn caught_up(&self) {
        if self.waiting.load(Ordering::SeqCst)
            && !self.saturated()
            && self.waiting.swap(false, Ordering::SeqCst)
        {
            for u in self.unparkers.get().into_iter().flatten() {
                u.unpark();
            }
        }
    }

    pub fn behind(&self) -> usize {
        self.behind.load(Ordering::Relaxed)
    }

    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Queued after older frames of the same keys were dropped (this many).
    Conflated(usize),
    /// The queue was full: the subscriber is now closing as a slow consumer.
    Overflowed,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Outgoing>,
    close: Option<CloseReason>,
    /// Frames the writer took and has not finished writing. While there
    /// are any, the connection's task owns the socket's write side.
    in_flight: usize,
    /// Bytes of the first frame already written by [`Outbox::write_direct`].
    offset: usize,
    /// The connection's socket, for [`Outbox::write_direct`]; taken away
    /// when the connection ends, so the socket closes with it.
    socket: Option<Arc<TcpStream>>,
    /// Counted as behind in the [`Backlog`].
    behind: bool,
    /// Payload bytes of `frames`.
    bytes: usize,
    /// The client stopped reading (see [`Outbox::set_stuck`]): not counted
    /// as behind, whatever waits.
    stuck: bool,
}

pub struct Outbox {
    /// A plain mutex: held only to push or swap out a few handles, by at most
    /// one fanout worker per shard and the connection's own tasks.
    state: Mutex<State>,
    ready: Notify,
    /// Set once a close is decided, so pushers can skip the lock.
    closing: AtomicBool,
    capacity: usize,
    overflow: Overflow,
    /// Where a subscriber's outbox counts; `None` for a publisher's.
    backlog: Option<Arc<Backlog>>,
    /// Frames waiting from which it counts as behind.
    behind_at: usize,
    /// The queue's bound in bytes.
    max_bytes: usize,
    /// A copy of `State::stuck` that the write path reads without the lock.
    stuck_hint: AtomicBool,
    /// The connection's clocks, kept by the node's sweeper.
    pub watch: Watch,
}

impl State {
    /// Drops every keyed frame that a later frame of its key supersedes;
    /// returns how many were dropped.
    fn conflate(&mut self) -> usize {
        let before = self.frames.len();
        // A partly written first frame must stay whole.
        let keep_first = self.offset > 0;
        let mut seen: HashSet<ConflationKey> = HashSet::new();
        let mut kept = VecDeque::with_capacity(before);
        let last = before.saturating_sub(1);
        for (i, o) in self.frames.drain(..).rev().enumerate() {
            let newest = match o.key {
                Some(k) => seen.insert(k),
                None => true,
            };
            if newest || (keep_first && i == last) {
                kept.push_front(o);
            }
        }
        self.frames = kept;
        self.bytes = self.frames.iter().map(|o| o.bytes.len()).sum();
        before - self.frames.len()
    }

    /// Whether one more frame of `len` bytes would pass a bound.
    fn full_for(&self, len: usize, capacity: usize, max_bytes: usize) -> bool {
        self.frames.len() >= capacity || self.bytes + len > max_bytes
    }

    /// Where a lone pong frame waits, still untouched by any write.
    fn pending_pong(&self) -> Option<usize> {
        let i = self
            .frames
            .iter()
            .rposition(|o| o.raw && is_lone_pong(&o.bytes))?;
        (i > 0 || self.offset == 0).then_some(i)
    }
}

/// A whole pong frame and nothing else (tungstenite hands over whatever it
/// flushes at once, which may hold more than one frame).
fn is_lone_pong(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x8a && b[1] < 126 && b.len() == 2 + b[1] as usize
}

impl Outbox {
    /// An outbox that no backlog counts (a publisher's, for its errors).
    pub fn new(capacity: usize, overflow: Overflow) -> Outbox {
        Outbox::with_backlog(capacity, overflow, None)
    }

    /// A subscriber's outbox, counted in `backlog` for as long as it lives.
    pub fn counted(capacity: usize, overflow: Overflow, backlog: Arc<Backlog>) -> Outbox {
        backlog.outboxes.fetch_add(1, Ordering::Relaxed);
        Outbox::with_backlog(capacity, overflow, Some(backlog))
    }

    fn with_backlog(capacity: usize, overflow: Overflow, backlog: Option<Arc<Backlog>>) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            closing: AtomicBool::new(false),
            capacity,
            overflow,
            backlog,
            behind_at: (capacity / 4).clamp(1, BEHIND_FRAMES),
            max_bytes: DEFAULT_QUEUE_BYTES,
            stuck_hint: AtomicBool::new(false),
            watch: Watch::default(),
        }
    }

    /// Bounds the queue to `max_bytes` as well as to its frames.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Outbox {
        self.max_bytes = max_bytes;
        self
    }

    /// Keeps the backlog's count of this outbox right after its queue
    /// changed length.
    fn recount(&self, state: &mut State) {
        let Some(backlog) = &self.backlog else { return };
        let behind = !state.stuck && state.frames.len() + state.in_flight >= self.behind_at;
        if behind != state.behind {
            state.behind = behind;
            if behind {
                backlog.behind.fetch_add(1, Ordering::Relaxed);
            } else {
                backlog.behind.fetch_sub(1, Ordering::Relaxed);
                backlog.caught_up();
            }
        }
    }

    /// Queues a frame and wakes the writer; never waits. Overflow closes
    /// the subscriber.
    pub fn push(&self, frame: Frame, received_at: Option<Instant>) -> Push {
        self.push_keyed(frame, received_at, None)
    }

    /// [`Outbox::push`] with a conflation key.
    pub fn push_keyed(&self, frame: Frame, received_at: Option<Instant>, key: Option<ConflationKey>) -> Push {
        let (result, wake) = self.push_deferred(frame, received_at, key);
        if wake {
            self.wake();
        }
        result
    }

    /// Queues a frame without waking the writer; the `bool` says a wake is
    /// owed (the queue was empty), for a caller that wakes once per batch.
    pub fn push_deferred(
        &self,
        frame: Frame,
        received_at: Option<Instant>,
        key: Option<ConflationKey>,
    ) -> (Push, bool) {
        self.enqueue(Outgoing {
            bytes: frame.into(),
            raw: false,
            received_at,
            key,
        })
    }

    /// Queues one message within the queue's bounds; overflow conflates
    /// or closes, as the policy says. The `bool`: a wake is owed.
    fn enqueue(&self, o: Outgoing) -> (Push, bool) {
        // Acquire pairs with the Release in `close`: a pusher that sees the
        // flag also sees the queue cleared.
        if self.closing.load(Ordering::Acquire) {
            return (Push::Closed, false);
        }
        let mut state = self.lock();
        if state.close.is_some() {
            return (Push::Closed, false);
        }
        let len = o.bytes.len();
        if o.raw && is_lone_pong(&o.bytes) {
            // Only the latest ping needs its answer (RFC 6455 5.5.3).
            if let Some(i) = state.pending_pong() {
                state.bytes = state.bytes - state.frames[i].bytes.len() + len;
                state.frames[i].bytes = o.bytes;
                return (Push::Queued, false);
            }
        }
        let mut dropped = 0;
        if state.full_for(len, self.capacity, self.max_bytes) && self.overflow == Overflow::Conflate {
            dropped = state.conflate();
        }
        if state.full_for(len, self.capacity, self.max_bytes) {
            state.frames = VecDeque::new();
            state.bytes = 0;
            state.close = Some(CloseReason::SlowConsumer);
            self.closing.store(true, Ordering::Release);
            self.recount(&mut state);
            drop(state);
            self.wake();
            return (Push::Overflowed, false);
        }
        // The writer takes everything each time it wakes, so only the push
        // that finds the queue empty owes it a wake.
        let was_empty = state.frames.is_empty();
        state.frames.push_back(o);
        state.bytes += len;
        // Only a crossing of the threshold touches the shared count.
        if state.behind != (!state.stuck && state.frames.len() + state.in_flight >= self.behind_at) {
            self.recount(&mut state);
        }
        if dropped > 0 {
            return (Push::Conflated(dropped), was_empty);
        }
        (Push::Queued, was_empty)
    }

    /// Queues bytes already framed (a control frame) and wakes the writer.
    /// Dropped once a close is decided: the close frame ends the stream.
    /// Counted against the queue's bounds like any frame; a pong replaces
    /// one still waiting.
    pub fn push_raw(&self, bytes: Bytes) -> Push {
        let (pushed, wake) = self.enqueue(Outgoing {
            bytes,
            raw: true,
            received_at: None,
            key: None,
        });
        if wake {
            self.wake();
        }
        pushed
    }

    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Resolves after the next wake, or at once for a wake that came while
    /// nobody waited: await it after a [`Outbox::take`] that found nothing,
    /// and no frame pushed in between is missed.
    pub fn notified(&self) -> Notified<'_> {
        self.ready.notified()
    }

    /// Decides to close the connection. The first reason wins; returns
    /// whether it was this one.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        if !reason.flushes_queue() {
            state.frames = VecDeque::new();
            state.bytes = 0;
            self.recount(&mut state);
        }
        state.close = Some(reason);
        self.closing.store(true, Ordering::Release);
        drop(state);
        self.ready.notify_one();
        true
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Moves every queued frame to the end of `batch` (the writer's, which
    /// it reuses), and returns the close reason if one was decided. When
    /// `batch` was empty, `offset` becomes how much of its first frame a
    /// direct write already sent.
    pub fn take(&self, batch: &mut VecDeque<Outgoing>, offset: &mut usize) -> Option<CloseReason> {
        let mut state = self.lock();
        if !state.frames.is_empty() {
            if batch.is_empty() {
                std::mem::swap(&mut state.frames, batch);
                *offset = std::mem::take(&mut state.offset);
            } else {
                // A writer holding frames excludes direct writes: no offset.
                batch.append(&mut state.frames);
            }
            state.in_flight = batch.len();
            state.bytes = 0;
        }
        state.close.clone()
    }

    /// Waits until there are frames or a close, then [`Outbox::take`]s
    /// (for benches and tests, where nothing writes directly).
    pub async fn next_batch(&self, batch: &mut VecDeque<Outgoing>) -> Option<CloseReason> {
        let mut offset = 0;
        loop {
            let notified = self.notified();
            let close = self.take(batch, &mut offset);
            if !batch.is_empty() || close.is_some() {
                return close;
            }
            notified.await;
        }
    }

    /// Gives the outbox its connection's socket (`None`: the connection
    /// ended), for [`Outbox::write_direct`].
    pub fn set_socket(&self, socket: Option<Arc<TcpStream>>) {
        self.lock().socket = socket;
    }

    /// Writes the queued frames to the socket from the calling thread (a
    /// fanout worker, when its ring is empty), instead of waking the
    /// connection's task for them: one system call instead of a wake, a
    /// task switch and the same system call. Only when the task is not
    /// writing itself and no close is decided. `None`: nothing was
    /// written and the task must be woken; a result not `done` means the
    /// socket filled up, and the task must be woken to write the rest.
    pub fn write_direct(&self) -> Option<Wrote> {
        let mut state = self.lock();
        if state.in_flight > 0 || state.close.is_some() || state.frames.is_empty() {
            return None;
        }
        let socket = state.socket.clone()?;
        let State { frames, offset, .. } = &mut *state;
        let wrote = wire::write_batch(&socket, frames, offset).ok();
        state.bytes = state.frames.iter().map(|o| o.bytes.len()).sum();
        if wrote.as_ref().is_some_and(|w| w.progressed) && state.stuck {
            state.stuck = false;
            self.stuck_hint.store(false, Ordering::Relaxed);
        }
        self.recount(&mut state);
        wrote
    }

    /// Marks the subscriber as having stopped reading (`true`: the sweeper
    /// saw its socket full with no progress for [`crate::sweep::STUCK_AFTER`])
    /// or reading again (`false`: a write made progress). A stuck
    /// subscriber does not count as behind in the [`Backlog`].
    pub fn set_stuck(&self, stuck: bool) {
        let mut state = self.lock();
        if state.stuck != stuck {
            state.stuck = stuck;
            self.stuck_hint.store(stuck, Ordering::Relaxed);
            self.recount(&mut state);
        }
    }

    /// Whether the subscriber is marked stuck (read without the lock).
    pub fn is_stuck(&self) -> bool {
        // Relaxed: a hint; `set_stuck` rechecks under the lock.
        self.stuck_hint.load(Ordering::Relaxed)
    }

    /// Bytes waiting now (for tests and metrics).
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The writer finished writing the batch it took: its frames no longer
    /// count as waiting.
    pub fn written(&self) {
        let mut state = self.lock();
        state.in_flight = 0;
        self.recount(&mut state);
    }

    /// Frames waiting now (for metrics and tests).
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves only a queue of handles
        // behind, which is still consistent: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Some(backlog) = &self.backlog {
            backlog.outboxes.fetch_sub(1, Ordering::Relaxed);
            let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
            if state.behind {
                backlog.behind.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &'static str) -> Frame {
        Frame::from_static(s)
    }

    #[tokio::test]
    async fn frames_come_out_in_order_in_one_batch() {
        let o = Outbox::new(8, Overflow::Close);
        assert_eq!(o.push(f("1"), None), Push::Queued);
        assert_eq!(o.push(f("2"), None), Push::Queued);
        let mut batch = VecDeque::new();
        assert_eq!(o.next_batch(&mut batch).await, None);
        let got: Vec<&str> = batch.iter().filter_map(|g| g.text()).collect();
        assert_eq!(got, ["1", "2"]);
    }

    #[tokio::test]
    async fn a_full_queue_closes_as_slow_consumer_and_frees_its_frames() {
        let o = Outbox::new(2, Overflow::Close);
        o.push(f("1"), None);
        o.push(f("2"), None);
        assert_eq!(o.push(f("3"), None), Push::Overflowed);
        assert_eq!(o.push(f("4"), None), Push::Closed);
        assert_eq!(o.len(), 0);
        let mut batch = VecDeque::new();
        assert_eq!(o.next_batch(&mut batch).await, Some(CloseReason::SlowConsumer));
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn a_full_conflating_queue_keeps_the_newest_of_each_symbol() {
        let o = Outbox::new(4, Overflow::Conflate);
        let (a, b) = (Some(1), Some(2));
        o.push(f("answer"), None);
        o.push_keyed(f("a1"), None, a);
        o.push_keyed(f("b1"), None, b);
        o.push_keyed(f("a2"), None, a);
        assert_eq!(o.push_keyed(f("b2"), None, b), Push::Conflated(1));
        let mut batch = VecDeque::new();
        assert_eq!(o.next_batch(&mut batch).await, None);
        let got: Vec<&str> = batch.iter().filter_map(|g| g.text()).collect();
        assert_eq!(got, ["answer", "b1", "a2", "b2"]);
    }

    #[tokio::test]
    async fn a_conflating_queue_still_closes_when_nothing_can_be_dropped() {
        let o = Outbox::new(2, Overflow::Conflate);
        o.push(f("1"), None);
        o.push(f("2"), None);
        assert_eq!(o.push(f("3"), None), Push::Overflowed);
    }

    #[tokio::test]
    async fn going_away_still_sends_what_was_queued() {
        let o = Outbox::new(4, Overflow::Close);
        o.push(f("1"), None);
        o.close(CloseReason::GoingAway);
        o.close(CloseReason::SlowConsumer);
        let mut batch = VecDeque::new();
        assert_eq!(o.next_batch(&mut batch).await, Some(CloseReason::GoingAway));
        assert_eq!(batch.len(), 1);
    }

    #[tokio::test]
    async fn a_pending_pong_is_replaced_and_control_frames_count_against_the_queue() {
        let o = Outbox::new(4, Overflow::Close);
        for payload in [b'a', b'b', b'c'] {
            assert_eq!(o.push_raw(Bytes::from(vec![0x8a, 1, payload])), Push::Queued);
        }
        assert_eq!(o.len(), 1, "one pong waits, the latest");
        let mut batch = VecDeque::new();
        o.take(&mut batch, &mut 0);
        assert_eq!(&batch[0].bytes[..], &[0x8a, 1, b'c']);
        // Pings the server sends are control frames too, and count.
        let o = Outbox::new(2, Overflow::Close);
        o.push_raw(Bytes::from_static(&[0x89, 0]));
        o.push_raw(Bytes::from_static(&[0x89, 0]));
        assert_eq!(o.push_raw(Bytes::from_static(&[0x89, 0])), Push::Overflowed);
        assert!(o.is_closing());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_answers_included() {
        let o = Outbox::new(1000, Overflow::Close).with_max_bytes(10_000);
        let answer = Frame::from("e".repeat(3_000));
        for _ in 0..3 {
            assert_eq!(o.push(answer.clone(), None), Push::Queued);
        }
        assert_eq!(o.queued_bytes(), 9_000);
        assert_eq!(o.push(answer, None), Push::Overflowed);
        assert_eq!(o.queued_bytes(), 0);
        // Conflation makes room by bytes too.
        let o = Outbox::new(1000, Overflow::Conflate).with_max_bytes(10_000);
        let big = Frame::from("p".repeat(4_000));
        o.push_keyed(big.clone(), None, Some(1));
        o.push_keyed(big.clone(), None, Some(1));
        assert_eq!(o.push_keyed(big, None, Some(1)), Push::Conflated(1));
        assert_eq!(o.queued_bytes(), 8_000);
    }

    #[tokio::test]
    async fn a_stuck_subscriber_is_not_counted_as_behind() {
        let backlog = Arc::new(Backlog::default());
        let o = Outbox::counted(1024, Overflow::Close, backlog.clone());
        for _ in 0..BEHIND_FRAMES {
            o.push(f("x"), None);
        }
        assert_eq!(backlog.behind(), 1);
        o.set_stuck(true);
        assert_eq!(backlog.behind(), 0);
        o.push(f("x"), None);
        assert_eq!(backlog.behind(), 0);
        o.set_stuck(false);
        assert_eq!(backlog.behind(), 1);
    }

    #[tokio::test]
    async fn the_backlog_counts_subscribers_behind_until_their_writer_takes_the_queue() {
        let backlog = Arc::new(Backlog::default());
        let outboxes: Vec<Outbox> = (0..4 * SATURATED_MIN_BEHIND)
            .map(|_| Outbox::counted(1024, Overflow::Close, backlog.clone()))
            .collect();
        // A lagging minority is not saturation.
        for o in &outboxes[..SATURATED_MIN_BEHIND - 1] {
            for _ in 0..256 {
                o.push(f("x"), None);
            }
        }
        assert_eq!(backlog.behind(), SATURATED_MIN_BEHIND - 1);
        assert!(!backlog.saturated());
        // A quarter of everyone, at least the minimum, is.
        for _ in 0..BEHIND_FRAMES {
            outboxes[SATURATED_MIN_BEHIND - 1].push(f("x"), None);
        }
        assert!(backlog.saturated());
        let mut batch = VecDeque::new();
        outboxes[0].next_batch(&mut batch).await;
        assert!(backlog.saturated(), "frames being written still wait");
        outboxes[0].written();
        assert_eq!(backlog.behind(), SATURATED_MIN_BEHIND - 1);
        assert!(!backlog.saturated());
        // A slow consumer's cleared queue and a dropped outbox leave the count.
        outboxes[1].close(CloseReason::SlowConsumer);
        assert_eq!(backlog.behind(), SATURATED_MIN_BEHIND - 2);
        drop(outboxes);
        assert_eq!(backlog.behind(), 0);
        assert_eq!(backlog.outboxes.load(Ordering::Relaxed), 0);
    }
}
