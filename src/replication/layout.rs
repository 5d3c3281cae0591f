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
    let mut next = || parts.next().unwrap_or("");
    let (symbol, signal_type, key) = (next(), next(), next());
    meta_of(symbol, signal_type, key)
}

/// One update as Redis sequenced it.
#[derive(Debug, PartialEq)]
pub struct Sequenced<'a> {
    pub kind: UpdateKind,
    pub stream: StreamKey,
    pub seq: Seq,
    pub micros: u64,
    pub meta: EntryMeta,
    pub frame: &'a str,
}

/// What nodes say to each other on a group channel.
///
/// Two versions of the update envelope are read: `v1`, one update per
/// message (what nodes of 0.1 publish), and `v2`, every update of one
/// publishing-script call in one message, which is what `publish.lua`
/// sends now:
///
/// ```text
/// v2\n<count>\n then <count> times:
/// <kind>\n<stream id>\n<seq>\n<µs>\n<symbol>\n<signal type>\n<key>\n<frame bytes>\n<frame>
/// ```
///
/// The frame is length-prefixed, so it is taken as it is, whatever it holds.
#[derive(Debug, PartialEq)]
pub enum Envelope<'a> {
    /// Sequenced updates of one group, in the order Redis gave them.
    Updates(Vec<Sequenced<'a>>),
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

/// Updates in a `v2` envelope at most; more is taken as malformed.
pub const MAX_ENVELOPE_UPDATES: usize = 1 << 16;

/// Parses an envelope; `None` for anything malformed (never panics). A
/// `v2` envelope with one malformed update is refused whole: past it, the
/// boundaries of the others cannot be trusted.
pub fn decode_envelope(payload: &str) -> Option<Envelope<'_>> {
    if let Some(rest) = payload.strip_prefix("v2\n") {
        return decode_updates(rest).map(Envelope::Updates);
    }
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
    Some(Envelope::Updates(vec![Sequenced {
        kind,
        stream: parse_stream_id(sid)?,
        seq: Seq(seq),
        micros,
        meta: meta_of(symbol, signal_type, key),
        frame,
    }]))
}

fn decode_updates(text: &str) -> Option<Vec<Sequenced<'_>>> {
    let (count, mut rest) = text.split_once('\n')?;
    let count: usize = count.parse().ok()?;
    if count > MAX_ENVELOPE_UPDATES {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut line = || {
            let (l, r) = rest.split_once('\n')?;
            rest = r;
            Some(l)
        };
        let kind = kind_of_code(line()?)?;
        let stream = parse_stream_id(line()?)?;
        let seq: u64 = line()?.parse().ok()?;
        let micros: u64 = line()?.parse().ok()?;
        let (symbol, signal_type, key) = (line()?, line()?, line()?);
        let len: usize = line()?.parse().ok()?;
        let frame = rest.get(..len)?;
        rest = &rest[len..];
        out.push(Sequenced {
            kind,
            stream,
            seq: Seq(seq),
            micros,
            meta: meta_of(symbol, signal_type, key),
            frame,
        });
    }
    rest.is_empty().then_some(out)
}

fn meta_of(symbol: &str, signal_type: &str, key: &str) -> EntryMeta {
    let name = |s: &str| (!s.is_empty()).then(|| Arc::from(s));
    EntryMeta {
        symbol: name(symbol),
        signal_type: SignalType::from_wire(signal_type),
        notification_key: name(key),
    }
}

/// The `v2` envelope of `updates`, as `publish.lua` writes it; for tests
/// and benches (in production Redis writes envelopes).
pub fn encode_updates(updates: &[Sequenced<'_>]) -> String {
    use std::fmt::Write;
    let mut out = format!("v2\n{}\n", updates.len());
    for u in updates {
        let _ = write!(
            out,
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            kind_code(u.kind),
            stream_id(&u.stream),
            u.seq.0,
            u.micros,
            u.meta.symbol.as_deref().unwrap_or(""),
            u.meta.signal_type.map_or("", |t| t.wire_name()),
            u.meta.notification_key.as_deref().unwrap_or(""),
            u.frame.len(),
            u.frame
        );
    }
    out
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
        let Some(Envelope::Updates(updates)) = decode_envelope(payload) else {
            panic!()
        };
        let [Sequenced {
            kind,
            stream,
            seq,
            meta,
            frame,
            micros,
        }] = &updates[..]
        else {
            panic!()
        };
        let (kind, stream, seq, micros) = (*kind, stream.clone(), *seq, *micros);
        assert_eq!(
            (kind, stream, seq, micros),
            (UpdateKind::SignalUpdate, StreamKey::Signals, Seq(12), 1700)
        );
        assert_eq!(meta.symbol.as_deref(), Some("BTC-USD"));
        assert_eq!(meta.signal_type, Some(SignalType::Buy));
        assert_eq!(*frame, "{\"type\":\"signal_update\",\"seq\":12}");
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

    fn sample() -> Vec<Sequenced<'static>> {
        vec![
            Sequenced {
                kind: UpdateKind::MarketUpdate,
                stream: StreamKey::Symbol("BTC-USD".into()),
                seq: Seq(7),
                micros: 1_700,
                meta: meta_of("BTC-USD", "", ""),
                frame: "{\"type\":\"market_update\",\"note\":\"two\\nlines é\",\"seq\":7}",
            },
            Sequenced {
                kind: UpdateKind::NewNotification,
                stream: StreamKey::User("a:b".into()),
                seq: Seq(3),
                micros: 1_701,
                meta: meta_of("", "", "n-1"),
                frame: "{\"type\":\"new_notification\",\"seq\":3}",
            },
            Sequenced {
                kind: UpdateKind::NewSignal,
                stream: StreamKey::Signals,
                seq: Seq(12),
                micros: 1_702,
                meta: meta_of("ETH-USD", "SELL", "sig-9"),
                frame: "{}",
            },
        ]
    }

    #[test]
    fn batch_envelopes_round_trip_in_order() {
        let updates = sample();
        let text = encode_updates(&updates);
        assert_eq!(decode_envelope(&text), Some(Envelope::Updates(updates)));
        assert_eq!(decode_envelope("v2\n0\n"), Some(Envelope::Updates(vec![])));
    }

    #[test]
    fn a_damaged_batch_envelope_is_refused_whole() {
        let text = encode_updates(&sample());
        // Cut anywhere, or one byte more: never a partial batch, never a panic.
        for end in 0..text.len() {
            if let Some(cut) = text.get(..end) {
                assert_eq!(decode_envelope(cut), None, "cut at {end}");
            }
        }
        assert_eq!(decode_envelope(&format!("{text}x")), None);
        assert_eq!(decode_envelope(&text.replacen("\n3\n", "\n4\n", 1)), None);
        assert_eq!(decode_envelope("v2\n99999999999\n"), None);
        // A length that ends inside a multi-byte character.
        let first = &sample()[..1];
        let inside = first[0].frame.find('é').unwrap() + 1;
        let bad =
            encode_updates(first).replace(&format!("\n{}\n", first[0].frame.len()), &format!("\n{inside}\n"));
        assert_eq!(decode_envelope(&bad), None);
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
