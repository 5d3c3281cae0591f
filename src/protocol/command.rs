//! Commands a subscriber sends (PROTOCOL.md 1.2), decoded from one text
//! frame into a typed [`Command`] or a [`ProtocolError`] naming the field
//! at fault. Decoding never panics on any input; which endpoint may use
//! which command is decided here too, so the connection only acts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{parse_json, valid_name, Endpoint, ErrorCode, ProtocolError, Seq, SignalType, Streams};

/// How many symbols one `subscribe` may name; the per-connection limit is
/// checked later against the connection's own count.
pub const MAX_SYMBOLS_PER_COMMAND: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Subscribe {
        symbols: Vec<Arc<str>>,
        /// Last `seq` the client saw per symbol; only symbols of this command.
        since: HashMap<Arc<str>, Seq>,
        /// `max_frequency` as the shortest time between two updates of a
        /// symbol; always representable, at most [`MAX_THROTTLE_INTERVAL`].
        min_interval: Option<Duration>,
    },
    Unsubscribe {
        symbols: Vec<Arc<str>>,
    },
    Filter {
        symbol: Option<Arc<str>>,
        signal_type: Option<SignalType>,
        since: Option<Seq>,
    },
    MarkRead {
        /// The id as the client sent it (string or number), echoed back.
        notification_id: Value,
        /// The same id as a string, the key the server stores it under.
        key: Arc<str>,
    },
    Ping,
}

/// A decoded frame: the `id` to echo (when the frame had a usable one) and
/// the command or why it was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Option<Value>,
    pub command: Result<Command, ProtocolError>,
}

/// Decodes one text frame received on `endpoint`, carrying what that
/// endpoint carries by default (every stream on `/ws/stream/`).
pub fn decode(frame: &[u8], endpoint: Endpoint) -> Envelope {
    decode_on(frame, endpoint, Streams::of(endpoint))
}

/// Decodes one text frame received on `endpoint` carrying `streams`.
pub fn decode_on(frame: &[u8], endpoint: Endpoint, streams: Streams) -> Envelope {
    match parse_json(frame) {
        Ok(value) => decode_value(value, endpoint, streams),
        Err(e) => Envelope {
            id: None,
            command: Err(e),
        },
    }
}

/// Decodes a command already parsed into a JSON object (a MessagePack
/// command arrives this way too).
pub fn decode_value(value: Value, endpoint: Endpoint, streams: Streams) -> Envelope {
    let Value::Object(obj) = value else {
        return Envelope {
            id: None,
            command: Err(ProtocolError::new(
                ErrorCode::InvalidJson,
                "a command is a JSON object",
            )),
        };
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => {
            return Envelope {
                id: None,
                command: Err(ProtocolError::invalid("id", "must be a string or a number")),
            }
        }
    };
    Envelope {
        command: decode_object(&obj, endpoint, streams),
        id,
    }
}

fn decode_object(
    obj: &Map<String, Value>,
    endpoint: Endpoint,
    streams: Streams,
) -> Result<Command, ProtocolError> {
    let kind = match obj.get("type") {
        None => return Err(ProtocolError::missing("type")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ProtocolError::invalid("type", "must be a string")),
    };
    let needs = match kind {
        "ping" => Streams::NONE,
        "subscribe" | "unsubscribe" => Streams::MARKET_DATA,
        "filter" => Streams::TRADING_SIGNALS,
        "mark_read" => Streams::NOTIFICATIONS,
        other => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!("unknown command type `{}`", truncate(other)),
            ))
        }
    };
    if needs != Streams::NONE && !streams.carries(needs) {
        // Version 1's endpoints know only their own commands; the one socket
        // of 5.1 knows them all, and refuses those of a stream it was not
        // opened for as a field (`type`) out of its range.
        if endpoint == Endpoint::Stream {
            return Err(ProtocolError::new(
                ErrorCode::InvalidField,
                format!(
                    "`{kind}` is a command of {}, which this socket does not carry (streams={})",
                    needs.names(),
                    streams.names()
                ),
            ));
        }
        return Err(ProtocolError::new(
            ErrorCode::UnknownType,
            format!("`{kind}` is not a command of /ws/{}/", endpoint.name()),
        ));
    }
    match kind {
        "ping" => Ok(Command::Ping),
        "subscribe" => decode_subscribe(obj),
        "unsubscribe" => Ok(Command::Unsubscribe {
            symbols: symbols_of(obj)?,
        }),
        "filter" => decode_filter(obj),
        _ => decode_mark_read(obj),
    }
}

