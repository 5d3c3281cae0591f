//! The order checker of one (subscriber, stream): it takes the `seq` of each
//! message as it arrives and counts what PROTOCOL.md 1.4 forbids: gaps,
//! duplicates and messages that arrive after a later one (reorders). Pure
//! bookkeeping, no clock or socket; the bench's subscribers own one each.
//!
//! A gap is remembered as a range of missing seqs, so that a message that
//! later fills it counts as a reorder rather than a duplicate. At most
//! [`MAX_OPEN_GAPS`] ranges are remembered; older ones are forgotten and
//! stay lost, and a straggler into a forgotten range counts as a duplicate.

use serde::Serialize;

/// How many distinct gaps are remembered per stream (bounds memory when a
/// stream loses every other message).
const MAX_OPEN_GAPS: usize = 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeqCounts {
    /// Distinct seqs received.
    pub unique: u64,
    /// Messages whose seq had already been received.
    pub duplicates: u64,
    /// Messages that filled a gap, i.e. arrived after a higher seq.
    pub reorders: u64,
    /// Times a seq jumped past the next expected one.
    pub gaps: u64,
    /// Seqs skipped by gaps and never filled.
    pub missing: u64,
}

impl SeqCounts {
    pub fn add(&mut self, other: &SeqCounts) {
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.reorders += other.reorders;
        self.gaps += other.gaps;
        self.missing += other.missing;
    }
}

/// What one observed seq was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The next seq, or the first one seen.
    InOrder,
    /// A jump ahead, skipping this many seqs.
    Gap(u64),
    /// A seq that was missing until now.
    Reorder,
    Duplicate,
}

#[derive(Debug, Default)]
pub struct SeqChecker {
    /// The highest seq seen or set as the baseline.
    high: Option<u64>,
    /// Missing seqs below `high`, as inclusive ranges in ascending order.
    open_gaps: Vec<(u64, u64)>,
    counts: SeqCounts,
}

impl SeqChecker {
    /// Sets the position the stream is known to be at (e.g. the seq of the
    /// snapshot sent right after `subscribed`) without counting a message.
    pub fn baseline(&mut self, seq: u64) {
        if self.high.is_none_or(|high| seq > high) {
            self.high = Some(seq);
        }
    }

    pub fn observe(&mut self, seq: u64) -> Observed {
        let Some(high) = self.high else {
            self.high = Some(seq);
            self.counts.unique += 1;
            return Observed::InOrder;
        };
        if seq == high + 1 {
            self.high = Some(seq);
            self.counts.unique += 1;
            Observed::InOrder
        } else if seq > high {
            let skipped = seq - high - 1;
            self.remember_gap(high + 1, seq - 1);
            self.high = Some(seq);
            self.counts.unique += 1;
            self.counts.gaps += 1;
            self.counts.missing += skipped;
            Observed::Gap(skipped)
        } else if self.fill(seq) {
            self.counts.unique += 1;
            self.counts.reorders += 1;
            self.counts.missing -= 1;
            Observed::Reorder
        } else {
            self.counts.duplicates += 1;
            Observed::Duplicate
        }
    }

    pub fn counts(&self) -> SeqCounts {
        self.counts
    }

    fn remember_gap(&mut self, lo: u64, hi: u64) {
        if self.open_gaps.len() == MAX_OPEN_GAPS {
            self.open_gaps.remove(0);
        }
        self.open_gaps.push((lo, hi));
    }

    /// Removes `seq` from the open gaps; false if it was not missing.
    fn fill(&mut self, seq: u64) -> bool {
        let Some(idx) = self
            .open_gaps
            .iter()
            .rposition(|&(lo, hi)| lo <= seq && seq <= hi)
        else {
            return false;
        };
        let (lo, hi) = self.open_gaps[idx];
        match (seq == lo, seq == hi) {
            (true, true) => {
                self.open_gaps.remove(idx);
            }
            (true, false) => self.open_gaps[idx].0 = seq + 1,
            (false, true) => self.open_gaps[idx].1 = seq - 1,
            (false, false) => {
                self.open_gaps[idx].1 = seq - 1;
                self.open_gaps.insert(idx + 1, (seq + 1, hi));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> (Vec<Observed>, SeqCounts) {
        let mut c = SeqChecker::default();
        let seen = seqs.iter().map(|&s| c.observe(s)).collect();
        (seen, c.counts())
    }

    #[test]
    fn in_order_stream_is_clean() {
        let (seen, counts) = run(&[5, 6, 7, 8]);
        assert!(seen.iter().all(|o| *o == Observed::InOrder));
        assert_eq!(
            counts,
            SeqCounts {
                unique: 4,
                ..Default::default()
            }
        );
    }

    #[test]
    fn gap_is_counted_once_with_its_size() {
        let (seen, counts) = run(&[1, 2, 5, 6]);
        assert_eq!(seen[2], Observed::Gap(2));
        assert_eq!(counts.gaps, 1);
        assert_eq!(counts.missing, 2);
        assert_eq!(counts.unique, 4);
    }

    #[test]
    fn duplicates_are_told_from_reorders() {
        let (seen, counts) = run(&[1, 2, 2, 4, 3, 3, 1]);
        assert_eq!(
            seen,
            vec![
                Observed::InOrder,
                Observed::InOrder,
                Observed::Duplicate,
                Observed::Gap(1),
                Observed::Reorder,
                Observed::Duplicate,
                Observed::Duplicate,
            ]
        );
        assert_eq!(counts.unique, 4);
        assert_eq!(counts.duplicates, 3);
        assert_eq!(counts.reorders, 1);
        assert_eq!(counts.missing, 0);
    }

    #[test]
    fn filling_the_middle_of_a_gap_splits_it() {
        let mut c = SeqChecker::default();
        c.observe(1);
        assert_eq!(c.observe(10), Observed::Gap(8));
        assert_eq!(c.observe(5), Observed::Reorder);
        assert_eq!(c.observe(5), Observed::Duplicate);
        assert_eq!(c.observe(2), Observed::Reorder);
        assert_eq!(c.observe(9), Observed::Reorder);
        assert_eq!(c.observe(4), Observed::Reorder);
        assert_eq!(c.observe(6), Observed::Reorder);
        assert_eq!(c.counts().missing, 3); // 3, 7, 8
        assert_eq!(c.observe(7), Observed::Reorder);
        assert_eq!(c.observe(8), Observed::Reorder);
        assert_eq!(c.observe(3), Observed::Reorder);
        assert_eq!(c.counts().missing, 0);
        assert_eq!(c.counts().unique, 10);
    }

    #[test]
    fn baseline_sets_the_position_without_counting() {
        let mut c = SeqChecker::default();
        c.baseline(41);
        assert_eq!(c.observe(42), Observed::InOrder);
        assert_eq!(c.observe(41), Observed::Duplicate);
        assert_eq!(c.counts().unique, 1);
        // A lower baseline never moves the position back.
        c.baseline(3);
        assert_eq!(c.observe(43), Observed::InOrder);
    }

    #[test]
    fn open_gaps_are_bounded() {
        let mut c = SeqChecker::default();
        for i in 0..(MAX_OPEN_GAPS as u64 + 10) {
            c.observe(i * 2);
        }
        assert_eq!(c.open_gaps.len(), MAX_OPEN_GAPS);
        // The first gap (seq 1) was forgotten: it stays missing.
        assert_eq!(c.observe(1), Observed::Duplicate);
        assert_eq!(c.observe(2 * (MAX_OPEN_GAPS as u64 + 9) - 1), Observed::Reorder);
    }
}
