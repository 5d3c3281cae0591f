//! How far behind the node's subscribers are, counted by their outboxes:
//! the signal for back-pressure from subscribers to publishers. Outboxes
//! count themselves in; fanout workers read it, pause while it says the
//! node is saturated, and are woken by the writer that ends it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::outbox::LagGauge;
/// The server is saturated when at least this many subscribers are behind
/// and they are at least a quarter of all of them: fewer is a lagging
/// minority, which conflation or the slow-consumer close deals with alone.
pub const SATURATED_MIN_BEHIND: usize = 16;

/// How far behind the node's subscribers are, counted by their outboxes:
/// the signal for back-pressure from subscribers to publishers.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Subscriber outboxes in existence.
    outboxes: AtomicUsize,
    /// Of those, how many are behind (see [`crate::outbox::BEHIND_FRAMES`]).
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

impl LagGauge for Backlog {
    fn opened(&self) {
        self.outboxes.fetch_add(1, Ordering::Relaxed);
    }

    fn closed(&self, was_behind: bool) {
        self.outboxes.fetch_sub(1, Ordering::Relaxed);
        if was_behind {
            self.behind.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn behind(&self, behind: bool) {
        if behind {
            self.behind.fetch_add(1, Ordering::Relaxed);
        } else {
            self.behind.fetch_sub(1, Ordering::Relaxed);
            self.caught_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::*;
    use crate::outbox::{Outbox, Overflow, BEHIND_FRAMES};
    use crate::protocol::close::CloseReason;
    use crate::protocol::encode::Frame;

    fn f(s: &'static str) -> Frame {
        Frame::from_static(s)
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

    /// One owner writes at a time; frames queued while a batch is stuck
    /// wait in the queue, and the writer takes them once the batch is out,
    /// without anyone owing it a wake.

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
