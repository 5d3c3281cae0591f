//! Messages a publisher sends (PROTOCOL.md 1.3 and 2), decoded and
//! validated into typed [`Update`]s. A body is one message or an array of
//! them; each entry is judged alone, so one bad entry never spoils the
//! valid ones beside it. What a publisher set is kept as published (its
//! numbers, its strings, its extra fields), except `seq`, which only the
//! sequencer gives, and `user_id`, which never reaches a browser, on any
//! message type. A `null` in a field this server reads means the field is
//! absent (a Python back end sends `None` for what it leaves out), so
//! both modes route and complete such a message the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::command::notification_key;
use super::{
    now_rfc3339, parse_json, valid_name, ErrorCode, ProtocolError, SignalType, StreamKey, UpdateKind,
};

/// One validated publish, not yet sequenced.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub kind: UpdateKind,
    pub stream: StreamKey,
    /// The market symbol, or a signal's symbol (for a `signal_update`,
    /// filled from the signal's state by ingress when left out).
    pub symbol: Option<Arc<str>>,
    pub signal_id: Option<Arc<str>>,
    pub signal_type: Option<SignalType>,
    pub notification_id: Option<Arc<str>>,
    /// The fields forwarded to subscribers, in the publisher's order.
    pub body: Map<String, Value>,
}

/// Decodes a publish body. `Err` only when the body is not JSON at all;
/// otherwise one result per entry, in order.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Result<Update, ProtocolError>>, ProtocolError> {
    match parse_json(body)? {
        Value::Array(items) => Ok(items.into_iter().map(decode_entry).collect()),
        one => Ok(vec![decode_entry(one)]),
    }
}

/// Validates one entry of a publish body.
pub fn decode_entry(value: Value) -> Result<Update, ProtocolError> {
    let Value::Object(mut body) = value else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidJson,
            "a message is a JSON object",
        ));
    };
    let kind = match body.get("type") {
        None => return Err(ProtocolError::missing("type")),
        Some(Value::String(s)) => UpdateKind::from_wire(s).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::UnknownType,
                "type must be market_update, new_signal, signal_update or new_notification",
            )
        })?,
        Some(_) => return Err(ProtocolError::invalid("type", "must be a string")),
    };
    body.remove("seq");
    body.retain(|k, v| !(v.is_null() && READ_FIELDS.contains(&k.as_str())));
    let user_id = body.remove("user_id");
    match body.get("timestamp") {
        None | Some(Value::Null) => {
            body.insert("timestamp".into(), Value::String(now_rfc3339()));
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(ProtocolError::invalid("timestamp", "must be an RFC 3339 string")),
    }
    match kind {
        UpdateKind::MarketUpdate => market_update(body),
        UpdateKind::NewSignal | UpdateKind::SignalUpdate => signal(kind, body),
        UpdateKind::NewNotification => notification(body, user_id),
    }
}

/// The fields the server reads: a `null` in one of them is dropped as if
/// it had been left out. Other fields are forwarded as published.
const READ_FIELDS: &[&str] = &[
    "symbol",
    "price",
    "change",
    "volume",
    "signal_id",
    "signal_type",
    "strength",
    "confidence_score",
    "entry_price",
    "target_price",
    "stop_loss",
    "notification_id",
    "title",
    "message",
    "notification_type",
    "priority",
    "timestamp",
];

fn market_update(body: Map<String, Value>) -> Result<Update, ProtocolError> {
    let symbol = required_name(&body, "symbol")?;
    if !body.contains_key("price") {
        return Err(ProtocolError::missing("price"));
    }
    numbers(&body, &["price", "change", "volume"])?;
    Ok(Update {
        kind: UpdateKind::MarketUpdate,
        stream: StreamKey::Symbol(symbol.clone()),
        symbol: Some(symbol),
        signal_id: None,
        signal_type: None,
        notification_id: None,
        body,
    })
}

