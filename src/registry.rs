//! Who receives what: the subscriber sets of one fanout shard (symbol →
//! subscribers, user → connections, signal subscribers with their filters).
//! Owned by the shard's worker alone, so plain maps and vectors serve with
//! no lock; a stream's subscribers are a `Vec` because fanout walks them
//! far more often than connections come and go.
//!
//! Each membership carries a floor: the highest `seq` of that stream the
//! subscriber already got by other means (a replay fetched from Redis that
//! ran ahead of this node's live stream). Live messages at or below it
//! are skipped for that subscriber, so nothing arrives twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::auth::SymbolAccess;
use crate::history::EntryMeta;
use crate::outbox::Outbox;
use crate::protocol::encode::Frame;
use crate::protocol::{Seq, SignalType};
use std::time::{Duration, Instant};

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

    /// Whether a signal with this `meta` goes to a subscriber with this
    /// filter and these symbol rights.
    pub fn admits(&self, meta: &EntryMeta, access: &SymbolAccess) -> bool {
        self.matches(meta.symbol.as_deref(), meta.signal_type)
            && meta.symbol.as_deref().is_none_or(|s| access.allows(s))
    }
}

/// One subscriber in one stream's set.
pub struct Member {
    pub sub: Arc<Subscriber>,
    /// Live messages with a `seq` at or below this were already sent.
    pub floor: Seq,
    /// `max_frequency` of a market-data subscription. Boxed: few ask for
    /// one, and inline it tripled every member's size (96 bytes against
    /// 24, in every symbol's list, for every subscriber).
    pub throttle: Option<Box<Throttle>>,
}

/// At most one update per `interval`, always the newest: an update that
/// comes too soon waits as `pending` (replacing any older one) until
/// `next_at`, when the worker's timer sends it.
#[derive(Debug)]
pub struct Throttle {
    pub interval: Duration,
    pub next_at: Instant,
    pub pending: Option<(Frame, Instant)>,
}

impl Throttle {
    /// At most one update per `interval` (validated by the command decoder,
    /// so at most a day), the first one at once.
    pub fn every(interval: Duration, now: Instant) -> Throttle {
        Throttle {
            interval,
            next_at: now,
            pending: None,
        }
    }

    /// Sent one at `now`: the next may go one interval later. Checked, so
    /// that no interval can overflow the clock (it then waits a day).
    pub fn sent(&mut self, now: Instant) {
        self.next_at = now
            .checked_add(self.interval)
            .or_else(|| now.checked_add(crate::protocol::command::MAX_THROTTLE_INTERVAL))
            .unwrap_or(now);
    }
}

impl Member {
    pub fn wants(&self, seq: Seq) -> bool {
        seq > self.floor
    }
}

/// A signal subscriber: its membership and its filter.
pub struct SignalMember {
    pub member: Member,
    pub filter: SignalFilter,
}

#[derive(Default)]
pub struct Registry {
    symbols: HashMap<Arc<str>, Vec<Member>>,
    users: HashMap<Arc<str>, Vec<Member>>,
    signals: Vec<SignalMember>,
}

fn add(list: &mut Vec<Member>, sub: Arc<Subscriber>, floor: Seq, throttle: Option<Box<Throttle>>) -> bool {
    if list.iter().any(|m| m.sub.id == sub.id) {
        return false;
    }
    if list.capacity() == 0 {
        // Room for one, not Vec's first four: a user's list (one per
        // connected user) usually holds one connection.
        list.reserve_exact(1);
    }
    list.push(Member { sub, floor, throttle });
    true
}

fn remove(map: &mut HashMap<Arc<str>, Vec<Member>>, key: &str, id: SubscriberId) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|m| m.sub.id != id);
        if list.is_empty() {
            map.remove(key);
            shrink(map);
        }
    }
}

/// Gives memory back after a map shrank to a small part of what it holds
/// room for (a flood of subscriptions came and went). For every map a
/// shard's worker keeps per stream or user.
pub fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

impl Registry {
    /// Whether `id` is subscribed to `symbol`.
    pub fn is_subscribed(&self, symbol: &str, id: SubscriberId) -> bool {
        self.symbols
            .get(symbol)
            .is_some_and(|l| l.iter().any(|m| m.sub.id == id))
    }

