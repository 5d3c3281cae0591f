//! The hand-off from ingress to one fanout shard: a bounded lock-free
//! queue of updates (crossbeam's `ArrayQueue`) and an unbounded lane for
//! the rarer control messages (subscribe, filter, queries), which the
//! worker always takes first so that a command acknowledged to a client
//! takes effect before any update published after the acknowledgement.
//! A full update queue makes publishers wait (backpressure); it never
//! drops and never blocks the worker.
//!
//! A ring whose worker died is [`Ring::kill`]ed: pushes fail at once and
//! controls are dropped, so that nobody waits on an answer that cannot
//! come (a dropped control drops its reply sender).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam::queue::{ArrayQueue, SegQueue};
use crossbeam::sync::{Parker, Unparker};
use tokio::sync::Notify;

pub struct Ring<U, C> {
    updates: ArrayQueue<U>,
    control: SegQueue<C>,
    wake_worker: Unparker,
    /// Publishers waiting for room in `updates`.
    space: Notify,
    /// Set once the worker is gone.
    dead: AtomicBool,
}

/// Publishing failed: the ring stayed full for the whole wait.
#[derive(Debug)]
pub struct RingFull<U>(pub U);

impl<U, C> Ring<U, C> {
    /// The ring and the parker its single worker sleeps on.
    pub fn new(capacity: usize) -> (Ring<U, C>, Parker) {
        let parker = Parker::new();
        let ring = Ring {
            updates: ArrayQueue::new(capacity),
            control: SegQueue::new(),
            wake_worker: parker.unparker().clone(),
            space: Notify::new(),
            dead: AtomicBool::new(false),
        };
        (ring, parker)
    }

    /// Pushes an update, waiting up to `patience` for room.
    pub async fn push(&self, update: U, patience: Duration) -> Result<(), RingFull<U>> {
        if self.is_dead() {
            return Err(RingFull(update));
        }
        let mut update = match self.updates.push(update) {
            Ok(()) => {
                self.wake_worker.unpark();
                return Ok(());
            }
            Err(u) => u,
        };
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let room = self.space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.updates.push(update) {
                Ok(()) => {
                    self.wake_worker.unpark();
                    return Ok(());
                }
                Err(u) => update = u,
            }
            self.wake_worker.unpark();
            if tokio::time::timeout_at(deadline, room).await.is_err() || self.is_dead() {
                return Err(RingFull(update));
            }
        }
    }

    /// Pushes an update without waiting (from a thread with no runtime).
    pub fn try_push(&self, update: U) -> Result<(), U> {
        if self.is_dead() {
            return Err(update);
        }
        self.updates.push(update)?;
        self.wake_worker.unpark();
        Ok(())
    }

    /// Pushes an update without waiting and without waking the worker:
    /// the caller pushes more and then calls [`Ring::wake`], so that the
    /// worker takes them as one batch.
    pub fn try_push_quiet(&self, update: U) -> Result<(), U> {
        if self.is_dead() {
            return Err(update);
        }
        self.updates.push(update)
    }

    pub fn send_control(&self, control: C) {
        self.control.push(control);
        // Looked at after the push (SeqCst on both sides): either the dying
        // worker's drain in `kill` sees this control, or this sees the flag
        // and drains it itself.
        if self.dead.load(Ordering::SeqCst) {
            while self.control.pop().is_some() {}
            return;
        }
        self.wake_worker.unpark();
    }

    /// The worker is gone: refuse everything from now on, drop what waits,
    /// and wake publishers waiting for room so that they give up.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        while self.control.pop().is_some() {}
        while self.updates.pop().is_some() {}
        self.space.notify_waiters();
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    // The worker's side.

    pub fn pop_control(&self) -> Option<C> {
        self.control.pop()
    }

    pub fn has_control(&self) -> bool {
        !self.control.is_empty()
    }

    pub fn pop_update(&self) -> Option<U> {
        self.updates.pop()
    }

    /// Tells waiting publishers there is room again.
    pub fn made_room(&self) {
        self.space.notify_waiters();
    }

    pub fn depth(&self) -> usize {
        self.updates.len()
    }

    pub fn capacity(&self) -> usize {
        self.updates.capacity()
    }

    /// Wakes the worker (after quiet pushes, or for shutdown).
    pub fn wake(&self) {
        self.wake_worker.unpark();
    }
}

