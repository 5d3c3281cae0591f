//! The wire contract of PROTOCOL.md as Rust types: what subscribers send
//! (`command`), what publishers send (`update`), and what the server writes
//! back (`encode`). No I/O lives here: every function takes bytes or values
//! and returns values, so the whole protocol is testable without a socket.

pub mod close;
pub mod command;
pub mod deflate;
pub mod encode;
mod fixed_huffman;
pub mod frame;
pub mod msgpack;
pub mod update;

use std::fmt;
use std::sync::Arc;

/// Position of a message in its stream; starts at 1 and rises by exactly 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// One ordered stream: a market symbol, the single signals stream, or one
/// user's notifications.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamKey {
    Symbol(Arc<str>),
    Signals,
    User(Arc<str>),
}

impl StreamKey {
    /// The name a `reset` message carries in its `stream` field.
    pub fn wire_name(&self) -> &str {
        match self {
            StreamKey::Symbol(s) => s,
            StreamKey::Signals => "signals",
            StreamKey::User(_) => "notifications",
        }
    }
}

/// The three subscriber endpoints of version 1, the publishers' ingest
/// socket, and version 1.1's one socket for every stream (PROTOCOL.md 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    MarketData,
    TradingSignals,
    Notifications,
    Ingest,
    Stream,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::MarketData,
        Endpoint::TradingSignals,
        Endpoint::Notifications,
        Endpoint::Stream,
        Endpoint::Ingest,
    ];

    /// How many endpoints there are, for arrays indexed by [`Endpoint::index`].
    pub const COUNT: usize = Endpoint::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::MarketData => "market-data",
            Endpoint::TradingSignals => "trading-signals",
            Endpoint::Notifications => "notifications",
            Endpoint::Ingest => "ingest",
            Endpoint::Stream => "stream",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The kinds of stream a subscriber socket carries: the one of its
/// endpoint on the endpoints of version 1, any of the three on
/// `/ws/stream/` (its `streams` query parameter, PROTOCOL.md 5.1). A set of
/// three bits, so that a session holds one byte for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Streams(u8);

impl Streams {
    pub const NONE: Streams = Streams(0);
    pub const MARKET_DATA: Streams = Streams(1);
    pub const TRADING_SIGNALS: Streams = Streams(2);
    pub const NOTIFICATIONS: Streams = Streams(4);
    pub const ALL: Streams = Streams(7);

    /// What a socket opened on `endpoint` carries without a `streams` list.
    pub fn of(endpoint: Endpoint) -> Streams {
        match endpoint {
            Endpoint::MarketData => Streams::MARKET_DATA,
            Endpoint::TradingSignals => Streams::TRADING_SIGNALS,
            Endpoint::Notifications => Streams::NOTIFICATIONS,
            Endpoint::Stream => Streams::ALL,
            Endpoint::Ingest => Streams::NONE,
        }
    }

    /// The kind a single-stream endpoint's name names (`market-data`,
    /// `trading-signals`, `notifications`).
    fn named(name: &str) -> Option<Streams> {
        Some(match name {
            "market-data" => Streams::MARKET_DATA,
            "trading-signals" => Streams::TRADING_SIGNALS,
            "notifications" => Streams::NOTIFICATIONS,
            _ => return None,
        })
    }

