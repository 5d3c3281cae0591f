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
//! means the server itself is behind. The back-pressure signal (the
//! [`LagGauge`] an outbox reports to) tells the two apart, and
//! fanout stops taking updates while it says so (back-pressure), instead
//! of filling every queue to its limit. A subscriber whose socket stays
//! full with no progress (the sweeper marks it *stuck*: its client stopped
//! reading) is never counted there: back-pressure answers a machine that
//! cannot keep up, not a client that stopped reading, which its own policy
//! conflates or cuts.

pub mod writer;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use writer::Writer;
pub use writer::Wrote;

use crate::protocol::close::CloseReason;
use crate::protocol::encode::Frame;
use crate::protocol::frame::{Encoding, TEXT_HEAD};

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
    /// A message's frame header's first byte (FIN, RSV1 when compressed,
    /// the opcode); unused when `raw`.
    pub head: u8,
    /// A message's payload length before compression (for the metrics).
    pub plain_len: u32,
    pub received_at: Option<Instant>,
    pub key: Option<ConflationKey>,
}

impl Outgoing {
    /// The text of a text message (for tests).
    pub fn text(&self) -> Option<&str> {
        (!self.raw && self.head == TEXT_HEAD)
            .then(|| std::str::from_utf8(&self.bytes).ok())
            .flatten()
    }
}

/// What one [`Outbox::write_out`] did.
#[derive(Debug)]
pub struct WriteOut {
    /// What went out; an error means the socket is gone.
    pub wrote: std::io::Result<Wrote>,
    /// The close decided, if one was (the queue was moved to the writer first).
    pub close: Option<CloseReason>,
    /// Frames are left for when the socket takes more.
    pub pending: bool,
}

/// A subscriber is *behind* when a quarter of its queue's capacity, and at
/// most this many frames, wait in it: late enough that the writes carry
/// many frames each, early enough that a queue never nears its limit.
pub const BEHIND_FRAMES: usize = 256;

/// Where a subscriber's outbox reports that it exists, fell behind or
/// caught up: fanout's back-pressure signal
/// ([`crate::fanout::backpressure::Backlog`]) listens. The outbox never
/// knows who; it calls only when its state crosses the threshold.
pub trait LagGauge: Send + Sync {
    /// An outbox came to be.
    fn opened(&self);
    /// An outbox ended, behind or not.
    fn closed(&self, was_behind: bool);
    /// An outbox fell behind (`true`) or caught up (`false`).
    fn behind(&self, behind: bool);
}

/// The default bound of a queue in bytes (`limits.outbound_queue_bytes`).
pub const DEFAULT_QUEUE_BYTES: usize = 8 * 1024 * 1024;

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
    /// Frames the writer took and has not finished writing: they still
    /// count as waiting, for the back-pressure signal ([`LagGauge`]).
    in_flight: usize,
    /// Counted as behind in the back-pressure signal ([`LagGauge`]).
    behind: bool,
    /// Payload bytes of `frames`.
    bytes: usize,
    /// The client stopped reading (see [`Outbox::set_stuck`]): not counted
    /// as behind, whatever waits.
    stuck: bool,
}

pub struct Outbox {
    /// What waits to be written. A plain mutex held only to push or swap
    /// out a few handles, by the fanout workers and the connection's task;
    /// never across a system call.
    state: Mutex<State>,
    /// The socket's write side, with its one owner at a time: whoever holds
    /// this lock writes (see [`Outbox::write_out`]). Pushers never take it.
    /// Lock order: `writer` first, then `state`, never the other way.
    writer: Mutex<Writer>,
    ready: Notify,
    /// Set once a close is decided, so pushers can skip the lock.
    closing: AtomicBool,
    capacity: usize,
    overflow: Overflow,
    /// Where a subscriber's outbox counts; `None` for a publisher's.
    backlog: Option<Arc<dyn LagGauge>>,
    /// Frames waiting from which it counts as behind.
    behind_at: usize,
    /// The queue's bound in bytes.
    max_bytes: usize,
    /// A copy of `State::stuck` that the write path reads without the lock.
    stuck_hint: AtomicBool,
    /// Which form of each frame the socket is sent (fixed at its handshake).
    encoding: Encoding,
}

