//! The memory of publish ids, so that a publisher that retries (after a
//! `503`, a lost answer, a dropped `/ws/ingest` socket) is delivered once.
//! A request's `Idempotency-Key` names its entries (`r:<key>#<index>`),
//! a `publish_id` names one entry (`e:<id>`); each named entry is taken
//! at most once per `limits.idempotency_window_secs`, and a retry is
//! answered with what the first attempt got.
//!
//! - Cluster mode: the memory is in Redis, so every node agrees. An entry's
//!   record is written by the same script call that publishes it, in its
//!   stream group (`tw:{gN}:pid:<id>`, the entry's result, expiring with
//!   the window): no moment exists where an entry is published but not
//!   remembered, so a retry whose first attempt timed out, or that reaches
//!   another node, finds it. A request's key also records the body it
//!   came with (`tw:req:<key>`, a fingerprint), so a key reused for
//!   another body is refused rather than answered with another's outcome.
//! - Embedded mode: [`Memory`], a map in the process, bounded in entries
//!   and bytes (oldest forgotten first), so no publisher can grow it
//!   without limit.
//!
//! Ingress calls this; nothing here decodes or validates a message.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::Script;

use super::{entry, layout, Entry, Replication, ReplicationError, PUBLISH_LUA};
use crate::protocol::update::Update;
use crate::protocol::ProtocolError;

/// The longest `Idempotency-Key` or `publish_id`, in bytes.
pub const MAX_KEY_BYTES: usize = 200;

/// Whether `key` may name a publish: 1 to [`MAX_KEY_BYTES`] bytes of
/// printable ASCII (space to `~`).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// A stable fingerprint of a request body (FNV-1a, as every node of a
/// cluster must compute the same one).
pub fn fingerprint(body: &[u8]) -> u64 {
    layout::fnv1a(body)
}

// ---------------------------------------------------------------- cluster

/// [`PUBLISH_LUA`] run for the entries whose id has no record, then each
/// fresh entry's record written; see [`idempotent_script`].
const IDEMPOTENT_LUA: &str = include_str!("publish_once.lua");

/// Records a request's key with its body's fingerprint, unless it is
/// recorded already: returns the recorded fingerprint, or nil when this
/// call recorded it. ARGV: fingerprint, lifetime in ms.
const CLAIM_REQUEST_LUA: &str = include_str!("claim_request.lua");

/// The publish script wrapped so that named entries are taken once: one
/// source for the publishing itself, so both paths number, store and
/// spread an entry the same way.
fn idempotent_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&IDEMPOTENT_LUA.replace("%PUBLISH%", PUBLISH_LUA)))
}

fn claim_request_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(CLAIM_REQUEST_LUA))
}

/// What became of one entry sent by [`Replication::publish_named`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Redis answered: the result as [`Replication::publish`] gives it
    /// (the seq, 0, or -1), and whether it is the result of an earlier
    /// attempt with the same id.
    Answered { result: i64, replayed: bool },
    /// The request was sent but not answered in time: it may or may not
    /// have been carried out. A retry with the same id settles it.
    Unknown,
}

/// A request key as Redis knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKey {
    /// First seen now.
    New,
    /// Seen before, with a body of this fingerprint.
    Seen(u64),
}

impl ReplicationError {
    /// Whether a request that failed this way may still have been carried
    /// out by Redis. Only [`ReplicationError::Unavailable`] (no link: the
    /// request was never sent) says for sure that it was not; a timeout,
    /// a broken connection or an error reply may come after the script ran.
    pub fn outcome_unknown(&self) -> bool {
        !matches!(self, ReplicationError::Unavailable)
    }

