//! The bounded window of recent messages of one stream, kept for clients
//! that resume with `since` and for the HTTP polling fallback. Owned by
//! the fanout worker of the stream's shard, so it needs no lock. Bounded
//! by count and by age, whichever is reached first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::encode::Frame;
use crate::protocol::{Seq, SignalType};

/// What a filter or a lookup needs to know of a kept message without
/// parsing its frame again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryMeta {
    pub symbol: Option<Arc<str>>,
    pub signal_type: Option<SignalType>,
    pub notification_key: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: Seq,
    pub frame: Frame,
    pub meta: EntryMeta,
    kept_at: Instant,
}

#[derive(Debug)]
pub struct History {
    entries: VecDeque<Entry>,
    max_len: usize,
    max_age: Duration,
}

impl History {
    pub fn new(max_len: usize, max_age: Duration) -> History {
        History {
            entries: VecDeque::new(),
            max_len,
            max_age,
        }
    }

    pub fn push(&mut self, seq: Seq, frame: Frame, meta: EntryMeta, now: Instant) {
        if self.entries.len() == self.max_len {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            seq,
            frame,
            meta,
            kept_at: now,
        });
        self.expire(now);
    }

    /// Drops what is older than the window's age.
    pub fn expire(&mut self, now: Instant) {
        while let Some(front) = self.entries.front() {
            if now.saturating_duration_since(front.kept_at) <= self.max_age {
                break;
            }
            self.entries.pop_front();
        }
    }

    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    pub fn oldest(&self) -> Option<Seq> {
        self.entries.front().map(|e| e.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: u64, max_len: usize) -> History {
        let mut h = History::new(max_len, Duration::from_secs(60));
        let now = Instant::now();
        for s in 1..=n {
            h.push(Seq(s), Frame::from(s.to_string()), EntryMeta::default(), now);
        }
        h
    }

    #[test]
    fn window_keeps_the_newest() {
        let h = filled(10, 4);
        let seqs: Vec<u64> = h.entries().iter().map(|e| e.seq.0).collect();
        assert_eq!(seqs, [7, 8, 9, 10]);
    }

    #[test]
    fn old_entries_expire() {
        let mut h = History::new(10, Duration::from_millis(10));
        let t0 = Instant::now();
        h.push(Seq(1), Frame::from("a"), EntryMeta::default(), t0);
        h.push(
            Seq(2),
            Frame::from("b"),
            EntryMeta::default(),
            t0 + Duration::from_millis(20),
        );
        assert_eq!(h.oldest(), Some(Seq(2)));
    }
}
