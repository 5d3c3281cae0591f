//! What a node does between a new link to Redis and being ready again:
//! notices a Redis that lost its data and puts the stream counters back,
//! tells fanout (whose subscribers of a re-seeded stream get a `reset`,
//! and whose streams nobody here follows forget their windows), and
//! catches up the streams local subscribers follow, many reads in flight
//! at once, before live messages are taken.
//!
//! It never reads the history of a stream without a local subscriber: a
//! node that has seen 50 000 users' notifications and serves one
//! subscriber reads that subscriber's streams, so the time to ready grows
//! with what is followed here, not with all the node ever saw. What it
//! does for every stream it knows is cheap: one script call per stream
//! group checks the counters, and raises those Redis lost. Called by
//! `Replication::session`; the heartbeat clocks start once it is done.

use std::collections::HashMap;
use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::{Script, Value as RValue};
use tokio::sync::oneshot;

use super::{layout, Conn, Replication, ReplicationError, INGEST_BEAT, REQUEST_TIMEOUT};
use crate::fanout::Fanout;
use crate::fanout::{Control, Inbound, Payload};
use crate::protocol::{Seq, StreamKey};

/// Streams whose history is read from Redis at once during a catch-up,
/// and counter calls in flight at once during a re-seed. 200 symbols are
/// caught up in about 20 ms with 64 (tests/redis_recovery.rs); more only
/// queues more on the same connection.
const IN_FLIGHT: usize = 64;
/// Counters put back by one script call (all of one stream group, so of
/// one Redis Cluster slot).
const COUNTERS_PER_CALL: usize = 512;

/// Raises each counter `KEYS[i]` to `ARGV[i]` where it is lower, and
/// returns the positions (from 1) of those it raised. A counter only ever
/// rises, so every node may run it, in any order, any number of times.
const RAISE_LUA: &str = include_str!("raise_counters.lua");

impl Replication {
    /// Runs everything between a new link and `up`; the heartbeat clocks
    /// start when it ends, so that however long it took counts as no
    /// silence.
    pub(super) async fn recover(&self, fanout: &Fanout, conn: &Conn) -> Result<(), ReplicationError> {
        let listened = self.wanted_groups();
        let heads = self.heads(fanout).await;
        let reseeded = self.put_back_counters(conn, &heads).await?;
        let mut live = self.relinked(fanout, reseeded).await;
        live.retain(|(key, _)| listened.contains(&layout::group_of(&layout::stream_id(key))));
        self.catch_up(fanout, live).await?;
        self.start_heartbeat_clocks();
        Ok(())
    }

    /// The newest `seq` of every stream this node knows (see
    /// [`Control::Heads`]), followed or not.
    async fn heads(&self, fanout: &Fanout) -> Vec<(StreamKey, Seq)> {
        let mut heads = Vec::new();
        for ring in fanout.shards() {
            let (reply, answer) = oneshot::channel();
            ring.send_control(Control::Heads { reply });
            if let Ok(h) = answer.await {
                heads.extend(h);
            }
        }
        heads
    }

    /// Puts back the counter of every stream this node knows wherever
    /// Redis holds a lower one: a Redis restarted without persistence
    /// (empty, which a new `tw:epoch` shows), or from an append-only file
    /// that lacks its last writes, or one master of a Redis Cluster that
    /// came back empty. Numbering then goes on above every `seq` a local
    /// subscriber holds, and no such `seq` is given again. Every node does
    /// the same on every new link; where nothing was lost it changes
    /// nothing. Returns the streams whose state Redis lost, with the heads
    /// this node knows: all of them when the whole data set is new, else
    /// those whose counter it had to raise. The epoch is taken as seen only
    /// once the counters are back, so a link lost halfway does it again.
    async fn put_back_counters(
        &self,
        conn: &Conn,
        heads: &[(StreamKey, Seq)],
    ) -> Result<Vec<(StreamKey, Seq)>, ReplicationError> {
        let mut c = conn.clone();
        let fresh = format!("{}-{}", self.node_id, layout::now_micros());
        let set = redis::cmd("SET").arg("tw:epoch").arg(&fresh).arg("NX").to_owned();
        let _: RValue = c.run(&set).await?;
        let epoch: String = c.run(&redis::cmd("GET").arg("tw:epoch").to_owned()).await?;
        let previous = self.epoch.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let emptied = previous.is_some_and(|p| p != epoch);
        let known: Vec<(StreamKey, Seq)> = heads.iter().filter(|(_, h)| h.0 > 0).cloned().collect();
        let raised = self.raise(conn, &known).await?;
        let lost: Vec<(StreamKey, Seq)> = if emptied {
            known
        } else {
            raised.into_iter().map(|i| known[i].clone()).collect()
        };
        if emptied {
            tracing::warn!(
                streams = lost.len(),
                "Redis lost its data (restarted without persistence): stream counters put back; their subscribers here get a reset"
            );
        } else if !lost.is_empty() {
            tracing::warn!(
                streams = lost.len(),
                "Redis lost its newest writes of some streams (restored from a persistence file that lacked them): their counters put back; their subscribers here get a reset"
            );
        }
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = Some(epoch);
        Ok(lost)
    }