    /// The same failure again, for each job of a failed batch.
    pub(super) fn for_each_job(&self) -> ReplicationError {
        match self {
            ReplicationError::Unavailable => ReplicationError::Unavailable,
            ReplicationError::Redis(e) => ReplicationError::Redis(e.clone()),
            ReplicationError::Timeout(d) => ReplicationError::Timeout(*d),
            ReplicationError::ClusterNotReady => ReplicationError::ClusterNotReady,
            ReplicationError::PushClosed => ReplicationError::PushClosed,
            ReplicationError::Disconnected => ReplicationError::Disconnected,
            ReplicationError::FellBehind => ReplicationError::FellBehind,
            ReplicationError::NoHeartbeat { channel, after } => ReplicationError::NoHeartbeat {
                channel: channel.clone(),
                after: *after,
            },
            ReplicationError::RingsFull => ReplicationError::RingsFull,
        }
    }
}

/// A lifetime in whole milliseconds, at least 1 (Redis refuses `PX 0`).
fn millis(window: Duration) -> String {
    window.as_millis().clamp(1, u64::MAX as u128).to_string()
}

impl Replication {
    /// Records request `key` with the fingerprint of its body for
    /// `window`, or tells the fingerprint it was first seen with. Nothing
    /// is published either way, so any error means "not published".
    pub async fn claim_request(
        &self,
        key: &str,
        fingerprint: u64,
        window: Duration,
    ) -> Result<RequestKey, ReplicationError> {
        if !self.is_up() {
            return Err(ReplicationError::Unavailable);
        }
        let mut conn = self.conn()?;
        let mut inv = claim_request_script().key(format!("tw:req:{key}"));
        inv.arg(format!("{fingerprint:016x}")).arg(millis(window));
        let old: Option<String> = conn.script(&inv).await?;
        Ok(match old {
            None => RequestKey::New,
            // A record this code did not write is another body's.
            Some(old) => RequestKey::Seen(u64::from_str_radix(&old, 16).unwrap_or(!fingerprint)),
        })
    }

    /// Sequences and publishes validated updates as [`Replication::publish`]
    /// does, each one named by an id taken at most once within `window`,
    /// cluster-wide. One script call per stream group, all at once, sent
    /// directly rather than through the batcher (whose batches mix jobs):
    /// a publisher's order holds, since it waits for this answer before
    /// it sends more. `Err` only when nothing was sent.
    pub async fn publish_named(
        &self,
        updates: Vec<(Update, Option<String>)>,
        claim: Option<&str>,
        received_micros: u64,
        window: Duration,
    ) -> Result<Vec<Sent>, ReplicationError> {
        if !self.is_up() {
            return Err(ReplicationError::Unavailable);
        }
        let conn = self.conn()?;
        let named: Vec<(Entry, String)> = updates
            .into_iter()
            .enumerate()
            .map(|(i, (u, id))| {
                let e = entry(u, claim.map(|c| format!("{c}.{i}")), received_micros);
                (e, id.unwrap_or_default())
            })
            .collect();
        // Entries by group, in order, by their place in `named`.
        let mut groups: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, (e, _)) in named.iter().enumerate() {
            groups.entry(e.group).or_default().push(i);
        }
        let ttl = millis(window);
        let calls = groups.iter().map(|(group, places)| {
            let mut conn = conn.clone();
            let mut inv = idempotent_script().key(layout::channel(*group));
            self.script_head(&mut inv, *group, places.len());
            for i in places {
                for a in &named[*i].0.args {
                    inv.arg(a.as_str());
                }
            }
            for i in places {
                inv.arg(named[*i].1.as_str());
            }
            inv.arg(ttl.as_str());
            async move { conn.script::<Vec<i64>>(&inv).await }
        });
        let replies = join_all(calls).await;
        let mut out = vec![Sent::Unknown; named.len()];
        for ((_, places), reply) in groups.iter().zip(replies) {
            match reply {
                Ok(pairs) if pairs.len() == 2 * places.len() => {
                    for (i, pair) in places.iter().zip(pairs.chunks(2)) {
                        out[*i] = Sent::Answered {
                            result: pair[0],
                            replayed: pair[1] == 1,
                        };
                    }
                }
                Ok(pairs) => tracing::warn!(
                    got = pairs.len(),
                    entries = places.len(),
                    "idempotent publish: malformed reply; outcome unknown"
                ),
                Err(e) => tracing::debug!(error = %e, "idempotent publish: no answer; outcome unknown"),
            }
        }
        Ok(out)
    }
}

