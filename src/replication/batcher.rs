//! Publishes on their way to Redis: validated updates turned into the
//! publishing script's arguments, gathered in batches (everything waiting,
//! up to a bound), one script call per batch on one Redis and one per
//! stream group (all at once) on a Redis Cluster; the next batch only
//! after this one is answered, so a publisher's order holds.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::protocol::update::Update;
use crate::protocol::UpdateKind;

/// One validated update on its way to Redis.
pub struct Entry {
    pub(super) group: u64,
    /// The 9 script arguments of the entry (see publish.lua).
    pub(super) args: [String; 9],
}

/// One group's part of a script call: the group and where each of its
/// entries is in the batch (job, entry).
type Section = (u64, Vec<(usize, usize)>);

pub(super) struct Job {
    pub(super) entries: Vec<Entry>,
    pub(super) reply: oneshot::Sender<Result<Vec<i64>, ReplicationError>>,
}

impl Replication {
    /// The first arguments of the once-only publishing script
    /// (publish_once.lua, which hands them on to publish.lua as one
    /// section): the group's prefix and channel, the publish command, the
    /// history and unread bounds, and how many entries follow.
    pub(super) fn script_head(&self, inv: &mut redis::ScriptInvocation<'_>, group: u64, entries: usize) {
        inv.arg(layout::prefix(group))
            .arg(layout::channel(group))
            .arg(self.publish_command())
            .arg(self.history_messages)
            .arg(self.max_unread)
            .arg(entries);
    }

    /// Sends queued publishes to Redis in batches: everything waiting, up
    /// to [`MAX_BATCH`] entries, in one script call (one per group in a
    /// Redis Cluster, all at once); the next batch only after this one is
    /// answered, so a publisher's order holds.
    pub(super) async fn batcher(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            let mut n = batch[0].entries.len();
            while n < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(j) => {
                        n += j.entries.len();
                        batch.push(j);
                    }
                    Err(_) => break,
                }
            }
            let result = self.run_batch(&batch).await;
            match result {
                Ok(mut per_job) => {
                    for (job, res) in batch.into_iter().zip(per_job.drain(..)) {
                        let _ = job.reply.send(Ok(res));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publish batch failed");
                    // Only a batch never sent is known unpublished.
                    for job in batch {
                        let _ = job.reply.send(Err(e.for_each_job()));
                    }
                }
            }
        }
    }

    pub(super) async fn run_batch(&self, batch: &[Job]) -> Result<Vec<Vec<i64>>, ReplicationError> {
        let conn = self.conn()?;
        // Entries by group, in order, remembering where each came from.
        let mut groups: Vec<Section> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for (j, job) in batch.iter().enumerate() {
            for (e, entry) in job.entries.iter().enumerate() {
                let at = *index.entry(entry.group).or_insert_with(|| {
                    groups.push((entry.group, Vec::new()));
                    groups.len() - 1
                });
                groups[at].1.push((j, e));
            }
        }
        // A Redis Cluster takes one group per call (one slot); one Redis
        // takes the whole batch in one call, every group a section of it.
        let calls: Vec<&[Section]> = if self.cluster.load(Ordering::Relaxed) {
            groups.chunks(1).collect()
        } else {
            vec![&groups[..]]
        };
        let requests = calls.iter().map(|sections| {
            let mut conn = conn.clone();
            let mut inv = self.publish_script.key(layout::channel(sections[0].0));
            inv.arg(self.publish_command())
                .arg(self.history_messages)
                .arg(self.max_unread)
                .arg(sections.len());
            for (group, places) in sections.iter() {
                inv.arg(layout::prefix(*group))
                    .arg(layout::channel(*group))
                    .arg(places.len());
                for (j, e) in places {
                    for a in &batch[*j].entries[*e].args {
                        inv.arg(a.as_str());
                    }
                }
            }
            async move { conn.script::<Vec<i64>>(&inv).await }
        });
        let replies = futures_util::future::join_all(requests).await;
        let mut out: Vec<Vec<i64>> = batch.iter().map(|j| vec![0; j.entries.len()]).collect();
        for (sections, reply) in calls.iter().zip(replies) {
            let seqs = reply?;
            let places = sections.iter().flat_map(|(_, places)| places);
            for ((j, e), seq) in places.zip(seqs) {
                out[*j][*e] = seq;
            }
        }
        Ok(out)
    }
}

impl Entry {
    /// The entry's arguments to the publishing script.
    pub fn args(&self) -> &[String; 9] {
        &self.args
    }
}

/// The publishing script's arguments for one update (`claim`: the ingest
/// message it belongs to; `micros`: when it was received).
pub fn entry(u: Update, claim: Option<String>, micros: u64) -> Entry {
    let sid = layout::stream_id(&u.stream);
    let group = layout::group_of(&sid);
    let mut flags = String::new();
    if u.kind == UpdateKind::SignalUpdate {
        if !u.body.contains_key("symbol") {
            flags.push('S');
        }
        if !u.body.contains_key("signal_type") {
            flags.push('T');
        }
    }
    // Serializing plain JSON values into a String cannot fail.
    let mut body = serde_json::to_string(&u.body).expect("JSON values always serialize");
    body.pop();
    let key = match u.kind {
        UpdateKind::NewSignal | UpdateKind::SignalUpdate => u.signal_id.as_deref().unwrap_or(""),
        UpdateKind::NewNotification => u.notification_id.as_deref().unwrap_or(""),
        UpdateKind::MarketUpdate => "",
    };
    Entry {
        group,
        args: [
            layout::kind_code(u.kind).to_string(),
            sid,
            micros.to_string(),
            u.symbol.as_deref().unwrap_or("").to_string(),
            u.signal_type.map_or("", |t| t.wire_name()).to_string(),
            key.to_string(),
            claim.unwrap_or_default(),
            flags,
            body,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn signal_updates_say_what_they_lack() {
        let u = crate::protocol::update::decode_entry(
            serde_json::json!({"type":"signal_update","signal_id":"s1","confidence_score":3}),
        )
        .unwrap();
        let e = entry(u, None, 5);
        assert_eq!(e.args[0], "u");
        assert_eq!(e.args[5], "s1");
        assert_eq!(e.args[7], "ST");
        assert!(!e.args[8].ends_with('}'));
    }
}
