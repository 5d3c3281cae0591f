//! Reads of what Redis keeps (a stream's history window, the latest
//! price, a user's unread notifications) for resuming subscribers and the
//! polling endpoints, and the parsing of Redis's replies into them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value as RValue;

use super::layout::GROUPS;
use super::*;
use crate::fanout::{Fetched, FetchedEntry};
use crate::history::EntryMeta;
use crate::protocol::encode::Frame;
use crate::protocol::{Seq, StreamKey, UpdateKind};

impl Replication {
    /// The kept messages of a stream after `after`, and its head.
    pub async fn fetch_history(&self, key: &StreamKey, after: Seq) -> Result<Fetched, ReplicationError> {
        self.wait_up(Duration::from_secs(3)).await;
        self.read_history(key, after).await
    }

    pub(super) async fn read_history(
        &self,
        key: &StreamKey,
        after: Seq,
    ) -> Result<Fetched, ReplicationError> {
        let sid = layout::stream_id(key);
        let p = layout::prefix(layout::group_of(&sid));
        let mut conn = self.conn()?;
        let mut conn2 = conn.clone();
        let head = redis::cmd("GET").arg(format!("{p}seq:{sid}")).to_owned();
        let range = redis::cmd("XRANGE")
            .arg(format!("{p}h:{sid}"))
            .arg(format!("{}-0", after.0 + 1))
            .arg("+")
            .arg("COUNT")
            .arg(self.history_messages)
            .to_owned();
        let fetch = async {
            let (head, range) = tokio::join!(conn.run::<Option<u64>>(&head), conn2.run::<RValue>(&range));
            Ok::<_, ReplicationError>((head?, range?))
        };
        let (head, range) = within(FETCH_TIMEOUT, fetch).await?;
        Ok(Fetched {
            head: Seq(head.unwrap_or(0)),
            entries: parse_xrange(&range),
        })
    }

    /// The latest `market_update` of a symbol, as `Fetched` with one entry.
    pub async fn fetch_latest(&self, symbol: &str) -> Result<Fetched, ReplicationError> {
        let sid = layout::stream_id(&StreamKey::Symbol(Arc::from(symbol)));
        let p = layout::prefix(layout::group_of(&sid));
        let mut conn = self.conn()?;
        let cmd = redis::cmd("HGET")
            .arg(format!("{p}latest"))
            .arg(symbol)
            .to_owned();
        let frame: Option<String> = within(FETCH_TIMEOUT, conn.run(&cmd)).await?;
        let entries: Vec<FetchedEntry> = frame
            .and_then(|f| {
                let seq = frame_seq(&f)?;
                Some(FetchedEntry {
                    seq,
                    kind: UpdateKind::MarketUpdate,
                    frame: Frame::from(f),
                    meta: EntryMeta {
                        symbol: Some(Arc::from(symbol)),
                        ..Default::default()
                    },
                })
            })
            .into_iter()
            .collect();
        Ok(Fetched {
            head: entries.last().map_or(Seq(0), |e| e.seq),
            entries,
        })
    }