    /// The `streams` query parameter: a comma-separated list of kinds,
    /// at least one, repeats allowed. The error names the first unknown one.
    pub fn parse(list: &str) -> Result<Streams, String> {
        let mut out = Streams::NONE;
        for name in list.split(',').map(str::trim) {
            match Streams::named(name) {
                Some(kind) => out.0 |= kind.0,
                None => {
                    let shown: String = name.chars().take(40).collect();
                    return Err(format!(
                        "`streams` names `{}`: the streams are market-data, trading-signals and notifications",
                        LogSafe(&shown)
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Whether every kind of `kind` is carried.
    pub fn carries(self, kind: Streams) -> bool {
        self.0 & kind.0 == kind.0 && kind.0 != 0
    }

    /// The kinds carried, by name, comma-separated (for messages and logs).
    pub fn names(self) -> String {
        [
            (Streams::MARKET_DATA, "market-data"),
            (Streams::TRADING_SIGNALS, "trading-signals"),
            (Streams::NOTIFICATIONS, "notifications"),
        ]
        .iter()
        .filter(|(k, _)| self.carries(*k))
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// The message types a publisher may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateKind {
    MarketUpdate,
    NewSignal,
    SignalUpdate,
    NewNotification,
}

impl UpdateKind {
    pub const ALL: [UpdateKind; 4] = [
        UpdateKind::MarketUpdate,
        UpdateKind::NewSignal,
        UpdateKind::SignalUpdate,
        UpdateKind::NewNotification,
    ];

    pub fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "market_update" => UpdateKind::MarketUpdate,
            "new_signal" => UpdateKind::NewSignal,
            "signal_update" => UpdateKind::SignalUpdate,
            "new_notification" => UpdateKind::NewNotification,
            _ => return None,
        })
    }

    pub fn wire_name(self) -> &'static str {
        match self {
            UpdateKind::MarketUpdate => "market_update",
            UpdateKind::NewSignal => "new_signal",
            UpdateKind::SignalUpdate => "signal_update",
            UpdateKind::NewNotification => "new_notification",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalType {
    Buy,
    Sell,
    Hold,
}

impl SignalType {
    /// For filters given as text in HTTP queries, in any case.
    pub fn parse_loose(s: &str) -> Option<SignalType> {
        SignalType::from_wire(&s.to_ascii_uppercase())
    }

    pub fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "BUY" => SignalType::Buy,
            "SELL" => SignalType::Sell,
            "HOLD" => SignalType::Hold,
            _ => return None,
        })
    }

    pub fn wire_name(self) -> &'static str {
        match self {
            SignalType::Buy => "BUY",
            SignalType::Sell => "SELL",
            SignalType::Hold => "HOLD",
        }
    }
}

/// The error codes of PROTOCOL.md 1.5, as sent in `{"type":"error","code":..}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    UnknownType,
    MissingField,
    InvalidField,
    Forbidden,
    TooManySubscriptions,
    RateLimited,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command or a published entry was refused: a wire code and a
/// message for a person. Built only on the error path, so the message may
/// be formatted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    pub fn missing(field: &str) -> Self {
        Self::new(ErrorCode::MissingField, format!("missing field `{field}`"))
    }

    pub fn invalid(field: &str, why: &str) -> Self {
        Self::new(ErrorCode::InvalidField, format!("field `{field}` {why}"))
    }
}

/// Longest symbol, user id or notification id accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// A symbol, user id or notification id: non-empty, at most
/// [`MAX_NAME_BYTES`], no whitespace or control characters, no `*` (which
/// is reserved for token patterns).
/// A string that came from outside (a user id, a client's text), shown
/// in a log line with its control characters escaped (`\n`, `\u{1b}`), so
/// that it can neither forge a line nor drive a terminal.
pub struct LogSafe<'a>(pub &'a str);

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        Ok(())
    }
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '*')
}

/// Deepest nesting of arrays and objects a message may have. Building a
/// `serde_json::Value` recurses once per level and simd-json sets no limit
/// of its own: a 10 KB frame of `[[[[…` overflowed the stack of a runtime
/// thread and aborted the process (found by `fuzz/`, see docs/fuzzing.md).
/// serde_json's own parser stops at the same depth.
pub const MAX_JSON_DEPTH: usize = 128;

