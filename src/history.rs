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

/// What a resuming client is owed, from [`History::replay`].
#[derive(Debug, PartialEq, Eq)]
pub struct Replay {
    /// `Some(oldest kept)` when the window no longer reaches back to the
    /// client's `since` (or the client names a `seq` this server never gave,
    /// as after a restart of an embedded node): the client must reload.
    pub reset: Option<Seq>,
    /// Index of the first entry to send; entries from there on are sent.
    pub from: usize,
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

    /// Plans the replay for a client that last saw `since`, on a stream
    /// whose newest `seq` is `head`.
    pub fn replay(&self, since: Seq, head: Seq) -> Replay {
        let after = |seq: Seq| self.entries.partition_point(|e| e.seq <= seq);
        if since > head {
            // A seq from the future: this node lost its state. Everything it
            // has is new to the client.
            let oldest = self.oldest().unwrap_or(Seq(head.0 + 1));
            return Replay {
                reset: Some(oldest),
                from: 0,
            };
        }
        if since == head {
            return Replay {
                reset: None,
                from: self.entries.len(),
            };
        }
        match self.oldest() {
            Some(oldest) if oldest.0 <= since.0 + 1 => Replay {
                reset: None,
                from: after(since),
            },
            Some(oldest) => Replay {
                reset: Some(oldest),
                from: 0,
            },
            None => Replay {
                reset: Some(Seq(head.0 + 1)),
                from: 0,
            },
        }
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
    fn replay_within_the_window_sends_exactly_the_missed() {
        let h = filled(10, 4);
        assert_eq!(h.replay(Seq(8), Seq(10)), Replay { reset: None, from: 2 });
        assert_eq!(h.replay(Seq(6), Seq(10)), Replay { reset: None, from: 0 });
        assert_eq!(h.replay(Seq(10), Seq(10)), Replay { reset: None, from: 4 });
    }

    #[test]
    fn replay_past_the_window_resets_to_the_oldest_kept() {
        let h = filled(10, 4);
        assert_eq!(
            h.replay(Seq(5), Seq(10)),
            Replay {
                reset: Some(Seq(7)),
                from: 0
            }
        );
        assert_eq!(
            h.replay(Seq(0), Seq(10)),
            Replay {
                reset: Some(Seq(7)),
                from: 0
            }
        );
    }

    #[test]
    fn a_seq_from_the_future_resets() {
        let h = filled(3, 4);
        assert_eq!(
            h.replay(Seq(50), Seq(3)),
            Replay {
                reset: Some(Seq(1)),
                from: 0
            }
        );
        let empty = History::new(4, Duration::from_secs(1));
        assert_eq!(
            empty.replay(Seq(50), Seq(0)),
            Replay {
                reset: Some(Seq(1)),
                from: 0
            }
        );
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
        assert_eq!(
            h.replay(Seq(0), Seq(2)),
            Replay {
                reset: Some(Seq(2)),
                from: 0
            }
        );
    }
}
