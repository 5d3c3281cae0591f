//! The clocks of every open connection, kept by one task instead of a
//! timer per connection: every [`Sweeper::period`] it pings connections
//! due a ping, and closes those silent past the idle timeout, those whose
//! token expired, and those whose writes have been stalled past the write
//! timeout. An idle connection so costs a few atomics, not two timer
//! entries and the wake-ups that keep them.
//!
//! While the node's subscribers as a whole are behind (back-pressure), it
//! also looks every [`MIN_PERIOD`] for subscribers whose socket has stayed
//! full with no progress for [`STUCK_AFTER`]: their clients stopped reading,
//! and they are marked stuck so that they stop counting as the node being
//! behind (see [`crate::outbox`]).
//!
//! The sweeper owns the clocks: they live in its map beside each
//! connection's outbox, and a connection stamps them through it by id
//! (`heard`, `wrote`). Times are milliseconds since the sweeper started,
//! stamped with its own coarse clock, so reading a message costs no clock
//! call. What it decides reaches the connection as a close in the outbox.
//!
//! The clocks are `u32`s, 16 bytes a connection: milliseconds wrap after
//! 49 days, so two are compared by their signed wrapping difference
//! ([`since`]), right for any span under 24 days; timeouts are held to
//! [`MAX_SPAN`], and every clock but the token's is restamped or acted on
//! within one timeout. A token's expiry, which may be months away, is
//! kept in seconds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use dashmap::DashMap;

use crate::fanout::backpressure::Backlog;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::close::CloseReason;
use crate::shutdown::Shutdown;

/// How long a connection's writes may stay stalled (the socket full, its
/// client reading nothing) before it is dropped as a slow consumer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A socket full with no progress for this long means its client stopped
/// reading (a client that reads, however slowly, makes progress sooner).
pub const STUCK_AFTER: Duration = Duration::from_millis(100);
/// An unmasked WebSocket ping with no payload.
const PING: &[u8] = &[0x89, 0x00];
/// The sweep period for the default timeouts; shorter ones sweep faster.
const MAX_PERIOD: Duration = Duration::from_millis(250);
const MIN_PERIOD: Duration = Duration::from_millis(20);
/// The longest idle timeout and ping interval (2^30 ms, 12.4 days; longer
/// ones act as this): half of what [`since`] tells apart, so that no
/// sweep can miss one.
pub const MAX_SPAN: Duration = Duration::from_millis(1 << 30);

/// A connection's clocks, in wrapping sweeper milliseconds (0: never).
/// Atomics: the connection stamps them while the sweeper reads them.
#[derive(Debug, Default)]
struct Clocks {
    /// When the client was last heard from (any frame, pongs included).
    heard: AtomicU32,
    /// When the server last pinged it.
    pinged: AtomicU32,
    /// Since when its writer has been waiting for the socket to take data
    /// without any of it being taken.
    stalled_since: AtomicU32,
    /// When its token expires, in sweeper seconds (0: never), rounded up.
    expires_s: AtomicU32,
}

/// One watched connection. Relaxed throughout: each clock is one reading,
/// compared alone.
struct Watched {
    outbox: Arc<Outbox>,
    clocks: Clocks,
}

pub struct Sweeper {
    epoch: Instant,
    /// The coarse clock: wrapping sweeper milliseconds at the last sweep.
    now: AtomicU32,
    /// Open connections by id, with their clocks. A dashmap: every
    /// connection stamps its own entry while the sweep walks them all.
    conns: DashMap<u64, Watched>,
    period: Duration,
    idle_timeout: Duration,
    ping_interval: Duration,
}

