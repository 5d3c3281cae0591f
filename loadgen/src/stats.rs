//! Delivery counts and the latency histogram of a bench run, recorded from
//! thousands of subscriber tasks without a shared hot spot: each runtime
//! worker thread records into its own shard (a thread-local registered
//! here), and readers sum the shards. A shard's mutex is only ever contended
//! by the rare reader (the end-of-run merge), never by another recorder.
//!
//! One bench runs per process, so the shards are process-wide.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, up to an hour, to 3 significant
/// digits.
const HIGHEST_US: u64 = 3_600_000_000;

struct Shard {
    /// Live messages received: a relaxed counter, summed for the progress
    /// display; exact totals come from the subscribers' own reports.
    deliveries: AtomicU64,
    /// Bytes subscribers read from their sockets (see `wire`), relaxed.
    wire_bytes: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
}

static SHARDS: Mutex<Vec<Arc<Shard>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Arc<Shard> = register();
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1,
    // high >= 2 * low, 3 significant digits).
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

fn register() -> Arc<Shard> {
    let shard = Arc::new(Shard {
        deliveries: AtomicU64::new(0),
        wire_bytes: AtomicU64::new(0),
        latency_us: Mutex::new(new_histogram()),
    });
    lock(&SHARDS).push(Arc::clone(&shard));
    shard
}

/// A poisoned lock only means a recorder panicked mid-record; the counts
/// are still good enough for a report.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts one delivery and its latency.
pub fn record_delivery(latency_us: u64) {
    LOCAL.with(|shard| {
        shard.deliveries.fetch_add(1, Ordering::Relaxed);
        lock(&shard.latency_us).saturating_record(latency_us.clamp(1, HIGHEST_US));
    });
}

/// Deliveries recorded so far, over all threads.
pub fn deliveries() -> u64 {
    lock(&SHARDS)
        .iter()
        .map(|s| s.deliveries.load(Ordering::Relaxed))
        .sum()
}

/// Counts bytes a subscriber read from its socket.
pub fn record_wire_bytes(n: u64) {
    LOCAL.with(|shard| shard.wire_bytes.fetch_add(n, Ordering::Relaxed));
}

/// Bytes subscribers read from their sockets so far, over all threads.
pub fn wire_bytes() -> u64 {
    lock(&SHARDS)
        .iter()
        .map(|s| s.wire_bytes.load(Ordering::Relaxed))
        .sum()
}

/// All threads' latencies merged into one histogram.
pub fn merged_latency() -> Histogram<u64> {
    let mut merged = new_histogram();
    for shard in lock(&SHARDS).iter() {
        // Same bounds on both sides, so adding cannot fail.
        let _ = merged.add(&*lock(&shard.latency_us));
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_several_threads_are_merged() {
        let before = deliveries();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..100 {
                        record_delivery(t * 1000 + i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(deliveries() - before, 400);
        let h = merged_latency();
        assert!(h.len() >= 400);
        assert!(h.max() >= 3099);
    }
}
