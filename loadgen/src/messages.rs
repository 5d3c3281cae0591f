//! The messages loadgen publishes, in the shapes of PROTOCOL.md 1.3 (without
//! `seq`, which the server assigns):
//! - [`Feed`]: realistic test messages for `loadgen publish`, one at a time,
//!   as `serde_json` values (a few a second, so clarity beats speed): prices
//!   that random-walk per symbol, signals with levels around the current
//!   price, notifications with a unique `notification_id`.
//! - [`write_market`] and friends: the bench's messages, written straight
//!   into a buffer, each carrying `t_ns` (its intended send time) for
//!   latency, and [`add_pad`] to make them bigger.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// A small, fast, seedable generator (xorshift64*). Test data needs
/// variety, not cryptographic quality.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift must not start at 0; mix the seed so nearby seeds diverge.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Seeded from the clock and the process id.
    pub fn from_entropy() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [lo, hi].
    pub fn int(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A plausible opening price for a symbol: real-ish for well-known ones,
/// anything from 5 to 500 for the rest.
fn opening_price(symbol: &str, rng: &mut Rng) -> f64 {
    match symbol {
        "BTC-USD" => 45_000.0,
        "ETH-USD" => 2_500.0,
        "SOL-USD" => 100.0,
        "BNB-USD" => 300.0,
        "XRP-USD" => 0.6,
        "ADA-USD" => 0.5,
        "DOGE-USD" => 0.08,
        "DOT-USD" => 7.0,
        "AAPL" => 190.0,
        "MSFT" => 410.0,
        "TSLA" => 250.0,
        "NVDA" => 480.0,
        _ => (rng.range(5.0, 500.0) * 100.0).round() / 100.0,
    }
}

/// Rounds a price to cents, or to 4 decimals below 10 (crypto pennies).
fn round_price(p: f64) -> f64 {
    let scale = if p < 10.0 { 10_000.0 } else { 100.0 };
    (p * scale).round() / scale
}

#[derive(Debug)]
struct Quote {
    symbol: String,
    open: f64,
    price: f64,
}

/// What `loadgen publish` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Market,
    Signals,
    Notifications,
}

/// The generator behind `loadgen publish`: a random walk per symbol, and
/// signals and notifications that refer to it.
#[derive(Debug)]
pub struct Feed {
    rng: Rng,
    quotes: Vec<Quote>,
    user: String,
    /// Distinguishes this run's ids from those of earlier runs.
    run_tag: String,
    next_id: u64,
    /// `signal_id`s sent so far, the targets of `signal_update`s.
    signals: Vec<String>,
}

impl Feed {
    pub fn new(symbols: &[String], user: &str, mut rng: Rng) -> Feed {
        let quotes = symbols
            .iter()
            .map(|s| {
                let open = opening_price(s, &mut rng);
                Quote {
                    symbol: s.clone(),
                    open,
                    price: open,
                }
            })
            .collect();
        let run_tag = format!("{:06x}", rng.next_u64() & 0xff_ffff);
        Feed {
            rng,
            quotes,
            user: user.to_owned(),
            run_tag,
            next_id: 0,
            signals: Vec::new(),
        }
    }