fn signal(kind: UpdateKind, body: Map<String, Value>) -> Result<Update, ProtocolError> {
    let is_new = kind == UpdateKind::NewSignal;
    let signal_id = notification_key(
        body.get("signal_id")
            .ok_or_else(|| ProtocolError::missing("signal_id"))?,
    )
    .ok_or_else(|| ProtocolError::invalid("signal_id", "must be a string or an integer"))?;
    let symbol = if is_new {
        Some(required_name(&body, "symbol")?)
    } else {
        optional_name(&body, "symbol")?
    };
    let signal_type = match body.get("signal_type") {
        None if is_new => return Err(ProtocolError::missing("signal_type")),
        None => None,
        Some(Value::String(s)) => Some(
            SignalType::from_wire(s)
                .ok_or_else(|| ProtocolError::invalid("signal_type", "must be BUY, SELL or HOLD"))?,
        ),
        Some(_) => return Err(ProtocolError::invalid("signal_type", "must be BUY, SELL or HOLD")),
    };
    one_of(&body, "strength", &["WEAK", "MODERATE", "STRONG"])?;
    numbers(
        &body,
        &["confidence_score", "entry_price", "target_price", "stop_loss"],
    )?;
    Ok(Update {
        kind,
        stream: StreamKey::Signals,
        symbol,
        signal_id: Some(signal_id),
        signal_type,
        notification_id: None,
        body,
    })
}

fn notification(mut body: Map<String, Value>, user_id: Option<Value>) -> Result<Update, ProtocolError> {
    let user = match user_id {
        None | Some(Value::Null) => return Err(ProtocolError::missing("user_id")),
        Some(v) => notification_key(&v)
            .ok_or_else(|| ProtocolError::invalid("user_id", "must be a string or an integer"))?,
    };
    let notification_id = match body.get("notification_id") {
        None | Some(Value::Null) => {
            let id = generated_notification_id();
            body.insert("notification_id".into(), Value::String(id.clone()));
            Arc::from(id)
        }
        Some(v) => notification_key(v)
            .ok_or_else(|| ProtocolError::invalid("notification_id", "must be a string or an integer"))?,
    };
    one_of(&body, "priority", &["low", "normal", "high", "critical"])?;
    one_of(
        &body,
        "notification_type",
        &["trade", "risk", "portfolio", "system", "signal"],
    )?;
    for field in ["title", "message"] {
        if let Some(v) = body.get(field) {
            if !v.is_string() {
                return Err(ProtocolError::invalid(field, "must be a string"));
            }
        }
    }
    Ok(Update {
        kind: UpdateKind::NewNotification,
        stream: StreamKey::User(user),
        symbol: None,
        signal_id: None,
        signal_type: None,
        notification_id: Some(notification_id),
        body,
    })
}

/// A unique id for a notification published without one: the time in
/// milliseconds and a per-process counter, with a random per-process part
/// so that two nodes of a cluster never make the same one.
fn generated_notification_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static NODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let node = *NODE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() as u32
    });
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // Relaxed: the counter only needs to be unique, not ordered with anything.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("notif_{ms:x}{node:08x}{n:x}")
}

fn required_name(body: &Map<String, Value>, field: &str) -> Result<Arc<str>, ProtocolError> {
    optional_name(body, field)?.ok_or_else(|| ProtocolError::missing(field))
}

fn optional_name(body: &Map<String, Value>, field: &str) -> Result<Option<Arc<str>>, ProtocolError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if valid_name(s) => Ok(Some(Arc::from(s.as_str()))),
        Some(_) => Err(ProtocolError::invalid(
            field,
            "must be a non-empty name without spaces or `*`",
        )),
    }
}

fn numbers(body: &Map<String, Value>, fields: &[&str]) -> Result<(), ProtocolError> {
    for field in fields {
        match body.get(*field) {
            None | Some(Value::Number(_)) => {}
            Some(_) => return Err(ProtocolError::invalid(field, "must be a number")),
        }
    }
    Ok(())
}