fn decode_subscribe(obj: &Map<String, Value>) -> Result<Command, ProtocolError> {
    let symbols = symbols_of(obj)?;
    let mut since = HashMap::new();
    match obj.get("since") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            // One lookup per key: linear in the command, however many keys.
            let named: HashMap<&str, &Arc<str>> = symbols.iter().map(|s| (&**s, s)).collect();
            for (symbol, seq) in map {
                let seq = seq_of(seq).ok_or_else(|| {
                    ProtocolError::invalid("since", "maps each symbol to a non-negative integer")
                })?;
                if let Some(s) = named.get(symbol.as_str()) {
                    since.insert((*s).clone(), seq);
                }
            }
        }
        Some(_) => {
            return Err(ProtocolError::invalid(
                "since",
                "must be an object of symbol to seq",
            ))
        }
    }
    let min_interval = match obj.get("max_frequency") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().and_then(throttle_interval).ok_or_else(|| {
            ProtocolError::invalid(
                "max_frequency",
                "must be a positive number of updates per second, at least one a day (1.2e-5)",
            )
        })?),
    };
    Ok(Command::Subscribe {
        symbols,
        since,
        min_interval,
    })
}

/// The longest interval `max_frequency` may ask for: one update a day.
/// Longer ones would hold an update back for longer than any client waits,
/// and past ~1e-19 updates/s they cannot be represented as a `Duration`
/// or added to an `Instant` at all.
pub const MAX_THROTTLE_INTERVAL: Duration = Duration::from_secs(86_400);

/// The interval between two updates for `max_frequency` updates per
/// second, or `None` when that is not a usable rate.
pub fn throttle_interval(max_frequency: f64) -> Option<Duration> {
    if !(max_frequency > 0.0 && max_frequency.is_finite()) {
        return None;
    }
    Duration::try_from_secs_f64(1.0 / max_frequency)
        .ok()
        .filter(|d| *d <= MAX_THROTTLE_INTERVAL)
}

fn decode_filter(obj: &Map<String, Value>) -> Result<Command, ProtocolError> {
    let symbol = match obj.get("symbol") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if valid_name(s) => Some(Arc::from(s.as_str())),
        Some(_) => return Err(ProtocolError::invalid("symbol", "must be a symbol or null")),
    };
    let signal_type = match obj.get("signal_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            SignalType::from_wire(&s.to_ascii_uppercase())
                .ok_or_else(|| ProtocolError::invalid("signal_type", "must be BUY, SELL, HOLD or null"))?,
        ),
        Some(_) => {
            return Err(ProtocolError::invalid(
                "signal_type",
                "must be BUY, SELL, HOLD or null",
            ))
        }
    };
    let since = match obj.get("since") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(seq_of(v).ok_or_else(|| ProtocolError::invalid("since", "must be a non-negative integer"))?)
        }
    };
    Ok(Command::Filter {
        symbol,
        signal_type,
        since,
    })
}

fn decode_mark_read(obj: &Map<String, Value>) -> Result<Command, ProtocolError> {
    let id = obj
        .get("notification_id")
        .ok_or_else(|| ProtocolError::missing("notification_id"))?;
    let key = notification_key(id)
        .ok_or_else(|| ProtocolError::invalid("notification_id", "must be a string or an integer"))?;
    Ok(Command::MarkRead {
        notification_id: id.clone(),
        key,
    })
}