// --------------------------------------------------------------- embedded

/// Ids an embedded node remembers at most; past it the oldest are
/// forgotten before their window ends.
const MAX_REMEMBERED: usize = 1 << 18;
/// Bytes of ids (with their bookkeeping) an embedded node remembers at most.
const MAX_REMEMBERED_BYTES: usize = 64 << 20;
/// What one remembered id costs beside its bytes: two map and queue
/// slots, a shared string header, a record.
const SLOT_OVERHEAD_BYTES: usize = 160;

/// The first outcome of a named entry or request.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The entry was published.
    Accepted,
    /// The entry was refused (a `signal_update` of an unknown signal).
    Refused(ProtocolError),
    /// A request key, with its body's fingerprint.
    Request { fingerprint: u64 },
}

#[derive(Debug)]
enum State {
    /// An attempt holds a [`Pending`] for it.
    InFlight,
    Done(Record),
}

#[derive(Debug)]
struct Slot {
    /// Tells this slot from a later one of the same id, for the queue.
    generation: u64,
    state: State,
}

#[derive(Debug, Default)]
struct Slots {
    by_id: HashMap<Arc<str>, Slot>,
    /// Every slot made, oldest first, with when it was made: the window is
    /// the same for all, so this is also the order they expire in. Entries
    /// of slots forgotten since are skipped when they come up.
    order: VecDeque<(Instant, Arc<str>, u64)>,
    /// Bytes counted for `order`.
    bytes: usize,
    next_generation: u64,
}

impl Slots {
    fn pop_oldest(&mut self) {
        if let Some((_, id, generation)) = self.order.pop_front() {
            self.bytes -= id.len() + SLOT_OVERHEAD_BYTES;
            if self.by_id.get(&id).is_some_and(|s| s.generation == generation) {
                self.by_id.remove(&id);
            }
        }
    }
}

/// Embedded mode's memory of publish ids. One per node, owned by ingress.
/// A mutex held for a map operation, never across an await.
#[derive(Debug)]
pub struct Memory {
    slots: Mutex<Slots>,
    window: Duration,
}

/// What [`Memory::begin`] found for an id.
#[derive(Debug)]
pub enum Begin<'a> {
    /// Nothing: this attempt goes ahead, and records its outcome with
    /// [`Pending::finish`] (dropped unfinished, the id is forgotten: the
    /// attempt published nothing).
    Fresh(Pending<'a>),
    /// The outcome of an earlier attempt.
    Done(Record),
    /// Another attempt with this id is under way.
    InFlight,
}

/// An id whose attempt is under way.
#[derive(Debug)]
pub struct Pending<'a> {
    memory: &'a Memory,
    id: Arc<str>,
    generation: u64,
    finished: bool,
}

impl Pending<'_> {
    /// Records the attempt's outcome for the rest of the window.
    pub fn finish(mut self, record: Record) {
        self.finished = true;
        let mut slots = self.memory.lock();
        if let Some(slot) = slots.by_id.get_mut(&self.id) {
            if slot.generation == self.generation {
                slot.state = State::Done(record);
            }
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut slots = self.memory.lock();
        if slots
            .by_id
            .get(&self.id)
            .is_some_and(|s| s.generation == self.generation)
        {
            slots.by_id.remove(&self.id);
        }
    }
}

