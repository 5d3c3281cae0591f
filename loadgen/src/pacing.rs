//! The publishers' paced schedule and the clock that stamps messages.
//!
//! Latency is measured from the time a message was *meant* to be sent, not
//! from when the publisher got round to it: when the server pushes back and
//! a publisher falls behind, the time its batches wait in the publisher
//! counts, as it would for a real feed that does not slow down
//! (coordinated omission). A batch that goes out early (the timer wakes at
//! most [`EARLY_NS`] before its due time, rather than up to a millisecond
//! late) carries its actual send time instead.
//!
//! Pure arithmetic on nanoseconds; the publisher loop in `bench` sleeps.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far ahead of its due time a batch may be sent. tokio's timer has a
/// millisecond tick, so sleeping until the exact due time would add up to
/// 1 ms to every latency at high rates.
pub const EARLY_NS: u64 = 1_000_000;

/// One time base for publishers and subscribers in this process: an
/// `Instant` and the wall-clock time it stands for. Messages carry wall-clock
/// nanoseconds (`t_ns`), so that another process could read them too, but
/// both ends here derive them from the same monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_epoch_ns: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock {
            start: Instant::now(),
            start_epoch_ns: u64::try_from(epoch.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// The same time base, started `offset_ns` later.
    pub fn later(&self, offset_ns: u64) -> Clock {
        Clock {
            start: self.start + Duration::from_nanos(offset_ns),
            start_epoch_ns: self.start_epoch_ns.saturating_add(offset_ns),
        }
    }

    /// Nanoseconds since this clock's start (0 before it).
    pub fn elapsed_ns(&self) -> u64 {
        // `Instant::elapsed` saturates to zero for a start in the future.
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The wall-clock nanoseconds of an offset from the start.
    pub fn epoch_ns(&self, offset_ns: u64) -> u64 {
        self.start_epoch_ns.saturating_add(offset_ns)
    }

    pub fn now_epoch_ns(&self) -> u64 {
        self.epoch_ns(self.elapsed_ns())
    }

    pub fn instant(&self, offset_ns: u64) -> Instant {
        self.start + Duration::from_nanos(offset_ns)
    }
}

/// When each batch of one publisher is due: batch `k` at
/// `offset + k * interval` nanoseconds after the run starts. The publishers
/// of a run share the total rate and are staggered evenly across one
/// interval, so that the server sees a steady stream rather than bursts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    interval_ns: f64,
    offset_ns: f64,
}

impl Schedule {
    /// The schedule of publisher `index` of `publishers`, sending batches of
    /// `batch` messages at `total_rate` messages per second between them.
    /// `None` for a rate of 0: as fast as the server takes them.
    pub fn new(total_rate: f64, batch: u32, publishers: u32, index: u32) -> Option<Schedule> {
        if total_rate <= 0.0 || batch == 0 || publishers == 0 {
            return None;
        }
        let interval_ns = 1e9 * f64::from(batch) * f64::from(publishers) / total_rate;
        Some(Schedule {
            interval_ns,
            offset_ns: interval_ns * f64::from(index) / f64::from(publishers),
        })
    }

    /// Nanoseconds after the start at which batch `k` is due.
    pub fn due_ns(&self, k: u64) -> u64 {
        // Computed from k each time (not accumulated), so it never drifts.
        (self.offset_ns + self.interval_ns * k as f64) as u64
    }

    /// How many batches fall due before `horizon_ns`.
    pub fn batches_before(&self, horizon_ns: u64) -> u64 {
        let span = horizon_ns as f64 - self.offset_ns;
        if span <= 0.0 {
            return 0;
        }
        (span / self.interval_ns).ceil() as u64
    }
}

/// What a publisher does about a batch due at `due_ns` when the clock reads
/// `now_ns` (both relative to the run's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sleep until this offset, then ask again.
    WaitUntil(u64),
    /// Send now, stamped with this offset: the due time when late (the
    /// earlier of the two), the actual time when early.
    Send { stamp_ns: u64 },
}

pub fn step(due_ns: u64, now_ns: u64) -> Step {
    if due_ns > now_ns + EARLY_NS {
        Step::WaitUntil(due_ns - EARLY_NS)
    } else {
        Step::Send {
            stamp_ns: due_ns.min(now_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_share_the_rate_and_are_staggered() {
        // 2000 msg/s in batches of 10 over 2 publishers: each sends a batch
        // every 10 ms, the second 5 ms after the first.
        let a = Schedule::new(2000.0, 10, 2, 0).unwrap();
        let b = Schedule::new(2000.0, 10, 2, 1).unwrap();
        assert_eq!(a.due_ns(0), 0);
        assert_eq!(a.due_ns(1), 10_000_000);
        assert_eq!(b.due_ns(0), 5_000_000);
        assert_eq!(b.due_ns(3), 35_000_000);
        let one_second = 1_000_000_000;
        let messages = (a.batches_before(one_second) + b.batches_before(one_second)) * 10;
        assert_eq!(messages, 2000);
    }

    #[test]
    fn due_times_do_not_drift() {
        // 3 publishers at 1000/s with batch 1: intervals of 3 ms that do not
        // divide evenly into the offsets (1 ms, 2 ms).
        let s = Schedule::new(1000.0, 1, 3, 1).unwrap();
        assert_eq!(s.due_ns(1_000_000), 3_000_000_000_000 + 1_000_000);
        assert_eq!(s.batches_before(3_000_000_000), 1000);
    }

    #[test]
    fn rate_zero_means_unpaced() {
        assert_eq!(Schedule::new(0.0, 10, 2, 0), None);
    }

    #[test]
    fn batches_before_counts_due_times_strictly_below_the_horizon() {
        let s = Schedule::new(100.0, 1, 1, 0).unwrap(); // every 10 ms
        assert_eq!(s.batches_before(0), 0);
        assert_eq!(s.batches_before(1), 1);
        assert_eq!(s.batches_before(10_000_000), 1);
        assert_eq!(s.batches_before(10_000_001), 2);
    }

    #[test]
    fn late_batches_carry_their_due_time_early_ones_their_send_time() {
        // Far ahead: sleep until just before it is due.
        assert_eq!(step(10_000_000, 0), Step::WaitUntil(9_000_000));
        // Within the early window: send now, stamped now.
        assert_eq!(step(10_000_000, 9_500_000), Step::Send { stamp_ns: 9_500_000 });
        assert_eq!(step(10_000_000, 9_000_000), Step::Send { stamp_ns: 9_000_000 });
        // On time.
        assert_eq!(step(10_000_000, 10_000_000), Step::Send { stamp_ns: 10_000_000 });
        // Late: stamped with the due time, so the wait counts as latency.
        assert_eq!(step(10_000_000, 25_000_000), Step::Send { stamp_ns: 10_000_000 });
    }

    #[test]
    fn clock_offsets_map_to_wall_clock() {
        let c = Clock::new();
        assert_eq!(c.epoch_ns(5) - c.epoch_ns(0), 5);
        assert!(c.now_epoch_ns() >= c.epoch_ns(0));
        let later = c.later(1_000_000_000);
        assert_eq!(later.epoch_ns(0), c.epoch_ns(1_000_000_000));
        assert_eq!(later.elapsed_ns(), 0);
    }
}
