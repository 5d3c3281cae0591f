//! A user's unread notifications, kept by the worker of the user's shard.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::protocol::encode::Frame;
use crate::protocol::Seq;

use super::*;

/// A user's unread notifications, oldest first.
#[derive(Default)]
pub(super) struct Unread {
    pub(super) by_seq: BTreeMap<Seq, (Arc<str>, Frame)>,
    pub(super) by_key: HashMap<Arc<str>, Seq>,
}

impl Unread {
    pub(super) fn insert(&mut self, seq: Seq, key: Arc<str>, frame: Frame, max: usize) {
        if let Some(old) = self.by_key.insert(key.clone(), seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(seq, (key, frame));
        while self.by_seq.len() > max {
            if let Some((_, (k, _))) = self.by_seq.pop_first() {
                self.by_key.remove(&k);
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Frame> {
        let seq = self.by_key.remove(key)?;
        self.by_seq.remove(&seq).map(|(_, f)| f)
    }

    /// Takes Redis's list as the truth up to its head, keeping what this
    /// node received after it.
    pub(super) fn adopt(&mut self, fetched: &Fetched, max: usize) {
        let newer: Vec<(Seq, (Arc<str>, Frame))> = self
            .by_seq
            .iter()
            .filter(|(s, _)| **s > fetched.head)
            .map(|(s, v)| (*s, v.clone()))
            .collect();
        self.by_seq.clear();
        self.by_key.clear();
        for e in &fetched.entries {
            if let Some(k) = &e.meta.notification_key {
                self.insert(e.seq, k.clone(), e.frame.clone(), max);
            }
        }
        for (seq, (k, f)) in newer {
            self.insert(seq, k, f, max);
        }
    }
}