/// The key a notification id is stored under: its string, or the decimal
/// form of an integer id, so `"42"` and `42` name the same notification.
pub fn notification_key(id: &Value) -> Option<Arc<str>> {
    match id {
        Value::String(s) if valid_name(s) => Some(Arc::from(s.as_str())),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Arc::from(n.to_string())),
        _ => None,
    }
}

fn symbols_of(obj: &Map<String, Value>) -> Result<Vec<Arc<str>>, ProtocolError> {
    let list: Vec<&Value> = match (obj.get("symbols"), obj.get("symbol")) {
        (Some(Value::Array(items)), _) => items.iter().collect(),
        (Some(Value::Null) | None, Some(one)) => vec![one],
        (Some(_), _) => return Err(ProtocolError::invalid("symbols", "must be an array of symbols")),
        (None, None) => return Err(ProtocolError::missing("symbols")),
    };
    if list.is_empty() {
        return Err(ProtocolError::invalid("symbols", "must name at least one symbol"));
    }
    if list.len() > MAX_SYMBOLS_PER_COMMAND {
        return Err(ProtocolError::new(
            ErrorCode::TooManySubscriptions,
            format!("at most {MAX_SYMBOLS_PER_COMMAND} symbols per command"),
        ));
    }
    let mut symbols: Vec<Arc<str>> = Vec::with_capacity(list.len());
    for item in list {
        match item {
            Value::String(s) if valid_name(s) => {
                if !symbols.iter().any(|have| **have == **s) {
                    symbols.push(Arc::from(s.as_str()));
                }
            }
            _ => {
                return Err(ProtocolError::invalid(
                    "symbols",
                    "holds non-empty symbol names without spaces or `*`",
                ))
            }
        }
    }
    Ok(symbols)
}