fn one_of(body: &Map<String, Value>, field: &str, allowed: &[&str]) -> Result<(), ProtocolError> {
    match body.get(field) {
        None => Ok(()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        Some(_) => Err(ProtocolError::invalid(
            field,
            &format!("must be one of {}", allowed.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<Update, ProtocolError> {
        decode_batch(s.as_bytes()).unwrap().pop().unwrap()
    }

    #[test]
    fn market_update_keeps_fields_and_fills_timestamp() {
        let u = one(r#"{"type":"market_update","symbol":"BTC-USD","price":45000.00,"volume":1000000,"venue":"X","seq":99}"#).unwrap();
        assert_eq!(u.stream, StreamKey::Symbol("BTC-USD".into()));
        assert!(u.body["volume"].is_u64());
        assert_eq!(u.body["venue"], "X");
        assert!(u.body["timestamp"].is_string());
        assert!(!u.body.contains_key("seq"));
    }

    #[test]
    fn publisher_timestamp_is_kept_verbatim() {
        let u = one(
            r#"{"type":"market_update","symbol":"A","price":1,"timestamp":"2024-01-15T10:30:00.123456789Z"}"#,
        )
        .unwrap();
        assert_eq!(u.body["timestamp"], "2024-01-15T10:30:00.123456789Z");
    }

    #[test]
    fn notification_needs_user_id_which_is_never_forwarded() {
        let e = one(r#"{"type":"new_notification","notification_id":"n1","title":"t"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::MissingField);
        let u = one(r#"{"type":"new_notification","user_id":"alice","notification_id":"n1"}"#).unwrap();
        assert_eq!(u.stream, StreamKey::User("alice".into()));
        assert!(!u.body.contains_key("user_id"));
    }

    #[test]
    fn user_id_is_stripped_from_every_kind() {
        for s in [
            r#"{"type":"market_update","symbol":"A","price":1,"user_id":"u"}"#,
            r#"{"type":"new_signal","signal_id":"s","symbol":"A","signal_type":"BUY","user_id":7}"#,
            r#"{"type":"signal_update","signal_id":"s","user_id":"u"}"#,
        ] {
            assert!(!one(s).unwrap().body.contains_key("user_id"), "{s}");
        }
    }

    #[test]
    fn null_means_absent_in_the_fields_the_server_reads() {
        let u = one(r#"{"type":"signal_update","signal_id":"s","symbol":null,"signal_type":null,"confidence_score":null,"note":null}"#).unwrap();
        assert_eq!((u.symbol, u.signal_type), (None, None));
        assert!(!u.body.contains_key("symbol") && !u.body.contains_key("signal_type"));
        assert!(!u.body.contains_key("confidence_score"));
        assert_eq!(
            u.body["note"],
            Value::Null,
            "other fields are forwarded as published"
        );
        let u =
            one(r#"{"type":"market_update","symbol":"A","price":1,"change":null,"volume":null}"#).unwrap();
        assert!(!u.body.contains_key("change") && !u.body.contains_key("volume"));
        assert_eq!(
            one(r#"{"type":"market_update","symbol":null,"price":1}"#).unwrap_err(),
            ProtocolError::missing("symbol")
        );
    }

    #[test]
    fn a_batch_judges_each_entry_alone() {
        let r = decode_batch(br#"[{"type":"market_update","symbol":"A","price":1},{"type":"nope"},{"type":"new_signal","signal_id":"s","symbol":"A","signal_type":"BUY","strength":"HUGE"}]"#).unwrap();
        assert!(r[0].is_ok());
        assert_eq!(r[1].as_ref().unwrap_err().code, ErrorCode::UnknownType);
        assert_eq!(r[2].as_ref().unwrap_err().code, ErrorCode::InvalidField);
    }

    #[test]
    fn enums_are_checked() {
        assert!(one(r#"{"type":"new_signal","signal_id":"s","symbol":"A","signal_type":"buy"}"#).is_err());
        assert!(one(r#"{"type":"new_notification","user_id":"u","priority":"urgent"}"#).is_err());
        assert!(one(
            r#"{"type":"new_notification","user_id":"u","notification_type":"risk","priority":"critical"}"#
        )
        .is_ok());
    }

    #[test]
    fn missing_price_and_bad_numbers_are_named() {
        let e = one(r#"{"type":"market_update","symbol":"A"}"#).unwrap_err();
        assert_eq!(e, ProtocolError::missing("price"));
        let e = one(r#"{"type":"market_update","symbol":"A","price":"1"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
    }

    #[test]
    fn generated_ids_are_unique() {
        let a = one(r#"{"type":"new_notification","user_id":"u"}"#).unwrap();
        let b = one(r#"{"type":"new_notification","user_id":"u"}"#).unwrap();
        assert_ne!(a.notification_id, b.notification_id);
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_batch(&bytes);
        }
    }
}
