//! Where things live in Redis, and the envelope nodes exchange. Pure
//! functions, so the layout is tested without a server.
//!
//! Streams fall into [`GROUPS`] groups by a hash of their id. Every key
//! and the channel of a group share its hash tag (`{g7}`), so one script
//! call touches one Redis Cluster slot, and a group's channel lives on the
//! same shard as its keys (sharded pub/sub).
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `tw:{gN}:seq:<stream>` | string | the stream's last `seq` |
//! | `tw:{gN}:h:<stream>` | stream | the history window; entry id `<seq>-1`, fields `f` (frame), `m` (meta), `k` (kind) |
//! | `tw:{gN}:latest` | hash | symbol → latest `market_update` frame |
//! | `tw:{gN}:signal` | hash | signal id → its symbol (JSON), type, symbol |
//! | `tw:{gN}:unread:<user>` | sorted set | unread notification keys by `seq` |
//! | `tw:{gN}:nf:<user>` | hash | unread notification key → frame |
//! | `tw:{gN}:known:<user>` | sorted set | notification keys of the window, read or not |
//! | `tw:{gN}:claim:<id>` | string, 20 s | an ingest message some node took |
//! | `tw:{gN}:ev` | channel | the group's envelopes |
//!
//! Stream ids: `s:<symbol>`, `sig` (all signals), `u:<user>`.

use std::sync::Arc;

use crate::history::EntryMeta;
use crate::protocol::{Seq, SignalType, StreamKey, UpdateKind};

/// Stream groups; a node listens to the channels of the groups its subscribers need.
pub const GROUPS: u64 = 64;

/// FNV-1a, 64 bits: stable across processes, versions and platforms, as
/// every node must agree on it.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn stream_id(key: &StreamKey) -> String {
    match key {
        StreamKey::Symbol(s) => format!("s:{s}"),
        StreamKey::Signals => "sig".to_string(),
        StreamKey::User(u) => format!("u:{u}"),
    }
}

pub fn parse_stream_id(id: &str) -> Option<StreamKey> {
    if id == "sig" {
        return Some(StreamKey::Signals);
    }
    let (kind, name) = id.split_once(':')?;
    match kind {
        "s" => Some(StreamKey::Symbol(Arc::from(name))),
        "u" => Some(StreamKey::User(Arc::from(name))),
        _ => None,
    }
}

pub fn group_of(stream_id: &str) -> u64 {
    fnv1a(stream_id.as_bytes()) % GROUPS
}

/// `tw:{gN}:`, the prefix of every key of group `g`.
pub fn prefix(group: u64) -> String {
    format!("tw:{{g{group}}}:")
}

pub fn channel(group: u64) -> String {
    format!("{}ev", prefix(group))
}

pub fn group_of_channel(channel: &[u8]) -> Option<u64> {
    let rest = channel.strip_prefix(b"tw:{g")?;
    let end = rest.iter().position(|b| *b == b'}')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

pub fn kind_of_code(code: &str) -> Option<UpdateKind> {
    Some(match code {
        "m" => UpdateKind::MarketUpdate,
        "s" => UpdateKind::NewSignal,
        "u" => UpdateKind::SignalUpdate,
        "n" => UpdateKind::NewNotification,
        _ => return None,
    })
}

pub fn kind_code(kind: UpdateKind) -> &'static str {
    match kind {
        UpdateKind::MarketUpdate => "m",
        UpdateKind::NewSignal => "s",
        UpdateKind::SignalUpdate => "u",
        UpdateKind::NewNotification => "n",
    }
}

/// Meta as stored beside a history entry: symbol, signal type, key.
pub fn encode_meta(meta: &EntryMeta) -> String {
    format!(
        "{}\n{}\n{}",
        meta.symbol.as_deref().unwrap_or(""),
        meta.signal_type.map_or("", |t| t.wire_name()),
        meta.notification_key.as_deref().unwrap_or("")
    )
}

pub fn decode_meta(s: &str) -> EntryMeta {
    let mut parts = s.splitn(3, '\n');
    let name = |p: Option<&str>| p.filter(|s| !s.is_empty()).map(Arc::from);
    let symbol = name(parts.next());
    let signal_type = parts.next().and_then(SignalType::from_wire);
    let notification_key = name(parts.next());
    EntryMeta {
        symbol,
        signal_type,
        notification_key,
    }
}