fn seq_of(v: &Value) -> Option<Seq> {
    v.as_u64().map(Seq)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str, e: Endpoint) -> Result<Command, ProtocolError> {
        decode(s.as_bytes(), e).command
    }

    #[test]
    fn subscribe_takes_one_or_many_symbols_and_since() {
        let c = cmd(
            r#"{"type":"subscribe","symbols":["BTC-USD","ETH-USD"],"since":{"BTC-USD":1041}}"#,
            Endpoint::MarketData,
        )
        .unwrap();
        let Command::Subscribe { symbols, since, .. } = c else {
            panic!()
        };
        assert_eq!(symbols.len(), 2);
        assert_eq!(since.get("BTC-USD"), Some(&Seq(1041)));
        let c = cmd(r#"{"type":"subscribe","symbol":"BTC-USD"}"#, Endpoint::MarketData).unwrap();
        assert!(matches!(c, Command::Subscribe { symbols, .. } if symbols.len() == 1));
    }

    #[test]
    fn max_frequency_must_be_a_representable_rate() {
        let interval = |f: &str| {
            let c = cmd(
                &format!(r#"{{"type":"subscribe","symbols":["A"],"max_frequency":{f}}}"#),
                Endpoint::MarketData,
            );
            match c {
                Ok(Command::Subscribe { min_interval, .. }) => Ok(min_interval),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.code),
            }
        };
        assert_eq!(interval("2"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(interval("1e300"), Ok(Some(Duration::ZERO)));
        assert_eq!(
            interval("0.0000116"),
            Ok(Some(Duration::from_secs_f64(1.0 / 0.0000116)))
        );
        for bad in [
            "0", "-0", "-1", "1e-20", "1e-19", "1e-300", "5e-324", "0.00001", "\"2\"", "[]",
        ] {
            assert_eq!(interval(bad), Err(ErrorCode::InvalidField), "{bad}");
        }
    }

    #[test]
    fn since_with_many_keys_keeps_only_the_commands_symbols() {
        let symbols: Vec<String> = (0..1000).map(|i| format!("S{i}")).collect();
        let since: serde_json::Map<String, Value> =
            (0..6000).map(|i| (format!("S{i}"), Value::from(i))).collect();
        let c = serde_json::json!({"type": "subscribe", "symbols": symbols, "since": since});
        let Command::Subscribe { since, .. } = cmd(&c.to_string(), Endpoint::MarketData).unwrap() else {
            panic!()
        };
        assert_eq!(since.len(), 1000);
        assert_eq!(since.get("S999"), Some(&Seq(999)));
    }

    #[test]
    fn id_is_echoed_even_when_the_command_fails() {
        let e = decode(br#"{"type":"bogus","id":12}"#, Endpoint::MarketData);
        assert_eq!(e.id, Some(Value::from(12)));
        assert_eq!(e.command.unwrap_err().code, ErrorCode::UnknownType);
    }

    #[test]
    fn each_error_code_names_its_field() {
        let e = cmd(r#"{"symbols":["A"]}"#, Endpoint::MarketData).unwrap_err();
        assert_eq!(e.code, ErrorCode::MissingField);
        let e = cmd(r#"{"type":"subscribe"}"#, Endpoint::MarketData).unwrap_err();
        assert_eq!(e.code, ErrorCode::MissingField);
        let e = cmd(r#"{"type":"subscribe","symbols":[1]}"#, Endpoint::MarketData).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        let e = cmd(
            r#"{"type":"filter","signal_type":"MAYBE"}"#,
            Endpoint::TradingSignals,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        let e = cmd("[1,2]", Endpoint::MarketData).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn commands_belong_to_their_endpoint() {
        let e = cmd(r#"{"type":"subscribe","symbol":"A"}"#, Endpoint::Notifications).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(
            cmd(r#"{"type":"ping"}"#, Endpoint::Notifications),
            Ok(Command::Ping)
        );
    }

    #[test]
    fn the_one_socket_refuses_commands_of_streams_it_does_not_carry_as_invalid_field() {
        let on = |s: &str, streams| decode_on(s.as_bytes(), Endpoint::Stream, streams).command;
        let market_only = Streams::MARKET_DATA;
        assert!(matches!(
            on(r#"{"type":"subscribe","symbol":"A"}"#, market_only),
            Ok(Command::Subscribe { .. })
        ));
        let e = on(r#"{"type":"filter","symbol":null}"#, market_only).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        assert!(e.message.contains("trading-signals"), "{}", e.message);
        let e = on(r#"{"type":"mark_read","notification_id":"n"}"#, market_only).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        assert_eq!(on(r#"{"type":"ping"}"#, market_only), Ok(Command::Ping));
        assert_eq!(
            on(r#"{"type":"bogus"}"#, Streams::ALL).unwrap_err().code,
            ErrorCode::UnknownType
        );
        for c in [
            r#"{"type":"subscribe","symbol":"A"}"#,
            r#"{"type":"filter","symbol":null}"#,
            r#"{"type":"mark_read","notification_id":"n"}"#,
        ] {
            assert!(decode(c.as_bytes(), Endpoint::Stream).command.is_ok(), "{c}");
        }
    }

    #[test]
    fn filter_null_means_any() {
        let c = cmd(
            r#"{"type":"filter","symbol":null,"signal_type":null}"#,
            Endpoint::TradingSignals,
        )
        .unwrap();
        assert_eq!(
            c,
            Command::Filter {
                symbol: None,
                signal_type: None,
                since: None
            }
        );
    }

    #[test]
    fn mark_read_accepts_string_and_integer_ids() {
        let c = cmd(
            r#"{"type":"mark_read","notification_id":42}"#,
            Endpoint::Notifications,
        )
        .unwrap();
        assert!(matches!(c, Command::MarkRead { key, .. } if &*key == "42"));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            for e in Endpoint::ALL {
                let _ = decode(&bytes, e);
            }
        }
    }
}
