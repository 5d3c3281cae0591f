//! Where publishes enter: the bodies of `POST /api/publish`, the frames of
//! `/ws/ingest` (and, in cluster mode, the Redis ingest channel) are
//! decoded, validated and completed here, then handed to the stream's
//! fanout shard in the order they were sent. Each entry is judged alone:
//! the valid entries of a batch are published even when others are not.
//!
//! Ingress keeps the one piece of state validation needs: each signal's
//! symbol and type, so a `signal_update` that leaves them out is completed
//! (and filtered) by them, and one naming an unknown signal is refused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::Value;

use crate::config::Config;
use crate::fanout::{Fanout, Inbound};
use crate::limit::TokenBucket;
use crate::metrics::Metrics;
use crate::protocol::update::{decode_batch, Update};
use crate::protocol::{ErrorCode, ProtocolError, SignalType, UpdateKind};
use crate::replication::Replication;

/// Signals whose state is remembered; past this, the oldest tenth is
/// forgotten in one pass (an update to a forgotten signal is refused like
/// an unknown one).
const MAX_TRACKED_SIGNALS: u64 = 100_000;

#[derive(Debug, Clone)]
struct SignalState {
    symbol: Arc<str>,
    signal_type: SignalType,
    /// Insertion order, to forget the oldest first.
    born: u64,
}

/// The result of publishing one body.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub accepted: usize,
    /// Refused entries by their index in the body.
    pub errors: Vec<(usize, ProtocolError)>,
    /// Entries not taken because the server stayed saturated.
    pub overloaded: usize,
    /// Entries not taken because Redis is unreachable (cluster mode).
    pub unavailable: usize,
}

pub struct Ingress {
    fanout: Arc<Fanout>,
    /// Cluster mode: Redis sequences, stores and spreads every update.
    replication: Option<Arc<Replication>>,
    /// A dashmap: any number of publishers validate signal updates at once.
    signals: DashMap<Arc<str>, SignalState>,
    metrics: Arc<Metrics>,
    /// How long a publisher waits for room in a full ring before its entry
    /// is refused as overload.
    patience: Duration,
    /// Each API key's publish rate limit (by key index), when configured;
    /// a mutex held for one bucket update.
    budgets: Vec<Mutex<TokenBucket>>,
}

impl Ingress {
    pub fn new(
        fanout: Arc<Fanout>,
        replication: Option<Arc<Replication>>,
        metrics: Arc<Metrics>,
        config: &Config,
    ) -> Ingress {
        let budgets = match config.publishes_per_second_per_key {
            Some(rate) => config
                .api_keys
                .iter()
                .map(|_| Mutex::new(TokenBucket::new(rate, config.publish_burst)))
                .collect(),
            None => Vec::new(),
        };
        Ingress {
            budgets,
            fanout,
            replication,
            signals: DashMap::new(),
            metrics,
            patience: Duration::from_secs(5),
        }
    }

    /// Publishes every valid entry of a body, in order.
    pub async fn publish(&self, body: &[u8]) -> Result<Outcome, ProtocolError> {
        self.publish_claimed(body, None).await
    }

    /// Publishes a body sent with the API key of index `publisher`, within
    /// that key's rate limit: a body over it is refused whole (`rate_limited`).
    pub async fn publish_as(&self, body: &[u8], publisher: Option<usize>) -> Result<Outcome, ProtocolError> {
        if let Some(budget) = publisher.and_then(|i| self.budgets.get(i)) {
            let entries = count_entries(body);
            let ok = budget
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(entries, Instant::now());
            if !ok {
                self.metrics.publish_rate_limited(entries as u64);
                return Err(ProtocolError::new(
                    ErrorCode::RateLimited,
                    "this API key publishes faster than its limit (limits.publishes_per_second_per_key)",
                ));
            }
        }
        self.publish_claimed(body, None).await
    }