/// Pushes to one or several rings, waking each worker once, when the
/// batch is done (dropped, or [`Batch::wake`]), rather than on every push:
/// what one publish (or one relay from Redis) brought is then taken by
/// each worker as one batch, so that a subscriber's frames of it share a
/// write and the worker is woken once, not once per entry. A full ring
/// wakes everything touched so far before waiting for room, so no worker
/// sits on entries while the publisher waits.
pub struct Batch<'r, U, C> {
    touched: Vec<&'r Ring<U, C>>,
}

impl<'r, U, C> Batch<'r, U, C> {
    pub fn new() -> Self {
        Batch { touched: Vec::new() }
    }

    /// Pushes an update, waiting up to `patience` for room as
    /// [`Ring::push`] does.
    pub async fn push(
        &mut self,
        ring: &'r Ring<U, C>,
        update: U,
        patience: Duration,
    ) -> Result<(), RingFull<U>> {
        match ring.try_push_quiet(update) {
            Ok(()) => {
                if !self.touched.iter().any(|r| std::ptr::eq(*r, ring)) {
                    self.touched.push(ring);
                }
                Ok(())
            }
            Err(update) => {
                self.wake();
                ring.push(update, patience).await
            }
        }
    }

    /// Wakes the workers of every ring pushed to since the last wake.
    pub fn wake(&mut self) {
        self.touched.drain(..).for_each(Ring::wake);
    }
}

impl<U, C> Default for Batch<'_, U, C> {
    fn default() -> Self {
        Batch::new()
    }
}

impl<U, C> Drop for Batch<'_, U, C> {
    /// A batch given up half way (an error, a cancelled publish) still
    /// wakes its workers for what it pushed.
    fn drop(&mut self) {
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// What a batch pushed quietly reaches its worker, woken when the
    /// batch is done: a missing wake would leave the worker parked for the
    /// whole 30 s and the entries unread.
    #[tokio::test]
    async fn a_batch_wakes_its_worker_once_it_is_done() {
        let (ring, parker) = Ring::<u32, ()>::new(8);
        let ring = Arc::new(ring);
        let worker = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let parked = std::time::Instant::now();
                parker.park_timeout(Duration::from_secs(30));
                let got: Vec<u32> = std::iter::from_fn(|| ring.pop_update()).collect();
                (parked.elapsed(), got)
            })
        };
        {
            let mut batch = Batch::new();
            for i in 0..3 {
                batch.push(&ring, i, Duration::from_secs(1)).await.unwrap();
            }
        }
        let (waited, got) = worker.join().unwrap();
        assert_eq!(got, [0, 1, 2]);
        assert!(waited < Duration::from_secs(20), "the worker was not woken");
    }

    #[tokio::test]
    async fn order_is_kept_across_wrap_around() {
        let (ring, _parker) = Ring::<u32, ()>::new(4);
        let mut next_out = 0;
        for i in 0..100 {
            ring.push(i, Duration::from_secs(1)).await.unwrap();
            if i % 3 == 2 {
                while let Some(v) = ring.pop_update() {
                    assert_eq!(v, next_out);
                    next_out += 1;
                }
            }
        }
        while let Some(v) = ring.pop_update() {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, 100);
    }

    #[tokio::test]
    async fn a_killed_ring_refuses_updates_and_drops_controls() {
        let (ring, _parker) = Ring::<u32, tokio::sync::oneshot::Sender<()>>::new(4);
        let (tx, rx) = tokio::sync::oneshot::channel();
        ring.send_control(tx);
        ring.push(1, Duration::from_secs(1)).await.unwrap();
        ring.kill();
        assert!(rx.await.is_err(), "a waiting question is answered by its drop");
        assert!(ring.push(2, Duration::from_secs(5)).await.is_err());
        let (tx, rx) = tokio::sync::oneshot::channel();
        ring.send_control(tx);
        assert!(rx.await.is_err());
        assert_eq!(ring.pop_update(), None);
    }

    #[tokio::test]
    async fn a_full_ring_makes_the_publisher_wait_then_gives_up() {
        let (ring, _parker) = Ring::<u32, ()>::new(1);
        ring.push(1, Duration::from_secs(1)).await.unwrap();
        let err = ring.push(2, Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(err.0, 2);
    }

    #[tokio::test]
    async fn a_waiting_publisher_goes_on_when_the_worker_makes_room() {
        let (ring, parker) = Ring::<u32, ()>::new(1);
        let ring = Arc::new(ring);
        ring.push(1, Duration::from_secs(1)).await.unwrap();
        let worker = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                parker.park_timeout(Duration::from_secs(5));
                let first = ring.pop_update();
                ring.made_room();
                first
            })
        };
        ring.push(2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(worker.join().unwrap(), Some(1));
        assert_eq!(ring.pop_update(), Some(2));
    }
}