    /// Raises the counters of `heads` where Redis holds lower ones: one
    /// script call per stream group (per [`COUNTERS_PER_CALL`]),
    /// [`IN_FLIGHT`] calls at once. Returns the positions in `heads` of
    /// the counters it raised.
    async fn raise(&self, conn: &Conn, heads: &[(StreamKey, Seq)]) -> Result<Vec<usize>, ReplicationError> {
        let script = &Script::new(RAISE_LUA);
        let raised: Vec<Vec<usize>> = stream::iter(counter_calls(heads))
            .map(|call| {
                let mut c = conn.clone();
                async move {
                    let mut inv = script.prepare_invoke();
                    for (_, counter, head) in &call {
                        inv.key(counter).arg(head.0);
                    }
                    let raised: Vec<usize> = c.script(&inv).await?;
                    Ok::<_, ReplicationError>(
                        raised
                            .into_iter()
                            .filter_map(|i| call.get(i.checked_sub(1)?).map(|(at, ..)| *at))
                            .collect(),
                    )
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(raised.into_iter().flatten().collect())
    }

    /// Tells every shard that the link is back (see [`Control::Relinked`]):
    /// each gets the re-seeded streams it owns; returns the heads of the
    /// streams with local subscribers.
    async fn relinked(&self, fanout: &Fanout, reseeded: Vec<(StreamKey, Seq)>) -> Vec<(StreamKey, Seq)> {
        let shards = fanout.shards();
        let mut by_shard: Vec<Vec<(StreamKey, Seq)>> = vec![Vec::new(); shards.len()];
        for (key, head) in reseeded {
            let owner = fanout.shard_for(&key);
            if let Some(i) = shards.iter().position(|s| std::ptr::eq(&**s, owner)) {
                by_shard[i].push((key, head));
            }
        }
        let mut live = Vec::new();
        for (ring, reseeded) in shards.iter().zip(by_shard) {
            let (reply, answer) = oneshot::channel();
            ring.send_control(Control::Relinked { reseeded, reply });
            if let Ok(heads) = answer.await {
                live.extend(heads);
            }
        }
        live
    }

    /// Brings the streams in `heads` up to Redis's head before live
    /// messages (waiting in the push queue) are taken: [`IN_FLIGHT`] reads
    /// at once, each stream's messages handed to fanout in order as its
    /// read completes (a stream is one read, so its order holds).
    async fn catch_up(&self, fanout: &Fanout, heads: Vec<(StreamKey, Seq)>) -> Result<(), ReplicationError> {
        let mut reads = stream::iter(heads)
            .map(|(key, head)| async move {
                let fetched = self.read_history(&key, head).await;
                (key, fetched)
            })
            .buffer_unordered(IN_FLIGHT);
        let mut caught = 0usize;
        while let Some((key, fetched)) = reads.next().await {
            let ring = fanout.shard_for(&key);
            for e in fetched?.entries {
                let inbound = Inbound {
                    kind: e.kind,
                    stream: key.clone(),
                    meta: e.meta,
                    payload: Payload::Sequenced {
                        seq: e.seq,
                        frame: e.frame,
                    },
                    received_at: Instant::now(),
                };
                if ring.push(inbound, REQUEST_TIMEOUT).await.is_err() {
                    return Err(ReplicationError::RingsFull);
                }
                caught += 1;
            }
        }
        if caught > 0 {
            tracing::info!(messages = caught, "caught up from Redis history");
        }
        Ok(())
    }

    /// Every channel listened to counts as heard from now.
    fn start_heartbeat_clocks(&self) {
        let now = Instant::now();
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        for at in beats.values_mut() {
            *at = now;
        }
        beats.entry(INGEST_BEAT).or_insert(now);
    }
}

/// The counters of `heads` as script calls that each touch one stream
/// group: (position in `heads`, counter key, head).
fn counter_calls(heads: &[(StreamKey, Seq)]) -> Vec<Vec<(usize, String, Seq)>> {
    let mut by_group: HashMap<u64, Vec<(usize, String, Seq)>> = HashMap::new();
    for (at, (key, head)) in heads.iter().enumerate() {
        let sid = layout::stream_id(key);
        let group = layout::group_of(&sid);
        let counter = format!("{}seq:{sid}", layout::prefix(group));
        by_group.entry(group).or_default().push((at, counter, *head));
    }
    by_group
        .into_values()
        .flat_map(|counters| {
            counters
                .chunks(COUNTERS_PER_CALL)
                .map(<[_]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn each_counter_call_touches_one_group_and_every_counter_is_in_one_call() {
        let heads: Vec<(StreamKey, Seq)> = (0..3000)
            .map(|u| (StreamKey::User(Arc::from(format!("user{u}"))), Seq(u + 1)))
            .chain([(StreamKey::Signals, Seq(9))])
            .collect();
        let calls = counter_calls(&heads);
        let mut seen = vec![0; heads.len()];
        for call in &calls {
            assert!(!call.is_empty() && call.len() <= COUNTERS_PER_CALL);
            let tag = |k: &str| k.split(':').nth(1).map(str::to_string);
            assert!(
                call.iter().all(|(_, k, _)| tag(k) == tag(&call[0].1)),
                "one hash tag per call"
            );
            for (at, counter, head) in call {
                let sid = layout::stream_id(&heads[*at].0);
                assert!(counter.ends_with(&format!(":seq:{sid}")));
                assert_eq!(*head, heads[*at].1);
                seen[*at] += 1;
            }
        }
        assert!(seen.iter().all(|n| *n == 1), "every counter in exactly one call");
    }
}