    /// Publishes a body; `claim` (cluster mode, for the Redis ingest
    /// channel) names it so that only one node of the cluster takes it.
    pub async fn publish_claimed(&self, body: &[u8], claim: Option<&str>) -> Result<Outcome, ProtocolError> {
        let received_at = Instant::now();
        let received_micros = crate::replication::layout::now_micros();
        let entries = decode_batch(body).inspect_err(|_| self.metrics.publish_rejected(1))?;
        let mut outcome = Outcome::default();
        match &self.replication {
            None => {
                for (index, entry) in entries.into_iter().enumerate() {
                    let update = match entry.and_then(|u| self.complete(u)) {
                        Ok(u) => u,
                        Err(e) => {
                            outcome.errors.push((index, e));
                            continue;
                        }
                    };
                    let kind = update.kind;
                    let ring = self.fanout.shard_for(&update.stream);
                    match ring
                        .push(Inbound::fresh(update, received_at), self.patience)
                        .await
                    {
                        Ok(()) => {
                            outcome.accepted += 1;
                            self.metrics.published(kind);
                        }
                        Err(_) => outcome.overloaded += 1,
                    }
                }
            }
            Some(replication) => {
                let mut valid = Vec::new();
                let mut places = Vec::new();
                for (index, entry) in entries.into_iter().enumerate() {
                    match entry {
                        Ok(u) => {
                            places.push(index);
                            valid.push(u);
                        }
                        Err(e) => outcome.errors.push((index, e)),
                    }
                }
                let kinds: Vec<UpdateKind> = valid.iter().map(|u| u.kind).collect();
                if !valid.is_empty() {
                    match replication.publish(valid, claim, received_micros).await {
                        Ok(results) => {
                            for ((index, result), kind) in places.iter().zip(results).zip(kinds) {
                                if result < 0 {
                                    outcome.errors.push((*index, unknown_signal()));
                                } else {
                                    outcome.accepted += 1;
                                    self.metrics.published(kind);
                                }
                            }
                        }
                        Err(_) => outcome.unavailable = places.len(),
                    }
                }
                outcome.errors.sort_by_key(|(i, _)| *i);
            }
        }
        self.metrics.publish_rejected(outcome.errors.len() as u64);
        Ok(outcome)
    }

    /// Applies and records signal state: a new signal is remembered; an
    /// update gets the signal's symbol and type where it left them out.
    fn complete(&self, mut u: Update) -> Result<Update, ProtocolError> {
        let Some(id) = u.signal_id.clone() else {
            return Ok(u);
        };
        match u.kind {
            UpdateKind::NewSignal => {
                let (Some(symbol), Some(signal_type)) = (u.symbol.clone(), u.signal_type) else {
                    return Err(ProtocolError::missing("symbol"));
                };
                let born = next_born();
                if self.signals.len() as u64 >= MAX_TRACKED_SIGNALS {
                    let cutoff = born.saturating_sub(MAX_TRACKED_SIGNALS * 9 / 10);
                    self.signals.retain(|_, s| s.born >= cutoff);
                }
                self.signals.insert(
                    id,
                    SignalState {
                        symbol,
                        signal_type,
                        born,
                    },
                );
                Ok(u)
            }
            UpdateKind::SignalUpdate => {
                let mut state = self.signals.get_mut(&id).ok_or_else(|| {
                    ProtocolError::new(
                        ErrorCode::InvalidField,
                        format!(
                            "signal_id `{}` names no known signal",
                            id.chars().take(64).collect::<String>()
                        ),
                    )
                })?;
                match &u.symbol {
                    Some(s) => state.symbol = s.clone(),
                    None => {
                        u.body
                            .insert("symbol".into(), Value::String(state.symbol.to_string()));
                        u.symbol = Some(state.symbol.clone());
                    }
                }
                match u.signal_type {
                    Some(t) => state.signal_type = t,
                    None => {
                        u.body.insert(
                            "signal_type".into(),
                            Value::String(state.signal_type.wire_name().into()),
                        );
                        u.signal_type = Some(state.signal_type);
                    }
                }
                Ok(u)
            }
            _ => Ok(u),
        }
    }
}

/// Entries in a body without decoding it: top-level array elements, or 1.
fn count_entries(body: &[u8]) -> u32 {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if start.map(|i| body[i]) != Some(b'[') {
        return 1;
    }
    let (mut depth, mut in_string, mut escaped, mut count, mut any) = (0i32, false, false, 0u32, false);
    for &b in &body[start.unwrap_or(0)..] {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
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
                if depth == 2 {
                    any = true;
                }
            }
            b']' | b'}' => depth -= 1,
            b',' if depth == 1 => count += 1,
            _ if depth == 1 && !b.is_ascii_whitespace() => any = true,
            _ => {}
        }
    }
    if any {
        count + 1
    } else {
        0
    }
}

fn unknown_signal() -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidField, "signal_id names no known signal")
}

fn next_born() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static BORN: AtomicU64 = AtomicU64::new(0);
    // Relaxed: only a rough age order is needed.
    BORN.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::count_entries;

    #[test]
    fn entries_are_counted_without_decoding() {
        assert_eq!(count_entries(br#"{"a":[1,2]}"#), 1);
        assert_eq!(count_entries(br#" [ {"a":"x,]"}, {"b":[1,2,3]}, 3 ]"#), 3);
        assert_eq!(count_entries(b"[]"), 0);
        assert_eq!(count_entries(br#"["a\",b"]"#), 1);
    }
}