impl State {
    /// Drops every keyed frame that a later frame of its key supersedes;
    /// returns how many were dropped.
    fn conflate(&mut self) -> usize {
        let before = self.frames.len();
        let mut seen: HashSet<ConflationKey> = HashSet::new();
        let mut kept = VecDeque::with_capacity(before);
        for o in self.frames.drain(..).rev() {
            let newest = match o.key {
                Some(k) => seen.insert(k),
                None => true,
            };
            if newest {
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

    /// Where a lone pong frame waits (the queue is never partly written:
    /// a frame being written is the writer's).
    fn pending_pong(&self) -> Option<usize> {
        self.frames.iter().rposition(|o| o.raw && is_lone_pong(&o.bytes))
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
    pub fn counted(capacity: usize, overflow: Overflow, backlog: Arc<dyn LagGauge>) -> Outbox {
        backlog.opened();
        Outbox::with_backlog(capacity, overflow, Some(backlog))
    }

    fn with_backlog(capacity: usize, overflow: Overflow, backlog: Option<Arc<dyn LagGauge>>) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            writer: Mutex::new(Writer::default()),
            ready: Notify::new(),
            closing: AtomicBool::new(false),
            capacity,
            overflow,
            backlog,
            behind_at: (capacity / 4).clamp(1, BEHIND_FRAMES),
            max_bytes: DEFAULT_QUEUE_BYTES,
            stuck_hint: AtomicBool::new(false),
            encoding: Encoding::default(),
        }
    }

    /// Sends each frame in the form `encoding` says (compressed, ...).
    pub fn with_encoding(mut self, encoding: Encoding) -> Outbox {
        self.encoding = encoding;
        self
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
            backlog.behind(behind);
        }
    }

    /// Queues a frame and wakes the writer; never waits. Overflow closes
    /// the subscriber.
    pub fn push(&self, frame: Frame, received_at: Option<Instant>) -> Push {
        self.push_keyed(frame, received_at, None)
    }

    /// [`Outbox::push`] with a conflation key.
    pub fn push_keyed(&self, frame: Frame, received_at: Option<Instant>, key: Option<ConflationKey>) -> Push {
        let (result, wake) = self.push_deferred(&frame, received_at, key);
        if wake {
            self.wake();
        }
        result
    }

    /// Queues a frame without waking the writer; the `bool` says a wake is
    /// owed (the queue was empty), for a caller that wakes once per batch.
    /// Borrowed: what is queued is the form this socket takes (a reference
    /// count on its bytes), so fanout need not clone the frame's own handle
    /// per delivery.
    pub fn push_deferred(
        &self,
        frame: &Frame,
        received_at: Option<Instant>,
        key: Option<ConflationKey>,
    ) -> (Push, bool) {
        // The shared form: the first subscriber that needs it makes it.
        let (bytes, head, plain_len) = frame.for_wire(self.encoding);
        self.enqueue(Outgoing {
            bytes,
            raw: false,
            head,
            plain_len: plain_len as u32,
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
            head: 0,
            plain_len: 0,
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

    /// Whether the connection is to be dropped without a close frame (its
    /// socket stalled); cheap while no close is decided.
    pub fn is_dropped(&self) -> bool {
        self.is_closing() && self.lock().close == Some(CloseReason::Stalled)
    }

    /// Moves every queued frame to the end of `batch`, and returns the
    /// close reason if one was decided (for benches and tests, which read
    /// the queue instead of a socket).
    pub fn take(&self, batch: &mut VecDeque<Outgoing>) -> Option<CloseReason> {
        let mut state = self.lock();
        batch.append(&mut state.frames);
        state.bytes = 0;
        self.recount(&mut state);
        state.close.clone()
    }

    /// Waits until there are frames or a close, then [`Outbox::take`]s.
    pub async fn next_batch(&self, batch: &mut VecDeque<Outgoing>) -> Option<CloseReason> {
        loop {
            let notified = self.notified();
            let close = self.take(batch);
            if !batch.is_empty() || close.is_some() {
                return close;
            }
            notified.await;
        }
    }

    /// Gives the outbox its connection's socket (`None`: the connection
    /// ended, and the socket closes with it).
    pub fn set_socket(&self, socket: Option<Arc<TcpStream>>) {
        self.writer().socket = socket;
    }

    /// Moves what waits into the writer (only when the writer has nothing
    /// left of an earlier batch: while a batch is stuck on a full socket,
    /// new frames stay in the queue, within its bounds) and writes what the
    /// socket takes now. The connection's task calls it with `wait` (it
    /// takes the writer lock even while a fanout worker holds it for a
    /// write); a fanout worker without, and gets `None` when the writer is
    /// busy, a batch is stuck, or a close is decided: the task is woken for
    /// those.
    ///
    /// Lock order: the writer lock is taken first and held across the
    /// `writev` (it is the write side's single-owner token); the state lock
    /// is taken inside it, twice, each time only to move handles and counts.
    pub fn write_out(&self, wait: bool) -> Option<WriteOut> {
        let mut writer = if wait {
            self.writer()
        } else {
            self.writer.try_lock().ok()?
        };
        let mut total = Wrote {
            done: true,
            ..Wrote::default()
        };
        let mut close;
        // Until the socket is full or nothing waits: frames queued while a
        // batch was being written are taken on the next turn (nobody owes a
        // wake for them, the queue was not empty when they came).
        let wrote = loop {
            {
                let mut state = self.lock();
                close = state.close.clone();
                if !wait && (close.is_some() || !writer.batch.is_empty()) {
                    return None;
                }
                if writer.batch.is_empty() && !state.frames.is_empty() {
                    std::mem::swap(&mut state.frames, &mut writer.batch);
                    state.bytes = 0;
                    state.in_flight = writer.batch.len();
                }
            }
            if writer.batch.is_empty() {
                break Ok(total);
            }
            match writer.write() {
                Err(e) => break Err(e),
                Ok(w) => {
                    total.messages += w.messages;
                    total.bytes += w.bytes;
                    total.plain_bytes += w.plain_bytes;
                    total.binary_messages += w.binary_messages;
                    total.progressed |= w.progressed;
                    total.oldest = total.oldest.or(w.oldest);
                    if !w.done {
                        total.done = false;
                        break Ok(total);
                    }
                }
            }
            // A fanout worker writes one batch; the task goes on.
            if !wait {
                break Ok(total);
            }
        };
        let pending = !writer.batch.is_empty();
        let mut state = self.lock();
        state.in_flight = writer.batch.len();
        if wrote.as_ref().is_ok_and(|w| w.progressed) && state.stuck {
            state.stuck = false;
            self.stuck_hint.store(false, Ordering::Relaxed);
        }
        self.recount(&mut state);
        Some(WriteOut {
            wrote,
            close,
            pending,
        })
    }

    /// The connection ends with `last` (its close frame, if any): it goes
    /// after everything the writer and the queue hold (the queue is empty
    /// when the close dropped it, but a partly written frame is finished
    /// first, or the stream would be corrupt).
    pub fn finish(&self, last: Option<Bytes>) {
        let mut writer = self.writer();
        let mut state = self.lock();
        writer.batch.append(&mut state.frames);
        state.bytes = 0;
        if let Some(bytes) = last {
            writer.batch.push_back(Outgoing {
                bytes,
                raw: true,
                head: 0,
                plain_len: 0,
                received_at: None,
                key: None,
            });
        }
        state.in_flight = writer.batch.len();
        self.recount(&mut state);
    }

    /// Marks the subscriber as having stopped reading (`true`: the sweeper
    /// saw its socket full with no progress for [`crate::sweep::STUCK_AFTER`])
    /// or reading again (`false`: a write made progress). A stuck
    /// subscriber does not count as behind in the back-pressure signal ([`LagGauge`]).
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

    /// Frames waiting now (for metrics and tests).
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only a queue of handles
        // behind, which is still consistent: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Likewise: a batch and an offset that the next write goes on from.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Some(backlog) = &self.backlog {
            let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
            backlog.closed(state.behind);
        }
    }
}

#[cfg(test)]
mod tests;
