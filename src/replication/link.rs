//! The link to Redis, supervised: connect, catch up, relay what Redis
//! carries to the fanout shards (and the ingest channel to ingress),
//! heartbeat every quiet channel listened to, and reconnect with backoff
//! when anything of it fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value as RValue};
use tokio::sync::mpsc;

use super::layout::Envelope;
use super::*;
use crate::fanout::{Control, Inbound, Payload, ShardRing};
use crate::protocol::encode::Frame;
use crate::protocol::StreamKey;

impl Replication {
    /// Runs the link to Redis until shutdown: connects, catches up, relays
    /// what arrives to fanout, reconnects with backoff.
    pub async fn run(self: Arc<Self>, to: Handles) {
        let jobs = self.jobs_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(jobs) = jobs {
            tokio::spawn(self.clone().batcher(jobs));
        }
        let mut backoff = Duration::from_millis(100);
        let mut reported_down = false;
        loop {
            let ended = tokio::select! {
                _ = to.shutdown.wait() => return,
                r = self.session(&to) => r,
            };
            let was_up = self.up.swap(false, Ordering::AcqRel);
            *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
            to.metrics.set_redis_connected(false);
            if was_up {
                backoff = Duration::from_millis(100);
            }
            if was_up || !reported_down {
                let why = match ended {
                    Err(e) => e.to_string(),
                    Ok(()) => "link closed".into(),
                };
                if was_up {
                    tracing::warn!(url = %crate::config::redacted_url(&self.url), error = %why, "Redis link lost: not ready; serving local subscribers, refusing publishes and new clients, reconnecting with backoff");
                } else {
                    tracing::warn!(url = %crate::config::redacted_url(&self.url), error = %why, "Redis unreachable: not ready; retrying with backoff");
                }
                reported_down = true;
            }
            let jitter = Duration::from_millis(layout::now_micros() % 100);
            tokio::select! {
                _ = to.shutdown.wait() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connected period: returns when the link fails.
    pub(super) async fn session(&self, to: &Handles) -> Result<(), ReplicationError> {
        let (push_tx, mut push_rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let sender = {
            let overflow = overflow.clone();
            move |p: PushInfo| -> Result<(), ()> {
                if push_tx.try_send(p).is_err() {
                    // Relaxed: a flag checked on the next heartbeat.
                    overflow.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
        };
        let client = redis::Client::open(self.url.as_str())?;
        let mut probe = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut probe).await?;
        let cluster = info.contains("cluster_enabled:1");
        self.cluster.store(cluster, Ordering::Relaxed);
        if cluster {
            // A cluster still being formed has slots that no master serves.
            let state: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut probe).await?;
            if !state.contains("cluster_state:ok") {
                return Err(ReplicationError::ClusterNotReady);
            }
        }
        let (conn, listening) = if cluster {
            let builder = redis::cluster::ClusterClientBuilder::new(vec![self.url.as_str()])
                .response_timeout(REQUEST_TIMEOUT);
            let cmd = builder.build()?.get_async_connection().await?;
            let sub_client = redis::cluster::ClusterClientBuilder::new(vec![self.url.as_str()])
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(sender)
                .build()?;
            let mut sub = sub_client.get_async_connection().await?;
            sub.subscribe(&self.ingest_channel).await?;
            (Conn::Cluster(cmd), Conn::Cluster(sub))
        } else {
            let info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())?;
            let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
            let sub_client = redis::Client::open(info.set_redis_settings(settings))?;
            let config = AsyncConnectionConfig::new().set_push_sender(sender);
            let mut sub = sub_client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            sub.subscribe(&self.ingest_channel).await?;
            (Conn::Single(probe), Conn::Single(sub))
        };
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        {
            let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
            beats.clear();
            beats.insert(INGEST_BEAT, Instant::now());
        }
        *self.listener.lock().await = Some(Listener {
            conn: listening,
            groups: Default::default(),
        });
        self.sync_listening().await?;

        self.recover(&to.fanout, &conn).await?;
        self.up.store(true, Ordering::Release);
        to.metrics.set_redis_connected(true);
        tracing::info!(url = %crate::config::redacted_url(&self.url), cluster, node = %self.node_id, "Redis link up: ready");

        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        let result = loop {
            tokio::select! {
                push = push_rx.recv() => {
                    let Some(push) = push else { break Err(ReplicationError::PushClosed) };
                    // Whatever else has arrived goes to the shards before
                    // any worker is woken, so that it is fanned out, and
                    // written, as one batch.
                    let mut touched = Vec::new();
                    let mut next = Some(push);
                    let mut taken = 0;
                    let mut relayed = Ok(());
                    while let Some(push) = next.take() {
                        relayed = self.on_push(to, push, &mut touched).await;
                        taken += 1;
                        if relayed.is_err() || taken == RELAY_BATCH {
                            break;
                        }
                        next = push_rx.try_recv().ok();
                    }
                    touched.into_iter().for_each(ShardRing::wake);
                    if let Err(e) = relayed {
                        break Err(e);
                    }
                }
                _ = beat.tick() => {
                    if overflow.load(Ordering::Relaxed) {
                        break Err(ReplicationError::FellBehind);
                    }
                    let silent = self
                        .beats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .find(|(_, t)| t.elapsed() > HEARTBEAT_LOST)
                        .map(|(g, _)| *g);
                    if let Some(g) = silent {
                        let channel = if g == INGEST_BEAT { self.ingest_channel.clone() } else { layout::channel(g) };
                        break Err(ReplicationError::NoHeartbeat { channel, after: HEARTBEAT_LOST });
                    }
                    if let Err(e) = self.beat(&conn).await {
                        break Err(e);
                    }
                }
            }
        };
        *self.listener.lock().await = None;
        result
    }

    /// Counts a message of group `group`'s channel as heard now: it shows
    /// that the subscription delivers as well as a heartbeat would.
    fn heard(&self, group: u64) {
        if let Some(t) = self
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&group)
        {
            *t = Instant::now();
        }
    }

    /// Sends a heartbeat through the ingest channel, and through every
    /// group channel listened to that carried nothing for half a heartbeat
    /// period: a busy channel needs none.
    pub(super) async fn beat(&self, conn: &Conn) -> Result<(), ReplicationError> {
        let payload = layout::heartbeat(&self.node_id, layout::now_micros());
        let mut channels: Vec<(String, &'static str)> = self
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(g, t)| **g != INGEST_BEAT && t.elapsed() >= HEARTBEAT_EVERY / 2)
            .map(|(g, _)| (layout::channel(*g), self.publish_command()))
            .collect();
        // Classic pub/sub for the ingest channel, in a Redis Cluster too.
        channels.push((self.ingest_channel.clone(), "PUBLISH"));
        let sends = channels.into_iter().map(|(channel, publish)| {
            let mut conn = conn.clone();
            let cmd = redis::cmd(publish).arg(channel).arg(&payload).to_owned();
            async move { conn.run::<RValue>(&cmd).await }
        });
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
        Ok(())
    }

    /// Takes one message from Redis: updates go to their shards' rings
    /// (whose workers the caller wakes, see `touched`), the rest is
    /// handled here.
    pub(super) async fn on_push<'h>(
        &self,
        to: &'h Handles,
        push: PushInfo,
        touched: &mut Vec<&'h ShardRing>,
    ) -> Result<(), ReplicationError> {
        let (channel, payload) = match (push.kind, push.data.as_slice()) {
            (PushKind::Message | PushKind::SMessage, [channel, payload]) => {
                (bytes_of(channel), bytes_of(payload))
            }
            (PushKind::Disconnection, _) => return Err(ReplicationError::Disconnected),
            _ => return Ok(()),
        };
        let (Some(channel), Some(payload)) = (channel, payload) else {
            return Ok(());
        };
        let Some(group) = layout::group_of_channel(channel) else {
            if channel == self.ingest_channel.as_bytes() {
                if let Ok(Some(Envelope::Heartbeat { node: from, .. })) =
                    std::str::from_utf8(payload).map(layout::decode_envelope)
                {
                    if from == &*self.node_id {
                        self.beats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(INGEST_BEAT, Instant::now());
                    }
                    self.nodes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(from.to_string(), Instant::now());
                    return Ok(());
                }
                // A full queue means ingest is far behind: drop rather than stall fanout.
                if to.ingest.try_send(payload.to_vec()).is_err() {
                    tracing::warn!("ingest channel backlog full: message dropped");
                }
            }
            return Ok(());
        };
        self.heard(group);
        let Ok(text) = std::str::from_utf8(payload) else {
            return Ok(());
        };
        match layout::decode_envelope(text) {
            Some(Envelope::Heartbeat { node: from, .. }) => {
                self.nodes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(from.to_string(), Instant::now());
            }
            Some(Envelope::Updates(updates)) => self.relay(to, updates, touched).await?,
            Some(Envelope::Read {
                user,
                key,
                origin,
                frame,
            }) => {
                let skip = origin
                    .strip_prefix(&*self.node_id)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .and_then(|id| id.parse().ok())
                    .map(crate::registry::SubscriberId);
                let key_stream = StreamKey::User(user.clone());
                to.fanout.control(
                    &key_stream,
                    Control::ReadElsewhere {
                        user,
                        key,
                        frame: Frame::from(frame),
                        skip,
                    },
                );
            }
            None => tracing::debug!("malformed envelope ignored"),
        }
        Ok(())
    }

    /// Hands the updates of one envelope to their shards without waking
    /// their workers (the caller does, once for all it relayed, see
    /// `touched`), so that a subscriber's frames of one batch share its
    /// writes as they do in embedded mode.
    async fn relay<'h>(
        &self,
        to: &'h Handles,
        updates: Vec<layout::Sequenced<'_>>,
        touched: &mut Vec<&'h ShardRing>,
    ) -> Result<(), ReplicationError> {
        let now_micros = layout::now_micros();
        let now = Instant::now();
        for u in updates {
            let age = Duration::from_micros(now_micros.saturating_sub(u.micros));
            let inbound = Inbound {
                kind: u.kind,
                stream: u.stream,
                meta: u.meta,
                payload: Payload::Sequenced {
                    seq: u.seq,
                    frame: Frame::from(u.frame),
                },
                received_at: now.checked_sub(age).unwrap_or(now),
            };
            let ring = to.fanout.shard_for(&inbound.stream);
            match ring.try_push_quiet(inbound) {
                Ok(()) => {
                    if !touched.iter().any(|r| std::ptr::eq(*r, ring)) {
                        touched.push(ring);
                    }
                }
                Err(inbound) => {
                    // Full: wake what waits, then wait for room like any publisher.
                    touched.drain(..).for_each(ShardRing::wake);
                    if ring.push(inbound, REQUEST_TIMEOUT).await.is_err() {
                        return Err(ReplicationError::RingsFull);
                    }
                }
            }
        }
        Ok(())
    }
}
