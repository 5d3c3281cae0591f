//! The symbols one market-data session is subscribed to: a sorted vector,
//! the smallest set that holds a few symbols, since every idle connection
//! keeps one. Never shared between connections.

use std::sync::Arc;

/// The symbols a session is subscribed to, sorted. A connection usually
/// has a few, and a vector grown one place at a time holds one symbol in
/// 16 bytes where a hash set's table took 96, in every idle connection;
/// at most `max_subscriptions` of them, so a lookup is a binary search and
/// an insert a short move.
#[derive(Debug, Default)]
pub(super) struct Subscriptions(Vec<Arc<str>>);

impl Subscriptions {
    fn find(&self, symbol: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|s| (**s).cmp(symbol))
    }

    pub(super) fn contains(&self, symbol: &str) -> bool {
        self.find(symbol).is_ok()
    }

    /// Adds `symbol`; false when it was there already.
    pub(super) fn insert(&mut self, symbol: Arc<str>) -> bool {
        let Err(at) = self.find(&symbol) else {
            return false;
        };
        if self.0.len() == self.0.capacity() {
            // Doubling from one place, not from Vec's first four.
            self.0.reserve_exact(self.0.len().max(1));
        }
        self.0.insert(at, symbol);
        true
    }

    /// Removes `symbol`; false when it was not there.
    pub(super) fn remove(&mut self, symbol: &str) -> bool {
        let Ok(at) = self.find(symbol) else {
            return false;
        };
        self.0.remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        true
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, Arc<str>> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_stay_sorted_and_unique() {
        let mut s = Subscriptions::default();
        for sym in ["C", "A", "B", "A"] {
            s.insert(Arc::from(sym));
        }
        assert_eq!(s.iter().map(|a| &**a).collect::<Vec<_>>(), ["A", "B", "C"]);
        assert!(s.contains("B") && !s.contains("D"));
        assert!(s.remove("B") && !s.remove("B"));
        assert_eq!(s.len(), 2);
        assert!(s.remove("A") && s.remove("C"));
        assert_eq!(s.len(), 0);
    }
}
