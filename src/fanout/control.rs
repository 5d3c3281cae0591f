//! What a shard's worker does between updates: subscriptions and filters
//! (with the replay of what a resuming client missed), users attaching and
//! leaving, `mark_read`, and the questions the HTTP endpoints ask.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::history::History;
use crate::protocol::encode::{self, Frame};
use crate::protocol::{ErrorCode, ProtocolError, Seq, StreamKey};
use crate::registry::{shrink, Subscriber, Throttle};

use super::replay::replay;
use super::worker::*;
use super::*;

impl Worker {
    pub(super) fn control(&mut self, c: Control) {
        match c {
            Control::Subscribe {
                sub,
                symbol,
                since,
                fetched,
                min_interval,
            } => {
                let throttle = min_interval.map(|i| Box::new(Throttle::every(i, Instant::now())));
                if let Some(member) = self.registry.member_mut(&symbol, sub.id) {
                    // Already subscribed: only a new max_frequency changes anything.
                    if throttle.is_some() {
                        member.throttle = throttle;
                    }
                    return;
                }
                let key = StreamKey::Symbol(symbol.clone());
                let stream = self.stream(&key);
                let conflation_key = Some(stream.conflation_key);
                let floor = match since {
                    Some(since) => replay(
                        &sub,
                        &key,
                        stream,
                        since,
                        fetched.as_ref(),
                        conflation_key,
                        |_| true,
                    ),
                    None => {
                        let local = stream.latest.as_ref().map(|f| (stream.sequencer.head(), f));
                        let remote = fetched
                            .as_ref()
                            .and_then(|f| f.entries.last().map(|e| (e.seq, &e.frame)));
                        let newest = match (local, remote) {
                            (Some(l), Some(r)) => Some(if r.0 > l.0 { r } else { l }),
                            (l, r) => l.or(r),
                        };
                        match newest {
                            Some((seq, frame)) => {
                                sub.outbox.push_keyed(frame.clone(), None, conflation_key);
                                seq
                            }
                            None => stream.sequencer.head(),
                        }
                    }
                };
                self.registry.subscribe(&symbol, sub, floor, throttle);
            }
            Control::Unsubscribe { id, symbol } => {
                self.registry.unsubscribe(&symbol, id);
                if self.registry.symbol_subscribers(&symbol).is_empty() {
                    self.forget_if_unused(&StreamKey::Symbol(symbol));
                }
            }
            Control::Filter {
                sub,
                filter,
                since,
                answer,
                fetched,
            } => {
                if let Some(answer) = answer {
                    push_now(&sub, answer);
                }
                let key = StreamKey::Signals;
                let stream = self.stream(&key);
                let floor = match since {
                    Some(since) => {
                        let access = sub.access.clone();
                        replay(&sub, &key, stream, since, fetched.as_ref(), None, |m| {
                            filter.admits(m, &access)
                        })
                    }
                    None => stream.sequencer.head(),
                };
                self.registry.set_signal_filter(sub, filter, floor);
            }
            Control::RemoveSignals { id } => self.registry.remove_signal_subscriber(id),
            Control::AttachUser { sub, user, fetched } => {
                let mut floor = Seq(0);
                if let Some(f) = fetched {
                    let unread = self.unread.entry(user.clone()).or_default();
                    unread.adopt(&f, self.config.max_unread_per_user);
                    floor = f.head;
                    self.forget_unread_if_empty(&user);
                }
                // A user with nothing unread has no entry: most connected
                // users, each of whom would otherwise hold an empty one.
                let unread = self.unread.get(&user).map(|u| u.by_seq.values().map(|(_, f)| f));
                push_now(&sub, encode::unread_notifications(unread.into_iter().flatten()));
                let head = self
                    .streams
                    .get(&StreamKey::User(user.clone()))
                    .map(|s| s.sequencer.head());
                self.registry
                    .attach_user(&user, sub, floor.max(head.unwrap_or_default()));
            }
            Control::ReadElsewhere {
                user,
                key,
                frame,
                skip,
            } => {
                if let Some(u) = self.unread.get_mut(&user) {
                    u.remove(&key);
                    self.forget_unread_if_empty(&user);
                }
                for m in self.registry.user_connections(&user) {
                    if Some(m.sub.id) != skip {
                        push_now(&m.sub, frame.clone());
                    }
                }
            }
            Control::Heads { reply } => {
                while let Some(inbound) = self.ring.pop_update() {
                    self.publish(inbound);
                }
                self.end_batch();
                let mut heads: HashMap<StreamKey, Seq> = self
                    .streams
                    .iter()
                    .map(|(k, s)| (k.clone(), s.sequencer.head()))
                    .collect();
                let mut hold = |key: StreamKey, held: Option<Seq>| {
                    let head = heads.entry(key).or_default();
                    *head = (*head).max(held.unwrap_or_default());
                };
                for symbol in self.registry.symbols() {
                    let held = self
                        .registry
                        .symbol_subscribers(symbol)
                        .iter()
                        .map(|m| m.floor)
                        .max();
                    hold(StreamKey::Symbol(symbol.clone()), held);
                }
                for user in self.registry.users() {
                    let held = self.registry.user_connections(user).iter().map(|m| m.floor).max();
                    hold(StreamKey::User(user.clone()), held);
                }
                let signals = self.registry.signal_subscribers();
                if !signals.is_empty() {
                    hold(StreamKey::Signals, signals.iter().map(|m| m.member.floor).max());
                }
                let _ = reply.send(heads.into_iter().collect());
            }
            Control::Relinked { reseeded, reply } => {
                for (key, head) in reseeded {
                    let local = self.streams.get(&key).map_or(Seq(0), |s| s.sequencer.head());
                    let reset = encode::reset(key.wire_name(), Seq(head.max(local).0 + 1));
                    match &key {
                        StreamKey::Symbol(symbol) => {
                            for m in self.registry.symbol_subscribers(symbol) {
                                push_now(&m.sub, reset.clone());
                            }
                        }
                        StreamKey::Signals => {
                            for m in self.registry.signal_subscribers() {
                                push_now(&m.member.sub, reset.clone());
                            }
                        }
                        StreamKey::User(user) => {
                            self.unread.remove(user);
                            let unread = encode::unread_notifications(std::iter::empty());
                            for m in self.registry.user_connections(user) {
                                push_now(&m.sub, reset.clone());
                                push_now(&m.sub, unread.clone());
                            }
                        }
                    }
                }
                let mut live: HashMap<StreamKey, Seq> = HashMap::new();
                live.extend(
                    self.registry
                        .symbols()
                        .map(|s| (StreamKey::Symbol(s.clone()), Seq(0))),
                );
                live.extend(
                    self.registry
                        .users()
                        .map(|u| (StreamKey::User(u.clone()), Seq(0))),
                );
                if !self.registry.signal_subscribers().is_empty() {
                    live.insert(StreamKey::Signals, Seq(0));
                }
                let (messages, max_age) = (self.config.history_messages, self.config.history_max_age);
                for (key, stream) in self.streams.iter_mut() {
                    match live.get_mut(key) {
                        Some(head) => *head = stream.sequencer.head(),
                        None => stream.history = History::new(messages, max_age),
                    }
                }
                let _ = reply.send(live.into_iter().collect());
            }
            Control::DetachUser { id, user } => {
                self.registry.detach_user(&user, id);
                if self.registry.user_connections(&user).is_empty() {
                    self.forget_unread_if_empty(&user);
                    self.forget_if_unused(&StreamKey::User(user));
                }
            }
            Control::MarkRead {
                user,
                key,
                notification_id,
                from,
                echo_id,
            } => self.mark_read(user, key, notification_id, from, echo_id),
            Control::QuerySignals {
                filter,
                access,
                since,
                reply,
            } => {
                let stream = self.stream(&StreamKey::Signals);
                stream.history.expire(Instant::now());
                let frames = stream
                    .history
                    .entries()
                    .iter()
                    .filter(|e| e.seq > since && filter.admits(&e.meta, &access));
                let _ = reply.send(encode::json_array(frames.map(|e| &e.frame)));
            }
            Control::QueryNotifications { user, since, reply } => {
                let unread = self.unread.get(&user);
                // Asking about a user creates nothing: nobody can grow the
                // node's state by asking about users who have none.
                let Some(stream) = self.streams.get_mut(&StreamKey::User(user.clone())) else {
                    let _ = reply.send(encode::json_array(std::iter::empty::<&Frame>()));
                    return;
                };
                stream.history.expire(Instant::now());
                let frames: Vec<Frame> = stream
                    .history
                    .entries()
                    .iter()
                    .filter(|e| e.seq > since)
                    .map(|e| {
                        let read = match (&e.meta.notification_key, unread) {
                            (Some(k), Some(u)) => !u.by_key.contains_key(k),
                            _ => true,
                        };
                        encode::with_flag(&e.frame, "read", read)
                    })
                    .collect();
                let _ = reply.send(encode::json_array(frames.iter()));
            }
            Control::Fault => panic!("fault injected"),
        }
    }