/// Parses JSON with simd-json (which needs a mutable copy of the input);
/// on failure re-parses with serde_json, only to give the client serde's
/// line-and-column message. Input nested deeper than [`MAX_JSON_DEPTH`]
/// is refused before either parser sees it.
pub fn parse_json(input: &[u8]) -> Result<serde_json::Value, ProtocolError> {
    // Fast path: fewer openings than the limit cannot nest past it.
    let openings = input.iter().filter(|&&b| b == b'[' || b == b'{').count();
    if openings > MAX_JSON_DEPTH && outline(input).depth > MAX_JSON_DEPTH {
        return Err(ProtocolError::new(
            ErrorCode::InvalidJson,
            format!("nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    let mut scratch = input.to_vec();
    match simd_json::serde::from_slice::<serde_json::Value>(&mut scratch) {
        Ok(v) => Ok(v),
        Err(simd_err) => {
            let message = match serde_json::from_slice::<serde_json::Value>(input) {
                Err(e) => e.to_string(),
                Ok(_) => simd_err.to_string(),
            };
            Err(ProtocolError::new(ErrorCode::InvalidJson, message))
        }
    }
}

/// What one pass over JSON text tells without parsing it: how deep its
/// arrays and objects nest, and how many entries a top-level array has
/// (1 for anything else, 0 for `[]`). The one pre-scanner of the server:
/// the depth guard of [`parse_json`] and the publish rate limit (which
/// counts a body's entries before decoding it) both read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outline {
    pub depth: usize,
    pub entries: u32,
}

/// Scans `input`. Exact for valid JSON; invalid JSON is refused by the
/// parser's structure check before anything recurses, so miscounting it
/// does no harm.
pub fn outline(input: &[u8]) -> Outline {
    let start = input.iter().position(|b| !b.is_ascii_whitespace());
    let is_array = start.map(|i| input[i]) == Some(b'[');
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    let (mut commas, mut any) = (0u32, false);
    for &b in input {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                any |= depth == 1;
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                any |= depth == 2;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => commas += 1,
            _ if depth == 1 && !b.is_ascii_whitespace() => any = true,
            _ => {}
        }
    }
    let entries = match (is_array, any) {
        (false, _) => 1,
        (true, true) => commas + 1,
        (true, false) => 0,
    };
    Outline {
        depth: deepest,
        entries,
    }
}

/// Current time as RFC 3339 UTC with microseconds, the format the server
/// fills into `timestamp` and `pong`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_parse_the_three_names_and_nothing_else() {
        assert_eq!(
            Streams::parse("market-data,notifications"),
            Ok(Streams(Streams::MARKET_DATA.0 | Streams::NOTIFICATIONS.0))
        );
        assert_eq!(
            Streams::parse("trading-signals, trading-signals"),
            Ok(Streams::TRADING_SIGNALS)
        );
        assert!(Streams::parse("").is_err());
        assert!(Streams::parse("market-data,").is_err());
        assert!(Streams::parse("ingest").is_err());
        assert_eq!(Streams::ALL.names(), "market-data,trading-signals,notifications");
        assert!(!Streams::NONE.carries(Streams::NONE));
        assert!(Streams::of(Endpoint::Stream).carries(Streams::NOTIFICATIONS));
        assert!(!Streams::of(Endpoint::MarketData).carries(Streams::NOTIFICATIONS));
    }

    #[test]
    fn the_outline_counts_depth_and_top_level_entries() {
        let o = |s: &str| outline(s.as_bytes());
        assert_eq!(o(r#"{"a":[1,2]}"#), Outline { depth: 2, entries: 1 });
        assert_eq!(o(r#" [ {"a":"x,]"}, {"b":[1,2,3]}, 3 ]"#).entries, 3);
        assert_eq!(o("[]").entries, 0);
        assert_eq!(o(r#"["a\",b"]"#).entries, 1);
        assert_eq!(o(&"[".repeat(200)).depth, 200);
    }

    #[test]
    fn log_safe_escapes_control_characters() {
        let shown = LogSafe("eve\n2026-01-01 INFO forged\u{1b}[31m").to_string();
        assert_eq!(shown, "eve\\n2026-01-01 INFO forged\\u{1b}[31m");
    }

    #[test]
    fn names_refuse_whitespace_wildcards_and_empties() {
        assert!(valid_name("BTC-USD"));
        assert!(valid_name("user_42@example.com"));
        assert!(!valid_name(""));
        assert!(!valid_name("BTC USD"));
        assert!(!valid_name("ETH-*"));
        assert!(!valid_name(&"x".repeat(MAX_NAME_BYTES + 1)));
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let err = parse_json(b"{\"type\": x}").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        assert!(err.message.contains("line 1 column"), "{}", err.message);
    }

    proptest::proptest! {
        #[test]
        fn published_floats_parse_to_exactly_the_same_number(x in proptest::num::f64::NORMAL) {
            let text = format!("{{\"p\":{}}}", serde_json::Number::from_f64(x).unwrap());
            let v = parse_json(text.as_bytes()).unwrap();
            proptest::prop_assert_eq!(v["p"].as_f64(), Some(x));
        }
    }

    #[test]
    fn nesting_past_the_limit_is_refused_and_strings_do_not_count() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_json(deep(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let err = parse_json(deep(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        assert!(err.message.contains("nested deeper"), "{}", err.message);
        let in_strings = format!(r#"{{"a": "{}", "b": "\"[[[", "c": [1]}}"#, "[{".repeat(500));
        assert!(parse_json(in_strings.as_bytes()).is_ok());
        let wide = format!("[{}]", vec!["[[{}]]"; 500].join(","));
        assert!(parse_json(wide.as_bytes()).is_ok());
    }

    #[test]
    fn integers_stay_integers() {
        let v = parse_json(br#"{"a": 1000000, "b": 45000.00, "c": -3}"#).unwrap();
        assert!(v["a"].is_u64());
        assert!(v["b"].is_f64());
        assert!(v["c"].is_i64());
    }
}
