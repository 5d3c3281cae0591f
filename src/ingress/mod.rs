//! Where publishes enter: the bodies of `POST /api/publish`, the frames of
//! `/ws/ingest` (and, in cluster mode, the Redis ingest channel) are
//! decoded, validated and completed here, then handed to the stream's
//! fanout shard in the order they were sent. Each entry is judged alone:
//! the valid entries of a batch are published even when others are not.
//!
//! Ingress keeps the one piece of state validation needs: each signal's
//! symbol and type, so a `signal_update` that leaves them out is completed
//! (and filtered) by them, and one naming an unknown signal is refused.
//!
//! A publish may be named, so that a retry is delivered once: a request's
//! `Idempotency-Key`, or an entry's `publish_id` (stripped before anything
//! is forwarded). Named entries go through [`idempotency`]: in Redis in
//! cluster mode, in this node's [`Memory`] in embedded mode.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::Value;

mod outcome;
mod pipeline;
pub mod redis;

pub use outcome::{KeyRefusal, Outcome};
pub use pipeline::{Answers, Submission};

use crate::config::Config;
use crate::fanout::{Fanout, Inbound};
use crate::limit::TokenBucket;
use crate::metrics::Metrics;
use crate::protocol::update::{decode_batch, Update};
use crate::protocol::{ErrorCode, ProtocolError, SignalType, UpdateKind};
use crate::replication::idempotency::{self, Begin, Memory, Record, RequestKey, Sent};
use crate::replication::{Replication, ReplicationError};
use crate::ring;

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
    /// How long a publish id is remembered.
    idempotency_window: Duration,
    /// Embedded mode's publish ids (unused in cluster mode, where Redis
    /// remembers them).
    memory: Memory,
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
            idempotency_window: config.idempotency_window,
            memory: Memory::new(config.idempotency_window),
        }
    }

    /// Publishes every valid entry of a body, in order.
    pub async fn publish(&self, body: &[u8]) -> Result<Outcome, ProtocolError> {
        self.publish_claimed(body, None).await
    }

    /// Publishes a body sent with the API key of index `publisher`, within
    /// that key's rate limit: a body over it is refused whole (`rate_limited`).
    pub async fn publish_as(&self, body: &[u8], publisher: Option<usize>) -> Result<Outcome, ProtocolError> {
        self.publish_keyed(body, publisher, None).await
    }

    /// [`Ingress::publish_as`] for a request that may carry an
    /// `Idempotency-Key` (already checked with [`idempotency::valid_key`]):
    /// its entries are then named by it, and its entries' own
    /// `publish_id`s are not used.
    pub async fn publish_keyed(
        &self,
        body: &[u8],
        publisher: Option<usize>,
        key: Option<&str>,
    ) -> Result<Outcome, ProtocolError> {
        self.within_budget(body, publisher)?;
        self.publish_body(body, None, key).await
    }

    /// Takes a body's entries from its API key's rate budget; refuses the
    /// body whole (`rate_limited`) when they are over it.
    fn within_budget(&self, body: &[u8], publisher: Option<usize>) -> Result<(), ProtocolError> {
        if let Some(budget) = publisher.and_then(|i| self.budgets.get(i)) {
            let entries = crate::protocol::outline(body).entries;
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
        Ok(())
    }

    /// Publishes a body; `claim` (cluster mode, for the Redis ingest
    /// channel) names it so that only one node of the cluster takes it.
    pub async fn publish_claimed(&self, body: &[u8], claim: Option<&str>) -> Result<Outcome, ProtocolError> {
        self.publish_body(body, claim, None).await
    }

    async fn publish_body(
        &self,
        body: &[u8],
        claim: Option<&str>,
        key: Option<&str>,
    ) -> Result<Outcome, ProtocolError> {
        let Validated {
            mut outcome,
            valid,
            received_at,
            received_micros,
        } = self.validate(body, key)?;
        match &self.replication {
            None => {
                self.publish_here(valid, key, body, received_at, &mut outcome)
                    .await
            }
            Some(r) => {
                self.publish_to_redis(r, valid, claim, key, body, received_micros, &mut outcome)
                    .await
            }
        }
        Ok(settled(outcome, &self.metrics))
    }

    /// Decodes a body and sorts its entries into the valid ones (named by
    /// the request's key or their `publish_id`) and the refused.
    fn validate(&self, body: &[u8], key: Option<&str>) -> Result<Validated, ProtocolError> {
        let received_at = Instant::now();
        let received_micros = crate::replication::layout::now_micros();
        let entries = decode_batch(body).inspect_err(|_| self.metrics.publish_rejected(1))?;
        let mut outcome = Outcome::default();
        let mut valid = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            match entry.and_then(take_publish_id) {
                Ok((u, publish_id)) => {
                    let id = match key {
                        Some(k) => Some(format!("r:{k}#{index}")),
                        None => publish_id.map(|p| format!("e:{p}")),
                    };
                    valid.push(Named { index, update: u, id });
                }
                Err(e) => outcome.errors.push((index, e)),
            }
        }
        Ok(Validated {
            outcome,
            valid,
            received_at,
            received_micros,
        })
    }

    /// Embedded mode: completes each entry and hands it to its shard; a
    /// named entry only when this node has no outcome for its id yet.
    async fn publish_here(
        &self,
        valid: Vec<Named>,
        key: Option<&str>,
        body: &[u8],
        received_at: Instant,
        outcome: &mut Outcome,
    ) {
        // Held until every entry is done, so a retry of this request meanwhile
        // is told to wait rather than racing it.
        let mut request = None;
        if let Some(key) = key {
            let fingerprint = idempotency::fingerprint(body);
            match self.memory.begin(&format!("q:{key}"), Instant::now()) {
                Begin::Fresh(p) => request = Some((p, fingerprint)),
                Begin::Done(Record::Request { fingerprint: first }) if first == fingerprint => {
                    outcome.replayed = true;
                }
                Begin::Done(_) => {
                    outcome.key_refused = Some(KeyRefusal::Reused);
                    outcome.errors.clear();
                    return;
                }
                Begin::InFlight => {
                    outcome.key_refused = Some(KeyRefusal::InFlight);
                    outcome.errors.clear();
                    return;
                }
            }
        }
        // Each shard's worker is woken once, for all of this publish's
        // entries it got (when `rings` is dropped).
        let mut rings = ring::Batch::new();
        for Named { index, update, id } in valid {
            let pending = match id.as_deref().map(|id| self.memory.begin(id, Instant::now())) {
                None => None,
                Some(Begin::Fresh(p)) => Some(p),
                Some(Begin::Done(record)) => {
                    outcome.replayed = true;
                    match record {
                        Record::Refused(e) => outcome.errors.push((index, e)),
                        Record::Accepted | Record::Request { .. } => outcome.accepted += 1,
                    }
                    continue;
                }
                Some(Begin::InFlight) => {
                    outcome.in_progress += 1;
                    continue;
                }
            };
            let update = match self.complete(update) {
                Ok(u) => u,
                Err(e) => {
                    if let Some(p) = pending {
                        p.finish(Record::Refused(e.clone()));
                    }
                    outcome.errors.push((index, e));
                    continue;
                }
            };
            let kind = update.kind;
            let ring = self.fanout.shard_for(&update.stream);
            match rings
                .push(ring, Inbound::fresh(update, received_at), self.patience)
                .await
            {
                Ok(()) => {
                    if let Some(p) = pending {
                        p.finish(Record::Accepted);
                    }
                    outcome.accepted += 1;
                    self.metrics.published(kind);
                }
                // Not published: the id is forgotten (`pending` dropped),
                // so a retry publishes it.
                Err(_) => outcome.overloaded += 1,
            }
        }
        if let Some((p, fingerprint)) = request {
            p.finish(Record::Request { fingerprint });
        }
    }

    /// Cluster mode: Redis sequences, stores and spreads the valid
    /// entries; named ones through the idempotent script.
    #[allow(clippy::too_many_arguments)]
    async fn publish_to_redis(
        &self,
        replication: &Replication,
        valid: Vec<Named>,
        claim: Option<&str>,
        key: Option<&str>,
        body: &[u8],
        received_micros: u64,
        outcome: &mut Outcome,
    ) {
        if valid.is_empty() && key.is_none() {
            return;
        }
        if let Some(key) = key {
            let fingerprint = idempotency::fingerprint(body);
            match replication
                .claim_request(key, fingerprint, self.idempotency_window)
                .await
            {
                Ok(RequestKey::New) => {}
                Ok(RequestKey::Seen(first)) if first == fingerprint => outcome.replayed = true,
                Ok(RequestKey::Seen(_)) => {
                    outcome.key_refused = Some(KeyRefusal::Reused);
                    outcome.errors.clear();
                    return;
                }
                // Only the key was at stake: nothing was published.
                Err(_) => {
                    outcome.unavailable = valid.len();
                    return;
                }
            }
        }
        if valid.is_empty() {
            return;
        }
        let places: Vec<(usize, UpdateKind)> = valid.iter().map(|n| (n.index, n.update.kind)).collect();
        if valid.iter().all(|n| n.id.is_none()) {
            let updates = valid.into_iter().map(|n| n.update).collect();
            let answer = replication.publish(updates, claim, received_micros).await;
            count_answer(&self.metrics, outcome, places, answer);
            return;
        }
        let named = valid.into_iter().map(|n| (n.update, n.id)).collect();
        match replication
            .publish_named(named, claim, received_micros, self.idempotency_window)
            .await
        {
            Ok(sent) => {
                for ((index, kind), sent) in places.into_iter().zip(sent) {
                    match sent {
                        Sent::Answered { result, replayed } => {
                            outcome.replayed |= replayed;
                            count_result(&self.metrics, outcome, index, (!replayed).then_some(kind), result);
                        }
                        Sent::Unknown => outcome.unknown += 1,
                    }
                }
            }
            Err(e) if e.outcome_unknown() => outcome.unknown = places.len(),
            Err(_) => outcome.unavailable = places.len(),
        }
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

/// One entry's result from Redis: its seq (or 0, taken by another node
/// from the ingest channel), or -1 for an unknown signal. `kind` is
/// counted as published, unless it is `None` (a replay).
fn count_result(
    metrics: &Metrics,
    outcome: &mut Outcome,
    index: usize,
    kind: Option<UpdateKind>,
    result: i64,
) {
    if result < 0 {
        outcome.errors.push((index, unknown_signal()));
    } else {
        outcome.accepted += 1;
        if let Some(kind) = kind {
            metrics.published(kind);
        }
    }
}

/// Redis's answer to unnamed entries at `places` (index in the body,
/// kind): each entry's result, or what a failure means for all of them.
fn count_answer(
    metrics: &Metrics,
    outcome: &mut Outcome,
    places: Vec<(usize, UpdateKind)>,
    answer: Result<Vec<i64>, ReplicationError>,
) {
    match answer {
        Ok(results) => {
            for ((index, kind), result) in places.into_iter().zip(results) {
                count_result(metrics, outcome, index, Some(kind), result);
            }
        }
        Err(e) if e.outcome_unknown() => outcome.unknown = places.len(),
        Err(_) => outcome.unavailable = places.len(),
    }
}

/// The outcome as answered: refusals in body order, and counted.
fn settled(mut outcome: Outcome, metrics: &Metrics) -> Outcome {
    outcome.errors.sort_by_key(|(i, _)| *i);
    metrics.publish_rejected(outcome.errors.len() as u64);
    outcome
}

/// A decoded body: what was refused so far, and the valid entries.
struct Validated {
    outcome: Outcome,
    valid: Vec<Named>,
    received_at: Instant,
    received_micros: u64,
}

/// A valid entry, where it was in its body, and the id naming it.
struct Named {
    index: usize,
    update: Update,
    id: Option<String>,
}

/// Takes an entry's `publish_id` out of what is forwarded: absent or
/// `null`, or 1 to 200 printable ASCII characters (`invalid_field`
/// otherwise).
fn take_publish_id(mut u: Update) -> Result<(Update, Option<String>), ProtocolError> {
    match u.body.remove("publish_id") {
        None | Some(Value::Null) => Ok((u, None)),
        Some(Value::String(id)) if idempotency::valid_key(&id) => Ok((u, Some(id))),
        Some(_) => Err(ProtocolError::invalid(
            "publish_id",
            &format!(
                "must be a string of 1 to {} printable ASCII characters",
                idempotency::MAX_KEY_BYTES
            ),
        )),
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
