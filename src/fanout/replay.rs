//! What a subscriber that last saw `since` missed, merged from the node's
//! own history window and (cluster mode) what Redis keeps, each message
//! once, in `seq` order, with a `reset` first when neither reaches back.
//! This is the merge production runs; its tests drive it directly.

use std::time::Instant;

use crate::history::EntryMeta;
use crate::outbox::{ConflationKey, Push};
use crate::protocol::encode::{self};
use crate::protocol::{Seq, StreamKey};
use crate::registry::Subscriber;

use super::worker::*;
use super::*;

/// Sends what a client that last saw `since` missed: a `reset` first when
/// what is kept (here, and in Redis when `fetched`) does not reach back,
/// then the kept messages after `since` that `wanted` selects. Returns the
/// newest `seq` sent or known, the subscriber's floor for live messages.
pub(super) fn replay(
    sub: &Subscriber,
    key: &StreamKey,
    stream: &mut StreamState,
    since: Seq,
    fetched: Option<&Fetched>,
    conflation_key: Option<ConflationKey>,
    wanted: impl Fn(&EntryMeta) -> bool,
) -> Seq {
    stream.history.expire(Instant::now());
    let local = stream.history.entries();
    let remote: &[FetchedEntry] = fetched.map_or(&[], |f| &f.entries);
    let head = stream.sequencer.head().max(fetched.map_or(Seq(0), |f| f.head));
    let oldest = match (local.front().map(|e| e.seq), remote.first().map(|e| e.seq)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let reset = if since > head {
        Some(oldest.unwrap_or(Seq(head.0 + 1)))
    } else if since < head {
        match oldest {
            Some(o) if o.0 <= since.0 + 1 => None,
            Some(o) => Some(o),
            None => Some(Seq(head.0 + 1)),
        }
    } else {
        None
    };
    if let Some(oldest) = reset {
        push_now(sub, encode::reset(key.wire_name(), oldest));
    }
    // A client ahead of this node's stream gets everything kept.
    let since = if since > head { Seq(0) } else { since };
    // Merge the two ordered lists by seq, each message once.
    let mut l = local.iter().filter(|e| e.seq > since).peekable();
    let mut r = remote.iter().filter(|e| e.seq > since).peekable();
    loop {
        let next = match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) if a.seq == b.seq => {
                r.next();
                l.next().map(|e| (&e.frame, &e.meta))
            }
            (Some(a), Some(b)) if b.seq < a.seq => r.next().map(|e| (&e.frame, &e.meta)),
            (Some(_), _) => l.next().map(|e| (&e.frame, &e.meta)),
            (None, Some(_)) => r.next().map(|e| (&e.frame, &e.meta)),
        };
        let Some((frame, meta)) = next else { break };
        if wanted(meta)
            && matches!(
                sub.outbox.push_keyed(frame.clone(), None, conflation_key),
                Push::Overflowed | Push::Closed
            )
        {
            break;
        }
    }
    head
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::auth::SymbolAccess;
    use crate::outbox::{Outbox, Overflow};
    use crate::registry::SubscriberId;

    /// A stream of seqs 1..=10 of which the node keeps the last 4 (7..=10).
    fn stream() -> (StreamKey, StreamState) {
        let config = FanoutConfig {
            shards: 1,
            ring_capacity: 16,
            history_messages: 4,
            history_max_age: Duration::from_secs(60),
            max_unread_per_user: 16,
        };
        let key = StreamKey::Symbol("A".into());
        let mut streams = HashMap::new();
        let state = stream_state(&mut streams, &config, &key);
        let now = Instant::now();
        for _ in 1..=10 {
            let seq = state.sequencer.next_seq();
            let frame = Frame::from(format!(r#"{{"type":"market_update","seq":{}}}"#, seq.0));
            state.history.push(seq, frame, EntryMeta::default(), now);
        }
        let state = streams.remove(&key).unwrap();
        (key, state)
    }

    fn subscriber() -> Subscriber {
        Subscriber {
            id: SubscriberId::next(),
            outbox: Arc::new(Outbox::new(64, Overflow::Close)),
            access: SymbolAccess::All,
        }
    }

    /// What the subscriber got: ("reset", oldest) or ("update", seq).
    fn got(sub: &Subscriber) -> Vec<(String, u64)> {
        let mut batch = VecDeque::new();
        sub.outbox.take(&mut batch);
        batch
            .iter()
            .map(|o| {
                let v: Value = serde_json::from_str(o.text().unwrap()).unwrap();
                let kind = if v["type"] == "reset" { "reset" } else { "update" };
                (kind.to_string(), v["seq"].as_u64().unwrap())
            })
            .collect()
    }

    fn updates(seqs: std::ops::RangeInclusive<u64>) -> Vec<(String, u64)> {
        seqs.map(|s| ("update".to_string(), s)).collect()
    }

    fn fetched(seqs: std::ops::RangeInclusive<u64>, head: u64) -> Fetched {
        Fetched {
            head: Seq(head),
            entries: seqs
                .map(|s| FetchedEntry {
                    seq: Seq(s),
                    kind: crate::protocol::UpdateKind::MarketUpdate,
                    frame: Frame::from(format!(r#"{{"type":"market_update","seq":{s}}}"#)),
                    meta: EntryMeta::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn since_inside_the_window_gets_exactly_what_it_missed() {
        let (key, mut s) = stream();
        let sub = subscriber();
        assert_eq!(replay(&sub, &key, &mut s, Seq(8), None, None, |_| true), Seq(10));
        assert_eq!(got(&sub), updates(9..=10));
    }

    #[test]
    fn since_at_the_edges_of_the_window() {
        let (key, mut s) = stream();
        let sub = subscriber();
        // Just before the oldest kept: nothing is missing, no reset.
        replay(&sub, &key, &mut s, Seq(6), None, None, |_| true);
        assert_eq!(got(&sub), updates(7..=10));
        // At the head: nothing at all.
        replay(&sub, &key, &mut s, Seq(10), None, None, |_| true);
        assert!(got(&sub).is_empty());
    }

    #[test]
    fn since_past_the_window_resets_to_the_oldest_kept_then_sends_it_all() {
        let (key, mut s) = stream();
        let sub = subscriber();
        replay(&sub, &key, &mut s, Seq(5), None, None, |_| true);
        let mut want = vec![("reset".to_string(), 7)];
        want.extend(updates(7..=10));
        assert_eq!(got(&sub), want);
    }

    #[test]
    fn a_seq_from_the_future_resets_and_gets_everything_kept() {
        let (key, mut s) = stream();
        let sub = subscriber();
        replay(&sub, &key, &mut s, Seq(50), None, None, |_| true);
        let mut want = vec![("reset".to_string(), 7)];
        want.extend(updates(7..=10));
        assert_eq!(got(&sub), want);
    }

    #[test]
    fn what_redis_keeps_is_merged_with_the_window_each_message_once() {
        let (key, mut s) = stream();
        let sub = subscriber();
        // Redis reaches further back (3..) and further ahead (..12).
        let f = fetched(3..=12, 12);
        assert_eq!(
            replay(&sub, &key, &mut s, Seq(4), Some(&f), None, |_| true),
            Seq(12)
        );
        assert_eq!(got(&sub), updates(5..=12));
    }
}
