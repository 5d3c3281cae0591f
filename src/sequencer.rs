//! Gives each message of a stream its `seq`: 1, 2, 3, ... with no gap.
//! In embedded mode the fanout worker that owns a stream sequences it, so
//! one counter per stream needs no atomics; in cluster mode Redis gives
//! the numbers and the counter only follows them.

use crate::protocol::Seq;

#[derive(Debug, Default, Clone, Copy)]
pub struct Sequencer {
    head: Seq,
}

impl Sequencer {
    /// The `seq` of the newest message, 0 before the first.
    pub fn head(&self) -> Seq {
        self.head
    }

    /// Takes the next `seq`.
    pub fn next_seq(&mut self) -> Seq {
        self.head = Seq(self.head.0 + 1);
        self.head
    }

    /// Follows a `seq` given elsewhere (cluster mode). Returns false for one
    /// at or below the head: a duplicate, which the caller drops.
    pub fn observe(&mut self, seq: Seq) -> bool {
        if seq <= self.head {
            return false;
        }
        self.head = seq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_one_without_gaps() {
        let mut s = Sequencer::default();
        assert_eq!(s.head(), Seq(0));
        assert_eq!(
            (s.next_seq(), s.next_seq(), s.next_seq()),
            (Seq(1), Seq(2), Seq(3))
        );
    }

    #[test]
    fn observed_duplicates_are_refused() {
        let mut s = Sequencer::default();
        assert!(s.observe(Seq(5)));
        assert!(!s.observe(Seq(5)));
        assert!(!s.observe(Seq(4)));
        assert_eq!(s.head(), Seq(5));
    }
}