    /// Adds `sub` to `symbol`; false when it was already there.
    pub fn subscribe(
        &mut self,
        symbol: &Arc<str>,
        sub: Arc<Subscriber>,
        floor: Seq,
        throttle: Option<Box<Throttle>>,
    ) -> bool {
        add(
            self.symbols.entry(symbol.clone()).or_default(),
            sub,
            floor,
            throttle,
        )
    }

    /// A subscriber's membership of a symbol, to change its throttle.
    pub fn member_mut(&mut self, symbol: &str, id: SubscriberId) -> Option<&mut Member> {
        self.symbols.get_mut(symbol)?.iter_mut().find(|m| m.sub.id == id)
    }

    pub fn unsubscribe(&mut self, symbol: &str, id: SubscriberId) {
        remove(&mut self.symbols, symbol, id);
    }

    pub fn symbol_subscribers(&self, symbol: &str) -> &[Member] {
        self.symbols.get(symbol).map_or(&[], Vec::as_slice)
    }

    pub fn symbol_subscribers_mut(&mut self, symbol: &str) -> &mut [Member] {
        self.symbols.get_mut(symbol).map_or(&mut [], Vec::as_mut_slice)
    }

    /// The symbols some local subscriber holds.
    pub fn symbols(&self) -> impl Iterator<Item = &Arc<str>> {
        self.symbols.keys()
    }

    pub fn attach_user(&mut self, user: &Arc<str>, sub: Arc<Subscriber>, floor: Seq) {
        add(self.users.entry(user.clone()).or_default(), sub, floor, None);
    }

    pub fn detach_user(&mut self, user: &str, id: SubscriberId) {
        remove(&mut self.users, user, id);
    }

    pub fn user_connections(&self, user: &str) -> &[Member] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }

    /// The users with a local connection.
    pub fn users(&self) -> impl Iterator<Item = &Arc<str>> {
        self.users.keys()
    }

    /// Sets (or first adds) a signal subscriber's filter.
    pub fn set_signal_filter(&mut self, sub: Arc<Subscriber>, filter: SignalFilter, floor: Seq) {
        match self.signals.iter_mut().find(|m| m.member.sub.id == sub.id) {
            Some(entry) => {
                entry.filter = filter;
                entry.member.floor = entry.member.floor.max(floor);
            }
            None => self.signals.push(SignalMember {
                member: Member {
                    sub,
                    floor,
                    throttle: None,
                },
                filter,
            }),
        }
    }

    pub fn remove_signal_subscriber(&mut self, id: SubscriberId) {
        self.signals.retain(|m| m.member.sub.id != id);
    }

    pub fn signal_subscribers(&self) -> &[SignalMember] {
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
            outbox: Arc::new(Outbox::new(4, crate::outbox::Overflow::Close)),
            access: SymbolAccess::All,
        })
    }

    #[test]
    fn subscribe_is_idempotent_and_unsubscribe_removes() {
        let mut r = Registry::default();
        let s = sub();
        let sym: Arc<str> = "A".into();
        assert!(r.subscribe(&sym, s.clone(), Seq(0), None));
        assert!(!r.subscribe(&sym, s.clone(), Seq(0), None));
        assert!(r.is_subscribed("A", s.id));
        assert_eq!(r.symbol_subscribers("A").len(), 1);
        r.unsubscribe("A", s.id);
        assert!(r.symbol_subscribers("A").is_empty());
        assert_eq!(r.counts(), (0, 0, 0));
    }

    #[test]
    fn signal_filters_replace_and_match() {
        let mut r = Registry::default();
        let s = sub();
        r.set_signal_filter(s.clone(), SignalFilter::default(), Seq(0));
        r.set_signal_filter(
            s.clone(),
            SignalFilter {
                symbol: Some("BTC-USD".into()),
                signal_type: Some(SignalType::Buy),
            },
            Seq(7),
        );
        assert_eq!(r.signal_subscribers().len(), 1);
        assert!(!r.signal_subscribers()[0].member.wants(Seq(7)));
        assert!(r.signal_subscribers()[0].member.wants(Seq(8)));
        let f = &r.signal_subscribers()[0].filter;
        assert!(f.matches(Some("BTC-USD"), Some(SignalType::Buy)));
        assert!(!f.matches(Some("BTC-USD"), Some(SignalType::Sell)));
        assert!(!f.matches(Some("ETH-USD"), Some(SignalType::Buy)));
        assert!(SignalFilter::default().matches(None, None));
    }
}