    /// Drops a user's unread state once nothing is unread: no entry and
    /// an empty one mean the same everywhere it is read.
    fn forget_unread_if_empty(&mut self, user: &str) {
        if self.unread.get(user).is_some_and(|u| u.by_seq.is_empty()) {
            self.unread.remove(user);
            shrink(&mut self.unread);
        }
    }

    fn mark_read(
        &mut self,
        user: Arc<str>,
        key: Arc<str>,
        notification_id: Value,
        from: Arc<Subscriber>,
        echo_id: Option<Value>,
    ) {
        let was_unread = self.unread.get_mut(&user).and_then(|u| u.remove(&key));
        self.forget_unread_if_empty(&user);
        let known = was_unread.is_some()
            || self.streams.get(&StreamKey::User(user.clone())).is_some_and(|s| {
                s.history
                    .entries()
                    .iter()
                    .any(|e| e.meta.notification_key.as_deref() == Some(&*key))
            });
        if !known {
            let err = ProtocolError::new(
                ErrorCode::InvalidField,
                format!(
                    "no notification `{}` for this user",
                    key.chars().take(64).collect::<String>()
                ),
            );
            push_now(&from, encode::error(&err, echo_id.as_ref()));
            return;
        }
        let plain = encode::notification_read(&notification_id, None);
        let mut sent_to_sender = false;
        for m in self.registry.user_connections(&user) {
            if m.sub.id == from.id {
                sent_to_sender = true;
                push_now(
                    &m.sub,
                    encode::notification_read(&notification_id, echo_id.as_ref()),
                );
            } else {
                push_now(&m.sub, plain.clone());
            }
        }
        if !sent_to_sender {
            push_now(
                &from,
                encode::notification_read(&notification_id, echo_id.as_ref()),
            );
        }
    }
}