impl Memory {
    pub fn new(window: Duration) -> Memory {
        Memory {
            slots: Mutex::new(Slots::default()),
            window,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks `id` up at `now`; when it is unknown, starts an attempt for it.
    pub fn begin(&self, id: &str, now: Instant) -> Begin<'_> {
        let mut slots = self.lock();
        while slots
            .order
            .front()
            .is_some_and(|(made, _, _)| now.saturating_duration_since(*made) >= self.window)
        {
            slots.pop_oldest();
        }
        if let Some(slot) = slots.by_id.get(id) {
            return match &slot.state {
                State::InFlight => Begin::InFlight,
                State::Done(record) => Begin::Done(record.clone()),
            };
        }
        let cost = id.len() + SLOT_OVERHEAD_BYTES;
        while !slots.order.is_empty()
            && (slots.order.len() >= MAX_REMEMBERED || slots.bytes + cost > MAX_REMEMBERED_BYTES)
        {
            slots.pop_oldest();
        }
        let id: Arc<str> = Arc::from(id);
        let generation = slots.next_generation;
        slots.next_generation += 1;
        slots.by_id.insert(
            id.clone(),
            Slot {
                generation,
                state: State::InFlight,
            },
        );
        slots.order.push_back((now, id.clone(), generation));
        slots.bytes += cost;
        Begin::Fresh(Pending {
            memory: self,
            id,
            generation,
            finished: false,
        })
    }

    /// Ids remembered now (finished or under way).
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh<'a>(m: &'a Memory, id: &str, now: Instant) -> Pending<'a> {
        match m.begin(id, now) {
            Begin::Fresh(p) => p,
            other => panic!("{id}: expected fresh, got {other:?}"),
        }
    }

    #[test]
    fn an_id_is_answered_with_its_first_outcome_until_its_window_ends() {
        let m = Memory::new(Duration::from_secs(10));
        let t0 = Instant::now();
        fresh(&m, "a", t0).finish(Record::Accepted);
        assert!(matches!(
            m.begin("a", t0 + Duration::from_secs(9)),
            Begin::Done(Record::Accepted)
        ));
        assert!(matches!(
            m.begin("a", t0 + Duration::from_secs(10)),
            Begin::Fresh(_)
        ));
    }

    #[test]
    fn an_attempt_under_way_is_seen_and_an_abandoned_one_forgotten() {
        let m = Memory::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let p = fresh(&m, "a", t0);
        assert!(matches!(m.begin("a", t0), Begin::InFlight));
        drop(p);
        assert!(m.is_empty());
        fresh(&m, "a", t0).finish(Record::Accepted);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn the_memory_is_bounded_in_entries_oldest_forgotten_first() {
        let m = Memory::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        for i in 0..MAX_REMEMBERED + 10 {
            fresh(&m, &format!("k{i}"), t0).finish(Record::Accepted);
        }
        assert_eq!(m.len(), MAX_REMEMBERED);
        assert!(matches!(m.begin("k0", t0), Begin::Fresh(_)));
        let last = format!("k{}", MAX_REMEMBERED + 9);
        assert!(matches!(m.begin(&last, t0), Begin::Done(_)));
    }

    #[test]
    fn the_memory_is_bounded_in_bytes() {
        let m = Memory::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        let long = "x".repeat(MAX_KEY_BYTES - 10);
        for i in 0..MAX_REMEMBERED {
            fresh(&m, &format!("{long}{i}"), t0).finish(Record::Accepted);
        }
        let slots = m.lock();
        assert!(slots.bytes <= MAX_REMEMBERED_BYTES);
        assert!(slots.by_id.len() < MAX_REMEMBERED);
    }

    #[test]
    fn keys_are_short_printable_ascii() {
        assert!(valid_key("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert!(valid_key(&"k".repeat(MAX_KEY_BYTES)));
        assert!(!valid_key(&"k".repeat(MAX_KEY_BYTES + 1)));
        assert!(!valid_key(""));
        assert!(!valid_key("a\nb"));
        assert!(!valid_key("café"));
    }
}