impl Sweeper {
    pub fn new(idle_timeout: Duration, ping_interval: Duration) -> Sweeper {
        let period = (idle_timeout.min(ping_interval) / 4).clamp(MIN_PERIOD, MAX_PERIOD);
        Sweeper {
            epoch: Instant::now(),
            now: AtomicU32::new(1),
            conns: DashMap::new(),
            period,
            idle_timeout: idle_timeout.min(MAX_SPAN),
            ping_interval: ping_interval.min(MAX_SPAN),
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Milliseconds from the sweeper's start to `at`, not wrapped.
    fn elapsed_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// `at` in wrapping sweeper milliseconds; never 0, which means "never"
    /// in [`Clocks`].
    fn millis(&self, at: Instant) -> u32 {
        stamp(self.elapsed_ms(at))
    }

    /// The coarse time, good to one sweep period.
    pub fn now(&self) -> u32 {
        self.now.load(Ordering::Relaxed)
    }

    /// Starts watching a connection, whose token (if it has one) expires at
    /// `expires_at`; closes it at once if the node is shutting down.
    pub fn watch(&self, id: u64, outbox: Arc<Outbox>, expires_at: Option<SystemTime>, shutdown: &Shutdown) {
        let elapsed = self.elapsed_ms(Instant::now());
        let now = stamp(elapsed);
        let clocks = Clocks {
            heard: AtomicU32::new(now),
            pinged: AtomicU32::new(now),
            ..Clocks::default()
        };
        if let Some(at) = expires_at {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            let expires_ms = elapsed.saturating_add(left.as_millis() as u64);
            // Rounded up, so a token is never cut before its time; at most
            // 136 years away, beyond which it acts as never expiring.
            let expires_s = u32::try_from(expires_ms.div_ceil(1000)).unwrap_or(u32::MAX);
            clocks.expires_s.store(expires_s.max(1), Ordering::Relaxed);
        }
        self.conns.insert(
            id,
            Watched {
                outbox: outbox.clone(),
                clocks,
            },
        );
        // After the insert: either the sweeper's shutdown pass sees this
        // connection, or this sees the shutdown.
        if shutdown.is_triggered() {
            outbox.close(CloseReason::GoingAway);
        }
    }

    pub fn forget(&self, id: u64) {
        self.conns.remove(&id);
    }

    /// Connection `id`'s client was heard from.
    pub fn heard(&self, id: u64) {
        if let Some(w) = self.conns.get(&id) {
            w.clocks.heard.store(self.now(), Ordering::Relaxed);
        }
    }

    /// What a write of connection `id` achieved: `progressed`, some bytes
    /// went out; `done`, nothing is left. The stall clock runs from the
    /// last progress.
    pub fn wrote(&self, id: u64, progressed: bool, done: bool) {
        let Some(w) = self.conns.get(&id) else { return };
        let stalled_since = &w.clocks.stalled_since;
        if done {
            stalled_since.store(0, Ordering::Relaxed);
        } else if progressed || stalled_since.load(Ordering::Relaxed) == 0 {
            stalled_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Sweeps until shutdown.
    pub async fn run(self: Arc<Self>, metrics: Arc<Metrics>, backlog: Arc<Backlog>, shutdown: Arc<Shutdown>) {
        let mut last_sweep = 0;
        loop {
            // Faster while back-pressure holds, to find the clients that
            // stopped reading soon: they hold everyone else back until then.
            let saturated = backlog.saturated();
            let pause = if saturated { MIN_PERIOD } else { self.period };
            tokio::select! {
                _ = shutdown.wait() => {
                    // Connections have no shutdown wait of their own: the
                    // close reaches each through its outbox.
                    for entry in self.conns.iter() {
                        entry.value().outbox.close(CloseReason::GoingAway);
                    }
                    return;
                }
                _ = tokio::time::sleep(pause) => {}
            }
            let at = Instant::now();
            let now = self.millis(at);
            if since(now, last_sweep) >= self.period.as_millis() as u32 {
                last_sweep = now;
                self.sweep(at, &metrics);
            } else if saturated {
                self.now.store(now, Ordering::Relaxed);
                self.mark_stuck(now);
            }
        }
    }

    /// Marks the subscribers whose socket stayed full with no progress
    /// for [`STUCK_AFTER`].
    fn mark_stuck(&self, now: u32) {
        let stuck_after = STUCK_AFTER.as_millis() as u32;
        for entry in self.conns.iter() {
            let outbox = &entry.value().outbox;
            let stalled_since = entry.value().clocks.stalled_since.load(Ordering::Relaxed);
            if stalled_since != 0 && since(now, stalled_since) >= stuck_after && !outbox.is_stuck() {
                outbox.set_stuck(true);
            }
        }
    }

    /// One pass over every connection, as of `at`.
    fn sweep(&self, at: Instant, metrics: &Metrics) {
        let elapsed = self.elapsed_ms(at);
        let now = stamp(elapsed);
        let now_s = (elapsed / 1000) as u32;
        self.now.store(now, Ordering::Relaxed);
        self.mark_stuck(now);
        // Held to MAX_SPAN by `new`, so they fit.
        let idle = self.idle_timeout.as_millis() as u32;
        let ping = self.ping_interval.as_millis() as u32;
        let stall = WRITE_TIMEOUT.as_millis() as u32;
        for entry in self.conns.iter() {
            let Watched { outbox, clocks: w } = entry.value();
            let expires_s = w.expires_s.load(Ordering::Relaxed);
            let stalled_since = w.stalled_since.load(Ordering::Relaxed);
            if stalled_since != 0 && since(now, stalled_since) >= stall {
                // No close frame fits a full socket: the connection is dropped.
                if outbox.close(CloseReason::Stalled) {
                    metrics.slow_consumer_cut();
                }
            } else if expires_s != 0 && now_s >= expires_s {
                outbox.close(CloseReason::TokenExpired);
            } else if since(now, w.heard.load(Ordering::Relaxed)) >= idle {
                outbox.close(CloseReason::IdleTimeout);
            } else if since(now, w.pinged.load(Ordering::Relaxed)) >= ping {
                w.pinged.store(now, Ordering::Relaxed);
                let _ = outbox.push_raw(Bytes::from_static(PING));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// Milliseconds since the sweeper's start as a wrapping clock that is
/// never 0 (which means "never").
fn stamp(elapsed_ms: u64) -> u32 {
    (elapsed_ms as u32).max(1)
}

/// Milliseconds from `then` to `now` on the wrapping clock; 0 when `then`
/// is the later one (a connection stamped its clock during a sweep, after
/// the sweep read the time).
fn since(now: u32, then: u32) -> u32 {
    (now.wrapping_sub(then) as i32).max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Overflow;
    use std::collections::VecDeque;

    fn sweeper() -> Sweeper {
        Sweeper::new(Duration::from_millis(400), Duration::from_millis(100))
    }

    #[test]
    fn the_wrapping_clock_counts_across_its_wrap_and_never_backwards() {
        assert_eq!(since(5, u32::MAX - 4), 10);
        assert_eq!(since(1_000, 400), 600);
        assert_eq!(since(400, 1_000), 0, "stamped after the sweep read the time");
    }

    #[test]
    fn a_silent_connection_is_pinged_then_closed_for_idleness() {
        let s = sweeper();
        let metrics = Metrics::new(false);
        let o = Arc::new(Outbox::new(16, Overflow::Close));
        let t0 = Instant::now();
        s.watch(1, o.clone(), None, &Shutdown::default());
        s.sweep(t0 + Duration::from_millis(120), &metrics);
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch), None);
        assert_eq!(batch.len(), 1);
        assert!(batch[0].raw && &batch[0].bytes[..] == PING);
        s.sweep(t0 + Duration::from_millis(420), &metrics);
        assert_eq!(o.take(&mut batch), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn hearing_from_the_client_keeps_it_open() {
        let s = sweeper();
        let metrics = Metrics::new(false);
        let o = Arc::new(Outbox::new(16, Overflow::Close));
        let t0 = Instant::now();
        s.watch(1, o.clone(), None, &Shutdown::default());
        for i in 1..=6 {
            s.sweep(t0 + Duration::from_millis(100 * i), &metrics);
            s.heard(1);
        }
        assert!(!o.is_closing());
    }

    #[test]
    fn a_stalled_writer_is_dropped_and_an_expired_token_closed() {
        let s = Sweeper::new(Duration::from_secs(60), Duration::from_secs(60));
        let metrics = Metrics::new(false);
        let t0 = Instant::now();
        let stalled = Arc::new(Outbox::new(16, Overflow::Close));
        s.watch(1, stalled.clone(), None, &Shutdown::default());
        let expiring = Arc::new(Outbox::new(16, Overflow::Close));
        s.watch(2, expiring.clone(), Some(SystemTime::now()), &Shutdown::default());
        s.wrote(1, false, false);
        s.sweep(t0 + Duration::from_secs(5), &metrics);
        let mut batch = VecDeque::new();
        assert_eq!(expiring.take(&mut batch), Some(CloseReason::TokenExpired));
        assert!(!stalled.is_closing(), "not stalled for the write timeout yet");
        // Progress restarts the stall clock.
        s.wrote(1, true, false);
        s.sweep(t0 + WRITE_TIMEOUT + Duration::from_secs(1), &metrics);
        assert!(!stalled.is_closing(), "it made progress 5 s ago");
        s.sweep(t0 + Duration::from_secs(5) + WRITE_TIMEOUT, &metrics);
        assert_eq!(stalled.take(&mut batch), Some(CloseReason::Stalled));
        assert_eq!(metrics.slow_consumer_cuts(), 1);
        s.sweep(t0 + Duration::from_secs(30), &metrics);
        assert_eq!(metrics.slow_consumer_cuts(), 1, "counted once");
        s.forget(1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_full_socket_with_no_progress_marks_its_subscriber_stuck_and_progress_clears_it() {
        let s = sweeper();
        let metrics = Metrics::new(false);
        let o = Arc::new(Outbox::new(16, Overflow::Close));
        let t0 = Instant::now();
        s.watch(1, o.clone(), None, &Shutdown::default());
        s.wrote(1, false, false);
        s.sweep(t0 + STUCK_AFTER / 2, &metrics);
        assert!(!o.is_stuck(), "not for long enough");
        s.sweep(t0 + STUCK_AFTER * 2, &metrics);
        assert!(o.is_stuck());
        // A write that made progress restarts the clock.
        s.wrote(1, true, false);
        o.set_stuck(false);
        s.sweep(t0 + STUCK_AFTER * 2, &metrics);
        assert!(!o.is_stuck());
    }
}
