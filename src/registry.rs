//! Who receives what: the subscriber sets of one fanout shard (symbol →
//! subscribers, user → connections, signal subscribers with their filters).
//! Owned by the shard's worker alone, so plain maps and vectors serve with
//! no lock; a stream's subscribers are a `Vec` because fanout walks them
//! far more often than connections come and go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::auth::SymbolAccess;
use crate::outbox::Outbox;
use crate::protocol::SignalType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriberId(pub u64);

impl SubscriberId {
    pub fn next() -> SubscriberId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // Relaxed: ids only need to be unique.
        SubscriberId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A connection as fanout sees it: where its frames go and what it may see.
pub struct Subscriber {
    pub id: SubscriberId,
    pub outbox: Arc<Outbox>,
    pub access: SymbolAccess,
}

/// A trading-signals connection's filter; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalFilter {
    pub symbol: Option<Arc<str>>,
    pub signal_type: Option<SignalType>,
}

impl SignalFilter {
    pub fn matches(&self, symbol: Option<&str>, signal_type: Option<SignalType>) -> bool {
        let symbol_ok = match &self.symbol {
            None => true,
            Some(want) => symbol == Some(&**want),
        };
        let type_ok = match self.signal_type {
            None => true,
            Some(want) => signal_type == Some(want),
        };
        symbol_ok && type_ok
    }
}

#[derive(Default)]
pub struct Registry {
    symbols: HashMap<Arc<str>, Vec<Arc<Subscriber>>>,
    users: HashMap<Arc<str>, Vec<Arc<Subscriber>>>,
    signals: Vec<(Arc<Subscriber>, SignalFilter)>,
}

impl Registry {
    /// Adds `sub` to `symbol`; false when it was already there.
    pub fn subscribe(&mut self, symbol: &Arc<str>, sub: Arc<Subscriber>) -> bool {
        let list = self.symbols.entry(symbol.clone()).or_default();
        if list.iter().any(|s| s.id == sub.id) {
            return false;
        }
        list.push(sub);
        true
    }

    pub fn unsubscribe(&mut self, symbol: &str, id: SubscriberId) {
        if let Some(list) = self.symbols.get_mut(symbol) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                self.symbols.remove(symbol);
            }
        }
    }

    pub fn symbol_subscribers(&self, symbol: &str) -> &[Arc<Subscriber>] {
        self.symbols.get(symbol).map_or(&[], Vec::as_slice)
    }

    pub fn attach_user(&mut self, user: &Arc<str>, sub: Arc<Subscriber>) {
        let list = self.users.entry(user.clone()).or_default();
        if !list.iter().any(|s| s.id == sub.id) {
            list.push(sub);
        }
    }

    pub fn detach_user(&mut self, user: &str, id: SubscriberId) {
        if let Some(list) = self.users.get_mut(user) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                self.users.remove(user);
            }
        }
    }

    pub fn user_connections(&self, user: &str) -> &[Arc<Subscriber>] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }

    /// Sets (or first adds) a signal subscriber's filter.
    pub fn set_signal_filter(&mut self, sub: Arc<Subscriber>, filter: SignalFilter) {
        match self.signals.iter_mut().find(|(s, _)| s.id == sub.id) {
            Some(entry) => entry.1 = filter,
            None => self.signals.push((sub, filter)),
        }
    }

    pub fn remove_signal_subscriber(&mut self, id: SubscriberId) {
        self.signals.retain(|(s, _)| s.id != id);
    }

    pub fn signal_subscribers(&self) -> &[(Arc<Subscriber>, SignalFilter)] {
        &self.signals
    }

    /// Subscriptions held, for metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.symbols.values().map(Vec::len).sum(),
            self.users.values().map(Vec::len).sum(),
            self.signals.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Arc<Subscriber> {
        Arc::new(Subscriber {
            id: SubscriberId::next(),
            outbox: Arc::new(Outbox::new(4)),
            access: SymbolAccess::All,
        })
    }

    #[test]
    fn subscribe_is_idempotent_and_unsubscribe_removes() {
        let mut r = Registry::default();
        let s = sub();
        let sym: Arc<str> = "A".into();
        assert!(r.subscribe(&sym, s.clone()));
        assert!(!r.subscribe(&sym, s.clone()));
        assert_eq!(r.symbol_subscribers("A").len(), 1);
        r.unsubscribe("A", s.id);
        assert!(r.symbol_subscribers("A").is_empty());
        assert_eq!(r.counts(), (0, 0, 0));
    }

    #[test]
    fn signal_filters_replace_and_match() {
        let mut r = Registry::default();
        let s = sub();
        r.set_signal_filter(s.clone(), SignalFilter::default());
        r.set_signal_filter(
            s.clone(),
            SignalFilter {
                symbol: Some("BTC-USD".into()),
                signal_type: Some(SignalType::Buy),
            },
        );
        assert_eq!(r.signal_subscribers().len(), 1);
        let f = &r.signal_subscribers()[0].1;
        assert!(f.matches(Some("BTC-USD"), Some(SignalType::Buy)));
        assert!(!f.matches(Some("BTC-USD"), Some(SignalType::Sell)));
        assert!(!f.matches(Some("ETH-USD"), Some(SignalType::Buy)));
        assert!(SignalFilter::default().matches(None, None));
    }
}
