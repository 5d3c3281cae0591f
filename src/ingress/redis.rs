//! The Redis ingest channel (PROTOCOL.md 2, `rt:ingest`): every node
//! receives each message published there, and exactly one of them
//! publishes it. The replication link hands the channel's messages here,
//! in the order Redis delivered them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Ingress;
use crate::replication::layout;

/// Publishes ingest-channel messages one by one, in arrival order. Each
/// is claimed in Redis by its content and its occurrence, so that of all
/// the nodes receiving it exactly one publishes it.
pub async fn run(ingress: Arc<Ingress>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut seen: HashMap<u64, (u32, Instant)> = HashMap::new();
    while let Some(payload) = rx.recv().await {
        let hash = layout::fnv1a(&payload);
        let now = Instant::now();
        // The n-th time the same bytes arrive within 30 s is the same n-th
        // message on every node, since Redis delivers a channel in order.
        let occurrence = match seen.get_mut(&hash) {
            Some((n, at)) if now.duration_since(*at) < Duration::from_secs(30) => {
                *n += 1;
                *at = now;
                *n
            }
            _ => {
                seen.insert(hash, (0, now));
                0
            }
        };
        if seen.len() > 100_000 {
            seen.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(30));
        }
        let claim = format!("{hash:016x}.{occurrence}");
        match ingress.publish_claimed(&payload, Some(&claim)).await {
            Ok(outcome) if !outcome.errors.is_empty() => {
                tracing::warn!(errors = ?outcome.errors, "ingest channel message had invalid entries");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ingest channel message is not JSON"),
        }
    }
}