    pub fn next(&mut self, kind: Kind) -> Value {
        match kind {
            Kind::Market => self.market_update(),
            Kind::Signals => self.signal(),
            Kind::Notifications => self.notification(),
        }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}_{}", self.run_tag, self.next_id)
    }

    /// Moves a random symbol's price by a small normal step (0.2 % sd).
    fn step_quote(&mut self) -> usize {
        let i = (self.rng.next_u64() % self.quotes.len() as u64) as usize;
        let step = 1.0 + 0.002 * self.rng.normal();
        let q = &mut self.quotes[i];
        q.price = round_price((q.price * step).max(q.open * 0.01));
        i
    }

    fn market_update(&mut self) -> Value {
        let i = self.step_quote();
        let volume = self.rng.int(10_000, 5_000_000);
        let q = &self.quotes[i];
        let change = ((q.price - q.open) / q.open * 10_000.0).round() / 100.0;
        json!({
            "type": "market_update",
            "symbol": q.symbol,
            "price": q.price,
            "change": change,
            "volume": volume,
        })
    }

    fn signal(&mut self) -> Value {
        // One in four signals after the first revises an earlier one.
        if !self.signals.is_empty() && self.rng.unit() < 0.25 {
            let id = self.rng.pick(&self.signals).clone();
            return json!({
                "type": "signal_update",
                "signal_id": id,
                "confidence_score": self.rng.int(40, 99),
            });
        }
        let i = self.step_quote();
        let signal_type = *self.rng.pick(&["BUY", "SELL", "HOLD"]);
        let strength = *self.rng.pick(&["WEAK", "MODERATE", "STRONG"]);
        let entry = self.quotes[i].price;
        let reward = self.rng.range(0.02, 0.12);
        let risk = self.rng.range(0.01, 0.06);
        let (target, stop) = match signal_type {
            "SELL" => (entry * (1.0 - reward), entry * (1.0 + risk)),
            _ => (entry * (1.0 + reward), entry * (1.0 - risk)),
        };
        let id = self.next_id("signal");
        self.signals.push(id.clone());
        json!({
            "type": "new_signal",
            "signal_id": id,
            "symbol": self.quotes[i].symbol,
            "signal_type": signal_type,
            "strength": strength,
            "confidence_score": self.rng.int(50, 99),
            "entry_price": entry,
            "target_price": round_price(target),
            "stop_loss": round_price(stop),
        })
    }

    fn notification(&mut self) -> Value {
        let i = self.step_quote();
        let (symbol, price) = (self.quotes[i].symbol.clone(), self.quotes[i].price);
        let side = *self.rng.pick(&["BUY", "SELL"]);
        let qty = self.rng.int(1, 500);
        let move_pct = self.rng.range(2.0, 9.0);
        let (notification_type, title, message) = match self.rng.next_u64() % 5 {
            0 => (
                "trade",
                "Trade Executed".to_owned(),
                format!("{side} {qty} {symbol} @ ${price:.2}"),
            ),
            1 => (
                "risk",
                "Risk Warning".to_owned(),
                format!("{symbol} position is {move_pct:.1}% below its entry"),
            ),
            2 => (
                "portfolio",
                "Portfolio Rebalanced".to_owned(),
                format!("{symbol} weight moved by {move_pct:.1}%"),
            ),
            3 => (
                "signal",
                "New Signal".to_owned(),
                format!("{side} signal on {symbol} at ${price:.2}"),
            ),
            _ => (
                "system",
                "System Maintenance".to_owned(),
                "Scheduled maintenance tonight 02:00-02:30 UTC".to_owned(),
            ),
        };
        json!({
            "type": "new_notification",
            "notification_id": self.next_id("notif"),
            "user_id": self.user,
            "title": title,
            "message": message,
            "notification_type": notification_type,
            "priority": *self.rng.pick(&["low", "normal", "high", "critical"]),
        })
    }
}

/// One line describing a message for a person watching `loadgen publish`.
pub fn describe(msg: &Value) -> String {
    let s = |k: &str| msg.get(k).and_then(Value::as_str).unwrap_or("-");
    let n = |k: &str| msg.get(k).map(Value::to_string).unwrap_or_else(|| "-".into());
    match s("type") {
        "market_update" => format!(
            "market_update    {:<9} price={:<10} change={:>+6.2}% volume={}",
            s("symbol"),
            n("price"),
            msg.get("change").and_then(Value::as_f64).unwrap_or(0.0),
            n("volume"),
        ),
        "new_signal" => format!(
            "new_signal       {:<9} {} {} confidence={} entry={} target={} stop={} ({})",
            s("symbol"),
            s("signal_type"),
            s("strength"),
            n("confidence_score"),
            n("entry_price"),
            n("target_price"),
            n("stop_loss"),
            s("signal_id"),
        ),
        "signal_update" => format!(
            "signal_update    {} confidence={}",
            s("signal_id"),
            n("confidence_score")
        ),
        "new_notification" => format!(
            "new_notification {:<9} [{}/{}] {}: {} ({})",
            s("user_id"),
            s("priority"),
            s("notification_type"),
            s("title"),
            s("message"),
            s("notification_id"),
        ),
        other => format!("{other} {msg}"),
    }
}

/// The bench's symbol names: SYM000, SYM001, ... (at least 3 digits).
pub fn bench_symbol(index: u32, symbols: u32) -> String {
    let width = symbols.saturating_sub(1).to_string().len().max(3);
    format!("SYM{index:0width$}")
}

/// Appends a bench `market_update` to `out`. The price walks with `n` so
/// that consecutive updates differ.
pub fn write_market(out: &mut String, symbol: &str, n: u64, t_ns: u64) {
    let cents = 10_000 + (n % 997) * 7;
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        r#"{{"type":"market_update","symbol":"{symbol}","price":{}.{:02},"change":0.25,"volume":{},"t_ns":{t_ns}}}"#,
        cents / 100,
        cents % 100,
        1000 + n % 10_000,
    );
}