    /// The latest `market_update` of every symbol.
    pub async fn fetch_all_latest(&self) -> Result<Vec<(String, Frame)>, ReplicationError> {
        let conn = self.conn()?;
        let fetches = (0..GROUPS).map(|g| {
            let mut conn = conn.clone();
            async move {
                let cmd = redis::cmd("HGETALL")
                    .arg(format!("{}latest", layout::prefix(g)))
                    .to_owned();
                conn.run::<RValue>(&cmd).await
            }
        });
        let replies = tokio::time::timeout(FETCH_TIMEOUT, futures_util::future::join_all(fetches))
            .await
            .map_err(|_| ReplicationError::Timeout(FETCH_TIMEOUT))?;
        let mut all = Vec::new();
        for r in replies {
            all.extend(pairs(&r?).into_iter().map(|(k, v)| (k, Frame::from(v))));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// A user's unread notifications (authoritative), oldest first.
    pub async fn fetch_unread(&self, user: &str) -> Result<Fetched, ReplicationError> {
        let sid = layout::stream_id(&StreamKey::User(Arc::from(user)));
        let p = layout::prefix(layout::group_of(&sid));
        let conn = self.conn()?;
        let (mut c1, mut c2, mut c3) = (conn.clone(), conn.clone(), conn);
        let order = redis::cmd("ZRANGE")
            .arg(format!("{p}unread:{user}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .to_owned();
        let frames = redis::cmd("HGETALL").arg(format!("{p}nf:{user}")).to_owned();
        let head = redis::cmd("GET").arg(format!("{p}seq:{sid}")).to_owned();
        let fetch = async {
            let (o, f, h) = tokio::join!(
                c1.run::<RValue>(&order),
                c2.run::<RValue>(&frames),
                c3.run::<Option<u64>>(&head)
            );
            Ok::<_, ReplicationError>((o?, f?, h?))
        };
        let (order, frames, head) = within(FETCH_TIMEOUT, fetch).await?;
        let mut frames: HashMap<String, String> = pairs(&frames).into_iter().collect();
        let mut entries = Vec::new();
        for (key, score) in pairs(&order) {
            let (Ok(seq), Some(frame)) = (score.parse::<f64>(), frames.remove(&key)) else {
                continue;
            };
            entries.push(FetchedEntry {
                seq: Seq(seq as u64),
                kind: UpdateKind::NewNotification,
                frame: Frame::from(frame),
                meta: EntryMeta {
                    notification_key: Some(Arc::from(key)),
                    ..Default::default()
                },
            });
        }
        entries.sort_by_key(|e| e.seq);
        Ok(Fetched {
            head: Seq(head.unwrap_or(0)),
            entries,
        })
    }
}

/// The `seq` at the end of an encoded update (`...,"seq":N}`).
pub fn frame_seq(frame: &str) -> Option<Seq> {
    let tail = frame.strip_suffix('}')?;
    let at = tail.rfind("\"seq\":")?;
    tail[at + 6..].parse().ok().map(Seq)
}

pub(super) fn bytes_of(v: &RValue) -> Option<&[u8]> {
    match v {
        RValue::BulkString(b) => Some(b),
        RValue::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(super) fn string_of(v: &RValue) -> Option<String> {
    match v {
        RValue::BulkString(b) => String::from_utf8(b.clone()).ok(),
        RValue::SimpleString(s) => Some(s.clone()),
        RValue::Int(i) => Some(i.to_string()),
        RValue::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Field/value pairs of a hash, a WITHSCORES range, or a stream entry, in
/// the reply shapes of RESP2 (flat arrays) and RESP3 (maps, pairs).
pub(super) fn pairs(v: &RValue) -> Vec<(String, String)> {
    match v {
        RValue::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((string_of(k)?, string_of(v)?)))
            .collect(),
        RValue::Array(items)
            if items
                .iter()
                .all(|i| matches!(i, RValue::Array(p) if p.len() == 2))
                && !items.is_empty() =>
        {
            items
                .iter()
                .filter_map(|i| match i {
                    RValue::Array(p) => Some((string_of(&p[0])?, string_of(&p[1])?)),
                    _ => None,
                })
                .collect()
        }
        RValue::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((string_of(c.first()?)?, string_of(c.get(1)?)?)))
            .collect(),
        _ => Vec::new(),
    }
}

pub(super) fn parse_xrange(v: &RValue) -> Vec<FetchedEntry> {
    let RValue::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let RValue::Array(parts) = e else { continue };
        let (Some(id), Some(fields)) = (parts.first().and_then(string_of), parts.get(1)) else {
            continue;
        };
        let Some(seq) = id.split('-').next().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let fields: HashMap<String, String> = pairs(fields).into_iter().collect();
        let (Some(frame), Some(kind)) = (
            fields.get("f"),
            fields.get("k").and_then(|k| layout::kind_of_code(k)),
        ) else {
            continue;
        };
        out.push(FetchedEntry {
            seq: Seq(seq),
            kind,
            frame: Frame::from(frame.clone()),
            meta: layout::decode_meta(fields.get("m").map_or("", String::as_str)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn the_seq_is_read_back_from_a_frame() {
        assert_eq!(
            frame_seq(r#"{"type":"market_update","seq":1042}"#),
            Some(Seq(1042))
        );
        assert_eq!(frame_seq("{}"), None);
    }

    #[test]
    pub(super) fn reply_pairs_in_both_protocols() {
        let flat = RValue::Array(vec![
            RValue::BulkString(b"a".to_vec()),
            RValue::BulkString(b"1".to_vec()),
            RValue::BulkString(b"b".to_vec()),
            RValue::BulkString(b"2".to_vec()),
        ]);
        assert_eq!(
            pairs(&flat),
            [
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string())
            ]
        );
        let map = RValue::Map(vec![(RValue::BulkString(b"a".to_vec()), RValue::Double(1.0))]);
        assert_eq!(pairs(&map), [("a".to_string(), "1".to_string())]);
    }
}