/// What nodes say to each other on a group channel.
#[derive(Debug, PartialEq)]
pub enum Envelope<'a> {
    /// A sequenced update.
    Update {
        kind: UpdateKind,
        stream: StreamKey,
        seq: Seq,
        micros: u64,
        meta: EntryMeta,
        frame: &'a str,
    },
    /// A notification marked read; `origin` (`node/connection`) was answered already.
    Read {
        user: Arc<str>,
        key: Arc<str>,
        origin: &'a str,
        frame: &'a str,
    },
    /// A node's heartbeat through this channel.
    Heartbeat { node: &'a str, micros: u64 },
}

pub fn heartbeat(node: &str, micros: u64) -> String {
    format!("v1\nh\n{node}\n0\n{micros}\n\n\n\n")
}

/// Parses an envelope; `None` for anything malformed (never panics).
pub fn decode_envelope(payload: &str) -> Option<Envelope<'_>> {
    let mut parts = payload.splitn(9, '\n');
    if parts.next()? != "v1" {
        return None;
    }
    let kind = parts.next()?;
    let sid = parts.next()?;
    let seq: u64 = parts.next()?.parse().ok()?;
    let micros: u64 = parts.next()?.parse().ok()?;
    let symbol = parts.next()?;
    let signal_type = parts.next()?;
    let key = parts.next()?;
    let frame = parts.next()?;
    let kind = match kind {
        "h" => return Some(Envelope::Heartbeat { node: sid, micros }),
        "r" => {
            let Some(StreamKey::User(user)) = parse_stream_id(sid) else {
                return None;
            };
            return Some(Envelope::Read {
                user,
                key: Arc::from(key),
                origin: symbol,
                frame,
            });
        }
        other => kind_of_code(other)?,
    };
    let meta = decode_meta(&format!("{symbol}\n{signal_type}\n{key}"));
    Some(Envelope::Update {
        kind,
        stream: parse_stream_id(sid)?,
        seq: Seq(seq),
        micros,
        meta,
        frame,
    })
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_stable_and_spread() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let groups: std::collections::HashSet<u64> = (0..1000)
            .map(|i| group_of(&stream_id(&StreamKey::Symbol(format!("SYM{i}").into()))))
            .collect();
        assert_eq!(groups.len() as u64, GROUPS);
    }

    #[test]
    fn keys_share_the_hash_tag_of_their_channel() {
        assert_eq!(prefix(7), "tw:{g7}:");
        assert_eq!(channel(7), "tw:{g7}:ev");
        assert_eq!(group_of_channel(b"tw:{g7}:ev"), Some(7));
        assert_eq!(group_of_channel(b"rt:ingest"), None);
    }

    #[test]
    fn envelopes_round_trip() {
        let payload = "v1\nu\nsig\n12\n1700\nBTC-USD\nBUY\nsig-1\n{\"type\":\"signal_update\",\"seq\":12}";
        let Some(Envelope::Update {
            kind,
            stream,
            seq,
            meta,
            frame,
            micros,
        }) = decode_envelope(payload)
        else {
            panic!()
        };
        assert_eq!(
            (kind, stream, seq, micros),
            (UpdateKind::SignalUpdate, StreamKey::Signals, Seq(12), 1700)
        );
        assert_eq!(meta.symbol.as_deref(), Some("BTC-USD"));
        assert_eq!(meta.signal_type, Some(SignalType::Buy));
        assert_eq!(frame, "{\"type\":\"signal_update\",\"seq\":12}");
        let hb = heartbeat("node-1", 5);
        assert_eq!(
            decode_envelope(&hb),
            Some(Envelope::Heartbeat {
                node: "node-1",
                micros: 5
            })
        );
        let r = "v1\nr\nu:alice\n0\n9\nn1/4\n\nnotif_1\n{\"type\":\"notification_read\"}";
        assert!(matches!(
            decode_envelope(r),
            Some(Envelope::Read { origin: "n1/4", .. })
        ));
        assert_eq!(decode_envelope("v2\nm"), None);
        assert_eq!(decode_envelope("v1\nm\ns:A\nnot-a-number\n0\n\n\n\n{}"), None);
    }

    #[test]
    fn stream_ids_round_trip() {
        for key in [
            StreamKey::Symbol("BTC-USD".into()),
            StreamKey::Signals,
            StreamKey::User("a:b".into()),
        ] {
            assert_eq!(parse_stream_id(&stream_id(&key)), Some(key));
        }
    }
}
