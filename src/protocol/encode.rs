//! What the server writes to a subscriber (PROTOCOL.md 1.3 to 1.5), as
//! ready-to-send UTF-8 JSON [`Frame`]s. An update is encoded exactly once,
//! whatever the number of its subscribers; answers to commands are small
//! and rare, so they are built from `serde_json` values.
//!
//! A [`Frame`] ([`super::frame`]) is built once from a `String`, then
//! cloned per subscriber as a reference count, never copied or
//! re-validated; its compressed form is made once too, when needed.

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::{now_rfc3339, ProtocolError, Seq};

pub use super::frame::Frame;

/// Encodes a sequenced update: the publisher's fields, then `seq`.
pub fn update(body: &Map<String, Value>, seq: Seq) -> Frame {
    // Serializing plain JSON values into a String cannot fail.
    let mut out = serde_json::to_string(body).expect("JSON values always serialize");
    debug_assert!(out.ends_with('}'));
    out.pop();
    if !body.is_empty() {
        out.push(',');
    }
    // Writing into a String cannot fail.
    let _ = write!(out, "\"seq\":{}}}", seq.0);
    Frame::from(out)
}

fn with_id(mut v: Value, id: Option<&Value>) -> Frame {
    if let (Some(id), Value::Object(map)) = (id, &mut v) {
        map.insert("id".into(), id.clone());
    }
    Frame::from(v.to_string())
}

pub fn subscribed(symbols: &[std::sync::Arc<str>], id: Option<&Value>) -> Frame {
    let symbols: Vec<&str> = symbols.iter().map(|s| &**s).collect();
    with_id(json!({"type": "subscribed", "symbols": symbols}), id)
}

pub fn unsubscribed(symbols: &[std::sync::Arc<str>], id: Option<&Value>) -> Frame {
    let symbols: Vec<&str> = symbols.iter().map(|s| &**s).collect();
    with_id(json!({"type": "unsubscribed", "symbols": symbols}), id)
}

pub fn filtered(symbol: Option<&str>, signal_type: Option<&str>, id: Option<&Value>) -> Frame {
    with_id(
        json!({"type": "filtered", "symbol": symbol, "signal_type": signal_type}),
        id,
    )
}

pub fn pong(id: Option<&Value>) -> Frame {
    with_id(json!({"type": "pong", "timestamp": now_rfc3339()}), id)
}

pub fn error(err: &ProtocolError, id: Option<&Value>) -> Frame {
    with_id(
        json!({"type": "error", "code": err.code.as_str(), "message": err.message}),
        id,
    )
}

pub fn notification_read(notification_id: &Value, id: Option<&Value>) -> Frame {
    with_id(
        json!({"type": "notification_read", "notification_id": notification_id}),
        id,
    )
}

pub fn reset(stream: &str, oldest: Seq) -> Frame {
    with_id(json!({"type": "reset", "stream": stream, "seq": oldest.0}), None)
}

/// `{"type":"unread_notifications","notifications":[...]}` from the
/// already-encoded notification frames. The empty list, what most users
/// are sent on connecting, is one frame shared by them all (its other
/// forms made once too), so a connection costs no encoding for it.
pub fn unread_notifications<'a>(frames: impl Iterator<Item = &'a Frame>) -> Frame {
    static EMPTY: OnceLock<Frame> = OnceLock::new();
    let mut frames = frames.peekable();
    if frames.peek().is_none() {
        return EMPTY
            .get_or_init(|| Frame::from(r#"{"type":"unread_notifications","notifications":[]}"#.to_owned()))
            .clone();
    }
    let mut out = String::from(r#"{"type":"unread_notifications","notifications":"#);
    out.push_str(&json_array(frames));
    out.push('}');
    Frame::from(out)
}

/// A JSON array of already-encoded JSON objects.
pub fn json_array<'a>(frames: impl Iterator<Item = &'a Frame>) -> Frame {
    let mut out = String::from("[");
    for (i, f) in frames.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(f);
    }
    out.push(']');
    Frame::from(out)
}

/// An encoded object with one more boolean field at its end, used to mark
/// notifications `read` in the HTTP listing.
pub fn with_flag(frame: &Frame, field: &str, value: bool) -> Frame {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    Frame::from(format!("{body},\"{field}\":{value}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::update::decode_batch;

    #[test]
    fn update_round_trips_with_seq_last() {
        let u = decode_batch(br#"{"type":"market_update","symbol":"BTC-USD","price":45000.5,"volume":1000000,"timestamp":"2024-01-15T10:30:00Z"}"#)
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        let frame = update(&u.body, Seq(1042));
        let text = frame.as_str();
        assert_eq!(
            text,
            r#"{"type":"market_update","symbol":"BTC-USD","price":45000.5,"volume":1000000,"timestamp":"2024-01-15T10:30:00Z","seq":1042}"#
        );
    }

    #[test]
    fn unread_wraps_frames_in_an_array() {
        let a = Frame::from_static(r#"{"a":1}"#);
        let b = Frame::from_static(r#"{"b":2}"#);
        let out = unread_notifications([a, b].iter());
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["notifications"][1]["b"], 2);
        let empty = unread_notifications(std::iter::empty());
        let v: Value = serde_json::from_str(&empty).unwrap();
        assert_eq!(v["notifications"], json!([]));
    }

    #[test]
    fn flag_is_appended_as_a_field() {
        let out = with_flag(&Frame::from_static(r#"{"a":1}"#), "read", true);
        assert_eq!(out.as_str(), r#"{"a":1,"read":true}"#);
    }

    proptest::proptest! {
        #[test]
        fn encoded_updates_parse_back_to_the_same_fields(price in -1e12f64..1e12, vol in 0u64..u64::MAX, seq in 1u64..u64::MAX, extra in "[a-z]{0,12}") {
            let body = json!({"type":"market_update","symbol":"S","price":price,"volume":vol,"note":extra});
            let Value::Object(map) = body else { unreachable!() };
            let frame = update(&map, Seq(seq));
            let back: Value = serde_json::from_str(&frame).unwrap();
            proptest::prop_assert_eq!(back["seq"].as_u64(), Some(seq));
            proptest::prop_assert_eq!(back["volume"].as_u64(), Some(vol));
            proptest::prop_assert_eq!(back["price"].as_f64(), Some(price));
            proptest::prop_assert_eq!(back["note"].as_str(), Some(extra.as_str()));
        }
    }
}