/// Adds a `"pad"` field holding `pad` to the JSON object that ends `out`
/// (one of the `write_*` above), to make bench messages bigger. `pad`
/// must need no JSON escaping; an empty one adds nothing.
pub fn add_pad(out: &mut String, pad: &str) {
    if pad.is_empty() || !out.ends_with('}') {
        return;
    }
    out.pop();
    out.push_str(r#","pad":""#);
    out.push_str(pad);
    out.push_str(r#""}"#);
}

/// Appends a bench `new_signal` to `out`.
pub fn write_signal(out: &mut String, run: &str, n: u64, symbol: &str, t_ns: u64) {
    let signal_type = ["BUY", "SELL", "HOLD"][(n % 3) as usize];
    let _ = write!(
        out,
        r#"{{"type":"new_signal","signal_id":"bench_{run}_{n}","symbol":"{symbol}","signal_type":"{signal_type}","strength":"MODERATE","confidence_score":75,"entry_price":100.0,"target_price":110.0,"stop_loss":95.0,"t_ns":{t_ns}}}"#,
    );
}

/// Appends a bench `new_notification` for `user` to `out`.
pub fn write_notification(out: &mut String, run: &str, n: u64, user: &str, t_ns: u64) {
    let _ = write!(
        out,
        r#"{{"type":"new_notification","notification_id":"bench_{run}_{n}","user_id":"{user}","title":"Trade Executed","message":"BUY 1 SYM @ $100.00","notification_type":"trade","priority":"normal","t_ns":{t_ns}}}"#,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_per_seed_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            let i = a.int(3, 5);
            assert!((3..=5).contains(&i));
            b.unit();
            b.int(3, 5);
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn feed_messages_have_the_protocol_shapes() {
        let symbols = vec!["BTC-USD".to_owned(), "ETH-USD".to_owned()];
        let mut feed = Feed::new(&symbols, "alice", Rng::new(1));
        for _ in 0..50 {
            let m = feed.next(Kind::Market);
            assert_eq!(m["type"], "market_update");
            assert!(symbols.iter().any(|s| m["symbol"] == s.as_str()));
            assert!(m["price"].as_f64().unwrap() > 0.0);
            assert!(m["change"].is_f64());
            assert!(m["volume"].is_u64());
            assert!(m.get("seq").is_none());
        }
        let mut ids = std::collections::HashSet::new();
        for _ in 0..50 {
            let n = feed.next(Kind::Notifications);
            assert_eq!(n["type"], "new_notification");
            assert_eq!(n["user_id"], "alice");
            for k in ["title", "message", "notification_type", "priority"] {
                assert!(n[k].is_string(), "{k}");
            }
            assert!(ids.insert(n["notification_id"].as_str().unwrap().to_owned()));
        }
        let mut saw_update = false;
        for _ in 0..50 {
            let s = feed.next(Kind::Signals);
            match s["type"].as_str().unwrap() {
                "new_signal" => {
                    let entry = s["entry_price"].as_f64().unwrap();
                    let target = s["target_price"].as_f64().unwrap();
                    let stop = s["stop_loss"].as_f64().unwrap();
                    if s["signal_type"] == "SELL" {
                        assert!(target < entry && entry < stop);
                    } else {
                        assert!(stop < entry && entry < target);
                    }
                }
                "signal_update" => {
                    saw_update = true;
                    assert!(s["signal_id"].as_str().unwrap().starts_with("signal_"));
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert!(saw_update);
    }

    #[test]
    fn bench_messages_are_valid_json_with_t_ns() {
        let mut buf = String::new();
        write_market(&mut buf, "SYM001", 12, 1_700_000_000_000_000_000);
        let v: Value = serde_json::from_str(&buf).unwrap();
        assert_eq!(v["symbol"], "SYM001");
        assert_eq!(v["t_ns"], 1_700_000_000_000_000_000u64);
        assert!(v["price"].is_f64());

        buf.clear();
        write_signal(&mut buf, "ab12", 3, "SYM002", 5);
        let v: Value = serde_json::from_str(&buf).unwrap();
        assert_eq!(v["signal_id"], "bench_ab12_3");
        assert_eq!(v["t_ns"], 5);

        buf.clear();
        write_notification(&mut buf, "ab12", 4, "u7", 6);
        let v: Value = serde_json::from_str(&buf).unwrap();
        assert_eq!(v["user_id"], "u7");
    }

    #[test]
    fn padding_adds_one_field_of_that_size() {
        let mut buf = String::new();
        write_market(&mut buf, "SYM001", 12, 5);
        let unpadded = buf.clone();
        add_pad(&mut buf, "");
        assert_eq!(buf, unpadded);
        add_pad(&mut buf, &"x".repeat(100));
        let v: Value = serde_json::from_str(&buf).unwrap();
        assert_eq!(v["pad"].as_str().map(str::len), Some(100));
        assert_eq!(v["t_ns"], 5);
        assert_eq!(buf.len(), unpadded.len() + 100 + r#","pad":"""#.len());
    }

    #[test]
    fn bench_symbols_are_zero_padded() {
        assert_eq!(bench_symbol(7, 100), "SYM007");
        assert_eq!(bench_symbol(42, 1000), "SYM042");
        assert_eq!(bench_symbol(42, 10_000), "SYM0042");
    }

    #[test]
    fn describe_names_the_essentials() {
        let line = describe(
            &json!({"type":"market_update","symbol":"BTC-USD","price":1.5,"change":-0.5,"volume":3}),
        );
        assert!(line.contains("BTC-USD") && line.contains("price=1.5") && line.contains("-0.50%"));
    }
}
