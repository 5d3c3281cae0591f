//! How far behind the node's subscribers are, counted by their outboxes:
//! the signal for back-pressure from subscribers to publishers. Outboxes
//! count themselves in; fanout workers read it, pause while it says the
//! node is saturated, and are woken by the writer that ends it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A subscriber is *behind* when a quarter of its queue's capacity, and at
/// most this many frames, wait in it: late enough that the writes carry
/// many frames each, early enough that a queue never nears its limit.
pub const BEHIND_FRAMES: usize = 256;
/// The server is saturated when at least this many subscribers are behind
/// and they are at least a quarter of all of them: fewer is a lagging
/// minority, which conflation or the slow-consumer close deals with alone.
pub const SATURATED_MIN_BEHIND: usize = 16;

/// How far behind the node's subscribers are, counted by their outboxes:
/// the signal for back-pressure from subscribers to publishers.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Subscriber outboxes in existence.
    pub(super) outboxes: AtomicUsize,
    /// Of those, how many are behind (see [`BEHIND_FRAMES`]).
    pub(super) behind: AtomicUsize,
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
    pub(super) fn caught_up(&self) {
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
